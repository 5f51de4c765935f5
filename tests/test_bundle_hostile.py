"""A bundle from a stranger: files that are not plain files, sizes and names that lie, saves that
race with other writers or die half-way, call-time failures, NaN handling and the small input
checks around them (issue 12). The torch-archive attacks are in test_torch_archive.py; state
updates in test_mutation.py."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hetcc
from hetcc import bundle
from hetcc.cli import main
from hetcc.errors import BundleError, HetccError, SegmentError, TargetError

ROOT = Path(__file__).resolve().parents[1]


class Embed(nn.Module):
    """Token ids through an embedding and a linear layer: an id past the table is an error each
    runtime reports its own way."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(32, 16)
        self.lin = nn.Linear(16, 8)

    def forward(self, ids):
        return torch.relu(self.lin(self.table(ids)))


@pytest.fixture(scope="module")
def compiled():
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (2, 5))
    cm = hetcc.compile(Embed().eval(), (ids,), targets=["onnxruntime:cpu"], measure=False)
    assert cm.plan.targets_used() == ["onnxruntime:cpu"]
    return cm, ids


@pytest.fixture
def saved(compiled, tmp_path) -> Path:
    return compiled[0].save(tmp_path / "b")


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def _load_within(path: Path, seconds: float = 60):
    """hetcc.load in a thread: a FIFO or a device file must not hang it."""
    box = {}

    def run():
        try:
            box["value"] = hetcc.load(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hetcc.load({path}) hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---- files that are not what they claim ----

def test_report_that_is_a_fifo_does_not_hang_load_or_explain(saved, compiled, capsys):
    (saved / "report.json").unlink()
    os.mkfifo(saved / "report.json")
    cm = _load_within(saved)
    torch.testing.assert_close(cm(compiled[1]), compiled[0](compiled[1]))
    assert main(["explain", str(saved)]) == 0
    assert "not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom"])
def test_report_linked_to_a_device_is_not_read(saved, target, caplog):
    (saved / "report.json").unlink()
    (saved / "report.json").symlink_to(target)
    cm = _load_within(saved)
    assert cm.plan.segments and "symbolic link" in caplog.text


