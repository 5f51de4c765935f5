"""Precision as a placement choice (docs/precision.md): lower-precision targets, the accuracy
budget, the per-segment and whole-model checks, and what the plan, bundles and CLI show of them.
Runs on the CPU runtimes every CI machine has (ONNX Runtime's int8, OpenVINO's int8 weights)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import hetcc
import mlp
import tables
from hetcc.backends.registry import resolve
from hetcc.cli.app import main
from hetcc.compiler import _target_infos
from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.precision import INT8U_SHARE
from hetcc.cost_model.profiles import BackendProfile
from hetcc.cost_model.roofline import node_parts
from hetcc.error_budget import AccuracyBudget, relative_error
from hetcc.errors import AccuracyError, HetccError, TargetError
from hetcc.passes.build_problem import shared_memories
from hetcc.passes.facts import NodeFacts
from hetcc.precision import better_end, described, end_given_up, ends, give_up
from hetcc.target import Target, parse_targets


def relative(got, want) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


# ---- targets -------------------------------------------------------------------------------

def test_a_target_names_its_precision_after_an_at():
    t = Target.parse("onnxruntime:cpu@int8")
    assert (t.backend, t.device, t.index, t.precision) == ("onnxruntime", "cpu", None, "int8")
    assert str(t) == "onnxruntime:cpu@int8" and t.base == Target("onnxruntime", "cpu")
    assert Target.parse("tensorrt:cuda:0@fp16").at(None) == Target("tensorrt", "cuda", "0")
    assert Target.parse("openvino:cpu@fp32") == Target("openvino", "cpu")  # the model's own precision
    assert parse_targets("openvino:cpu,openvino:cpu@int8w") == [Target("openvino", "cpu"),
                                                              Target("openvino", "cpu", None, "int8w")]


@pytest.mark.parametrize("text, message", [
    ("onnxruntime:cpu@fp8", "unknown precision 'fp8' after '@'; write one of fp16, bf16, int8"),
    ("onnxruntime:cpu@", "unknown precision '' after '@'"),
])
def test_a_precision_hetcc_does_not_know_is_named(text, message):
    with pytest.raises(TargetError, match=message):
        Target.parse(text)


def test_a_precision_the_backend_does_not_run_here_is_refused_with_what_it_offers(vnni):
    assert resolve(Target.parse("onnxruntime:cpu@int8")).precision == "int8"
    with pytest.raises(TargetError, match=r"onnxruntime does not run bf16 on cpu here \(it offers int8, int8s\)"):
        resolve(Target.parse("onnxruntime:cpu@bf16"))
    with pytest.raises(TargetError, match="it offers no lower precision there"):
        resolve(Target.parse("torch:cpu@int8"))
    with pytest.raises(TargetError, match="int8u is for x86 CPUs without VNNI.*write onnxruntime:cpu@int8"):
        resolve(Target.parse("onnxruntime:cpu@int8u"))


# ---- the budget ----------------------------------------------------------------------------

@pytest.mark.parametrize("given, metric, bound", [
    (0.01, "rel_error", 0.01), ("0.01", "rel_error", 0.01), ("rel_error=0.02", "rel_error", 0.02), ("top1 >= 0.99", "top1", 0.99), ("top1", None, None),
    ("top1=0.99", "top1", 0.99), ({"cosine": 0.999}, "cosine", 0.999),
])
def test_a_budget_is_read_from_a_number_a_string_or_a_mapping(given, metric, bound):
    if metric is None:
        with pytest.raises(HetccError, match="is not a budget"):
            AccuracyBudget.make(given)
        return
    budget = AccuracyBudget.make(given)
    assert (budget.metric, budget.bound) == (metric, bound)


@pytest.mark.parametrize("given, message", [
    ("psnr=30", "accuracy metric 'psnr' is not one hetcc measures"),
    (0.0, "a relative error above 0"), (-1, "a relative error above 0"), (math.nan, "is not a budget"),
    ("top1=1.5", "between 0.0 and 1.0"), (True, "is not a budget"), ({"top1": 0.9, "cosine": 0.9}, "is not a budget"),
])
def test_a_bad_budget_says_what_a_good_one_looks_like(given, message):
    with pytest.raises(HetccError, match=message):
        AccuracyBudget.make(given)


def test_the_metrics_measure_the_worst_output():
    want = [torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([10.0, 0.0])]
    got = [want[0] * 1.01, torch.tensor([10.0, 1.0])]
    rel = AccuracyBudget.make(0.05).measure(got, want)
    assert rel == pytest.approx(0.1)  # the second output: |1| / |10|
    assert AccuracyBudget.make("cosine=0.9").measure(got, want) == pytest.approx(float(
        torch.nn.functional.cosine_similarity(got[1], want[1], dim=0)))
    swapped = [torch.tensor([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0]]), torch.tensor([0.0, 10.0])]
    # one of two rows keeps its arg-max; the 1-D output (no rows of classes) does not count, though
    # its own arg-max moved
    assert AccuracyBudget.make("top1=0.99").measure(swapped, want) == 0.5


def test_a_nan_the_reference_lacks_or_an_integer_that_differs_breaks_any_budget():
    budget = AccuracyBudget.make(0.5)
    assert budget.measure([torch.tensor([1.0, math.nan])], [torch.tensor([1.0, 2.0])]) == math.inf
    assert budget.measure([torch.tensor([1, 2])], [torch.tensor([1, 3])]) == math.inf
    assert not budget.holds(math.inf) and budget.holds(0.5)
    assert budget.measure([torch.tensor([1.0, math.nan])], [torch.tensor([1.0, math.nan])]) == 0.0
    for metric in ("rel_error=0.5", "cosine=0.5", "top1=0.5"):  # an infinity or NaN the reference lacks
        budget = AccuracyBudget.make(metric)
        assert not budget.holds(budget.measure([torch.tensor([[math.inf, 1e-3]])], [torch.tensor([[1.0, 1e-3]])]))
        assert not budget.holds(budget.measure([torch.tensor([[1.0, 1e-3]])], [torch.tensor([[math.nan, 1e-3]])]))
    with pytest.raises(HetccError, match="top1 needs an output of rows of classes"):
        AccuracyBudget.make("top1=0.9").measure([torch.zeros(3)], [torch.zeros(3)])


def test_a_segment_limit_follows_the_metric():
    assert AccuracyBudget.make(0.01).segment_limit == 0.01
    assert AccuracyBudget.make("cosine=0.99995").segment_limit == pytest.approx(0.01)
    assert AccuracyBudget.make("top1=0.99").segment_limit == 0.05


def test_the_share_kept_is_what_the_budget_leaves_and_something_is_always_given_up():
    budget = AccuracyBudget.make(0.01)
    assert budget.share_within(0.02) == pytest.approx(0.4)  # 0.8 x 0.01 / 0.02
    assert budget.share_within(0.0101) < 0.8 and budget.share_within(math.inf) == 0.0
    assert AccuracyBudget.make("top1=0.99").share_within(0.96) == pytest.approx(0.2)  # shortfalls 0.01 / 0.04
    assert budget.segment_share(0.04) == pytest.approx(0.2)

    class Bans:
        def __init__(self):
            self.banned = []

        def ban(self, u, t, why):
            self.banned.append((u, t))

    for n in (1, 2, 5, 10):
        for piece in ends(list(range(n)), budget.share_within(0.0101)):
            bans = Bans()
            kept = give_up(bans, list(range(n)), 3, piece, "why")
            assert sorted(bans.banned) == [(u, 3) for u in range(n) if u not in piece] and len(bans.banned) >= 1
            assert kept == len(piece) < n


def test_a_partial_give_up_keeps_the_end_that_holds_the_limit_and_saves_more():
    units = list(range(10))
    assert ends(units, 0.79) == [list(range(7)), list(range(3, 10))]  # the first 7, the last 7
    assert ends(units, 0.05) == [[]] and ends(units, 1.0) == [units]
    first, last = ends(units, 0.5)
    rates = {}

    def rate(i, piece):
        assert piece == (first, last)[i]
        return rates[i]

    rates.update({0: (0.004, True, 1e-3), 1: (0.006, True, 3e-3)})  # both within: the one saving more
    assert better_end([first, last], rate) == last
    # after a whole-model miss both ends are within the segment's limit: the one that moved less
    assert better_end([first, last], rate, by="error") == first
    rates.update({0: (0.004, True, 1e-3), 1: (0.02, False, 3e-3)})  # one beyond the limit
    assert better_end([first, last], rate) == first and better_end([first, last], rate, by="error") == first
    rates.update({0: (0.03, False, 1e-3), 1: (0.02, False, 3e-4)})  # both beyond: the one that moved less
    assert better_end([first, last], rate) == last
    rates.update({0: (math.nan, False, 1e-3), 1: (0.5, False, 3e-4)})  # NaN is the worst, not a tie
    assert better_end([first, last], rate) == last
    rates.update({0: (0.5, False, 1e-3), 1: (math.nan, False, 3e-4)})
    assert better_end([first, last], rate) == first
    assert described(last, units) == "the first 5 of 10" and described(first, units) == "the last 5 of 10"
    assert described([], units) == "all 10" and end_given_up([], units) == "all"
    assert end_given_up(last, units) == "first" and end_given_up(first, units) == "last"


def test_a_segment_beyond_its_limit_is_judged_by_the_output_that_moved_most():
    # the share a partial give-up keeps, and which end it keeps, follow this error: the first
    # output beyond the limit would understate it
    from hetcc.verify import PrecisionMiss, check_relative

    want = [torch.ones(8), torch.ones(8), torch.ones(8)]
    got = [torch.full((8,), 1.02), torch.full((8,), 1.5), torch.ones(8)]
    with pytest.raises(PrecisionMiss, match="output b is off the torch reference by relative error 0.5") as miss:
        check_relative("seg", ["a", "b", "c"], got, want, 0.01)
    assert miss.value.relative == pytest.approx(0.5)
    got[2] = torch.full((8,), math.nan)  # NaN moved most
    with pytest.raises(PrecisionMiss, match="output c .* relative error inf") as miss:
        check_relative("seg", ["a", "b", "c"], got, want, 0.01)
    assert miss.value.relative == math.inf
    assert check_relative("seg", ["a"], [torch.full((8,), 1.005)], [torch.ones(8)], 0.01)[1] == pytest.approx(0.005)


def test_a_budget_with_no_room_offers_no_lower_precision(vnni):
    from hetcc.precision import lower_precisions

    base, int8 = Target.parse("onnxruntime:cpu"), Target.parse("onnxruntime:cpu@int8")
    backends = {base: resolve(base), int8: resolve(int8)}
    assert lower_precisions([base], backends, AccuracyBudget.make(0.01)) == [int8]
    assert lower_precisions([base], backends, AccuracyBudget.make("cosine=1.0")) == []  # segment limit 0
    with pytest.raises(HetccError, match="leaves no room for a lower precision, so target onnxruntime:cpu@int8"):
        lower_precisions([int8], backends, AccuracyBudget.make("cosine=1.0"))


# ---- the cost model ------------------------------------------------------------------------

def test_a_lower_precision_reads_narrower_weights_and_computes_faster():
    cpu = DeviceSpec(name="cpu", peak_flops={"fp32": 1e11}, mem_bandwidth=1e10, mem_capacity=1e12)
    profile = BackendProfile("x", {}, per_node=0.0, call_overhead=0.0)
    weights = 64 * 1024 * 4
    # a Linear's weight reaches its matmul through a permute: resident on the view, read by the mm
    matmul = NodeFacts("mm", "aten.mm.default", "matmul", 2 * 64 * 1024 * 8, weights + 8 * 64 * 4, 8 * 1024 * 4,
                       0, weight_bytes=weights)
    compute, memory = node_parts(matmul, cpu, profile)
    compute8, memory8 = node_parts(matmul, cpu, profile, precision="int8w")
    assert compute8 == pytest.approx(compute / 2)  # int8 dot products; no int8 peak in the spec: 2x
    moved = matmul.bytes_moved
    # a byte per weight and an f32 scale per 32 of them: 1.125 of the fp32 weight's 4 bytes
    assert memory8 == pytest.approx(memory * (moved - (1 - 1.125 / 4) * weights) / moved)
    assert node_parts(matmul, cpu, profile, precision="int8")[1] == pytest.approx(memory * (moved - 0.75 * weights) / moved)
    assert node_parts(matmul, cpu, profile, precision="bf16")[1] == pytest.approx(memory * (moved - 0.5 * weights) / moved)
    faster = DeviceSpec(name="cpu", peak_flops={"fp32": 1e11, "int8": 8e11}, mem_bandwidth=1e10, mem_capacity=1e12)
    assert node_parts(matmul, faster, profile, precision="int8")[0] == pytest.approx(compute / 8)  # the spec's peak
    add = NodeFacts("add", "aten.add.Tensor", "elementwise", 1024, 8192, 4096, 0)
    assert node_parts(add, cpu, profile, precision="int8w") == node_parts(add, cpu, profile)
    assert node_parts(add, cpu, profile, precision="int8w-bf16")[0] == pytest.approx(node_parts(add, cpu, profile)[0] / 2)


@pytest.mark.parametrize("flags, int8w", [(frozenset({"avx2", "fma"}), "fp32"),
                                          (frozenset({"avx2", "avx512f", "avx512_vnni"}), None),
                                          (frozenset({"avx2", "avx_vnni"}), None), (None, None)])
def test_openvinos_int8_weights_are_priced_at_fp32_on_a_cpu_without_vnni(monkeypatch, flags, int8w):
    from hetcc.cost_model import devices

    # the CPU plugin's dynamic quantization needs VNNI; without it int8 weights are widened to f32
    monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
    order = [Target.parse("openvino:cpu@int8w"), Target.parse("openvino:cpu@int8w-bf16"),
             Target.parse("onnxruntime:cpu@int8")]
    infos = _target_infos(order, None, None, None, {t: resolve(t.base) for t in order})
    # flags unknown (not x86 Linux): as assumed; int8w-bf16 always widens to bf16 (its scheme says so)
    assert [i.arithmetic for i in infos] == [int8w, None, None]
    cpu = DeviceSpec(name="cpu", peak_flops={"fp32": 1e11}, mem_bandwidth=1e10, mem_capacity=1e12)
    profile = BackendProfile("x", {}, per_node=0.0, call_overhead=0.0)
    weights = 64 * 1024 * 4
    matmul = NodeFacts("mm", "aten.mm.default", "matmul", 2 * 64 * 1024 * 8, weights + 8 * 64 * 4, 8 * 1024 * 4,
                       0, weight_bytes=weights)
    fp32 = node_parts(matmul, cpu, profile)
    priced = node_parts(matmul, cpu, profile, precision="int8w", arithmetic=infos[0].arithmetic)
    assert priced[0] == pytest.approx(fp32[0] if int8w else fp32[0] / 2)
    assert priced[1] < fp32[1]  # the weights are int8 in memory either way
    assert node_parts(matmul, cpu, profile, precision="int8w-bf16")[0] == pytest.approx(fp32[0] / 2)
    # int8u: int8's rate, assumed or from the spec, times INT8U_SHARE
    assert node_parts(matmul, cpu, profile, precision="int8u")[0] == pytest.approx(fp32[0] / (2 * INT8U_SHARE))
    fast = DeviceSpec(name="cpu", peak_flops={"fp32": 1e11, "int8": 8e11}, mem_bandwidth=1e10, mem_capacity=1e12)
    assert node_parts(matmul, fast, profile, precision="int8u")[0] == pytest.approx(fp32[0] / (8 * INT8U_SHARE))


@pytest.mark.parametrize("vnni", [False, True])
def test_analysis_and_the_cost_model_breakdown_price_a_target_in_its_precision(cpu, vnni):
    from hetcc.cost_model.devices import this_cpu
    from hetcc.cost_model.profiles import DEFAULT_PROFILES
    from hetcc.measure.accuracy import breakdown

    cpu(vnni=vnni)
    model, inputs = mlp.build(batch=64)
    seconds = hetcc.analyze(model, inputs).seconds(["openvino:cpu", "openvino:cpu@int8w", "onnxruntime:cpu",
                                                     "onnxruntime:cpu@int8"])
    total = {t: sum(by_node.values()) for t, by_node in seconds.items()}
    # int8 arithmetic is faster than fp32 on any CPU; OpenVINO's int8 weights only with VNNI (without,
    # its plugin widens them to f32): then only their narrower bytes remain
    assert total["onnxruntime:cpu@int8"] < 0.8 * total["onnxruntime:cpu"]
    assert (total["openvino:cpu@int8w"] < 0.8 * total["openvino:cpu"]) is vnni
    # OpenVINO's int8 weights: whether the arithmetic is int8 or fp32 follows the CPU seen
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu@int8w"], accuracy=0.05, tune="off")
    (seg,) = cm.plan.segments
    parts = breakdown(cm, DEFAULT_PROFILES, {seg.target: this_cpu()})[seg.name]
    # priced as compile priced it: its nodes' seconds are the plan's prediction for the segment
    assert parts["nodes_seconds"] == pytest.approx(seg.predicted_seconds, rel=1e-6)


def test_cpu_flags_are_read_on_x86_linux_only(monkeypatch):
    from hetcc.cost_model import devices

    read = devices.cpu_flags.__wrapped__  # past the cache
    cpuinfo = {"text": "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n"}

    class FakePath:
        def __init__(self, path):
            assert str(path) == "/proc/cpuinfo"

        def read_text(self):
            if cpuinfo["text"] is None:
                raise OSError("no /proc here")
            return cpuinfo["text"]

    monkeypatch.setattr(devices, "Path", FakePath)
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    assert read() == frozenset({"fpu", "sse2", "avx2", "fma"})
    cpuinfo["text"] = "processor\t: 0\n"
    assert read() is None  # no flags line: unknown
    cpuinfo["text"] = None
    assert read() is None
    monkeypatch.setattr(devices.platform, "machine", lambda: "aarch64")  # its features are not x86's
    assert read() is None


def test_a_linear_weight_read_through_a_view_counts_as_the_matmuls_weight():
    from hetcc.capture import capture
    from hetcc.passes.facts import graph_facts

    model, inputs = mlp.build(batch=8)
    captured = capture(model, inputs)
    facts = graph_facts(captured.graph, captured.values, captured.weights)
    matmuls = [f for f in facts.values() if f.op_class == "matmul"]
    # each addmm: its weight through the permute, and its bias directly
    assert [f.weight_bytes for f in matmuls] == [(256 + 1) * 1024 * 4, (1024 + 1) * 1024 * 4,
                                                 (1024 + 1) * 1024 * 4, (1024 + 1) * 64 * 4]


def test_compile_time_target_infos_carry_location_and_precision():
    order = [Target("onnxruntime", "cpu"), Target("onnxruntime", "cpu", None, "int8"), Target("torch", "cpu")]
    infos = _target_infos(order, None, None, None)
    assert [(i.location, i.dtype, i.precision) for i in infos] == [("cpu", "fp32", None), ("cpu", "fp32", "int8"),
                                                                 ("cpu", "fp32", None)]
    # a memory limit on a target holds for it and its lower precisions together
    limited = _target_infos(order, None, None, {"onnxruntime:cpu": 1000})
    assert [i.capacity for i in limited[:2]] == [1000, 1000]
    assert ((0, 1), 1000) in shared_memories(limited) and limited[2].limit_group is None


def test_excluding_a_target_excludes_its_lower_precisions_and_a_pin_leaves_them():
    model, inputs = mlp.build(batch=4)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "openvino:cpu"], accuracy=0.5, tune="off",
                       exclude={"net.0": ["onnxruntime:cpu"], "net.2": ["openvino:cpu"]},
                       pins={"net.6": "openvino:cpu"})
    where = {n: s.target for s in cm.plan.segments for n in s.nodes}
    assert not where["addmm"].startswith("onnxruntime:cpu") and not where["addmm_1"].startswith("openvino:cpu")
    assert where["addmm_3"].startswith("openvino:cpu")  # in any precision openvino:cpu offers


def test_a_quantizing_backend_option_must_be_a_target_with_a_budget():
    model, inputs = mlp.build(batch=4)
    with pytest.raises(HetccError, match="backend option onnxruntime.precision=int8 quantizes every segment on "
                                         "onnxruntime without an accuracy budget; write the target as "
                                         "onnxruntime:<device>@int8"):
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], backend_options={"onnxruntime": {"precision": "int8"}})


# ---- compile ---------------------------------------------------------------------------------

def test_a_lower_precision_needs_a_budget(vnni):
    model, inputs = mlp.build(batch=4)
    with pytest.raises(HetccError, match="give an accuracy budget, e.g. accuracy=0.01"):
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu@int8"])
    with pytest.raises(HetccError, match=r"precisions= \(CLI --precisions\) chooses among lower precisions, which needs an accuracy"):
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], precisions=["int8"])
    with pytest.raises(HetccError, match=r"none of the targets offers fp16 here \(they offer: int8 on onnxruntime:cpu\)"):
        hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], accuracy=0.01, precisions=["fp16"])


@pytest.fixture(scope="module")
def int8_mlp():
    model, inputs = mlp.build(batch=64)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu@int8"], accuracy=0.05, tune="off")
    return model, inputs, cm


def test_int8_runs_within_the_budget_with_a_quarter_of_the_weight_bytes(int8_mlp):
    model, (x,), cm = int8_mlp
    (seg,) = cm.plan.segments
    assert seg.target == "onnxruntime:cpu@int8" and seg.precision == "int8"
    assert 0 < seg.relative_error <= 0.05
    with torch.no_grad():
        want = model(x)
    assert relative(cm(x), want) == pytest.approx(cm.plan.accuracy["measured"], rel=1e-6)
    assert cm.plan.accuracy["metric"] == "rel_error" and cm.plan.accuracy["measured"] <= 0.05
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.3 * fp32  # int8 weights and their scales
    # what the plan prices as resident (int8 weights, fp32 biases) is what the file holds
    assert seg.resident_bytes == pytest.approx(seg.artifact_bytes, rel=0.05)
    assert seg.precision_bytes_moved < seg.bytes_moved - 0.7 * fp32  # what the plot shows
    assert "accuracy: rel_error <= 0.05 against fp32 PyTorch" in cm.plan.summary()
    # a new input: still int8, still close
    y = torch.randn(64, 256)
    with torch.no_grad():
        assert relative(cm(y), model(y)) < 0.05


def test_an_int8_bundle_loads_and_shows_its_budget(int8_mlp, tmp_path, capsys):
    _, (x,), cm = int8_mlp
    path = cm.save(tmp_path / "b")
    loaded = hetcc.load(path)
    assert torch.equal(loaded(x), cm(x))
    assert loaded.plan.accuracy["bound"] == 0.05 and loaded.plan.segments[0].precision == "int8"
    assert loaded.plan.segments[0].relative_error == cm.plan.segments[0].relative_error
    assert main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime:cpu@int8" in out and "rel err" in out and "accuracy: rel_error <= 0.05" in out


@pytest.mark.parametrize("accuracy, loaded", [
    ({"metric": "rel_error", "bound": 0.05, "dropped": 5}, {"metric": "rel_error", "bound": 0.05,
                                                          "measured": None, "dropped": []}),
    ({"metric": "psnr", "bound": 3}, None), ("0.05", None), ({"metric": "top1", "bound": True}, None),
    ({"metric": "rel_error", "bound": 0.05, "calibration_batches": 66}, {"metric": "rel_error", "bound": 0.05,
                                                                       "measured": None, "dropped": []}),
    ({"metric": "rel_error", "bound": 0.05, "calibration_batches": True}, {"metric": "rel_error", "bound": 0.05,
                                                                         "measured": None, "dropped": []}),
    ({"metric": "rel_error", "bound": 0.05, "calibration_batches": 9}, {"metric": "rel_error", "bound": 0.05,
                                                                        "measured": None, "dropped": [],
                                                                        "calibration_batches": 9}),
    ({"metric": "rel_error", "bound": 0.05, "fitted_batches": 0}, {"metric": "rel_error", "bound": 0.05,
                                                                   "measured": None, "dropped": []}),
    ({"metric": "rel_error", "bound": 0.05, "fitted_batches": 65, "calibration_batches": 3},
     {"metric": "rel_error", "bound": 0.05, "measured": None, "dropped": [], "calibration_batches": 3}),
    ({"metric": "rel_error", "bound": 0.05, "fitted_batches": 8}, {"metric": "rel_error", "bound": 0.05,
                                                                   "measured": None, "dropped": [],
                                                                   "fitted_batches": 8}),
])
def test_a_malformed_accuracy_in_a_report_is_dropped_not_a_crash(int8_mlp, tmp_path, capsys, accuracy, loaded):
    """report.json is informative and may come from a stranger: explain and load must not fail on it."""
    path = int8_mlp[2].save(tmp_path / "b")
    report = json.loads((path / "report.json").read_text())
    report["accuracy"] = accuracy
    (path / "report.json").write_text(json.dumps(report))
    assert hetcc.load(path).plan.accuracy == loaded
    assert main(["explain", str(path)]) == 0
    capsys.readouterr()


def test_the_default_tuning_times_each_precision_and_keeps_one_within_the_budget():
    model, (x,) = mlp.build(batch=64)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "openvino:cpu"], accuracy=0.05)
    names = [c["name"] for c in cm.plan.candidates]
    assert any("onnxruntime:cpu@int8" in n for n in names) and any("openvino:cpu@" in n for n in names)
    with torch.no_grad():
        assert relative(cm(x), model(x)) == pytest.approx(cm.plan.accuracy["measured"], rel=1e-6)
    assert cm.plan.accuracy["measured"] <= 0.05


def test_a_cosine_budget_holds_end_to_end():
    model, (x,) = mlp.build(batch=64)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy="cosine=0.999", tune="off")
    with torch.no_grad():
        want = model(x)
    cosine = float(torch.nn.functional.cosine_similarity(cm(x).flatten().double(), want.flatten().double(), dim=0))
    assert cm.plan.accuracy["metric"] == "cosine" and cosine >= 0.999
    assert cosine == pytest.approx(cm.plan.accuracy["measured"], abs=1e-9)


def test_after_max_drops_every_lower_precision_is_given_up(monkeypatch):
    import hetcc.compiler

    monkeypatch.setattr(hetcc.compiler, "MAX_DROPS", 1)
    torch.manual_seed(0)
    model, x = Classifier().eval(), torch.randn(512, 128)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy="top1=1.0",
                       tune="off")
    assert any(n.startswith("every lower precision was given up") for n in cm.plan.notes), cm.plan.notes
    assert all(s.precision is None for s in cm.plan.segments) and cm.plan.accuracy["measured"] == 1.0


def test_openvino_int8_weights_are_compressed_in_the_ir():
    model, inputs = mlp.build(batch=16)
    cm = hetcc.compile(model, inputs, targets=["openvino:cpu@int8w"], accuracy=0.03, tune="off")
    (seg,) = cm.plan.segments
    artifact = cm.artifacts[seg.name]
    assert artifact.meta["weights"] == "int8" and artifact.meta["compressed_matmuls"] == 4
    assert artifact.meta["precision"] == "fp32"  # the arithmetic: weights are dequantized in the kernel
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.3 * fp32 and seg.relative_error < 0.03
    assert seg.resident_bytes == pytest.approx(seg.artifact_bytes, rel=0.05)
    assert artifact.meta["compressed_embeddings"] == 0


class Embedder(nn.Module):
    """Most of its weights are an embedding table, as in a language model with a large vocabulary."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(4000, 128)
        self.proj = nn.Linear(128, 128)

    def forward(self, ids):
        return self.proj(self.table(ids))


