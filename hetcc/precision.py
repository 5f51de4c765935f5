"""Precision as a placement choice: which lower-precision targets a compile offers the solver, and
the whole model's check against the accuracy budget (docs/precision.md).

A lower precision is a target of its own (``onnxruntime:cpu@int8``): the cost model prices it
(cost_model/precision.py), capability is its backend's, and the solver picks (segment, target,
precision) in one problem. compile() checks each lower-precision segment against the budget's
``segment_limit`` when it lowers it; this module's ``whole_model_error`` then measures the budget's
metric on the stitched model's outputs, since errors compound across segments, and
``drop_for_budget`` gives up (part of) the worst choice when the budget breaks; ``give_up`` does the
same for a segment beyond its own limit, keeping the share of its units the limit allows. Which
units keep it, the segment's first ones or its last, compile() measures (``ends``, ``better_end``):
in a decoder the first layer can move the logits twice as much as the last."""
from __future__ import annotations

import logging
import math

from hetcc.backends.registry import precision_missing, precisions_of
from hetcc.errors import AccuracyError, HetccError
from hetcc.target import PRECISIONS, Target

log = logging.getLogger("hetcc")

CALIBRATED = frozenset({"int8s"})
"""Precisions whose activation scales come from calibration batches (compile(calibration=...)):
offered only where the user gave some."""

FITTED = frozenset({"int8", "int8u"})
"""Precisions whose int8 weights are rounded to fit calibration batches where the user gives some
(ONNX Runtime's dynamic int8: backends/onnx_rounding.py), and to nearest without."""


def lower_precisions(wanted: list[Target], backends: dict, budget, chosen=None,
                     calibrated: bool = False) -> list[Target]:
    """The lower-precision targets to add to ``wanted``: each listed target in each precision its
    backend runs there (only those in ``chosen``, if given; those of CALIBRATED only when
    ``calibrated``). None without a budget, where a listed lower-precision target, ``chosen`` or
    calibration batches are an error."""
    listed = [t for t in wanted if t.precision]
    needs = [t for t in listed if t.precision in CALIBRATED]
    if needs and not calibrated:
        raise HetccError(f"target {needs[0]} runs in static int8, whose activation scales come from "
                         "calibration batches: give calibration=[batch, ...] (each batch given as the "
                         "example inputs are; CLI --calibration FILE.py:FUNCTION), or write the target "
                         f"as {needs[0].base}@int8 (activations quantized on each call)")
    if budget is None and calibrated:
        raise HetccError("calibration= serves int8 (static int8's scales, and how int8 weights are "
                         "rounded), which changes the model's results: give an accuracy budget too, "
                         "e.g. accuracy=0.05 (CLI --accuracy 0.05)")
    if budget is None:
        if listed:
            raise HetccError(f"target {listed[0]} runs in {listed[0].precision}, which changes the model's "
                             "results: give an accuracy budget, e.g. accuracy=0.01 (outputs within 1 % "
                             "of fp32; CLI --accuracy 0.01), and hetcc checks it")
        if chosen is not None:
            raise HetccError("precisions= (CLI --precisions) chooses among lower precisions, which needs "
                             "an accuracy budget too: add accuracy=0.01 (CLI --accuracy 0.01; or top1=0.99, "
                             "cosine=0.999)")
        return []
    if budget.segment_limit <= 0:  # cosine=1.0: no lower precision can pass a segment's check
        if calibrated:
            raise HetccError(f"accuracy {budget} leaves no room for a lower precision, so calibration "
                             "batches for int8 would go unused; loosen the budget (e.g. "
                             "cosine=0.9999) or leave calibration out")
        if listed:
            raise HetccError(f"accuracy {budget} leaves no room for a lower precision, so target "
                             f"{listed[0]} cannot run; loosen the budget (e.g. cosine=0.9999)")
        return []
    if chosen is not None:
        chosen = [chosen] if isinstance(chosen, str) else list(chosen)
        unknown = [p for p in chosen if p not in PRECISIONS]
        if unknown:
            raise HetccError(f"precisions names {unknown}, which are not precisions hetcc knows; "
                             f"choose among {', '.join(PRECISIONS)}")
        uncalibrated = [p for p in chosen if p in CALIBRATED and not calibrated]
        if uncalibrated:
            raise HetccError(f"precisions names {uncalibrated[0]} (static int8), whose activation scales "
                             "come from calibration batches: give calibration=[batch, ...] too (CLI "
                             "--calibration FILE.py:FUNCTION)")
    added, offered = [], {}
    for target in wanted:
        if target.precision:
            continue
        for precision in precisions_of(backends[target], target):
            if precision in CALIBRATED and not calibrated:
                continue
            offered.setdefault(precision, []).append(str(target))
            variant = target.at(precision)
            if (chosen is None or precision in chosen) and variant not in wanted and variant not in added:
                added.append(variant)
    uses = CALIBRATED | FITTED
    if calibrated and not any(t.precision in uses for t in [*listed, *added]):
        runs = sorted({p for t in wanted if not t.precision for p in uses & set(precisions_of(backends[t], t))})
        missing = [m for t in wanted if not t.precision
                   for m in [precision_missing(backends[t], t, "int8s")] if m]
        raise HetccError("calibration= (CLI --calibration) is for static int8 (int8s) and ONNX Runtime's "
                         "int8 (int8, int8u), which "
                         + (f"precisions= (CLI --precisions) leaves out: add {' or '.join(runs)} to it" if runs else
                            f"none of the targets runs here ({missing[0]})" if missing else
                            "none of the targets runs here (onnxruntime:cpu does, and openvino:cpu's "
                            "int8s with NNCF installed): add one to the targets")
                         + ", or leave calibration out")
    if chosen is not None and not added and not listed:
        said = "; ".join(f"{p} on {', '.join(ts)}" for p, ts in offered.items()) or "none"
        raise HetccError(f"none of the targets offers {', '.join(chosen) or 'the precisions asked for (none)'} "
                         f"here (they offer: {said}); choose among those, or add a target that runs it")
    return added


