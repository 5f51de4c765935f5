"""The conformance machinery itself: that it catches what it is for (a wrong result, a raw crash,
a pinned backend that starts falling back), that errors are recorded rather than raised, the
coverage table, and the `hetcc conformance` command."""
import json

import pytest
import torch
from torch import nn

from hetcc.backends.onnxruntime_backend import OnnxRuntimeBackend
from hetcc.backends.torch_backend import TorchBackend
from hetcc.cli import main
from hetcc.errors import HetccError
from hetcc.measure.conformance import (
    Built,
    Case,
    all_cases,
    compare_outputs,
    conformance_target,
    coverage_markdown,
    failed,
    read_reports,
    run_case,
    select_cases,
    write_report,
)

OPS = {c.name: c for c in all_cases() if c.kind == "op"}


class WrongOffExample(TorchBackend):
    """Right on the example batch (4), so compile's verification passes; off by 0.01 elsewhere."""

    name = "wrongoff"

    def load(self, artifact, target):
        run = super().load(artifact, target)

        def call(*xs):
            ys = run(*xs)
            return ys if xs[0].shape[0] == 4 else tuple(y + 1e-2 for y in ys)
        return call


class RaisesInSupports(TorchBackend):
    """A plugin with a bug: a raw KeyError escapes hetcc.compile."""

    name = "raises"

    def supports(self, node, target):
        raise KeyError("no such op table entry")


@pytest.fixture
def plugins(monkeypatch):
    from hetcc.backends import registry

    monkeypatch.setitem(registry._REGISTERED, "wrongoff", WrongOffExample)
    monkeypatch.setitem(registry._REGISTERED, "raises", RaisesInSupports)
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()
    yield
    monkeypatch.undo()  # before the caches are cleared again, so they forget the plugins
    registry.installed.cache_clear()
    registry.get_backend.cache_clear()


def test_a_result_wrong_only_off_the_example_batch_is_caught(plugins, tmp_path):
    report = run_case(OPS["dynamic_batch"], "wrongoff:cpu", workdir=tmp_path)
    assert report["status"] == "wrong" and failed(report)
    assert "differs from eager PyTorch" in report["error"]["message"]
    assert report["max_error"] == pytest.approx(1e-2, rel=1e-3)
    assert report["native"] and report["expected"] is None  # not pinned: no regression, still failed
    assert report["checked_inputs"] == [["float32[4, 16]"], ["float32[1, 16]"], ["float32[7, 16]"]]


def test_a_raw_exception_is_a_crash_with_its_traceback(plugins, tmp_path):
    report = run_case(OPS["relu"], "raises:cpu", workdir=tmp_path)
    assert report["status"] == "crash" and failed(report)
    assert report["error"]["type"] == "KeyError" and report["error"]["stage"] == "compile"
    assert "supports" in report["error"]["traceback"]


def test_a_clear_hetcc_error_is_recorded_not_raised(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x + 1 if x.sum() > 0 else x - 1  # data-dependent: torch.export refuses

    case = Case("branchy", "op", "data-dependent branch", lambda: Built(Branchy(), (torch.randn(3),)))
    report = run_case(case, "onnxruntime:cpu", workdir=tmp_path)
    assert report["status"] == "error" and report["error"]["type"] == "ExportError"
    assert "data-dependent" in report["error"]["message"]
    # an error is an outcome, but on a pinned target a case expected native has regressed
    assert report["expected"] == "native" and report["regression"] and failed(report)


def test_a_pinned_backend_that_falls_back_on_matmul_is_caught(monkeypatch, tmp_path):
    original = OnnxRuntimeBackend.supports

    def no_gemm(self, node, target):
        if "addmm" in str(node.target):
            from hetcc.backends.base import Support
            return Support(False, "pretend the exporter lost addmm")
        return original(self, node, target)

    monkeypatch.setattr(OnnxRuntimeBackend, "supports", no_gemm)
    report = run_case(OPS["linear"], "onnxruntime:cpu", workdir=tmp_path)
    assert report["status"] == "fallback" and report["regression"] and failed(report)
    assert "torch:cpu" in report["targets_used"]
    assert any("pretend the exporter lost addmm" in why for why in report["fallback_reasons"])


def test_known_fallback_is_expected_and_names_its_reason(tmp_path):
    report = run_case(OPS["bfloat16"], "openvino:cpu", workdir=tmp_path)
    assert report["status"] == "fallback" and report["expected"] == "fallback"
    assert not report["regression"] and not failed(report)
    assert report["targets_used"] == ["torch:cpu"]
    assert all("bfloat16" in why for why in report["fallback_reasons"])
    assert report["tolerance"] == {"bfloat16": [2e-2, 2e-2]}


def test_compare_outputs_uses_verify_tolerances():
    x = torch.ones(3)
    assert compare_outputs((x + 5e-5,), (x,))[1] is None  # inside fp32's 1e-4
    error, problem, used = compare_outputs((x + 1e-3,), (x,))
    assert error == pytest.approx(1e-3, rel=1e-3) and "3 of 3 elements off" in problem
    assert used == {"float32": [1e-4, 1e-4]}
    assert compare_outputs((x.half() + 5e-3,), (x.half(),))[1] is None  # fp16: 1e-2
    assert compare_outputs(torch.tensor([float("nan")]), torch.tensor([float("nan")]))[1] is None
    assert "eager gives" in compare_outputs(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))[1]
    assert "1 of 2 elements" in compare_outputs(torch.tensor([1, 3]), torch.tensor([1, 2]))[1]
    assert "structure" in compare_outputs((x, x), (x,))[1]


