"""benchmarks/gpu_check.py, the one-run GPU check, on a machine without a GPU: argument handling,
the report's format, every GPU part skipped with its reason, a crashing part reported as failed
while the run goes on, and the pytest summary it reads. The GPU is hidden in-process, so on a GPU
machine these tests still check the same things quickly (scripts/gpu_check.sh is the real run)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
from capacity_model import capacity_setup  # noqa: E402


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _report(path) -> dict:
    return json.loads(Path(path).read_text())


def test_without_a_gpu_every_gpu_part_is_skipped_with_its_reason(tmp_path, no_gpu):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--out", str(out), "--budget", "60"]) == 0
    report = _report(out)
    assert report["schema"] == gpu_check.SCHEMA and report["failed"] == []
    assert list(report["parts"]) == list(gpu_check.PARTS)
    env = report["parts"]["environment"]
    assert env["status"] == "info" and env["torch"] == torch.__version__
    # every GPU target hetcc knows is listed, with why it is not usable here
    assert {"torch:cuda", "tensorrt:cuda", "onnxruntime:cuda", "migraphx:rocm"} <= set(env["targets"])
    assert all(env["targets"][t] for t in ("torch:cuda", "tensorrt:cuda", "onnxruntime:cuda"))
    for part in gpu_check.PARTS[1:]:
        result = report["parts"][part]
        assert result["status"] == "skip" and result["reason"].startswith("no GPU: "), (part, result)
        assert isinstance(result["seconds"], float)


def test_an_existing_report_is_kept_unless_overwrite_is_given(tmp_path, no_gpu, capsys):
    out = tmp_path / "report.json"
    out.write_text("mine")
    assert gpu_check.main(["--out", str(out), "--parts", "environment"]) == gpu_check.EXIT_USAGE
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert gpu_check.main(["--out", str(out), "--parts", "environment", "--overwrite"]) == 0
    assert list(_report(out)["parts"]) == ["environment"]


@pytest.mark.parametrize("argv, says", [
    (["--parts", "capacity,speed"], "unknown speed; choose from environment"),
    (["--parts", ","], "unknown (none given)"),
    (["--budget", "0"], "--budget and --scale must be positive"),
    (["--scale", "-1"], "--budget and --scale must be positive"),
])
def test_bad_arguments_say_what_is_wrong(tmp_path, capsys, argv, says):
    assert gpu_check.main(["--out", str(tmp_path / "r.json"), *argv]) == gpu_check.EXIT_USAGE
    assert says in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_crashing_part_fails_the_run_and_the_others_still_run(tmp_path, no_gpu, monkeypatch):
    def broken(args, deadline):
        raise RuntimeError("the handover check broke")

    monkeypatch.setitem(gpu_check.RUNNERS, "handover", broken)
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out), "--parts", "handover,capacity"]) == gpu_check.EXIT_FAILED
    report = _report(out)
    assert report["failed"] == ["handover"]
    assert report["parts"]["handover"]["reason"] == "RuntimeError: the handover check broke"
    assert "Traceback" in report["parts"]["handover"]["traceback"]
    assert report["parts"]["capacity"]["status"] == "skip"


def test_a_command_past_the_deadline_is_out_of_time(monkeypatch):
    import time

    with pytest.raises(gpu_check.Skip, match="out of time"):
        gpu_check._run([sys.executable, "-c", "pass"], time.monotonic() + gpu_check.MIN_LEFT - 1)
    monkeypatch.setattr(gpu_check, "MIN_LEFT", 0.5)
    with pytest.raises(gpu_check.Skip, match="out of time after 2 s"):
        gpu_check._run([sys.executable, "-c", "import time; time.sleep(30)"], time.monotonic() + 2)


def test_the_gpu_test_run_is_read_from_pytests_junit_file(tmp_path):
    (tmp_path / "t.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'numbers differ'\n"
        "@pytest.mark.skip(reason='needs TensorRT')\n"
        "def test_skipped(): pass\n")
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    str(tmp_path / "t.py")], capture_output=True, cwd=tmp_path)
    counts, failures, skips = gpu_check._junit(xml)
    assert counts == {"passed": 1, "failed": 1, "skipped": 1}
    assert failures[0]["test"].endswith("test_bad") and "numbers differ" in failures[0]["message"]
    assert skips[0]["reason"].endswith("needs TensorRT")
    assert gpu_check._junit(tmp_path / "missing.xml") == ({}, [], [])


def test_the_capacity_model_cannot_fit_its_gpu_budget_but_its_layers_can():
    model, ids, budget, shape = capacity_setup(0.02)
    table = model.embed.weight
    assert shape["table_bytes"] == table.numel() * table.element_size() > budget
    assert budget >= 1.5 * shape["layer_bytes"]
    assert ids.max() < shape["vocab"] and model(ids).shape == (*ids.shape, shape["dim"])


def test_a_conformance_run_past_its_time_keeps_what_finished_and_is_no_pass(tmp_path, monkeypatch):
    from hetcc.measure.conformance import SCHEMA

    monkeypatch.setattr(gpu_check, "need_gpu", lambda: None)
    monkeypatch.setattr(gpu_check, "usable", lambda: ["torch:cuda"])

    def slow(command, deadline):  # one case finished and wrote its report, then time ran out
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "linear--torch_cuda.json").write_text(json.dumps(
            {"schema": SCHEMA, "case": "linear", "target": "torch:cuda", "status": "native"}))
        raise gpu_check.Skip("out of time after 100 s: conformance")

    monkeypatch.setattr(gpu_check, "_run", slow)
    args = gpu_check.parse_args(["--out", str(tmp_path / "r.json"), "--parts", "conformance"])
    args.scratch = str(tmp_path)
    result = gpu_check.run_conformance(args, 0)
    assert result["status"] == "skip" and "1 case(s) finished" in result["reason"]
    assert result["targets"]["torch:cuda"]["statuses"] == {"native": 1}
