"""Golden tests on the compiler's output: for each example and a FIXED cost model (explicit profiles
and devices, no measuring), the plan -- each segment's target, node names, the modules it runs and
its runner-up target, and the solver's objective -- must match the snapshot in tests/snapshots/. A plan changes only on purpose: when a
change to capture, the passes, the cost model or the solver is meant to move it, rerun with
HETCC_UPDATE_SNAPSHOTS=1 and commit the new snapshots with the change (the diff is the review).

The profiles here are copies, not hetcc's DEFAULT_PROFILES, so that recalibrating the defaults
does not move these plans, and the device is a fixed spec, not this machine's measured CPU."""
import difflib
import importlib
import json
import os
from pathlib import Path

import pytest

import hetcc
from conftest import CPU_TARGETS
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import BackendProfile

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
UPDATE = os.environ.get("HETCC_UPDATE_SNAPSHOTS") == "1"

CPU = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=16e9,
                 source="fixed for plan snapshots (a 2-core server CPU's order of magnitude)")
DEVICES = {t: CPU for t in CPU_TARGETS}
TORCH = BackendProfile("torch", {"matmul": 0.80, "conv": 0.95, "attention": 0.78, "elementwise": 0.59,
                                 "norm": 0.82, "data": 2.2, "default": 0.59},
                       per_node=4e-6, call_overhead=13e-6)
PROFILES = {
    # hetcc's calibrated defaults as of this file: every example stays on one runtime.
    "calibrated": {
        "torch": TORCH,
        "onnxruntime": BackendProfile("onnxruntime", {"matmul": 1.04, "conv": 1.01, "attention": 0.85,
                                                      "elementwise": 2.2, "norm": 1.08, "data": 2.5,
                                                      "default": 1.0}, per_node=1.5e-6, call_overhead=24e-6),
        "openvino": BackendProfile("openvino", {"matmul": 1.04, "conv": 0.76, "attention": 0.68,
                                                "elementwise": 0.63, "norm": 0.67, "data": 0.73,
                                                "default": 0.63}, per_node=1e-6, call_overhead=185e-6),
    },
    # OpenVINO 3x faster on GEMMs, ONNX Runtime 5x faster on everything else, cheap calls: the
    # plans cut the graph, so the snapshots cover real segment boundaries.
    "split": {
        "torch": TORCH,
        "openvino": BackendProfile("openvino", {"matmul": 1.0, "default": 0.2}, 1e-6, 20e-6),
        "onnxruntime": BackendProfile("onnxruntime", {"matmul": 0.3, "default": 1.0}, 1e-6, 20e-6),
    },
}
CASES = [(name, "calibrated") for name in ("mlp", "cnn", "encoder", "gpt", "mixed")] + [
    ("mlp", "split"), ("encoder", "split")]


def plan_snapshot(example: str, profile: str) -> dict:
    model, inputs = importlib.import_module(example).build()
    compiled = hetcc.compile(model, inputs, targets=CPU_TARGETS, profiles=PROFILES[profile],
                             devices=DEVICES, measure=False)
    plan = compiled.plan
    return {
        "example": example, "profile": profile, "targets": list(plan.targets),
        "objective_ms": float(f"{plan.predicted_seconds * 1e3:.4g}"),
        "targets_used": plan.targets_used(),
        "segments": [{"target": s.target, "modules": list(s.modules), "runner_up": s.runner_up,
                      "nodes": sorted(s.nodes)} for s in plan.segments],
    }


@pytest.mark.parametrize(("example", "profile"), CASES, ids=[f"{e}-{p}" for e, p in CASES])
def test_plan_matches_snapshot(example, profile):
    got = plan_snapshot(example, profile)
    path = SNAPSHOTS / f"{example}-{profile}.json"
    text = json.dumps(got, indent=1) + "\n"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"no snapshot {path.relative_to(SNAPSHOTS.parent.parent)}; create it with "
                    f"HETCC_UPDATE_SNAPSHOTS=1 python -m pytest {Path(__file__).name} and commit it")
    want = path.read_text()
    if want != text:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            f"{path.name} (committed)", f"{path.name} (now)", n=2))
        pytest.fail(f"the plan for {example} with the {profile!r} profile changed:\n{diff}\n"
                    "If this change is intended, update the snapshots on purpose:\n"
                    "  HETCC_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_plan_snapshots.py\n"
                    "and commit tests/snapshots/ with the change that moved the plan.", pytrace=False)


def test_split_profile_cuts_a_graph_across_runtimes():
    # Guards the snapshots' purpose: at least one of them must hold a real cut between runtimes.
    cut = [json.loads((SNAPSHOTS / f"{e}-{p}.json").read_text()) for e, p in CASES if p == "split"]
    assert any(len(s["targets_used"]) > 1 for s in cut)
