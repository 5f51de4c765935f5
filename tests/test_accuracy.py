"""Predicted against measured (hetcc.measure.accuracy, benchmarks/bench_cost_model.py): the
statistics, and the points the benchmark collects from a compiled model. Structure only: no timing
thresholds."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from hetcc.cost_model.devices import DeviceSpec, _cpu_key
from hetcc.cost_model.profiles import DEFAULT_PROFILES, profile_to_json
from hetcc.passes.build_problem import HANDOFF_LATENCY
from torch import nn

import hetcc
from hetcc.errors import HetccError
from hetcc.measure import accuracy
from hetcc.measure.accuracy import END_TO_END, SEGMENT, Point

ROOT = Path(__file__).resolve().parents[1]
DEVICE = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=8e9,
                    source="hand-written for a test")


def _point(predicted, measured, target="torch:cpu", kind=SEGMENT, p50=None):
    return Point("m", target, target, kind, "seg0" if kind == SEGMENT else "", predicted, measured,
                 p50 if p50 is not None else measured * 1.1, "compute", "matmul", 1)


def test_ape_is_relative_to_the_measured_time():
    assert accuracy.ape(1.5, 1.0) == pytest.approx(0.5)
    assert accuracy.ape(0.5, 1.0) == pytest.approx(0.5)
    assert accuracy.ape(2e-6, 2e-6) == 0.0
    with pytest.raises(HetccError, match="positive"):
        accuracy.ape(1.0, 0.0)


def test_spearman_ranks_not_values():
    assert accuracy.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert accuracy.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert accuracy.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(accuracy.spearman([1, 2], [1, 2]))  # too few to rank
    assert math.isnan(accuracy.spearman([1, 2, 3], [5, 5, 5]))  # nothing to rank
    with pytest.raises(HetccError, match="pairs"):
        accuracy.spearman([1, 2, 3], [1, 2])


def test_summaries_per_group_and_against_the_median():
    points = [_point(2.0, 1.0), _point(1.0, 1.0), _point(3.0, 4.0),
              _point(1.0, 2.0, target="onnxruntime:cpu", p50=4.0)]
    s = accuracy.summarize(points)
    assert s["count"] == 4
    assert s["median_ape"] == pytest.approx(0.375)  # APEs 1.0, 0.0, 0.25, 0.5
    assert s["median_ratio"] == pytest.approx(0.875)  # ratios 2, 1, 0.75, 0.5
    assert s["spearman"] == pytest.approx(accuracy.spearman([2, 1, 3, 1], [1, 1, 4, 2]))
    groups = accuracy.summaries(points, "target")
    assert set(groups) == {"torch:cpu", "onnxruntime:cpu"}
    assert groups["torch:cpu"]["count"] == 3 and groups["onnxruntime:cpu"]["median_ape"] == 0.5
    assert accuracy.summaries(points, "target", "measured_p50")["onnxruntime:cpu"]["median_ape"] == 0.75
    assert accuracy.summarize([])["count"] == 0


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_collect_gives_one_point_per_segment_and_one_end_to_end():
    torch.manual_seed(0)
    model, inputs = _Two().eval(), (torch.randn(4, 16),)
    profiles = {b: DEFAULT_PROFILES[b] for b in ("torch", "onnxruntime")}
    devices = {t: DEVICE for t in ("torch:cpu", "onnxruntime:cpu")}
    options = {"measure": False, "profiles": profiles, "devices": devices}
    plans = {"torch:cpu": hetcc.compile(model, inputs, targets=["torch:cpu"], **options),
             "split": hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"],
                                    pins={"a": "torch:cpu", "b": "onnxruntime:cpu"}, **options)}
    split = plans["split"].plan
    assert [s.target for s in split.segments] == ["torch:cpu", "onnxruntime:cpu"]

    points = accuracy.collect("two", plans, inputs, profiles, devices, runs=5)
    assert [(p.plan, p.kind, p.segment) for p in points] == [
        ("torch:cpu", SEGMENT, "seg0"), ("torch:cpu", END_TO_END, ""),
        ("split", SEGMENT, "seg0"), ("split", SEGMENT, "seg1"), ("split", END_TO_END, "")]
    for p, seg in zip(points[2:4], split.segments):
        # a segment's prediction is its nodes plus entering it once: call overhead and hand-overs
        entry = profiles[seg.target.split(":")[0]].call_overhead + HANDOFF_LATENCY * len(seg.inputs)
        assert p.predicted == pytest.approx(seg.predicted_seconds + entry)
        assert p.target == seg.target and p.nodes == len(seg.nodes)
    whole = points[-1]
    assert whole.predicted == split.predicted_seconds and whole.target == "mixed"
    assert whole.segments_predicted == pytest.approx(points[2].predicted + points[3].predicted)
    assert whole.segments_measured == pytest.approx(points[2].measured + points[3].measured)
    assert points[1].target == "torch:cpu" and points[0].segments_predicted is None
    for p in points:
        assert 0 < p.measured <= p.measured_p50 and p.regime in accuracy.REGIMES
        assert p.to_dict()["ape"] == pytest.approx(p.ape)

    parts = accuracy.breakdown(plans["split"], profiles, devices)
    for seg in split.segments:
        b = parts[seg.name]
        assert sum(b["parts"].values()) == pytest.approx(seg.predicted_seconds + b["entry"])
        assert set(b["classes"]) <= {"matmul", "elementwise"}

    # the profiles given must be the ones compiled with, or the points would compare the wrong model
    slow = {**profiles, "torch": DEFAULT_PROFILES["openvino"]}
    with pytest.raises(HetccError, match="profiles"):
        accuracy.collect("two", plans, inputs, slow, devices, runs=5)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_cost_model", ROOT / "benchmarks" / "bench_cost_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_json_with_a_given_profile(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(profile_to_json(_cpu_key(), DEVICE, {"torch": DEFAULT_PROFILES["torch"]},
                                                  {"torch:cpu": {}})))
    out = tmp_path / "out.json"
    bench = _bench_module()
    assert bench.main(["--models", "tiny", "--targets", "torch:cpu", "--runs", "5", "--profile", str(profile),
                       "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert str(profile) in doc["profile"]
    assert [(p["model"], p["kind"]) for p in doc["points"]] == [("tiny", SEGMENT), ("tiny", END_TO_END)]
    assert doc["overall"]["all"]["fast end (p10)"]["count"] == 2
    assert set(doc["by_target"]["fast end (p10)"]) == {"torch:cpu"}
    assert doc["machine"]["cores"] >= 1 and doc["runs"] == 5
    assert {"load_before", "load_after", "median_p50_over_p10"} <= set(doc["quiet"])
    assert doc["skipped"] == [] and doc["hetcc_own_per_call_s"] is not None
    assert isinstance(doc["objective_surplus"], list)
    with pytest.raises(SystemExit):
        bench.main(["--models", "no-such-model"])
    with pytest.raises(SystemExit):
        bench.main(["--models", "tiny", "--profile", str(tmp_path / "missing.json")])
