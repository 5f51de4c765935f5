"""The conformance suite: every case in hetcc.measure.conformance on every target usable here, one
JSON report each (docs/conformance.md). A case fails on a wrong result, on a crash that is not a
clear hetcc error, or when a case pinned as native on a CPU target (KNOWN_FALLBACKS) no longer is.

The CPU targets (torch, ONNX Runtime, OpenVINO) are test dependencies: they run here and on CI and
are never skipped. GPU targets join by themselves wherever their backend says it is usable.

Reports go to $HETCC_CONFORMANCE_DIR, else a temporary directory. With the variable set, each test
process also rewrites coverage.md there at its end (a markdown table of every report in the
directory), under a lock, so the last xdist worker to finish sees them all. (No conftest.py here:
it would shadow tests/conftest.py, which other test modules import as `conftest`.)"""
import fcntl
import os
import warnings
from pathlib import Path

import pytest

from hetcc.backends.registry import get_backend, installed
from hetcc.measure.conformance import (
    GPU_DEVICES,
    PINNED_TARGETS,
    all_cases,
    conformance_target,
    conformance_targets,
    coverage_markdown,
    failed,
    read_reports,
    run_case,
    write_report,
)
from hetcc.target import Target

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGETS = conformance_targets()
CASES = all_cases(EXAMPLES)


@pytest.fixture(scope="session")
def reports_dir(tmp_path_factory):
    if not os.environ.get("HETCC_CONFORMANCE_DIR"):
        yield tmp_path_factory.mktemp("conformance")
        return
    path = Path(os.environ["HETCC_CONFORMANCE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    yield path
    with open(path / ".coverage.lock", "w") as lock:  # xdist workers finish at about the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        (path / "coverage.md").write_text(coverage_markdown(read_reports(path)), encoding="utf-8")


def _target_param(target: str):
    gpu = Target.parse(target).device != "cpu"
    return pytest.param(target, id=target, marks=[pytest.mark.gpu] if gpu else [])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("target", [_target_param(t) for t in TARGETS])
def test_case(target, case, reports_dir, tmp_path):
    report = run_case(case, target, workdir=tmp_path)
    path = write_report(report, reports_dir)
    why = (report["error"] or {}).get("message") or report["fallback_reasons"] or report["notes"]
    assert not failed(report), f"{case.name} on {target}: {report['status']}: {why} (report: {path})"
    if report["expected"] == "fallback" and report["status"] == "native":
        warnings.warn(f"{case.name} on {target} runs natively now: remove it from KNOWN_FALLBACKS")
    if report["status"] in ("native", "fallback"):  # it ran: the report says how it was checked
        assert report["max_error"] is not None and report["tolerance"]
        assert report["segments"] >= 1 and report["lower_seconds"] > 0
        assert report["native"] == (report["targets_used"] == [target])


def test_every_pinned_cpu_target_is_covered_here():
    # ONNX Runtime, OpenVINO and IREE are test dependencies; a broken install must not silently shrink
    # the suite to torch:cpu.
    assert set(PINNED_TARGETS) <= set(TARGETS), f"usable here: {TARGETS}"
    assert {c.kind for c in CASES} == {"op", "model"}


def _gpu_targets():
    """(backend, device) for each installed backend's non-CPU devices: each is a GPU target that
    conformance runs on index 0 where usable."""
    found = []
    for name in sorted(installed()):
        try:
            devices = get_backend(name).devices
        except Exception:  # noqa: BLE001 - a broken plugin is `hetcc targets`' business, not ours
            continue
        found += [f"{name}:{d}" for d in devices if d != "cpu"]
    return found or [pytest.param(None, marks=pytest.mark.skip(
        reason="no installed backend drives a GPU here (tensorrt, migraphx, torch:cuda): GPU "
               "conformance runs where one is installed and usable"))]


@pytest.mark.gpu
@pytest.mark.parametrize("target", _gpu_targets())
def test_gpu_target_is_in_the_suite_when_usable(target):
    t = Target.parse(target)
    backend = get_backend(t.backend)
    if not backend.is_available(t):
        pytest.skip(f"{target} is not usable here: {backend.why_unavailable(t)}")
    runs_as = conformance_target(target)
    assert runs_as in TARGETS
    assert Target.parse(runs_as).index == ("0" if t.device in GPU_DEVICES else None)