def test_targets_and_case_selection():
    assert conformance_target("tensorrt:cuda") == "tensorrt:cuda:0"
    assert conformance_target("migraphx:rocm") == "migraphx:rocm:0"
    assert conformance_target("openvino:cpu") == "openvino:cpu"
    cases = all_cases()
    assert [c.name for c in select_cases(cases, ["sdpa", "linear"])] == ["sdpa", "linear"]
    assert {c.kind for c in select_cases(cases, ["model"])} == {"model"}
    with pytest.raises(HetccError, match="no conformance case 'nosuch'.*linear"):
        select_cases(cases, ["nosuch"])
    with pytest.raises(HetccError, match="holds no hetcc examples"):
        all_cases("/nonexistent")


def test_coverage_table_from_reports(tmp_path):
    for case, target in (("relu", "torch:cpu"), ("relu", "onnxruntime:cpu"), ("bfloat16", "onnxruntime:cpu")):
        write_report(run_case(OPS[case], target, workdir=tmp_path / "work"), tmp_path / "reports")
    (tmp_path / "reports" / "other.json").write_text("{}")  # not a report: ignored
    table = coverage_markdown(read_reports(tmp_path / "reports"))
    lines = table.splitlines()
    assert lines[0] == "| case | `onnxruntime:cpu` | `torch:cpu` |"
    assert lines[2] == "| relu (op) | native 0.0e+00 | native 0.0e+00 |"  # the suite's order
    assert lines[3].startswith("| bfloat16 (op) | fallback (") and lines[3].endswith("| - |")
    assert lines[4] == "| **total** | 1/2 native | 1/1 native |"
    with pytest.raises(HetccError, match="holds no conformance reports"):
        read_reports(tmp_path / "work")


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_runs_writes_and_shows_reports(tmp_path, capsys):
    out_dir = tmp_path / "reports"
    code, out, err = cli(capsys, "conformance", "--targets", "torch:cpu", "--cases", "relu,embedding",
                         "--out", out_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [(r["case"], r["status"]) for r in result["reports"]] == [("relu", "native"), ("embedding", "native")]
    assert result["failed"] == [] and "relu on torch:cpu: native" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["coverage.md", "embedding--torch-cpu.json",
                                                          "relu--torch-cpu.json"]
    code, out, _ = cli(capsys, "conformance", "--from", out_dir, "--markdown")
    assert code == 0 and out == (out_dir / "coverage.md").read_text()
    code, out, _ = cli(capsys, "conformance", "--from", out_dir)
    assert code == 0 and "2 of 2 (case, target) pairs native" in out


def test_cli_exit_4_on_a_wrong_result(plugins, capsys):
    code, out, err = cli(capsys, "conformance", "--targets", "wrongoff:cpu", "--cases", "dynamic_batch")
    assert code == 4
    assert "WRONG" in out and "conformance failed: dynamic_batch on wrongoff:cpu" in err


@pytest.mark.parametrize("argv, message", [
    (["--cases", "nosuch"], "no conformance case 'nosuch'"),
    (["--targets", "nosuch:cpu"], "unknown backend 'nosuch'"),
    (["--examples", "/nonexistent"], "holds no hetcc examples"),
    (["--from", "/nonexistent"], "not a directory of conformance reports"),
    (["--from", ".", "--targets", "torch:cpu"], "--from shows reports as they were written"),
])
def test_cli_user_errors(argv, message, capsys):
    code, out, err = cli(capsys, "conformance", *argv)
    assert code == 1 and out == ""
    assert err.startswith("hetcc: error: ") and message in err and "Traceback" not in err


def test_cli_lists_cases(capsys):
    code, out, _ = cli(capsys, "conformance", "--list")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names[:2] == ["linear", "matmul"] and "gpt" in names and "dynamic_batch" in names