def test_openvino_int8_weights_compress_embedding_tables_too():
    torch.manual_seed(0)
    model, ids = Embedder().eval(), torch.randint(0, 4000, (1, 64))
    cm = hetcc.compile(model, (ids,), targets=["openvino:cpu@int8w"], accuracy=0.03, tune="off")
    (seg,) = cm.plan.segments
    meta = cm.artifacts[seg.name].meta
    assert (meta["compressed_matmuls"], meta["compressed_embeddings"]) == (1, 1)
    # 1 byte a weight and an f32 scale per 32: 0.28 of fp32, where fp32 tables would leave 0.97
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.3 * fp32 and seg.relative_error < 0.03
    assert seg.resident_bytes == pytest.approx(seg.artifact_bytes, rel=0.05)  # the table priced narrow too


@pytest.mark.parametrize("vnni", [False, True])
def test_onnxruntime_int8_weights_take_7_bits_on_a_cpu_without_vnni(cpu, caplog, vnni):
    """Without VNNI ONNX Runtime's x86 int8 kernels add pairs of products in int16, which 8-bit
    weights saturate; 7-bit ones do not (ONNX Runtime's reduce_range)."""
    import logging

    import onnx
    from onnx import TensorProto, numpy_helper

    cpu(vnni=vnni)
    model, inputs = tables.build()
    # a loose budget: 8-bit weights saturate on a machine that really has no VNNI (20 % here)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu@int8"], accuracy=0.5, tune="off")
    (seg,) = cm.plan.segments
    artifact = cm.artifacts[seg.name]
    assert seg.precision == "int8" and artifact.meta["reduce_range"] is (not vnni)
    graph = onnx.load(artifact.files["model"]).graph
    (weight,) = [numpy_helper.to_array(t) for t in graph.initializer
                 if t.data_type == TensorProto.INT8 and list(t.dims) == [64, 64]]
    # per output channel, symmetric: each column's largest weight takes the end of the range
    assert int(np.abs(weight.astype(int)).max()) == (127 if vnni else 64)
    # a segment with 8-bit weights loaded where there is no VNNI says to compile it again there
    cpu(vnni=False)
    target = Target.parse("onnxruntime:cpu@int8")
    with caplog.at_level(logging.WARNING):
        resolve(target).load(artifact, target)
    assert ("compile it again on this machine" in caplog.text) is vnni


