"""The roofline's refinements (cost_model/roofline.py) and the calibration arithmetic that measures
them (hetcc/measure/calibrate.py profile_from): two memory levels, an efficiency per side and per
transcendental op, views that cost a dispatch, and calibration recovering a known profile exactly
from the times that profile predicts. No timing here."""
from dataclasses import replace

import pytest
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import DEFAULT_PROFILES, BackendProfile
from hetcc.cost_model.roofline import bandwidth, base_op, node_parts, node_seconds
from hetcc.measure import calibrate
from hetcc.passes.facts import NodeFacts

from hetcc.analysis import analyze

MiB = 2**20
PLAIN = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=8e9)
CACHED = replace(PLAIN, extra={"llc_bytes": 32 * MiB, "cache_bandwidth": 80e9})


def _facts(op="aten.add.Tensor", cls="elementwise", flops=0.0, nbytes=MiB):
    return NodeFacts("n", op, cls, flops, nbytes // 2, nbytes - nbytes // 2, 0)


def test_two_memory_levels_by_working_set():
    assert bandwidth(PLAIN, 1 * MiB) == 20e9  # no cache fields: one level, as before
    assert bandwidth(CACHED, 1 * MiB) == 80e9
    assert bandwidth(CACHED, 16 * MiB) == 80e9  # half the last-level cache still fits
    at_llc = bandwidth(CACHED, 32 * MiB)  # half of it does: harmonic blend of the two levels
    assert at_llc == pytest.approx(1 / (0.5 / 80e9 + 0.5 / 20e9))
    assert 20e9 < bandwidth(CACHED, 1024 * MiB) < bandwidth(CACHED, 64 * MiB) < at_llc


def test_efficiency_per_side_and_per_op():
    profile = BackendProfile("x", {"elementwise": 1.0, "elementwise:gelu": 0.05, "conv": 0.9,
                                   "conv:memory": 0.25, "default": 0.5}, per_node=1e-6, call_overhead=0.0)
    add = _facts(flops=MiB / 8)
    gelu = _facts("aten.gelu.default", flops=MiB)
    assert base_op(gelu) == "gelu" and base_op(_facts("getitem")) == "getitem"
    # an add is memory-bound; the same bytes through gelu are bound by gelu's own compute efficiency
    assert node_parts(add, PLAIN, profile) == pytest.approx((MiB / 8 / 100e9, MiB / 20e9))
    compute, memory = node_parts(gelu, PLAIN, profile)
    assert compute == pytest.approx(MiB / (100e9 * 0.05)) and compute > memory
    assert node_seconds(gelu, PLAIN, profile) == pytest.approx(compute + 1e-6)
    # a depthwise-like conv is memory-bound at its memory efficiency, not its compute one
    conv = _facts("aten.convolution.default", "conv", flops=MiB)
    assert node_parts(conv, PLAIN, profile)[1] == pytest.approx(MiB / (20e9 * 0.25))
    assert profile.eff("reduction", "memory") == 0.5  # unknown class: 'default' on both sides


def test_views_cost_their_dispatch_only_where_the_profile_says():
    view = NodeFacts("v", "aten.view.default", "view", 0.0, 0, 0, 0)
    assert node_seconds(view, PLAIN, DEFAULT_PROFILES["torch"]) == 0.0  # the defaults fold views
    assert node_seconds(view, PLAIN, replace(DEFAULT_PROFILES["torch"], per_view=3e-6)) == 3e-6
    assert node_parts(view, PLAIN, replace(DEFAULT_PROFILES["torch"], per_view=3e-6)) == (0.0, 0.0)


def test_calibration_recovers_the_profile_that_made_the_times():
    """Times made by a known profile (one case per efficiency, the chains for the dispatch costs)
    give that profile back: the calibration arithmetic is the roofline's inverse."""
    truth = BackendProfile("onnxruntime", {
        "matmul": 0.9, "matmul:memory": 0.6, "conv": 0.8, "conv:memory": 0.2, "elementwise": 1.5,
        "elementwise:gelu": 0.06, "elementwise:sigmoid": 0.08, "elementwise:tanh": 0.1,
        "elementwise:exp": 0.07, "norm": 0.4, "data": 0.7, "attention": 0.75},
        per_node=2e-6, call_overhead=30e-6, per_view=1e-6)
    measured = {}
    for case, (model, inputs) in calibrate.cases().items():
        facts = list(analyze(model.eval(), inputs).nodes)
        step = truth.call_overhead + sum(node_seconds(f, CACHED, truth) for f in facts)
        if case == "handoff":
            step += 5e-6  # wrapping the second input
        measured[case] = (step + 10e-6, step, facts)  # hetcc's own checks: 10 us on the whole call
    profile, timings = calibrate.profile_from("onnxruntime:cpu", measured, CACHED)
    assert profile.per_node == pytest.approx(truth.per_node, rel=1e-3)
    assert profile.per_view == pytest.approx(truth.per_view, rel=1e-3)
    assert profile.call_overhead == pytest.approx(truth.call_overhead, rel=1e-3)
    for key, value in truth.efficiency.items():
        assert profile.efficiency[key] == pytest.approx(value, rel=2e-3), key
    assert profile.efficiency["default"] == profile.efficiency["elementwise"]
    assert timings["handoff_per_value"] == pytest.approx(5e-6, rel=1e-3)  # + a 4-element add
    assert timings["runtime_per_call"] == pytest.approx(10e-6)