def check_precision_options(options: dict) -> None:
    """A backend option that quantizes (precision int8, int8w...) changes results behind the
    budget's back: it is written as a target (``onnxruntime:cpu@int8``) with ``accuracy=``."""
    for backend, given in options.items():
        precision = (given or {}).get("precision")
        if precision in PRECISIONS and precision not in ("fp16", "bf16"):
            raise HetccError(f"backend option {backend}.precision={precision} quantizes every segment "
                             f"on {backend} without an accuracy budget; write the target as "
                             f"{backend}:<device>@{precision} and give accuracy= (CLI --accuracy), or give "
                             "accuracy= alone and let hetcc choose (docs/precision.md)")


def whole_model_error(runtime, captured, budget, flat=None, values=None) -> float:
    """The budget's metric on the stitched segments' outputs (a hetcc.runtime.Runtime) against the
    fp32 reference, on the example inputs, or on ``flat`` inputs whose reference run gave ``values``
    (a validation batch: hetcc/validation.py). The model's state is left as it was."""
    values = captured.values if values is None else values
    flat = [values[n] for n in captured.user_inputs] if flat is None else flat
    got = runtime.flat_outputs([x.clone() for x in flat])
    want = [values.get(n) if n is not None else None for n in captured.outputs]
    return budget.measure(got, want)


def worst_segment(segments):
    """The lower-precision segment to drop first: the one whose own outputs moved the most."""
    low = [s for s in segments if s.target.precision]
    if not low:
        return None
    return max(low, key=lambda s: (s.verification.relative_error or 0.0, len(s.spec.units)))


def ends(units: list[int], keep: float) -> list[list[int]]:
    """The units a partial give-up may keep in the lower precision: the first ``keep`` share of
    ``units`` and the last (one piece when they are the same: none, or all)."""
    kept = int(keep * len(units))
    if kept in (0, len(units)):
        return [units[:kept]]
    return [units[:kept], units[len(units) - kept:]]


