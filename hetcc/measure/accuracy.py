"""Predicted against measured: how close the cost model's times come to what the runtimes take.

A *point* is one segment of a compiled plan, or one whole plan (end to end), with the time the cost
model predicted and the time measured on this machine. The statistics are the ones issue 4 asks
for: the absolute percentage error of each point, its median over a set of points, and Spearman's
rank correlation (does the model order the points as the machine does?). ``collect`` measures the
points of some compiled plans of one model; benchmarks/bench_cost_model.py runs it over many models
and targets (docs/cost_model.md, "Predicted against measured").

What a prediction counts, so that it is compared with what the clock sees:

- a segment: the roofline time of its nodes (``SegmentPlan.predicted_seconds``) plus the cost of
  entering it once: the target's ``call_overhead`` and the modelled hand-over latency of each input
  (``HANDOFF_LATENCY``). The clock (``Runtime.timed_call``) times the runtime's call, which wraps
  the inputs, runs the segment and unwraps the outputs.
- end to end: ``Plan.predicted_seconds``, the solver's objective (nodes, hand-overs and call
  overheads). The clock times the whole call, hetcc's own input checks included.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from hetcc.errors import HetccError

SEGMENT, END_TO_END = "segment", "end to end"
CALLS_PER_TURN = 3
REGIMES = ("compute", "memory", "overhead")


@dataclass(frozen=True)
class Point:
    model: str
    plan: str
    """The compiled variant, e.g. 'onnxruntime:cpu' or a forced split's label."""
    target: str
    """Where it ran: the segment's target; for a whole plan its one target, or 'mixed'."""
    kind: str
    """SEGMENT or END_TO_END."""
    segment: str
    """Segment name ('' for a whole plan)."""
    predicted: float
    """Seconds the cost model predicts."""
    measured: float
    """Seconds measured: the fast end (p10) of the calls, what a quiet machine gives."""
    measured_p50: float
    """Seconds measured: the median of the calls."""
    regime: str
    """What dominates the prediction: compute, memory (bandwidth) or overhead (calls, dispatch)."""
    op_class: str
    """The op class with the largest share of the predicted node time ('' when none)."""
    nodes: int
    segments_predicted: float | None = None
    """End to end only: the sum of the plan's segment predictions. Where Plan.predicted_seconds
    exceeds it by much, the solver charged more for entering segments than once per segment."""
    segments_measured: float | None = None
    """End to end only: the sum of the segments' fast ends (the rest of the call is hetcc's own)."""

    @property
    def ape(self) -> float:
        return ape(self.predicted, self.measured)

    def to_dict(self) -> dict:
        return {**asdict(self), "ape": self.ape, "ape_p50": ape(self.predicted, self.measured_p50)}


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error of a prediction, as a fraction of the measured time."""
    if not measured > 0:
        raise HetccError(f"a measured time must be positive to compare against, got {measured!r}")
    return abs(predicted - measured) / measured


def spearman(predicted, measured) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr); nan with fewer than 3 points or when
    either side is constant (no ranking to compare)."""
    from scipy.stats import spearmanr

    if len(predicted) != len(measured):
        raise HetccError(f"spearman needs pairs: {len(predicted)} predictions, {len(measured)} measurements")
    if len(predicted) < 3 or len(set(predicted)) < 2 or len(set(measured)) < 2:
        return math.nan
    return float(spearmanr(predicted, measured).statistic)


def summarize(points, measured: str = "measured") -> dict:
    """count, median APE, Spearman rho and the median ratio predicted/measured (above 1: the model
    over-predicts) of a set of points, against ``measured`` ('measured' = fast end, or 'measured_p50')."""
    points = list(points)
    if not points:
        return {"count": 0, "median_ape": math.nan, "spearman": math.nan, "median_ratio": math.nan}
    pred = [p.predicted for p in points]
    meas = [getattr(p, measured) for p in points]
    return {"count": len(points),
            "median_ape": statistics.median(ape(a, b) for a, b in zip(pred, meas)),
            "spearman": spearman(pred, meas),
            "median_ratio": statistics.median(a / b for a, b in zip(pred, meas))}