def test_report_nested_too_deeply_is_a_warning_not_a_crash(saved, caplog):
    (saved / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    cm = _load_within(saved)
    assert cm.plan.segments and "nested too deeply" in caplog.text


def test_report_larger_than_the_limit_is_not_read(saved, caplog, monkeypatch):
    report = json.loads((saved / "report.json").read_text())
    report["notes"] = ["x" * 200_000]
    (saved / "report.json").write_text(json.dumps(report))
    monkeypatch.setattr(bundle.read_json, "__defaults__", (100_000,))
    _load_within(saved)
    assert "more than the 100000" in caplog.text


def test_manifest_nested_too_deeply_is_refused(saved):
    manifest = _manifest(saved)
    deep = {}
    for _ in range(80):
        deep = {"x": deep}
    manifest["extra"] = deep
    _write_manifest(saved, manifest)
    with pytest.raises(BundleError, match="nested more than 64"):
        hetcc.load(saved)


def test_manifest_that_is_a_symbolic_link_is_refused(saved, tmp_path):
    real = tmp_path / "elsewhere.json"
    (saved / "manifest.json").rename(real)
    (saved / "manifest.json").symlink_to(real)
    with pytest.raises(BundleError, match="symbolic link"):
        hetcc.load(saved)


@pytest.mark.parametrize("count", [1e999, "lots", -1, True, None])
def test_byte_counts_must_be_counts(saved, count):
    manifest = _manifest(saved)
    entry = next(iter(manifest["segments"][0]["files"].values()))
    entry["bytes"] = count
    (saved / "manifest.json").write_text(json.dumps(manifest).replace("Infinity", "1e999"))
    with pytest.raises(BundleError, match="no valid byte count"):
        hetcc.load(saved)


@pytest.mark.parametrize("name", ["../escape", "/abs", "..", ".hidden", "a/b", "x" * 200, ""])
def test_segment_names_that_are_not_plain_names_are_refused_on_load(saved, name):
    manifest = _manifest(saved)
    manifest["segments"][0]["name"] = name
    _write_manifest(saved, manifest)
    with pytest.raises(BundleError, match="segment 0 name"):
        hetcc.load(saved)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped-abs"])
def test_resaving_never_writes_outside_the_destination(saved, tmp_path, name):
    cm = hetcc.load(saved)
    cm.runtime.steps[0].name = name
    cm.artifacts[name] = cm.artifacts.pop(cm.plan.segments[0].name)
    with pytest.raises(BundleError, match="cannot be a file name"):
        cm.save(tmp_path / "deep" / "again")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not (tmp_path / "deep").exists()


def test_explain_shows_escape_codes_as_text(saved, capsys):
    report = json.loads((saved / "report.json").read_text())
    report["notes"] = ["\x1b[2J\x1b]0;owned\x07 cleared your screen"]
    report["segments"][0]["fell_back"] = {"node\x1b[31m": "why\x9b"}
    (saved / "report.json").write_text(json.dumps(report))
    assert main(["explain", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1b[2J" in out


# ---- saving ----

def test_saved_bundle_has_ordinary_permissions(compiled, tmp_path):
    path = compiled[0].save(tmp_path / "b")
    mask = bundle.umask()
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((path / "manifest.json").stat().st_mode) == 0o666 & ~mask


def _race(monkeypatch, during):
    """Run ``during()`` after the bundle is written and before it is moved into place."""
    real_write = bundle._write

    def racing_write(cm, staging):
        real_write(cm, staging)
        during()

    monkeypatch.setattr(bundle, "_write", racing_write)


def test_a_folder_created_during_the_save_is_not_replaced(compiled, tmp_path, monkeypatch):
    dest = tmp_path / "b"

    def someone_else():
        dest.mkdir()
        (dest / "someone-elses.txt").write_text("keep me")

    _race(monkeypatch, someone_else)
    with pytest.raises(BundleError, match="changed while the bundle was being saved|not empty"):
        compiled[0].save(dest)
    assert (dest / "someone-elses.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging left


def test_an_empty_folder_created_during_the_save_is_fine(compiled, tmp_path, monkeypatch):
    dest = tmp_path / "b"
    _race(monkeypatch, dest.mkdir)
    compiled[0].save(dest)
    assert (dest / "manifest.json").is_file()


def test_overwrite_keeps_what_replaced_the_bundle_during_the_save(compiled, tmp_path, monkeypatch):
    dest = compiled[0].save(tmp_path / "b")

    def replace_it():
        os.rename(dest, tmp_path / "moved")
        dest.mkdir()
        (dest / "thesis.tex").write_text("years of work")

    _race(monkeypatch, replace_it)
    with pytest.raises(BundleError, match="changed while the bundle was being saved"):
        compiled[0].save(dest, overwrite=True)
    assert (dest / "thesis.tex").read_text() == "years of work"


_KILLED_SAVE = """
import os, sys
import hetcc
from hetcc import bundle
where = sys.argv[3]
if where == "before-move":
    real = bundle._write
    def write(cm, staging):
        real(cm, staging)
        os._exit(9)
    bundle._write = write
else:
    real = bundle.exchange
    def exchange(a, b):
        done = real(a, b)
        os._exit(9)
    bundle.exchange = exchange
hetcc.load(sys.argv[1]).save(sys.argv[2], overwrite=True)
"""


@pytest.mark.parametrize("where", ["before-move", "after-swap"])
def test_a_save_killed_at_any_point_leaves_a_bundle(saved, tmp_path, compiled, where):
    dest = compiled[0].save(tmp_path / "dest")
    before = _manifest(dest)
    script = tmp_path / "kill.py"
    script.write_text(_KILLED_SAVE)
    done = subprocess.run([sys.executable, str(script), str(saved), str(dest), where], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    cm = hetcc.load(dest)  # old or new, it is a whole bundle
    torch.testing.assert_close(cm(compiled[1]), compiled[0](compiled[1]))
    if where == "before-move":
        assert _manifest(dest) == before


# ---- compile: interrupted, call-time failures, NaN, bad options ----

def test_interrupted_compile_leaves_no_scratch_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def interrupted(self, candidates, notes=None, why=""):
        raise KeyboardInterrupt

    monkeypatch.setattr("hetcc.compiler._Session.place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), measure=False)
    assert list(tmp_path.iterdir()) == []


def test_runtime_failure_at_call_time_names_the_segment_and_target(compiled):
    cm, ids = compiled
    bad = ids.clone()
    bad[0, 0] = 1000  # past the 32-row table
    with pytest.raises(SegmentError) as info:
        cm(bad)
    text = str(info.value)
    step = cm.runtime.steps[0]
    assert f"segment {step.name} on onnxruntime:cpu" in text and "during this call" in text
    assert "\n" not in text


def test_cli_run_reports_a_call_time_failure_as_a_user_error(saved, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", np.full((2, 5), 1000, dtype=np.int64))
    assert main(["run", str(saved), "--inputs", str(tmp_path / "in.npz")]) == 1
    err = capsys.readouterr().err
    assert "on onnxruntime:cpu failed during this call" in err and "bug in hetcc" not in err


class ReluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.lin(x)) * 2


def test_a_runtime_that_drops_nan_is_reported():
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    cm = hetcc.compile(ReluNet().eval(), (x,), targets=["openvino:cpu"], measure=False)
    assert cm.plan.targets_used() == ["openvino:cpu"]
    note = " ".join(cm.plan.notes)
    assert "does not propagate NaN" in note and "NaN turned into numbers" in note
    (differs,) = cm.verifications["seg0"].nan_differs
    assert "NaN turned into numbers" in differs and differs in note


def test_nan_require_moves_the_part_that_drops_nan():
    torch.manual_seed(0)
    model, x = ReluNet().eval(), torch.randn(4, 16)
    cm = hetcc.compile(model, (x,), targets=["openvino:cpu", "torch:cpu"], measure=False, nan="require")
    poisoned = x.clone()
    poisoned[1, 3] = float("nan")
    want = model(poisoned)
    got = cm(poisoned)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want).any()
    assert not any("does not propagate NaN" in n for n in cm.plan.notes)


def test_nan_policy_is_checked():
    with pytest.raises(HetccError, match="not a NaN policy"):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), nan="ignore")


@pytest.mark.parametrize("kwargs", [{"atol": float("inf")}, {"rtol": float("nan")}, {"atol": -1.0},
                                    {"rtol": "1e-3"}])
def test_tolerances_that_accept_anything_are_refused(kwargs):
    with pytest.raises(HetccError, match="finite number >= 0"):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), **kwargs)


@pytest.mark.parametrize("flag", [["--atol", "inf"], ["--rtol", "nan"], ["--atol", "-1"],
                                  ["--memory-limit", "torch:cpu=1e400"]])
def test_cli_refuses_values_that_are_not_finite(flag, capsys, tmp_path):
    assert main(["compile", f"{ROOT / 'examples' / 'mlp.py'}:build", "-o", str(tmp_path / "o"),
                 "--targets", "torch:cpu", *flag]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("finite number" in err or "not a size" in err)


def test_memory_limit_must_be_a_positive_number():
    with pytest.raises(TargetError, match="positive number of bytes"):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), memory_limits={"torch:cpu": float("inf")})


def test_options_for_a_backend_not_in_the_targets_are_refused():
    with pytest.raises(TargetError, match="'openvino', which no target uses"):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), targets=["torch:cpu"],
                      backend_options={"openvino": {"precision": "bf16"}})