def better_end(pieces: list[list[int]], rate, by: str = "saving") -> list[int]:
    """The piece to keep of ``ends``: ``rate(i, piece)`` gives (its own relative error, whether
    that is within the segment limit, the seconds the cost model says it saves). A piece within the
    limit beats one beyond it; of two within, the one that saves more (``by="saving"``: a segment
    beyond its own limit, where the piece kept only has to hold that limit) or the one that moved
    less (``by="error"``: the whole model missed, and the segment was within its limit, so both
    pieces nearly always are); of two beyond, the one that moved less (the next give-up starts
    from it). An error that is not a number counts as the worst."""
    if len(pieces) == 1:
        return pieces[0]
    rated = []
    for i, piece in enumerate(pieces):
        error, within, saves = rate(i, piece)
        rated.append((piece, error if math.isfinite(error) else math.inf, within, saves))
    within = [r for r in rated if r[2]]
    if within and by == "saving":
        return max(within, key=lambda r: r[3])[0]
    return min(within or rated, key=lambda r: r[1])[0]


def give_up(candidates, units: list[int], target: int, kept: list[int], why: str) -> int:
    """Ban target index ``target`` for ``units`` but ``kept`` (a plan in mixed precision: some
    layers in it, the rest not); returns how many units kept it."""
    keep = set(kept)
    for u in units:
        if u not in keep:
            candidates.ban(u, target, why)
    return len(keep)


def end_given_up(kept: list[int], units: list[int]) -> str:
    """Which units of ``units`` gave the precision up when ``kept`` keep it: "first", "last", or
    "all" (a plan's accuracy["dropped"] entries say so)."""
    if not kept:
        return "all"
    return "first" if kept[-1] == units[-1] else "last"


def described(kept: list[int], units: list[int]) -> str:
    """Which units of ``units`` gave the precision up, for a note: "the last 39 of 184"."""
    end = end_given_up(kept, units)
    return f"all {len(units)}" if end == "all" else f"the {end} {len(units) - len(kept)} of {len(units)}"


def give_up_all(candidates, order: list[Target], units: int, why: str) -> None:
    """Ban every lower-precision target for every unit."""
    for u in range(units):
        for t, target in enumerate(order):
            if target.precision and candidates.allowed[u][t]:
                candidates.ban(u, t, why)


def drop_for_budget(segments, accuracy: float, budget, candidates, drops: list, partial: bool,
                    choose=None, where: str = "the example inputs") -> str:
    """The whole model measured ``accuracy`` on ``where`` (the example inputs, or a validation
    batch), beyond ``budget``: give up the precision of the worst lower-precision segment for some
    of its units (``partial``: all but the share the budget leaves, AccuracyBudget.share_within,
    keeping the piece of ``ends`` that ``choose(segment, pieces)`` picks, or the first without it;
    else all of them), record it in ``drops``, and return the plan's note. AccuracyError when no
    segment is in a lower precision."""
    worst = worst_segment(segments)
    if worst is None:
        ran = "; ".join(f"{s.program.name} on {s.target}: max abs error {s.verification.max_error or 0.0:.2g}"
                        for s in segments)
        raise AccuracyError(
            f"the model's outputs miss the accuracy budget ({budget}): {budget.metric} is {accuracy:.10g} on "
            f"{where} even with every segment in the model's own precision ({ran}), so the "
            f"runtimes' own rounding is beyond it. Loosen the budget "
            f"{'above' if budget.metric == 'rel_error' else 'below'} {accuracy:.10g}, or list fewer targets "
            "(drop the one furthest from torch)")
    units = list(worst.spec.units)
    pieces = ends(units, budget.share_within(accuracy) if partial else 0.0)
    kept = choose(worst, pieces) if choose is not None else pieces[0]
    give_up(candidates, units, worst.spec.target, kept,
            f"with {worst.target} here the whole model missed the accuracy budget ({budget}) at {accuracy:.4g}")
    drops.append({"segment": worst.program.name, "target": str(worst.target), "measured": accuracy,
                  **({"on": where} if where != "the example inputs" else {}),
                  "segment_relative_error": worst.verification.relative_error,
                  "units": len(units) - len(kept), "of": len(units), "gave_up": end_given_up(kept, units)})
    what = (f"{worst.target} for {worst.program.name}" if not kept else
            f"{worst.target} for {described(kept, units)} units of {worst.program.name}")
    log.info("whole model at %s = %.4g misses the budget (%s); giving up %s", budget.metric, accuracy,
             budget, what)
    return (f"gave up {what}: with it the whole model's {budget.metric} was {accuracy:.4g} on {where}, beyond the "
            f"budget ({budget}); its own outputs were off by relative error "
            f"{worst.verification.relative_error or 0.0:.3g}")