def test_onnxruntime_int8_stores_large_tables_in_int8_and_small_ones_in_fp32():
    import onnx
    from onnx import TensorProto

    model, inputs = tables.build()
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu@int8"], accuracy=0.05, tune="off")
    (seg,) = cm.plan.segments
    graph = onnx.load(cm.artifacts[seg.name].files["model"]).graph
    by_size = {int(np.prod(t.dims)): t.data_type for t in graph.initializer}
    assert by_size[2048 * 64] == TensorProto.UINT8  # dequantized after the lookup
    assert by_size[16 * 64] == TensorProto.FLOAT  # positions: read by every token, a few bytes
    # a scale and a zero point per row (backends/onnx_tables.py)
    assert sorted((t.data_type, list(t.dims)) for t in graph.initializer if list(t.dims) == [2048]) == [
        (TensorProto.FLOAT, [2048]), (TensorProto.UINT8, [2048])]
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.35 * fp32 and seg.relative_error < 0.05
    # priced as stored, but for those 5 bytes per row, which the price leaves out (8 % of a row 64
    # wide, 1 % at 512)
    assert seg.resident_bytes == pytest.approx(seg.artifact_bytes - 5 * 2048, rel=0.1)


class TiedHead(nn.Module):
    """An embedding whose table is also the output head's weight, as in GPT-2."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(2048, 64)
        self.mix = nn.Linear(64, 64)

    def forward(self, ids):
        return self.mix(self.table(ids)) @ self.table.weight.t()


@pytest.mark.parametrize("shape", [(1, 16), (2, 3, 5), (7,)], ids=["batch", "rank3", "rank1"])
def test_onnxruntime_int8_stores_a_table_tied_to_the_head_once_in_int8(shape, tmp_path):
    import onnx
    from onnx import TensorProto

    torch.manual_seed(0)
    model, ids = TiedHead().eval(), torch.randint(0, 2048, shape)
    cm = hetcc.compile(model, (ids,), targets=["onnxruntime:cpu@int8"], accuracy=0.05, tune="off")
    (seg,) = cm.plan.segments
    graph = onnx.load(cm.artifacts[seg.name].files["model"]).graph
    tables = [t for t in graph.initializer if int(np.prod(t.dims)) == 2048 * 64]
    # one copy, int8, the head's [64, 2048] (backends/onnx_tied.py): the lookups read its columns
    assert [(t.data_type, list(t.dims)) for t in tables] == [(TensorProto.INT8, [64, 2048])]
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.3 * fp32 and seg.relative_error < 0.05
    with torch.no_grad():
        want = model(ids)
    got = cm(ids)
    assert got.shape == want.shape and relative_error(got, want) < 0.05
    other = torch.randint(0, 2048, ids.shape)  # rows the example did not read
    with torch.no_grad():
        assert relative_error(cm(other), model(other)) < 0.05
    torch.testing.assert_close(hetcc.load(cm.save(tmp_path / "b"))(other), cm(other))


def test_int8u_keeps_8_bit_weights_unsigned_on_a_cpu_without_vnni(cpu, tmp_path):
    import onnx
    from onnx import TensorProto

    cpu(vnni=True)
    with pytest.raises(TargetError, match="does not run int8u"):  # int8's weights keep 8 bits there
        resolve(Target.parse("onnxruntime:cpu@int8u"))
    cpu(vnni=False)
    torch.manual_seed(0)
    model, ids = TiedHead().eval(), torch.randint(0, 2048, (1, 16))
    cm = hetcc.compile(model, (ids,), targets=["onnxruntime:cpu@int8u"], accuracy=0.05, tune="off")
    (seg,) = cm.plan.segments
    assert seg.precision == "int8u" and cm.artifacts[seg.name].meta["reduce_range"] is False
    graph = onnx.load(cm.artifacts[seg.name].files["model"]).graph
    weights = {tuple(t.dims): t.data_type for t in graph.initializer if int(np.prod(t.dims)) >= 64 * 64}
    # the Linear's weight and the tied table (once, as the head's) in uint8, each with zero points
    assert weights == {(64, 64): TensorProto.UINT8, (64, 2048): TensorProto.UINT8}
    other = torch.randint(0, 2048, ids.shape)
    with torch.no_grad():
        assert relative_error(cm(other), model(other)) < 0.05
    torch.testing.assert_close(hetcc.load(cm.save(tmp_path / "b"))(other), cm(other))


def test_a_segment_beyond_its_limit_keeps_the_models_own_precision():
    model, inputs = mlp.build(batch=64)
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu"], accuracy=1e-3, tune="off")
    assert [s.target for s in cm.plan.segments] == ["onnxruntime:cpu"]
    assert any("onnxruntime:cpu@int8 was not kept" in n and "beyond the accuracy budget" in n
               and "of an earlier placement" in n for n in cm.plan.notes), cm.plan.notes
    assert cm.plan.accuracy["measured"] < 1e-3


class OutlierFirst(nn.Module):
    """Six layers whose first reads an input with a few huge entries: dynamic int8 quantizes that
    activation with one scale, so the first layer moves its outputs far more than the others do."""

    def __init__(self, width: int = 512):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(6))
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        x = self.norm(self.layers[0](x))
        for layer in self.layers[1:]:
            x = torch.relu(layer(x)) + x
        return x


def test_a_partial_give_up_keeps_the_precision_at_the_end_that_holds_the_limit(tmp_path, monkeypatch):
    from hetcc.backends import onnx_sensitivity

    # no product may go back to fp32 inside the segment (which would hold this limit with the first
    # layer alone in fp32: tests/test_onnx_sensitivity.py), so the placement gives int8 up by ends
    monkeypatch.setattr(onnx_sensitivity, "MOST_KEPT", 0.0)
    torch.manual_seed(0)
    x = torch.randn(256, 512)
    x[:, :4] *= 400.0
    model = OutlierFirst().eval()
    # int8 alone: without VNNI onnxruntime:cpu also offers int8u, which the give-up would try next
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=0.02,
                       tune="off", precisions=["int8"])
    where = {n: s.target for s in cm.plan.segments for n in s.nodes}
    assert cm.plan.accuracy["measured"] <= 0.02
    # the first layer gave int8 up (its own outputs moved most), the last ones kept it
    assert where["addmm"] == "onnxruntime:cpu" and where["addmm_5"] == "onnxruntime:cpu@int8", where
    assert any("was not kept for the first" in n for n in cm.plan.notes), cm.plan.notes
    assert [d["gave_up"] for d in cm.plan.accuracy["dropped"]] == ["first"]
    loaded = hetcc.load(cm.save(tmp_path / "mixed.bundle"))  # the bundle keeps which end gave it up
    assert [d["gave_up"] for d in loaded.plan.accuracy["dropped"]] == ["first"]
    with torch.no_grad():
        assert relative_error(cm(x), model(x)) <= 0.02


class Classifier(nn.Module):
    """Logits with many near ties: int8 moves each output by about 1 %, and flips some arg-maxes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        self.head = nn.Linear(512, 4)

    def forward(self, x):
        return self.head(self.body(x))


