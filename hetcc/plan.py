"""The Plan: which segment runs where, its numbers, and why nodes fell back."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SegmentPlan:
    name: str
    target: str
    nodes: tuple[str, ...]
    """Graph nodes in this segment (core ATen node names)."""
    inputs: tuple[str, ...]
    """Values the segment reads, in call order."""
    outputs: tuple[str, ...]
    flops: float
    bytes_moved: int
    resident_bytes: int
    """Capacity footprint: weights this segment keeps resident on its target, at its precision
    (int8 weights a quarter of fp32), and resident inputs such as a KV cache."""
    predicted_seconds: float
    """Cost-model time of the segment's nodes (not counting hand-overs)."""
    ops: dict[str, int] = field(default_factory=dict)
    """ATen op -> count, for reading the plan."""
    fell_back: dict[str, str] = field(default_factory=dict)
    """Node -> why it is not on a target listed before this one."""
    max_error: float | None = None
    """Largest absolute difference from the torch reference seen in verification."""
    lower_seconds: float | None = None
    measured_seconds: float | None = None
    """Median time of the lowered segment on the example inputs, measured at compile time."""
    modules: tuple[str, ...] = ()
    """The model's submodules this segment runs, rolled up to the fewest paths
    (``model.encoder.layer.0-3``); one it runs only part of says how much (hetcc/module_paths.py)."""
    runner_up: str | None = None
    """The target that would have cost least after this one for the same nodes (None: no other)."""
    runner_up_seconds: float | None = None
    """Predicted time of this segment's nodes on the runner-up; None where it refuses some."""
    runner_up_why: str = ""
    """Why the runner-up lost: slower, hand-overs, does not fit, or refused and why."""
    precision: str | None = None
    """The precision the segment ran and was verified in: its target's lower precision
    (``onnxruntime:cpu@int8``: int8), else its backend's precision option where it has one (fp32,
    fp16, bf16; it may differ from the one asked for, and the plan's notes then say so)."""
    precision_bytes_moved: float | None = None
    """``bytes_moved`` in the segment's lower precision (weights at its width: what the roofline
    plot places it by); None for a segment in the model's own precision."""
    artifact_bytes: int | None = None
    """Bytes of the lowered files on disk (its weights as the runtime stores them: about
    ``resident_bytes`` for int8 weights, where a bf16 segment's files stay fp32); None where
    unknown."""
    relative_error: float | None = None
    """‖y − y_ref‖ / ‖y_ref‖ of its worst output, for a segment in a lower precision (checked
    against the accuracy budget's segment limit); None for one checked by tolerances."""

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0