def summaries(points, by: str = "target", measured: str = "measured") -> dict[str, dict]:
    """``summarize`` per value of the field ``by`` (e.g. 'target', 'regime', 'op_class', 'kind')."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(getattr(p, by), []).append(p)
    return {key: summarize(group, measured) for key, group in sorted(groups.items())}


# ---- what a prediction is made of ----

def breakdown(compiled, profiles: dict, devices: dict) -> dict[str, dict]:
    """Per segment: the predicted seconds split into compute-bound nodes, memory-bound nodes and
    overhead (per-node and per-view dispatch plus entering the segment), and seconds per op class.
    ``profiles``: backend -> BackendProfile and ``devices``: target -> DeviceSpec, as compiled."""
    from hetcc import kept_fp32
    from hetcc.backends.registry import arithmetic_here
    from hetcc.cost_model.roofline import node_parts, node_seconds
    from hetcc.module_paths import node_paths
    from hetcc.passes.build_problem import HANDOFF_LATENCY
    from hetcc.target import Target
    from hetcc.passes.facts import graph_facts

    captured = compiled._captured
    facts = graph_facts(captured.graph, captured.values, captured.weights)
    out = {}
    for seg in compiled.plan.segments:
        backend = seg.target.split(":")[0]
        profile, device = profiles[backend], devices[seg.target]
        # a segment in a lower precision reads and computes in it, as compile priced it, but for
        # the share of its products its backend left in fp32 (hetcc/kept_fp32.py)
        precision = Target.parse(seg.target).precision
        priced = {"precision": precision, "arithmetic": arithmetic_here(seg.target)}
        shares = kept_fp32.fp32_shares(compiled.artifacts.get(seg.name), seg.nodes, facts,
                                       node_paths(captured.graph, set(seg.nodes)), precision)
        parts = {regime: 0.0 for regime in REGIMES}
        classes: dict[str, float] = {}
        nodes_seconds = 0.0
        for name in seg.nodes:
            f, share = facts[name], shares.get(name, 0.0)
            for weight, how in ((1.0 - share, priced), (share, {})):
                if weight <= 0:
                    continue
                compute, memory = node_parts(f, device, profile, **how)
                seconds = node_seconds(f, device, profile, **how)
                parts["compute" if compute >= memory else "memory"] += weight * max(compute, memory)
                parts["overhead"] += weight * (seconds - max(compute, memory))
                nodes_seconds += weight * seconds
                if compute or memory:
                    classes[f.op_class] = classes.get(f.op_class, 0.0) + weight * max(compute, memory)
        entry = profile.call_overhead + HANDOFF_LATENCY * len(seg.inputs)
        parts["overhead"] += entry
        out[seg.name] = {"parts": parts, "classes": classes, "entry": entry, "nodes_seconds": nodes_seconds}
    return out


def _label(parts: dict, classes: dict) -> tuple[str, str]:
    regime = max(REGIMES, key=lambda r: parts[r])
    return regime, (max(classes, key=classes.get) if classes else "")


# ---- measuring ----

def collect(model: str, plans: dict, inputs, profiles: dict, devices: dict, *, runs: int = 15,
            seed: int = 0) -> list[Point]:
    """Measure each compiled plan of one model ({label: CompiledModel}) on ``inputs`` with
    hetcc.measure.bench's interleaved method, and return its points: one per segment, one end to
    end. Each plan is measured twice in the same rounds: plainly (end to end) and through
    ``Runtime.timed_call`` (per segment)."""
    from hetcc.measure.bench import measure
    from hetcc.timing import quantile

    fns, timed = {}, {}
    for label, compiled in plans.items():
        fns[label] = compiled
        fns[label + " [steps]"] = compiled
        timed[label + " [steps]"] = compiled.runtime.timed_call
    # 3 calls a turn, as calibration times its cases: the first call after the pause wakes the
    # runtime's threads, and the fast end then comes from warm calls
    samples = measure(fns, inputs, runs=runs, seed=seed, timed=timed, calls=CALLS_PER_TURN)
    points = []
    for label, compiled in plans.items():
        plan, parts = compiled.plan, breakdown(compiled, profiles, devices)
        steps = samples[label + " [steps]"].steps
        whole = {r: 0.0 for r in REGIMES}
        classes: dict[str, float] = {}
        for seg in plan.segments:
            b = parts[seg.name]
            if not math.isclose(b["nodes_seconds"], seg.predicted_seconds, rel_tol=1e-6, abs_tol=1e-12):
                raise HetccError(f"{model} {label} {seg.name}: the plan predicts {seg.predicted_seconds:.3e}s "
                                 f"but its nodes add up to {b['nodes_seconds']:.3e}s with the profiles "
                                 f"given; pass the profiles and devices the plan was compiled with")
            for r in REGIMES:
                whole[r] += b["parts"][r]
            for c, s in b["classes"].items():
                classes[c] = classes.get(c, 0.0) + s
            regime, op_class = _label(b["parts"], b["classes"])
            took = steps[seg.name]
            points.append(Point(model, label, seg.target, SEGMENT, seg.name,
                                seg.predicted_seconds + b["entry"], quantile(took, 0.1),
                                quantile(took, 0.5), regime, op_class, len(seg.nodes)))
        used = plan.targets_used()
        regime, op_class = _label(whole, classes)
        calls = samples[label].calls
        mine = points[-len(plan.segments):]
        points.append(Point(model, label, used[0] if len(used) == 1 else "mixed", END_TO_END, "",
                            plan.predicted_seconds, quantile(calls, 0.1), quantile(calls, 0.5),
                            regime, op_class, sum(len(s.nodes) for s in plan.segments),
                            sum(p.predicted for p in mine), sum(p.measured for p in mine)))
    return points