def test_a_choice_that_breaks_the_whole_models_budget_is_dropped():
    torch.manual_seed(0)
    model, x = Classifier().eval(), torch.randn(512, 128)
    # top1 >= 1.0: every row must keep its arg-max; each int8 segment alone stays within 5 %
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy="top1=1.0",
                       tune="off")
    dropped = cm.plan.accuracy["dropped"]
    assert dropped and dropped[0]["target"] == "onnxruntime:cpu@int8" and dropped[0]["measured"] < 1.0
    assert cm.plan.accuracy["measured"] == 1.0
    assert all(s.precision != "int8" for s in cm.plan.segments)
    assert any(n.startswith("gave up onnxruntime:cpu@int8 for") for n in cm.plan.notes)
    with torch.no_grad():
        assert torch.equal(cm(x).argmax(-1), model(x).argmax(-1))


def test_a_tuning_candidate_that_wins_keeps_the_drops_its_plan_started_from(monkeypatch):
    """Tuning candidates copy the solver's plan's choices, with the lower precision it gave up; the
    plan kept must still say what was given up and why, whichever candidate ran fastest."""
    import hetcc.tune
    from hetcc.timing import Samples

    def race(pool, inputs, deadline, floor=0.0):  # the solver's plan (first) times slowest
        for i, c in enumerate(pool):
            c.samples = Samples(calls_per_turn=1)
            c.samples.calls.extend([1.0 if i == 0 else 0.001 * i] * 5)

    monkeypatch.setattr(hetcc.tune, "race", race)
    torch.manual_seed(0)
    model, x = Classifier().eval(), torch.randn(512, 128)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu", "openvino:cpu"],
                       accuracy="top1=1.0", tune=60)
    kept = [c for c in cm.plan.candidates if c["chosen"]]
    assert kept and not kept[0]["name"].startswith("mixed") and kept[0]["name"] != cm.plan.candidates[0]["name"]
    dropped = cm.plan.accuracy["dropped"]
    assert dropped and dropped[0]["target"] == "onnxruntime:cpu@int8", cm.plan.accuracy
    assert all(s.precision != "int8" for s in cm.plan.segments)