@dataclass(frozen=True)
class Plan:
    targets: tuple[str, ...]
    segments: tuple[SegmentPlan, ...]
    objective: str
    predicted_seconds: float
    """Cost-model objective of the whole placement, hand-overs included."""
    lower_bound: float
    optimal: bool
    solver: str
    solve_seconds: float
    attempts: int = 1
    """How many placements were tried (a lowering or verification failure causes a re-solve)."""
    notes: tuple[str, ...] = ()
    output_names: dict[str, str] = field(default_factory=dict)
    """Graph value -> the model's own name for that output (``last_hidden_state``, ``[0]``)."""
    producers: dict[str, str] = field(default_factory=dict)
    """Graph value -> module path of the node that makes it ('' for the model's own forward), for
    each value a segment hands over or the model returns."""
    accuracy: dict | None = None
    """compile(accuracy=...): {metric, bound, measured (the whole model on the example inputs),
    dropped (each lower-precision choice given up for the budget: segment, target, measured,
    segment_relative_error, and ``on``: "validation batch N" where it broke there), and with
    compile(validation=...) validation_batches and measured_validation (the whole model's worst
    over them), calibration_batches where a segment runs in static int8 (the user's batches
    its scales came from; bundles from before 2026-12-03 counted the example inputs too, which were
    then among them) and fitted_batches where a segment's int8 weights were rounded to fit the user's
    calibration batches (backends/onnx_rounding.py)}; None without a budget."""
    candidates: tuple[dict, ...] = ()
    """Plans compile-time tuning considered (hetcc/tune.py), each {name, targets,
    predicted_seconds, measured_seconds (the median of its timed calls, what tuning ranks by; or
    None), fast_end_seconds (their p10), chosen, solver (the cost model's own choice), rounds,
    note}; empty when nothing was tuned. Bundles from before 2026-12-02 hold the fast end in
    measured_seconds."""

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.segments)

    def targets_used(self) -> list[str]:
        return sorted({s.target for s in self.segments}, key=self.targets.index)

    def summary(self) -> str:
        """A plain-text table of the plan, one row per segment, with fall-back reasons under it,
        then per segment the modules it runs, its runner-up and what it hands over."""
        from hetcc.explain.text import why_lines

        head = ["segment", "target", "nodes", "MFLOP", "MB moved", "OI", "CF MB", "pred ms", "meas ms",
                "max err"] + (["rel err", "file MB"] if self.accuracy else [])
        rows = []
        for s in self.segments:
            rows.append([
                s.name, s.target, str(len(s.nodes)), f"{s.flops / 1e6:.2f}",
                f"{s.bytes_moved / 1e6:.2f}", f"{s.intensity:.1f}", f"{s.resident_bytes / 1e6:.2f}",
                f"{s.predicted_seconds * 1e3:.3f}",
                "-" if s.measured_seconds is None else f"{s.measured_seconds * 1e3:.3f}",
                "-" if s.max_error is None else f"{s.max_error:.1e}",
            ] + (["-" if s.relative_error is None else f"{s.relative_error:.1e}",
                  "-" if s.artifact_bytes is None else f"{s.artifact_bytes / 1e6:.2f}"] if self.accuracy else []))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        status = "optimal" if self.optimal else f"within {self._gap():.1%} of optimal"
        lines.append(
            f"predicted {self.predicted_seconds * 1e3:.3f} ms ({self.objective}, {status}, "
            f"solver {self.solver} in {self.solve_seconds * 1e3:.0f} ms, {self.attempts} attempt(s))")
        if self.accuracy:
            lines.append(accuracy_line(self.accuracy))
        for s in self.segments:
            reasons: dict[str, list[str]] = {}
            for node, why in s.fell_back.items():
                reasons.setdefault(why, []).append(node)
            for why, nodes in reasons.items():
                shown = ", ".join(nodes[:4]) + (f" and {len(nodes) - 4} more" if len(nodes) > 4 else "")
                lines.append(f"  {s.name}: {shown} on {s.target} because {why}")
        lines.extend(why_lines(self.to_dict()))
        lines.extend(f"note: {n}" for n in self.notes)
        if self.candidates:
            from hetcc.tune import candidate_lines

            lines.extend(candidate_lines(self.candidates))
        return "\n".join(lines)

    def _gap(self) -> float:
        if self.predicted_seconds <= 0:
            return 0.0
        return max(0.0, (self.predicted_seconds - self.lower_bound) / self.predicted_seconds)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def accuracy_line(accuracy: dict) -> str:
    """One line on the accuracy budget and what the whole model measured against it (from a
    report someone else may have written: anything malformed reads as unknown)."""
    def number(value):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    metric, bound, measured = str(accuracy.get("metric")), number(accuracy.get("bound")), number(accuracy.get("measured"))
    sign = "<=" if metric == "rel_error" else ">="
    got = "not measured (a segment runs on a device that is not here)" if measured is None \
        else f"{measured:.4g} on the example inputs"
    checked, validated = accuracy.get("validation_batches"), number(accuracy.get("measured_validation"))
    if measured is not None and validated is not None and isinstance(checked, int) and not isinstance(checked, bool):
        got += f", {validated:.4g} at worst on {checked} validation batch{'' if checked == 1 else 'es'}"
    dropped = accuracy.get("dropped")
    dropped = len(dropped) if isinstance(dropped, list) else 0
    batches, fitted = (_count(accuracy.get(k)) for k in ("calibration_batches", "fitted_batches"))
    return (f"accuracy: {metric} {sign} {'?' if bound is None else format(bound, 'g')} against fp32 "
            f"PyTorch; the whole model: {got}"
            + (f"; {dropped} lower-precision choice(s) given up for it" if dropped else "")
            + (f"; static int8 scales from {batches} calibration batch(es)" if batches else "")
            + (f"; int8 weights rounded to fit {fitted} calibration batch(es)" if fitted else ""))


def _count(value) -> int | None:
    """A positive count read from a plan (a bundle's JSON), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