@pytest.mark.parametrize("target", ["torch:cpu:7", "onnxruntime:cpu:0"])
def test_cpu_targets_take_no_index(target):
    with pytest.raises(TargetError, match="takes no index"):
        hetcc.compile(nn.Linear(4, 4), (torch.randn(2, 4),), targets=[target])


@pytest.mark.parametrize("which", ["state", "constants"])
def test_a_safetensors_file_that_is_not_one_is_a_bundle_error(tmp_path, which):
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("n", torch.zeros(()))
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            self.n.add_(1)
            return x + self.n, self.w  # w is returned as is: a bundle constant

    path = hetcc.compile(Counter(), (torch.ones(3),), measure=False).save(tmp_path / "b")
    file = path / f"{which}.safetensors"
    file.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}x")
    manifest = _manifest(path)
    import hashlib
    manifest[which].update(sha256=hashlib.sha256(file.read_bytes()).hexdigest(), bytes=file.stat().st_size)
    _write_manifest(path, manifest)
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        hetcc.load(path)


def test_cli_run_refuses_an_input_file_that_inflates_past_its_size(saved, tmp_path, capsys):
    import zipfile

    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:  # 1 GiB of zeros in ~1 MB
        with archive.open("ids.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False,
                                                     "shape": (2**27,)})
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
    assert main(["run", str(saved), "--inputs", str(bomb)]) == 1
    err = capsys.readouterr().err
    assert "refusing to inflate it" in err and "bug in hetcc" not in err