def test_top1_on_a_model_without_logits_is_refused_before_lowering():
    _, inputs = mlp.build(batch=1)  # the model below returns one score per input: no rows of classes
    with pytest.raises(HetccError, match="top1 needs an output of rows of classes"):
        hetcc.compile(nn.Sequential(nn.Linear(256, 1), nn.Flatten(0)).eval(), inputs, targets=["onnxruntime:cpu"],
                      accuracy="top1=0.99", tune="off")


def test_a_budget_the_runtimes_themselves_miss_is_an_error():
    torch.manual_seed(0)
    model, x = nn.Linear(1024, 1024).eval(), torch.randn(64, 1024)
    with pytest.raises(AccuracyError, match="even with every segment in the model's own precision"):
        hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], accuracy=1e-15, precisions=["int8"], tune="off")


# ---- the command line ------------------------------------------------------------------------

def test_the_cli_takes_a_budget_and_refuses_a_bad_one(tmp_path, capsys):
    source = tmp_path / "m.py"
    source.write_text("import torch\n\ndef build():\n    torch.manual_seed(0)\n"
                      "    return torch.nn.Linear(256, 256).eval(), (torch.randn(8, 256),)\n")
    code = main(["compile", f"{source}:build", "-o", str(tmp_path / "b"), "--targets", "openvino:cpu",
                 "--accuracy", "0.01", "--precisions", "int8w", "--tune", "off", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out)["plan"]
    assert plan["accuracy"]["bound"] == 0.01 and plan["segments"][0]["target"] == "openvino:cpu@int8w"
    assert main(["compile", f"{source}:build", "-o", str(tmp_path / "c"), "--targets", "openvino:cpu",
                 "--accuracy", "psnr=3"]) == 2
    assert "accuracy metric 'psnr' is not one hetcc measures" in capsys.readouterr().err


# ---- load-time check of a cross-compiled segment in a lower precision ------------------------

def test_a_cross_compiled_low_precision_segment_is_checked_against_its_limit_on_load(tmp_path):
    from safetensors.torch import save_file

    from hetcc.bundle import _verify_on_load
    from hetcc.errors import BundleError
    from hetcc.verify import Verification

    x = torch.randn(16, 8)
    save_file({"in0": x, "out0": x * 2}, str(tmp_path / "check.safetensors"))
    check = {"inputs": 1, "outputs": ["y"], "tolerances": {"float32": [1e-4, 1e-4]}, "relative_limit": 0.05}
    pending = Verification(verified=False, check=check, check_file=str(tmp_path / "check.safetensors"))
    done = _verify_on_load("seg0", "tensorrt:cuda:0@fp16", lambda a: [a * 2.02], pending)
    assert done.verified and done.relative_error == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(BundleError, match="gives wrong results on this one: output y is off the torch "
                                          "reference by relative error 0.1"):
        _verify_on_load("seg0", "tensorrt:cuda:0@fp16", lambda a: [a * 2.2], pending)
    corrupt = Verification(verified=False, check={**check, "relative_limit": "1e9"}, check_file=pending.check_file)
    with pytest.raises(BundleError, match="relative_limit '1e9' is not a positive number for a target in a "
                                          "lower precision; the bundle is corrupt"):
        _verify_on_load("seg0", "tensorrt:cuda:0@fp16", lambda a: [a * 2], corrupt)
    with pytest.raises(BundleError, match="relative_limit 0.05 is not a positive number for a target in a lower"):
        _verify_on_load("seg0", "tensorrt:cuda:0", lambda a: [a * 2.02], pending)  # fp32 keeps its tolerances


def test_the_roofline_moves_a_lower_precision_segment_to_its_narrower_bytes():
    from hetcc.explain.plot import png_bytes, segment_bounds

    seg = {"name": "seg0", "target": "openvino:cpu@int8w", "precision": "int8w", "flops": 4e9,
           "bytes_moved": 5e7, "precision_bytes_moved": 2e7, "resident_bytes": 4e7, "measured_seconds": 0.01,
           "ops": {"aten.mm.default": 4}}
    (row,) = segment_bounds({"segments": [seg]})
    assert row["bytes_moved"] == 5e7 - 3e7 and row["intensity"] == pytest.approx(4e9 / 2e7)
    assert row["fp32_intensity"] == pytest.approx(4e9 / 5e7) and row["precision"] == "int8w"
    (fp32,) = segment_bounds({"segments": [{**seg, "target": "openvino:cpu", "precision_bytes_moved": None}]})
    assert fp32["bytes_moved"] == 5e7  # the plan's own precision: nothing narrower
    (bad,) = segment_bounds({"segments": [{**seg, "precision_bytes_moved": 9e9}]})  # more than fp32: ignored
    assert bad["bytes_moved"] == 5e7
    assert png_bytes({"segments": [seg]}).startswith(b"\x89PNG")


# ---- language models -------------------------------------------------------------------------

def test_a_language_models_phases_take_the_budget_each():
    """compile_lm passes accuracy= to both phases; each is checked on its own outputs (logits and
    the cache), and generation runs on what was kept."""
    pytest.importorskip("transformers")
    import llm

    model, _ = llm.build("llama", "tiny")
    # OpenVINO's int8 weights alone: with fp32 runtimes beside them, whether the cost model prefers
    # int8 for a model this small depends on the CPU (without VNNI int8 computes no faster)
    lm = hetcc.compile_lm(model, prompt_len=8, max_new_tokens=4, targets=["openvino:cpu"], precisions=["int8w"],
                          accuracy=0.05, tune="off")
    for phase in (lm.prefill, lm.decode):
        assert phase.plan.accuracy["bound"] == 0.05 and phase.plan.accuracy["measured"] <= 0.05
    assert any(s.precision for phase in (lm.prefill, lm.decode) for s in phase.plan.segments)
    out = lm.generate([[5, 6, 7]])
    assert len(out.tokens[0]) == 4


def test_a_segment_cut_right_after_a_view_gets_an_input_of_its_own_and_loads_on_torch():
    """Partial give-ups cut models mid-layer; a torch:cpu segment whose input was a view of another
    value was exported with a guard on its ``_base``, which loading a torch segment refuses."""
    from hetcc.capture import capture
    from hetcc.program import build_program

    class Cut(nn.Module):
        def forward(self, x):
            return torch.relu((x * 2).view(4, 8, 2).transpose(1, 2)) + 1

    x = torch.randn(4, 16)
    captured = capture(Cut(), (x,))
    nodes = [n.name for n in captured.graph.nodes if n.op == "call_function"]
    relu = next(n for n in nodes if n.startswith("relu"))
    after = nodes[nodes.index(relu):]
    program = build_program("seg1", captured.graph, after, captured.weights, captured.values,
                            captured.dynamic_dims, captured.dim_ranges)
    (name,), (given,) = program.input_names, program.example_inputs
    assert captured.values[name]._base is not None  # the reference run's value: a view of mul's output
    assert given._base is None and given.stride() == captured.values[name].stride()
    assert torch.equal(given, captured.values[name])
    cm = hetcc.compile(Cut(), (x,), targets=["onnxruntime:cpu", "torch:cpu"],
                       pins={nodes[0]: "onnxruntime:cpu", relu: "torch:cpu"}, tune="off")
    assert [s.target for s in cm.plan.segments] == ["onnxruntime:cpu", "torch:cpu"]
    assert torch.equal(cm(x), Cut()(x))


def test_restricting_to_a_target_can_keep_a_second_one():
    from hetcc.target import Target
    from hetcc.passes.capability import Candidates

    targets = [Target.parse(t) for t in ("onnxruntime:cpu", "torch:cpu", "onnxruntime:cpu@int8")]
    allowed = Candidates(3, targets)
    allowed.forbid(2, 2, "int8 refuses it")
    only = allowed.restricted_to(2, "timing it alone", also=0)
    assert only.allowed == [[True, False, True], [True, False, True], [True, True, False]]
    assert only.reasons[0] == {"torch:cpu": "timing it alone"}
    assert allowed.restricted_to(2).allowed[0] == [False, False, True]


# ---- capacity per precision ----------------------------------------------------------------

def test_a_memory_limit_fp32_weights_break_is_met_in_int8():
    model, inputs = mlp.build(batch=16)
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    limits = {"onnxruntime:cpu": 0.5 * fp32}  # shared by onnxruntime:cpu and its int8 variant
    # without a budget, half the weights must leave ONNX Runtime for torch
    plain = hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"], memory_limits=limits,
                          tune="off")
    assert "torch:cpu" in {s.target for s in plain.plan.segments}
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu", "torch:cpu"], memory_limits=limits,
                       accuracy=0.05, tune="off")
    on_ort = [s for s in cm.plan.segments if s.target.startswith("onnxruntime")]
    assert {s.target for s in cm.plan.segments} == {"onnxruntime:cpu@int8"}, cm.plan.summary()
    # what the plan says it keeps resident: int8 weights, a quarter of fp32 (biases too, as priced)
    held = sum(s.resident_bytes for s in on_ort)
    assert held <= limits["onnxruntime:cpu"] and held == pytest.approx(fp32 / 4, rel=0.02)


