"""The `hetcc` command line: compile -> explain -> run round trips, JSON output, exit codes, and a
one-line error (no traceback) for every kind of bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import hetcc
from hetcc.cli import main
from hetcc.model_files import load_model

ROOT = Path(__file__).resolve().parents[1]
MLP = f"{ROOT / 'examples' / 'mlp.py'}:build"
CPU_TARGETS = "openvino:cpu,onnxruntime:cpu,torch:cpu"

TINY = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    print("building the tiny model")  # must not end up in --json output
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    return model, (torch.randn(4, 8),)


def build_single():
    model, (x,) = build()
    return model, x


def build_batch1():
    model, (x,) = build()
    return model, (x[:1],)


def build_with_options():
    model, inputs = build()
    return model, inputs, {"rtol": 1e-3, "measure": False}


def build_bad_option():
    model, inputs = build()
    return model, inputs, {"no_such_option": 1}


def returns_int():
    return 3


def returns_no_module():
    return "model", (torch.randn(4, 8),)


def returns_bad_inputs():
    model, _ = build()
    return model, "x"


def raises():
    raise RuntimeError("kaboom")


def raises_in_colour():
    raise RuntimeError("\\x1b[1;31mkaboom\\x1b[0m in colour")
'''

FALLS_BACK = '''
import torch
from torch import nn


class Eigh(nn.Module):  # ONNX Runtime refuses aten._linalg_eigh
    def forward(self, x):
        w, v = torch.linalg.eigh(x @ x.T)
        return (v * w).relu() + 1


class Histogram(nn.Module):  # torch's ONNX exporter fails on aten.histc, after it was accepted
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        return torch.histc(self.proj(x), bins=4) * 2


def refused():
    return Eigh().eval(), (torch.randn(4, 4),)


def failed():
    torch.manual_seed(0)
    return Histogram().eval(), (torch.randn(4, 6),)
'''


def cli(capsys, *argv):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result, *fragments):
    code, _, err = result
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("hetcc: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def eager(source: Path, func: str = "build", batch=None):
    model, inputs, _ = load_model(f"{source}:{func}")
    with torch.no_grad():
        return model(*inputs) if batch is None else model(batch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "tiny.py"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def tiny_bundle(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    assert main(["compile", f"{tiny}:build", "-o", str(out), "--targets", "torch:cpu", "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def mlp_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "mlp"
    assert main(["compile", MLP, "-o", str(out), "--targets", CPU_TARGETS]) == 0
    return out


# ---- the real example: compile -> explain -> run ----

def test_compile_explain_run_mlp(mlp_bundle, tmp_path, capsys):
    report = json.loads((mlp_bundle / "report.json").read_text())
    assert report["segments"] and all(s["target"] in CPU_TARGETS for s in report["segments"])

    code, out, _ = cli(capsys, "explain", mlp_bundle)
    assert code == 0
    for word in ("segment", "MFLOP", "CF MB", "max err", "fell back", "x: float32[32, 256]"):
        assert word in out
    for seg in report["segments"]:
        assert seg["name"] in out and seg["target"] in out
    # the plan's targets include torch:cpu, asked for or not: "considered", not "asked for"
    assert f"targets considered: {', '.join(report['targets'])}" in out and "torch:cpu" in report["targets"]

    code, out, _ = cli(capsys, "explain", mlp_bundle, "--json")
    assert code == 0 and json.loads(out) == report

    model, (x,), _ = load_model(MLP)
    with torch.no_grad():
        want = model(x).numpy()
    np.savez(tmp_path / "in.npz", x=x.numpy())
    code, out, _ = cli(capsys, "run", mlp_bundle, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out")
    assert code == 0 and "out0: float32[32, 64]" in out
    with np.load(tmp_path / "out.npz") as got:
        assert list(got.files) == ["out0"]
        np.testing.assert_allclose(got["out0"], want, rtol=1e-4, atol=1e-4)

    np.savez(tmp_path / "positional.npz", x.numpy())  # arr_0, as numpy.savez names it
    code, out, _ = cli(capsys, "run", mlp_bundle, "--inputs", tmp_path / "positional.npz", "--json")
    assert code == 0
    assert json.loads(out) == {"outputs": [{"key": "out0", "name": "output",
                                            "value": report["segments"][-1]["outputs"][-1],
                                            "dtype": "float32", "shape": [32, 64]}], "written": None}


def test_explain_loads_no_runtime(mlp_bundle):
    """explain reads JSON only, so it works where the bundle's runtimes are not installed."""
    probe = ("import sys; from hetcc.cli import main; code = main(['explain', sys.argv[1]]); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'onnx'))); "
             "sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, str(mlp_bundle)], capture_output=True, text=True,
                          cwd=mlp_bundle.parent, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_subprocess_round_trip_without_the_source(tiny, tmp_path):
    """`python -m hetcc` as a user runs it; the bundle then runs where the model's source is gone."""
    source = tmp_path / "src" / "tiny.py"
    source.parent.mkdir()
    source.write_text(tiny.read_text())
    want = eager(source).numpy()
    x = load_model(f"{source}:build")[1][0]
    work = tmp_path / "work"
    work.mkdir()

    def hetcc_cmd(*argv):
        proc = subprocess.run([sys.executable, "-m", "hetcc", *map(str, argv)], cwd=work,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    proc = hetcc_cmd("compile", f"{source}:build", "-o", "bundle", "--targets", "torch:cpu", "--json")
    result = json.loads(proc.stdout)  # the model's print went to stderr, not into the JSON
    assert result["bundle"] == "bundle" and result["plan"]["segments"][0]["target"] == "torch:cpu"
    assert "building the tiny model" in proc.stderr
    source.unlink()
    np.savez(work / "in.npz", input=x.numpy())
    hetcc_cmd("run", "bundle", "--inputs", "in.npz", "-o", "out.npz")
    with np.load(work / "out.npz") as got:
        np.testing.assert_allclose(got["out0"], want, rtol=1e-5, atol=1e-6)


# ---- other MODEL kinds and options ----

class DictModel(torch.nn.Module):
    def forward(self, d):
        return d["a"] + 2 * d["b"], d["a"].sum()


def test_run_rebuilds_structured_inputs_and_writes_every_output(tmp_path, capsys):
    a, b = torch.randn(3), torch.randn(3)
    hetcc.compile(DictModel(), ({"a": a, "b": b},), targets=["torch:cpu"]).save(tmp_path / "b")
    np.savez(tmp_path / "in.npz", d_a=a.numpy(), d_b=b.numpy())
    code, out, err = cli(capsys, "run", tmp_path / "b", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert code == 0, err
    assert "out0: float32[3]" in out and "out1: float32[]" in out
    with np.load(tmp_path / "o.npz") as got:
        np.testing.assert_allclose(got["out0"], (a + 2 * b).numpy(), rtol=1e-6)
        np.testing.assert_allclose(got["out1"], a.sum().numpy(), rtol=1e-6)


def test_pt2_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Tanh()).eval()
    x = torch.randn(5, 8)
    ep = torch.export.export(model, (x,))
    torch.export.save(ep, tmp_path / "m.pt2")
    code, out, err = cli(capsys, "compile", tmp_path / "m.pt2", "-o", tmp_path / "b", "--targets", "torch:cpu")
    assert code == 0, err
    assert "bundle written to" in out
    np.savez(tmp_path / "in.npz", x.numpy())
    assert cli(capsys, "run", tmp_path / "b", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")[0] == 0
    with np.load(tmp_path / "out.npz") as got, torch.no_grad():
        np.testing.assert_allclose(got["out0"], model(x).numpy(), rtol=1e-5, atol=1e-6)

    ep.example_inputs = None  # an archive without examples needs --inputs
    torch.export.save(ep, tmp_path / "bare.pt2")
    assert_user_error(cli(capsys, "compile", tmp_path / "bare.pt2", "-o", tmp_path / "c", "--targets", "torch:cpu"),
                      "no example inputs", "--inputs")
    code, _, err = cli(capsys, "compile", tmp_path / "bare.pt2", "-o", tmp_path / "c", "--targets", "torch:cpu",
                       "--inputs", tmp_path / "in.npz")
    assert code == 0, err


def test_dynamic_batch(tiny, tmp_path, capsys):
    code, _, err = cli(capsys, "compile", f"{tiny}:build", "--dynamic-batch=2:16", "-o", tmp_path / "b",
                         "--targets", "torch:cpu", "--json")
    assert code == 0, err
    x = torch.randn(7, 8)
    np.savez(tmp_path / "in.npz", x.numpy())
    assert cli(capsys, "run", tmp_path / "b", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")[0] == 0
    with np.load(tmp_path / "o.npz") as got:
        np.testing.assert_allclose(got["out0"], eager(tiny, batch=x).numpy(), rtol=1e-5, atol=1e-6)
    assert_user_error(cli(capsys, "compile", f"{tiny}:build_batch1", "--dynamic-batch", "-o", tmp_path / "c",
                          "--targets", "torch:cpu"), "example batch of 2 or more")


def test_model_file_options_and_flags(tiny, tmp_path, capsys):
    for func in ("build_single", "build_with_options"):
        code, _, err = cli(capsys, "compile", f"{tiny}:{func}", "-o", tmp_path / func, "--targets", "torch:cpu",
                           "--pin", "0=torch:cpu", "--memory-limit", "torch:cpu=1GiB", "--no-measure")
        assert code == 0, err
    # the flags reach hetcc.compile, which checks them against the model and the targets
    for flag, message in ((["--pin", "nosuch=torch:cpu"], "nosuch"),
                          (["--exclude", "2=openvino:cpu"], "openvino:cpu"),
                          (["--memory-limit", "openvino:cpu=2GB"], "openvino:cpu")):
        assert_user_error(cli(capsys, "compile", f"{tiny}:build", "-o", tmp_path / "x", "--targets", "torch:cpu",
                              *flag), message)


class FakeBackend:
    """Drives a CPU that is here and an NPU that is not."""
    name, devices = "fake", ("cpu", "npu")

    def is_available(self, target):
        return target.device == "cpu"

    def why_unavailable(self, target):
        return "no NPU on this machine" if target.device == "npu" else ""

    def versions(self):
        return {"fakesdk": "1.2"}


class BrokenBackend:
    def __init__(self):
        raise ImportError("fakesdk is not installed")


@pytest.fixture
def fake_backends(monkeypatch):
    from hetcc.backends import registry

    monkeypatch.setitem(registry._REGISTERED, "fake", FakeBackend)
    monkeypatch.setitem(registry._REGISTERED, "broken", BrokenBackend)
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()
    yield
    monkeypatch.undo()  # before the caches are cleared again, so they forget the fakes
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()


def test_targets(fake_backends, capsys, cpu, vnni):
    code, out, _ = cli(capsys, "targets", "--json")
    assert code == 0
    info = json.loads(out)
    assert {"torch:cpu", "fake:cpu"} <= set(info["usable"]) and "fake:npu" not in info["usable"]
    backends = {b["name"]: b for b in info["backends"]}
    assert backends["torch"]["versions"]["torch"] == torch.__version__
    assert backends["fake"]["versions"] == {"fakesdk": "1.2"}
    assert "fakesdk is not installed" in backends["broken"]["error"]
    targets = {t["target"]: t for t in info["targets"]}
    assert targets["fake:npu"] == {"target": "fake:npu", "usable": False, "why": "no NPU on this machine",
                                   "untested": "", "precisions": []}
    # what --accuracy may choose among, asked of each backend (a plugin without the method: none)
    assert targets["onnxruntime:cpu"]["precisions"] == ["int8", "int8s"]
    cpu(vnni=False)  # int8u too
    code, out, _ = cli(capsys, "targets", "--json")
    offered = {t["target"]: t["precisions"] for t in json.loads(out)["targets"]}
    assert code == 0 and offered["onnxruntime:cpu"] == ["int8", "int8u", "int8s"]
    assert "int8w" in targets["openvino:cpu"]["precisions"] and targets["fake:cpu"]["precisions"] == []
    assert info["devices"][0]["device"] == "cpu"
    # every backend's options, from its own declaration; targets never run on hardware say so
    assert [o["name"] for o in backends["onnxruntime"]["options"]] == ["threads", "optimization", "spinning",
                                                                       "skip_layernorm", "precision", "provider"]
    compile_option = backends["torch"]["options"][0]
    assert compile_option["name"] == "compile" and compile_option["devices"] == ["cuda"]
    assert backends["fake"]["options"] == []
    for name in ("tensorrt:cuda", "migraphx:rocm", "torch:cuda", "onnxruntime:cuda", "iree:rocm"):
        assert "never run" in targets[name]["untested"], name
    for name in ("torch:cpu", "onnxruntime:cpu", "openvino:cpu", "iree:cpu"):
        assert targets[name]["untested"] == "", name
    code, out, _ = cli(capsys, "targets")
    assert code == 0
    for text in ("backends installed", "torch:cpu", "fake:npu", "no NPU on this machine", "fakesdk is not",
                 "backend options", "optimization", "untested on hardware"):
        assert text in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ") and ":" in line.split()[1]}
    assert "untested on hardware" in rows["tensorrt:cuda"] and "untested" not in rows["torch:cpu"]


def test_help_names_the_targets_untested_on_hardware(capsys):
    from hetcc.backends.registry import BUILTIN, get_backend
    from hetcc.cli.app import UNTESTED

    for name in BUILTIN:  # the help's fixed text agrees with what the backends declare
        for device in getattr(get_backend(name), "untested", {}):
            assert f"{name}:{device}" in UNTESTED or (name == "iree" and "iree's GPU targets" in UNTESTED)
    code, out, _ = cli(capsys, "compile", "--help")
    text = " ".join(out.split())  # argparse wraps the help to the terminal's width
    assert code == 0 and f"({UNTESTED} are untested on hardware)" in text
    assert "`hetcc targets` lists each backend's options" in text


# ---- exit codes and messages ----

def test_version_and_help(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"hetcc {hetcc.__version__}"
    for command in ([], ["compile"], ["run"], ["explain"], ["targets"]):
        code, out, _ = cli(capsys, *command, "--help")
        assert code == 0 and "example" in out and "hetcc " in out


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["compile", "model.py:build"],                                   # no -o, no --targets
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--pin", "no-equals-sign"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--dynamic-batch=8:2"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--memory-limit", "torch:cpu=lots"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--strict", "--max-fallback", "0.1"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--max-fallback", "5"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--max-fallback", "-0.1"],
    ["compile", "m.py", "-o", "d", "--targets", "torch:cpu", "--max-fallback", "some"],
    ["bench", "m.py", "--max-fallback", "nan"],
    ["run", "somewhere"],                                            # no --inputs
])
def test_bad_usage_exits_2(argv, capsys):
    code, _, err = cli(capsys, *argv)
    assert code == 2 and "usage:" in err


def test_bad_model_specs(tiny, tmp_path, capsys):
    def compile_(model, *extra):
        return cli(capsys, "compile", model, "-o", tmp_path / "out", "--targets", "torch:cpu", *extra)

    assert_user_error(compile_(tmp_path / "nope.py"), "nope.py not found")
    assert_user_error(compile_(f"{tiny}:missing"), "no function 'missing'", "build")
    assert_user_error(compile_(f"{tiny}:returns_int"), "must return (model, example_inputs)", "an int")
    assert_user_error(compile_(f"{tiny}:returns_no_module"), "torch.nn.Module")
    assert_user_error(compile_(f"{tiny}:returns_bad_inputs"), "tuple/list of tensors")
    assert_user_error(compile_(f"{tiny}:raises"), "RuntimeError: kaboom")
    assert_user_error(compile_(f"{tiny}:raises_in_colour"), "RuntimeError: kaboom in colour")  # no escapes
    assert_user_error(compile_(f"{tiny}:build_bad_option"), "no_such_option")
    assert_user_error(compile_(f"{tiny}:build", "--targets", "nosuch:cpu"), "unknown backend 'nosuch'", "torch")
    assert_user_error(compile_(f"{tiny}:build", "--targets", "torch"), "malformed target")
    assert_user_error(compile_(tmp_path / "model.txt"), "file.py:function")
    (tmp_path / "junk.pt2").write_text("not an archive")
    assert_user_error(compile_(tmp_path / "junk.pt2"), "junk.pt2")
    assert not (tmp_path / "out").exists()


def test_output_dir_rules(tiny, tiny_bundle, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    args = ["compile", f"{tiny}:build", "-o", other, "--targets", "torch:cpu"]
    assert_user_error(cli(capsys, *args), "not empty", "--force")
    assert_user_error(cli(capsys, *args, "--force"), "not a hetcc bundle")
    assert sorted(p.name for p in other.iterdir()) == ["precious.txt"]
    assert (other / "precious.txt").read_text() == "keep me"

    args = ["compile", f"{tiny}:build", "-o", tiny_bundle, "--targets", "torch:cpu"]
    assert_user_error(cli(capsys, *args), "not empty")
    code, _, err = cli(capsys, *args, "--force")
    assert code == 0, err
    assert cli(capsys, "explain", tiny_bundle)[0] == 0


def test_bad_run_inputs(tiny_bundle, tmp_path, capsys):
    def run(**arrays):
        np.savez(tmp_path / "in.npz", **arrays)
        return cli(capsys, "run", tiny_bundle, "--inputs", tmp_path / "in.npz")

    good = np.zeros((4, 8), np.float32)
    assert run(input=good)[0] == 0
    assert_user_error(run(y=good), "missing ['input']", "input: float32[4, 8]")
    assert_user_error(run(input=good, extra=good), "unexpected ['extra']")
    assert_user_error(run(arr_0=good, arr_1=good), "unexpected ['arr_1']")
    assert_user_error(run(input=np.zeros((4, 7), np.float32)), "dimension 1 is 7, expected 8")
    assert_user_error(run(input=np.zeros((4, 8))), "dtype float64, expected float32")
    (tmp_path / "junk.npz").write_text("hello")
    assert_user_error(cli(capsys, "run", tiny_bundle, "--inputs", tmp_path / "junk.npz"), "not an .npz")
    assert_user_error(cli(capsys, "run", tiny_bundle, "--inputs", tmp_path / "none.npz"), "none.npz")


def test_not_a_bundle(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    np.savez(tmp_path / "in.npz", np.zeros(3))
    assert_user_error(cli(capsys, "explain", tmp_path), "not a hetcc bundle")
    assert_user_error(cli(capsys, "run", tmp_path, "--inputs", tmp_path / "in.npz"), "not a hetcc bundle")
    assert_user_error(cli(capsys, "explain", tmp_path / "missing"), "missing")


def test_debug_shows_the_traceback(tiny, tmp_path, capsys):
    for argv in (["--debug", "compile", f"{tiny}:raises"], ["compile", f"{tiny}:raises", "--debug"]):
        code, _, err = cli(capsys, *argv, "-o", tmp_path / "out", "--targets", "torch:cpu")
        assert code == 1
        assert "Traceback" in err and "RuntimeError: kaboom" in err
        assert err.splitlines()[-1].startswith("hetcc: error:")


@pytest.fixture(scope="module")
def falls_back(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "falls_back.py"
    path.write_text(FALLS_BACK)
    return path


def test_strict_and_max_fallback_exit_5_naming_nodes_and_reasons(falls_back, tmp_path, capsys):
    out = tmp_path / "out"
    compile_ = ["compile", f"{falls_back}:refused", "-o", out, "--targets", "onnxruntime:cpu", "--no-measure"]
    for flags in (["--strict"], ["--max-fallback", "0.1"]):
        code, stdout, err = cli(capsys, *compile_, *flags)
        assert code == 5 and stdout == "" and "Traceback" not in err
        (error,) = [line for line in err.splitlines() if line.startswith("hetcc: error:")]
        assert err.splitlines()[-1] == error
        assert "3 of 8 nodes (37.5%) fall back to torch:cpu" in error and "_linalg_eigh" in error
        assert "onnxruntime:cpu refused them: aten._linalg_eigh.default has no ONNX translation" in error
        assert not out.exists()
    code, _, err = cli(capsys, *compile_, "--max-fallback", "0.4")
    assert code == 0 and out.is_dir(), err
    # a bundle is compiled already; bench bounds the fallback of what it compiles
    assert_user_error(cli(capsys, "bench", out, "--strict"), "--strict and --max-fallback are for a MODEL")
    code, _, err = cli(capsys, "bench", f"{falls_back}:refused", "--targets", "onnxruntime:cpu", "--strict",
                       "--runs", "1")
    assert code == 5 and "_linalg_eigh" in err.splitlines()[-1]
    # a target that failed on the nodes (not only refused them) counts too
    code, _, err = cli(capsys, "compile", f"{falls_back}:failed", "-o", out, "--force",
                       "--targets", "onnxruntime:cpu", "--no-measure", "--strict")
    assert code == 5
    # narrowed down: only histc's own part fails, the rest of the segment stays on ONNX Runtime
    assert "1 of 4 nodes" in err.splitlines()[-1] and "histc" in err.splitlines()[-1]
    assert "failed_segment.pt2" in err.splitlines()[-1]


def test_a_failed_lowering_under_debug(falls_back, tmp_path, capsys):
    """A real failure (torch's ONNX exporter on aten.histc): --debug logs the whole exception chain,
    the reason names the cause and a command that reproduces it, and explain shows it on one line."""
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--debug", "compile", f"{falls_back}:failed", "-o", out,
                       "--targets", "onnxruntime:cpu", "--no-measure")
    assert code == 0, err
    assert "DEBUG hetcc: segment seg0 on onnxruntime:cpu: lower failed" in err
    assert "The above exception was the direct cause of the following exception" in err
    assert "NotImplementedError: aten_histc with min == max" in err
    code, stdout, _ = cli(capsys, "explain", out)
    assert code == 0
    (note,) = [line for line in stdout.splitlines() if line.startswith("note: onnxruntime:cpu rejected")]
    assert "aten_histc with min == max" in note
    assert "reproduce the failure alone with: " in note and note.endswith("opset_version=20)'")


def test_ctrl_c_exits_130_quietly(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("hetcc.cli.render.targets_info", interrupted)
    code, out, err = cli(capsys, "targets")
    assert (code, out, err) == (130, "", "")


def test_backend_options_from_the_command_line(tmp_path, capsys):
    from hetcc.cli.inputs import backend_option

    assert backend_option("tensorrt.precision=fp16") == ("tensorrt", "precision", "fp16")
    assert backend_option("torch.compile=true") == ("torch", "compile", True)
    assert backend_option("tensorrt.workspace=1024") == ("tensorrt", "workspace", 1024)
    assert main(["compile", MLP, "-o", str(tmp_path / "b"), "--targets", "openvino:cpu",
                 "--option", "openvino.speed=max"]) == 1
    err = capsys.readouterr().err
    assert "bad options for backend 'openvino'" in err and "speed" in err
    assert not (tmp_path / "b").exists()
    assert main(["compile", MLP, "-o", str(tmp_path / "b"), "--targets", "openvino:cpu",
                 "--option", "precision=fp16"]) == 2
    assert "BACKEND.KEY=VALUE" in capsys.readouterr().err
    # an option the targets would ignore is refused, not dropped: torch:cpu always runs eagerly
    assert_user_error(cli(capsys, "compile", MLP, "-o", tmp_path / "b", "--targets", "torch:cpu",
                          "--option", "torch.compile=true"),
                      "torch option compile changes only torch:cuda", "torch:cpu always runs eagerly")
    assert not (tmp_path / "b").exists()