def test_resident_bytes_per_target_follow_each_targets_precision():
    from hetcc.cost_model.precision import resident_held

    table = NodeFacts("embedding", "aten.embedding.default", "data", 0, 64, 64, 4000, holds_for="data",
                      narrowable_bytes=4000)
    weight = NodeFacts("permute", "aten.permute.default", "view", 0, 0, 0, 4096, holds_for="matmul",
                       narrowable_bytes=4096)
    bias = NodeFacts("addmm", "aten.addmm.default", "matmul", 10, 64, 64, 256, holds_for="matmul")
    assert resident_held(weight, None) == 4096 and resident_held(weight, "int8") == 1024
    assert resident_held(weight, "int8w") == 4096 * 1.125 / 4 and resident_held(weight, "bf16") == 2048
    # both int8 paths store large tables narrow too; static int8 (int8s) quantizes products only
    assert resident_held(table, "int8w") == 4000 * 1.125 / 4 and resident_held(table, "int8") == 1000
    assert resident_held(table, "int8s") == 4000
    assert resident_held(bias, "int8") == 256 and resident_held(bias, "bf16") == 256  # biases stay fp32


def test_facts_say_which_resident_bytes_a_lower_precision_narrows():
    from hetcc.capture import capture
    from hetcc.passes.facts import graph_facts

    cap = capture(*tables.build(8))
    facts = graph_facts(cap.graph, cap.values, cap.weights)
    held = {f.name: (f.holds_for, f.resident_bytes, f.narrowable_bytes) for f in facts.values() if f.resident_bytes}
    table, positions, weight, bias = 2048 * 64 * 4, 16 * 64 * 4, 64 * 64 * 4, 64 * 4
    assert sorted(held.values()) == sorted([("data", table, table), ("data", positions, 0),
                                            ("matmul", weight, weight), ("matmul", bias, 0)]), held


class ConvStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def test_openvino_int8_weights_shrink_a_convolutions_file_but_not_its_memory():
    """The CPU plugin unpacks int8 convolution weights to f32 when it compiles
    (backends/openvino_weights.py), so the plan's resident bytes stay at fp32 while the IR is int8."""
    torch.manual_seed(0)
    model, x = ConvStack().eval(), torch.randn(1, 128, 16, 16)
    cm = hetcc.compile(model, (x,), targets=["openvino:cpu@int8w"], accuracy=0.03, tune="off")
    (seg,) = cm.plan.segments
    assert cm.artifacts[seg.name].meta["compressed_convolutions"] == 2
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert seg.artifact_bytes < 0.3 * fp32 and seg.relative_error < 0.03
    assert seg.resident_bytes == pytest.approx(fp32, rel=0.02)
