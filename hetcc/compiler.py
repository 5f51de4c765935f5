"""compile(): capture -> facts -> capability -> cost -> solve -> segment -> lower + verify -> run.

A segment that fails to lower or verify is logged and narrowed down (hetcc/narrow.py), the nodes
that fail are marked unsupported on that target, and the placement is solved again; torch:cpu is always there as the fallback of last resort, so a
model that eager PyTorch can run always compiles, and never to a wrong result.
"""
from __future__ import annotations

import logging
import math
import shutil
import statistics
import tempfile
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from hetcc.backends.base import Artifact
from hetcc.backends.options import check_backend_options
from hetcc.backends.registry import arithmetic_of, resolve
from hetcc.calibration_batches import CalibrationBatches, check_batches, units_allowing
from hetcc.validation import ValidationBatches
from hetcc.capture import capture
from hetcc.cost_model.devices import this_cpu
from hetcc.cost_model.planning import ACCELERATOR
from hetcc.cost_model.precision import bytes_moved as narrowed
from hetcc.cost_model.profiles import calibrated, profile_for
from hetcc.cost_model.target_devices import device_for_target, profile_name
from hetcc.error_budget import AccuracyBudget
from hetcc.errors import (
    DeviceNotHere,
    HetccError,
    InternalError,
    LoweringError,
    PlacementError,
    SegmentError,
    TargetError,
    readable,
)
from hetcc.fallback import Limit, fallen_back
from hetcc import kept_fp32
from hetcc.module_paths import ModulePaths, node_paths, output_names
from hetcc.passes.alternatives import RunnerUp, runner_up
from hetcc.narrow import NARROW_BUDGET, describe, narrow
from hetcc.passes.build_problem import TargetInfo, build_problem
from hetcc.passes.capability import candidates_for
from hetcc.passes.facts import graph_facts
from hetcc.passes.segments import form_segments
from hetcc.passes.solve import solve
from hetcc.passes.units import placement_units
from hetcc.plan import Plan, SegmentPlan
from hetcc.precision import (
    CALIBRATED,
    FITTED,
    better_end,
    check_precision_options,
    described,
    drop_for_budget,
    end_given_up,
    ends,
    give_up,
    give_up_all,
    lower_precisions,
    whole_model_error,
)
from hetcc.program import build_program
from hetcc.handover import input_locations_of, location_of, parse_output_device
from hetcc.names import dtype_name
from hetcc.runtime import Runtime, Step, TensorSpec
from hetcc.scratch import keep_scratch
from hetcc.target import Target, parse_targets
from hetcc.tune import budget_of, corrected_infos, tune_plan
from hetcc.verify import (
    NAN_POLICIES,
    Tolerances,
    PrecisionMiss,
    Verification,
    compare,
    check_relative,
    compare_relative,
    nan_differences,
    nan_probe_inputs,
)

log = logging.getLogger("hetcc")

OBJECTIVES = ("latency",)
CPU_PROFILES = ("torch", "onnxruntime", "openvino", "iree")
"""Backends whose default profiles were measured on a CPU: on a GPU they get the assumed
vendor-runtime profile of cost_model/planning.py instead."""
FALLBACK = Target("torch", "cpu")
MAX_ATTEMPTS = 8
MAX_DROPS = 8
"""Lower-precision choices given up for the accuracy budget (a segment beyond its limit, or the
whole model beyond the budget) before giving up on lower precisions altogether (one more
placement, in the model's own precision)."""
PARTIAL_DROPS = 3
"""Misses that give up only part of a segment's lower precision (all but the share the budget
leaves, see AccuracyBudget.share_within, at the end precision.better_end picks); later ones give up
the whole segment's."""
SWAP_TRIES = 2
"""Other targets a segment that kept nodes in fp32 is lowered on to see whether one runs its units
for less (kept_fp32.cheaper_targets), the cheapest by the cost model first."""


@dataclass(frozen=True)
class Outcome:
    """What lowering, loading and verifying some nodes on a target came to (once per compile)."""

    artifact: Artifact | None
    """What the backend lowered: its files on disk and its own metadata; None if any step failed."""
    executable: object | None
    """The loaded segment, callable on tensors; None if any step failed."""
    verification: Verification | None
    """What running it against the reference found; None if any step failed."""
    error: str | None
    """Why it failed (the whole reason); None if it worked."""
    seconds: float
    """How long lowering, loading and verifying took."""
    missed: float | None = None
    """It ran, in a lower precision, but beyond the accuracy budget's segment limit: its relative
    error. Not a failure of the runtime, only of that choice."""


@dataclass(frozen=True)
class Lowered:
    """What compiling knows about one segment that lowered and verified."""

    program: object
    """The SegmentProgram (hetcc.program): its graph, names and example inputs."""
    target: Target
    spec: object
    """Its place in the plan (passes/segments.SegmentSpec): the target index and the units."""
    artifact: Artifact
    """The files on disk and the backend's metadata (what a bundle saves)."""
    executable: object
    """The loaded segment, callable on tensors."""
    verification: Verification
    """What running it against the reference found (a bundle saves it beside the artifact)."""
    seconds: float
    """How long lowering, loading and verifying took."""
    added_seconds: float = 0.0
    """What the nodes its backend left in fp32 add to the placement's price (hetcc/kept_fp32.py)."""
    runner_up: tuple | None = None
    """(target, its seconds there, why not): the plan's runner-up where lowering settled it
    (_Session._instead_of_kept): the target it runs in place of, which held the accuracy limit only
    with nodes in fp32, or the one tried in its place that lost."""


class CompiledModel:
    """A model compiled by hetcc: call it like the original model."""

    def __init__(self, runtime: Runtime, plan: Plan, artifacts: dict, captured=None,
                 verifications: dict | None = None):
        self._runtime = runtime
        self.plan = plan
        self.artifacts = artifacts
        """Segment name -> Artifact (files on disk) that the segment was loaded from."""
        self.verifications = verifications or {}
        """Segment name -> Verification: what running it against the PyTorch reference found (at
        compile time, or on load for a segment compiled for a device that was not there)."""
        self._captured = captured

    def __call__(self, *args, **kwargs):
        return self._runtime(*args, **kwargs)

    def reset_state(self) -> None:
        """Put the buffers the model updates in place (a counter, a KV cache) back to their values
        when it was compiled, or when its bundle was saved; nothing to do for other models."""
        self._runtime.reset_state()

    def save(self, path, overwrite: bool = False):
        """Write a deployable bundle directory (see docs/bundle.md); returns its path."""
        from hetcc.bundle import save

        return save(self, path, overwrite=overwrite)

    def not_here(self) -> list[str]:
        """Segments compiled for a device this machine does not have (compile(cross_compile=True))."""
        return [step.name for step in self._runtime.steps if isinstance(step.run, NotHere)]

    @property
    def signature(self) -> str:
        return self._runtime.signature()

    @property
    def runtime(self) -> Runtime:
        """The stitched program behind the call: its ``steps`` (each segment's name, target,
        location, inputs and outputs, in order), ``timed_call`` (outputs and each step's seconds),
        ``call_flat``, ``input_specs``, and ``watch_copies()`` (the host<->GPU copies a call makes)."""
        return self._runtime

    @property
    def output_device(self) -> str:
        """Where calls return their outputs: "cpu" (default), "cuda:N", or "keep" (each output
        stays on the device of the segment that made it: no copy back to the host). Settable."""
        return self._runtime.output_device

    @output_device.setter
    def output_device(self, value) -> None:
        self._runtime.output_device = value

    def __repr__(self) -> str:
        used = ", ".join(self.plan.targets_used())
        return f"<hetcc.CompiledModel {len(self.plan.segments)} segment(s) on {used}; {self.signature}>"


def compile(model, example_inputs, targets=("torch:cpu",), *, objective: str = "latency",
            dynamic_shapes=None, pins: dict | None = None, exclude: dict | None = None,
            rtol: float | None = None, atol: float | None = None, workdir=None,
            profiles: dict | None = None, devices: dict | None = None,
            memory_limits: dict | None = None, measure: bool | None = None,
            backend_options: dict | None = None, cross_compile: bool = False,
            nan: str = "report", strict: bool = False, max_fallback: float | None = None,
            progress=None, example_kwargs: dict | None = None, tune="auto",
            learn: bool = False, output_device: str = "cpu", resident_inputs=(), accuracy=None,
            precisions=None, calibration=None, validation=None) -> CompiledModel:
    """Compile ``model`` for a list of targets and return a callable with the same outputs.

    example_inputs: a tuple of the model's positional inputs, or a dict of keyword inputs (a
        tokenizer's output works as is); example_kwargs: keyword inputs beside positional ones.
        The compiled model is called the same way; keywords may come in any order.

    targets: ordered, earlier preferred on a tie, e.g. ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"].
    dynamic_shapes: as for torch.export.export; dims marked there may vary at call time.
    pins: {submodule path or node name: target} forces those nodes onto a target.
    exclude: {submodule path or node name: [targets]} keeps those nodes off some targets.
    rtol/atol: verification tolerance for floating outputs (defaults per dtype in hetcc.verify).
    profiles: {backend name: BackendProfile} overrides the cost model's backend profiles.
    memory_limits: {target: bytes} caps the resident weights a target may hold.
    backend_options: {backend name: {option: value}}, e.g. {"openvino": {"precision": "bf16"}}
        (OpenVINO runs in fp32 unless asked otherwise).
    tune: "auto" (default), "off", or a budget in seconds. Besides the cost model's plan, build
        each listed target's plan alone (torch:cpu takes what that target cannot run), time them
        all on the example inputs, interleaved, and keep the fastest; the plan's ``candidates``
        record predicted and measured times. "auto" spends at most ~30 s (timing at least 2 s,
        even after a long build) and skips a candidate predicted over 2x slower than the best; a
        number builds every candidate while that many seconds last (a build already started
        finishes, and timing runs at least 3 rounds).
        "off" trusts the cost model (quickest compile). docs/cost_model.md, "Tuning".
    learn: also fold what tuning measured into the cost model's corrections file (per runtime,
        measured / predicted time; beside the calibration, never in it), which later compiles
        read: they then choose as this measurement did without measuring. Off by default: it
        writes to $HETCC_CORRECTIONS, beside $HETCC_PROFILE, or to the cache dir.
    measure: the older name of ``tune``: True is "auto", False is "off".
    nan: each segment is also run with NaN in its floating-point inputs. "report" (default) keeps a
        runtime that turns NaN into numbers where torch propagates it (OpenVINO's ReLU does, as its
        own whole-model path does) and lists it in the plan's notes; "require" treats that as a
        wrong result, so the part falls back to a runtime that propagates NaN.
    resident_inputs: names (or name prefixes) of inputs that stay on the device reading them from
        call to call (a decoder's KV cache): the plan charges no copy of them per call and counts
        them against that target's memory (memory_limits), as ``hetcc.predict`` does.
    accuracy: an accuracy budget, which lets hetcc run segments in lower precisions: a relative
        error (0.01: outputs within 1 % of the fp32 reference, ‖y − y_ref‖ / ‖y_ref‖), or
        'rel_error=0.01', 'cosine=0.999', 'top1=0.99' (hetcc/error_budget.py). Each target then
        also offers the precisions its backend runs on its device (onnxruntime:cpu@int8,
        openvino:cpu@int8w-bf16, ...; docs/precision.md); the solver chooses target and precision
        per segment, each lower-precision segment is checked on its own outputs, and the whole model
        on the example inputs: a choice that breaks the budget is dropped and the model placed
        again. The plan records the budget and what was measured (``plan.accuracy``).
    precisions: with accuracy, the lower precisions hetcc may choose among (e.g. ["int8w",
        "bf16"]); None: every one the targets offer. A target written with one
        ("onnxruntime:cpu@int8") is offered as it is.
    calibration: with accuracy, a list of input batches given as the example inputs are (e.g.
        [(x1,), (x2,)]), from which static int8 (onnxruntime:cpu@int8s, and openvino:cpu@int8s
        where NNCF is installed: int8 convolutions and matrix products, activation scales fixed
        ahead of time) takes its ranges, and to which ONNX Runtime's int8 weights
        (onnxruntime:cpu@int8, @int8u) are rounded (GPTQ). Both use these batches alone, never
        the example inputs, on which the budget is then measured as on any other input. Without
        it static int8 is not offered and int8 weights are rounded to nearest. docs/precision.md.
    validation: with accuracy, a list of input batches given as the example inputs are, on which
        the budget must hold too: each lower-precision segment is checked against its limit on
        every batch, the nodes a backend keeps in fp32 are chosen by the worst of them, and the
        whole model is checked on each (plan.accuracy["measured_validation"]: the worst). Without
        it the budget holds on the example inputs only. docs/precision.md.
    strict: raise hetcc.errors.FallbackError instead of returning when any node falls back to
        torch:cpu because the targets asked for refused it or failed on it (its message names the
        nodes, each target's reason, and what to do). Nodes the user pinned or excluded, and nodes
        the cost model gave to a listed torch:cpu while another target could take them, do not
        count (hetcc/fallback.py has the exact rule).
    max_fallback: as strict, but only when the nodes that fall back are more than this share of
        the model's nodes (0 to 1; 0 is strict, 1 allows all). Give strict or max_fallback, not both.
    cross_compile: keep segments lowered for a device this machine does not have (e.g.
        iree:rocm:gfx942 here) instead of falling back: they cannot run here, so they are verified
        when the saved bundle is loaded where the device is (docs/bundle.md). The compiled model
        can then only be saved; calling it here raises a TargetError.
    progress: optional callable(stage: str, detail: str), told as each stage starts ("capture",
        "calibrate", "validate", "solve", "lower", "measure"); the CLI draws its progress display from it.
    output_device: where calls return outputs: "cpu" (default), "cuda:N", or "keep" (where the
        segment that made each one left it). Inputs may be CPU or CUDA tensors either way; the
        runtime copies a value only where a segment on another device reads it
        (docs/gpu_backends.md, "Where values live").
    """
    report = progress or (lambda stage, detail="": None)
    if objective not in OBJECTIVES:
        raise HetccError(f"objective {objective!r} is not supported yet; choose one of: {', '.join(OBJECTIVES)}")
    if nan not in NAN_POLICIES:
        raise HetccError(f"nan={nan!r} is not a NaN policy; choose one of: {', '.join(NAN_POLICIES)}")
    limit = Limit.make(strict, max_fallback)
    output_device = parse_output_device(output_device)
    wanted = parse_targets(targets)
    # an option no target would use is refused, not dropped; values come back in their one spelling
    options = check_backend_options(wanted, backend_options)
    check_precision_options(options)
    budget, auto = budget_of(tune, measure)
    if learn and budget is None:
        raise HetccError("learn=True learns from what tuning measures; give tune='auto' or a budget too")
    tolerances = Tolerances.make(rtol, atol)
    accuracy_budget = AccuracyBudget.make(accuracy)
    calibration = None if calibration is None else check_batches(calibration)
    validation = None if validation is None else check_batches(validation, "validation")
    if validation is not None and accuracy_budget is None:
        raise HetccError("validation= (CLI --validation) holds the accuracy budget on more inputs than the "
                         "examples: give the budget too, e.g. accuracy=0.01 (CLI --accuracy 0.01); "
                         "without one every segment runs in the model's own precision")
    backends = {t: resolve(t, options.get(t.backend)) for t in wanted}
    for target in lower_precisions(wanted, backends, accuracy_budget, precisions, calibration is not None):
        wanted.append(target)
        backends[target] = resolve(target, options.get(target.backend))
    fallback_only = FALLBACK not in wanted
    if fallback_only:
        backends[FALLBACK] = resolve(FALLBACK)
    started = time.perf_counter()
    report("capture", "torch.export and decomposition to core ATen")
    captured = capture(model, example_inputs, dynamic_shapes=dynamic_shapes, example_kwargs=example_kwargs)
    if accuracy_budget is not None:
        accuracy_budget.check_outputs([captured.values.get(o) for o in captured.outputs if o is not None])
    batches = None if calibration is None else CalibrationBatches(captured, calibration)
    checks = None if validation is None else ValidationBatches(captured, validation)
    facts = graph_facts(captured.graph, captured.values, captured.weights)
    units, unit_of = placement_units(captured.graph, facts)
    order = list(backends)
    candidates = candidates_for(captured, units, order, backends, pins, exclude,
                                fallback=FALLBACK if fallback_only else None)
    if batches is not None:
        report("calibrate", f"the model on {len(batches)} calibration batch(es), for int8")
        # only what a unit that may run in int8 reads: placement never allows an int8 target again
        # once this table forbids it (bans and tuning's restricted copies only forbid; a ban
        # re-allows the fp32 torch:cpu fall-back alone), so no int8 segment reads anything else
        int8 = [t for t, target in enumerate(order) if target.precision in CALIBRATED | FITTED]
        batches.run(unit_of, units_allowing(units, candidates, int8))
    if checks is not None:
        report("validate", f"the model on {len(checks)} validation batch(es), for the accuracy budget")
        # what segments in a lower precision read and write: only they are checked on the batches
        # one by one (as for calibration, a unit once forbidden a lower precision never gets it back)
        checks.run(unit_of, units_allowing(units, candidates, [t for t, target in enumerate(order) if target.precision]))
    infos, corrected = corrected_infos(_target_infos(order, profiles, devices, memory_limits, backends), profiles)
    log.info("captured %d nodes in %d units in %.2fs", len(facts), len(units),
             time.perf_counter() - started)
    scratch, session = None, None
    try:  # from here on, an interrupt must not leave the scratch directory behind
        scratch = None if workdir else Path(tempfile.mkdtemp(prefix="hetcc-"))
        session = _Session(captured, facts, units, unit_of, order, backends, infos, tolerances,
                           cross_compile, Path(workdir) if workdir else scratch, objective, report, nan,
                           limit, resident_inputs=tuple([resident_inputs] if isinstance(resident_inputs, str)
                                                        else resident_inputs), budget=accuracy_budget,
                           calibration=batches, validation=checks)
        chosen = session.place(candidates)
        elsewhere = chosen.not_here()
        if elsewhere:
            chosen.plan = replace(chosen.plan, notes=chosen.plan.notes + (
                f"segments {', '.join(elsewhere)} were compiled for a device this machine does not have; "
                "they are verified against the PyTorch reference when the bundle is loaded there",))
        elif budget is not None:
            chosen = tune_plan(session, chosen, candidates, budget, auto, learn)
        if corrected:  # on whichever plan was kept: every candidate was predicted with them
            chosen.plan = replace(chosen.plan, notes=(corrected,) + chosen.plan.notes)
    except BaseException:
        _drop_scratch(scratch, session)
        raise
    chosen.output_device = output_device
    log.info("compiled in %.2fs:\n%s", time.perf_counter() - started, chosen.plan.summary())
    if scratch is not None and not _drop_scratch(scratch, session, owner=chosen):
        log.warning("kept %s: it holds the segments that failed to lower or verify", scratch)
    return chosen


def _drop_scratch(scratch, session, owner=None) -> bool:
    """Remove hetcc's scratch directory (now, or when ``owner`` is collected: save() copies the
    artifacts from it). Kept when a segment failed, so the failing segment can be reproduced."""
    if scratch is not None and session is not None and session.failures:
        keep_scratch(scratch)  # marked as kept; older kept ones beyond a bound are pruned
        return False
    if scratch is None:
        return False
    if owner is None:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        weakref.finalize(owner, shutil.rmtree, scratch, True)
    return True


@dataclass
class _Session:
    """Everything one compile() call shares between its placement attempts."""

    captured: object
    facts: dict
    units: list
    unit_of: dict
    order: list
    backends: dict
    infos: list
    tolerances: Tolerances
    cross_compile: bool
    workdir: Path
    objective: str
    report: object
    nan: str = "report"
    limit: Limit | None = None
    """How much fallback to torch:cpu is allowed (strict=, max_fallback=); None: any."""
    resident_inputs: tuple = ()
    """Inputs that stay on the device reading them (compile's resident_inputs)."""
    budget: AccuracyBudget | None = None
    """compile(accuracy=...): what lower-precision segments and the whole model are checked against."""
    calibration: CalibrationBatches | None = None
    """compile(calibration=...): the batches static int8 segments take their scales from, and ONNX
    Runtime's int8 segments their weights' rounding."""
    validation: ValidationBatches | None = None
    """compile(validation=...): batches the budget must hold on besides the example inputs."""
    failures: int = 0
    why: str = ""
    """Said after each progress message (which plan is being built)."""
    lowered: dict = field(default_factory=dict)
    """(target, nodes, outputs) -> Outcome: a segment is lowered once, and so is each part of a
    failed segment tried while narrowing it down."""
    narrow_left: int = field(default_factory=lambda: NARROW_BUDGET)
    """Lowerings that narrowing failed segments may still spend in this compile."""
    past_memory: list = field(default_factory=list)
    """Why the last round of lowering gave a lower precision up for segments whose nodes left in
    fp32 would not fit their target's memory: said if the next placement does not fit."""

    def place(self, candidates, notes=None, why: str = "", inherited=()) -> CompiledModel:
        """Solve, segment, lower and verify; re-solve without whatever failed, until all works.
        ``inherited``: lower precisions given up before ``candidates`` were copied (a tuning
        candidate starts from the solver's plan's), recorded with this plan's own."""
        notes = [*self.captured.notes, *(notes or [])]
        self.why, self.past_memory = why, []
        last_resort = self.order.index(FALLBACK)
        # re-solves for the accuracy budget (a precision missed or dropped) are not lowering
        # failures, so they do not count as attempts; they have their own bound, MAX_DROPS
        attempt, drops, resolves = 0, [], 0
        while attempt < MAX_ATTEMPTS:
            attempt, accuracy, validated = attempt + 1, None, None
            # a memory give-up in the last round explains a placement that no longer fits
            past_memory, self.past_memory = self.past_memory, []
            try:
                _check_placeable(self.units, candidates)
                # units that only torch:cpu may take go there whatever the solver says: a bound they
                # already break fails now, not after lowering everything else
                self._check_fallback(candidates, [u for u, row in enumerate(candidates.allowed)
                                                  if not any(ok for t, ok in enumerate(row) if t != last_resort)],
                                     at_least=True)
                problem = build_problem(self.captured, self.facts, self.units, self.unit_of, self.infos,
                                        candidates.allowed, self.objective, self.resident_inputs)
                self.report("solve", f"{problem.n} units on {problem.k} targets (attempt {attempt}){self.why}")
                placement = solve(problem)
            except PlacementError as exc:
                if not past_memory:
                    raise
                raise PlacementError(
                    f"{exc}\nThis placement followed giving a lower precision up because {past_memory[0]}. "
                    "All in the lower precision misses the accuracy budget, and holding it takes more memory "
                    "than the targets have: loosen the budget (accuracy=), raise the memory limits "
                    "(memory_limits=), or add a target with room.") from exc
            # the later attempts ban whole segments, as before narrowing existed: each narrowed
            # ban is smaller, and the attempts must still end in a plan that works
            missed = []
            segments = self._lower_all(problem, placement, candidates, notes,
                                       narrowing=attempt <= MAX_ATTEMPTS // 2, missed=missed,
                                       partial=len(drops) < PARTIAL_DROPS)
            runtime, swapped = None, []
            if segments is not None:
                # its notes are the last round's only: earlier rounds' segments are not the plan's
                segments, placement, swapped = self._instead_of_kept(problem, placement, segments, candidates)
            if segments is None:
                if not missed:
                    continue  # a lowering failure: an attempt
                drops.extend(missed)  # a lower precision given up for a segment
            elif self.budget is None:
                break
            elif any(isinstance(s.executable, NotHere) for s in segments):
                notes.append(f"the whole model was not checked against the accuracy budget ({self.budget}): "
                             "a segment runs on a device this machine does not have; each segment is "
                             "checked against its own limit when the bundle is loaded there"
                             + (", on the example inputs (not on the validation batches)"
                                if self.validation is not None else ""))
                break
            else:
                runtime = _make_runtime(self.captured, segments)
                accuracy = whole_model_error(runtime, self.captured, self.budget)
                try:
                    validated, batch = (None, None) if self.validation is None else \
                        self.validation.worst(runtime, self.budget)
                except SegmentError as exc:
                    # it ran on the example inputs, not on a batch: as a segment that failed to verify
                    self._failed_on_batch(exc, segments, candidates, notes)
                    continue
                worst = accuracy if validated is None else self.budget.worst_of([accuracy, validated])
                if self.budget.holds(worst):
                    break
                # errors compound across segments: give up part of the lower precision that moved
                # its own outputs most
                notes.append(drop_for_budget(
                    segments, worst, self.budget, candidates, drops, partial=len(drops) < PARTIAL_DROPS,
                    choose=lambda seg, pieces: self._better_end(seg.program.name, seg.target, seg.spec.target,
                                                                pieces, problem, by="error"),
                    where="the example inputs" if worst == accuracy else f"validation batch {batch}"))
            # place again, without what was given up: not an attempt
            attempt, resolves = attempt - 1, resolves + 1
            if len(drops) >= MAX_DROPS:
                self._give_up_precision(candidates, notes)
        else:
            raise LoweringError(f"no working placement after {MAX_ATTEMPTS} attempts; see the warnings above")
        self._check_fallback(candidates, [u for seg in segments if seg.target == FALLBACK
                                          for u in seg.spec.units])
        plan = _make_plan(self.order, segments, self.units, self.facts, candidates, placement, problem,
                          self.objective, attempt + resolves, [*notes, *swapped], captured=self.captured)
        if self.budget is not None:
            plan = replace(plan, accuracy={**self.budget.to_dict(), "measured": accuracy,
                                           "dropped": [*inherited, *drops],
                                           **({"validation_batches": len(self.validation),
                                               "measured_validation": validated}
                                              if self.validation is not None else {}),
                                           **({"calibration_batches": len(self.calibration)}
                                              if self.calibration is not None and any(
                                                  s.target.precision in CALIBRATED for s in segments)
                                              else {}),
                                           **({"fitted_batches": len(self.calibration)}
                                              if self.calibration is not None and any(
                                                  _fitted(s.artifact) for s in segments) else {})})
        artifacts = {seg.program.name: seg.artifact for seg in segments}
        verifications = {seg.program.name: seg.verification for seg in segments}
        compiled = CompiledModel(runtime or _make_runtime(self.captured, segments), plan, artifacts,
                                 self.captured, verifications)
        configure_for_plan(compiled, self.backends)
        return compiled

    def _failed_on_batch(self, exc, segments, candidates, notes: list) -> None:
        """The stitched model failed on a validation batch (``exc``, a SegmentError): its segment's
        units are banned from its target, as for a segment that fails to verify, and placed again."""
        failed = next((s for s in segments if s.program.name == exc.segment), None)
        if failed is None or failed.target == FALLBACK:  # torch ran the batch in the reference run
            raise LoweringError(f"segment {exc.segment} on {FALLBACK if failed else 'a runtime'} failed {exc.cause}, "
                                "though torch ran that batch in the reference run; this is a bug in hetcc, "
                                "please report it with the batch") from exc
        why = f"{failed.target} failed {exc.cause}"
        log.warning("segment %s on %s failed %s; placing its units again without it", failed.program.name,
                    failed.target, exc.cause)
        for u in failed.spec.units:
            candidates.ban(u, failed.spec.target, why)
        notes.append(f"{failed.program.name} ran on the example inputs on {failed.target} but failed {exc.cause}; "
                     "its units were placed again without that target")
        self.failures += 1

    def _give_up_precision(self, candidates, notes: list) -> None:
        """Every unit back to the model's own precision: the budget broke MAX_DROPS times."""
        give_up_all(candidates, self.order, len(self.units),
                    f"the accuracy budget ({self.budget}) broke {MAX_DROPS} times: lower precisions were given up")
        notes.append(f"every lower precision was given up: the accuracy budget ({self.budget}) broke "
                     f"{MAX_DROPS} times")

    def _check_fallback(self, candidates, on_torch, at_least: bool = False) -> None:
        """FallbackError if the units ``on_torch`` hold more fallback than ``self.limit`` allows."""
        if self.limit is None:
            return
        fallbacks = fallen_back(self.units, candidates, on_torch, self.order.index(FALLBACK))
        total = sum(len(unit.members) for unit in self.units)
        self.limit.check(fallbacks, total, torch_listed=candidates.fallback is None,
                         at_least=at_least and sum(len(f.nodes) for f in fallbacks) < total)

    def _lower_all(self, problem, placement, candidates, notes, narrowing: bool = True, missed=None,
                   partial: bool = False):
        """Lower every segment; None (after banning what failed) if any segment failed. A
        lower-precision segment beyond the budget's segment limit is added to ``missed``, and gives
        up its precision for some of its units (``partial``: all but the share the limit allows, at
        the end _better_end picks, as a whole-model miss does; else for all of them)."""
        segments = []
        used = [0.0] * problem.k  # resident bytes per target, as placed, then as lowered
        for u, t in enumerate(placement.assignment):
            used[t] += problem.held(u, t)
        for index, spec in enumerate(form_segments(problem, placement.assignment)):
            target = self.order[spec.target]
            program, outcome = self._lower(f"seg{index}", spec.units, target)
            error, missed_by = outcome.error, outcome.missed
            if error is None:
                error, missed_by = kept_fp32.past_memory(outcome.artifact, spec.target, target, problem, used) \
                    or (None, None)
                if error is not None:
                    self.past_memory.append(f"{program.name} on {target}: {error}")
            if error is not None and missed_by is not None:
                # a lower precision too far off for this segment: a choice, not a runtime failure;
                # its units keep their other choices and nothing is narrowed down or kept
                units = list(spec.units)
                pieces = ends(units, self.budget.segment_share(missed_by) if partial else 0.0)
                kept = self._better_end(program.name, target, spec.target, pieces, problem)
                why = "missed the accuracy budget" if outcome.missed is not None else \
                    "could not hold the accuracy budget within its memory"
                give_up(candidates, units, spec.target, kept, f"{target} {why} here: {error}")
                log.info("%s on %s: %s; placing %s units again without it", program.name, target,
                         error, described(kept, units))
                # the segment names are this placement's, which the final plan may not have
                keep = set(kept)
                first = next((u for u in units if u not in keep), units[0])
                notes.append(f"{target} was not kept for {described(kept, units)} unit(s) of {program.name} of "
                             f"an earlier placement ({self.units[first].name}...): {error}")
                if missed is not None:
                    missed.append({"segment": program.name, "target": str(target), "measured": None,
                                   "segment_relative_error": missed_by if math.isfinite(missed_by) else None,
                                   "units": len(units) - len(kept),
                                   "of": len(units), "gave_up": end_given_up(kept, units), "why": error})
                return None
            if error is not None:
                if target == FALLBACK and ("vetted set" in error or "which hetcc refuses" in error):
                    raise LoweringError(
                        f"segment {program.name} cannot be kept as a torch segment: {error}. hetcc "
                        "loads torch segments only if every op is one it has vetted as a pure tensor "
                        "op (docs/bundle.md, trust model); please report the op so it can be vetted, "
                        "or rewrite that part of the model with other ops")
                if target == FALLBACK:
                    raise InternalError(f"torch:cpu could not run segment {program.name}: {error}")
                self.failures += 1
                if narrowing and len(spec.units) > 1 and self.narrow_left >= 2:
                    self._ban_narrowed(program.name, spec, target, error, candidates, notes)
                    return None
                nodes = tuple(m for u in spec.units for m in self.units[u].members)
                log.warning("segment %s on %s failed (%s); falling back for its %d node(s)",
                            program.name, target, error, len(nodes))
                whole = "" if len(spec.units) == 1 else "; not narrowed down: " + (
                    "the narrowing budget is spent" if narrowing else "late re-solves ban whole segments")
                notes.append(f"{target} rejected {len(nodes)} node(s) ({nodes[0]}...): {error}{whole}")
                for u in spec.units:
                    candidates.ban(u, spec.target, f"{target} failed on this segment: {error}")
                return None
            segments.append(Lowered(program, target, spec, outcome.artifact, outcome.executable,
                                    outcome.verification, outcome.seconds,
                                    self._kept_seconds(spec, target, outcome.artifact)))
        return segments

    def _kept_seconds(self, spec, target, artifact) -> float:
        """Seconds the nodes ``artifact``'s backend left in fp32 add to the segment's price."""
        if not kept_fp32.kept(artifact):
            return 0.0
        members = [m for u in spec.units for m in self.units[u].members]
        shares = kept_fp32.fp32_shares(artifact, members, self.facts,
                                       node_paths(self.captured.graph, set(members)), target.precision)
        return kept_fp32.added_seconds(shares, self.facts, self.infos[spec.target])

    def _instead_of_kept(self, problem, placement, segments, candidates):
        """A segment that held its accuracy limit only with nodes in fp32 costs more than the
        placement priced it at (all in the lower precision), so another target may now run its
        units for less: for each such segment, the cheapest others by the cost model
        (kept_fp32.cheaper_targets, SWAP_TRIES of them) are lowered on its units, and the first that
        runs here and verifies (within the limit, if it has a precision), costs less with its own
        kept nodes and fits the memory runs it instead (the int8 form that holds it whole, against
        the one that needs nodes in fp32). (segments, placement, notes) as they then are."""
        segments, assignment, cost, notes = list(segments), placement.assignment, placement.cost, []
        specs = [seg.spec for seg in segments]
        used = [0.0] * problem.k
        for seg in segments:
            used[seg.spec.target] += kept_fp32.resident(problem, seg.spec.units, seg.spec.target, seg.artifact)
        for i, seg in enumerate(segments):
            if seg.added_seconds <= 0:
                continue
            now = cost + seg.added_seconds  # other segments' kept seconds are the same either way
            options = kept_fp32.cheaper_targets(problem, assignment, seg.spec, specs, candidates.allowed, now)
            for trial_cost, t, trial in options[:SWAP_TRIES]:
                target, spec = self.order[t], replace(seg.spec, target=t)
                program, outcome = self._lower(seg.program.name, spec.units, target,
                                               doing=f"whether another target runs {seg.program.name} for less: ")
                seconds = self._kept_seconds(spec, target, outcome.artifact)
                room = list(used)
                room[seg.spec.target] -= kept_fp32.resident(problem, spec.units, seg.spec.target, seg.artifact)
                room[t] += kept_fp32.resident(problem, spec.units, t, outcome.artifact)
                why = (f"it did not lower or verify ({outcome.error})" if outcome.error is not None else
                       "it runs on a device this machine does not have" if isinstance(outcome.executable, NotHere)
                       else f"with its own nodes in fp32 it costs {(trial_cost + seconds - now) * 1e3:.3g} ms more"
                       if trial_cost + seconds >= now else
                       "it would not fit the memory" if problem.overfull(room) else "")
                if why:
                    log.info("%s stays on %s rather than %s: %s", seg.program.name, seg.target, target, why)
                    if segments[i].runner_up is None and not isinstance(outcome.executable, NotHere):
                        there = kept_fp32.priced_seconds(problem, spec.units, t, seconds)
                        segments[i] = replace(segments[i], runner_up=(
                            str(target), None if outcome.error is not None else there, f"tried in its place: {why}"))
                    continue
                n = len(kept_fp32.kept(seg.artifact).get("nodes") or ())
                left = f"held its accuracy limit only with {n} quantized node{'' if n == 1 else 's'} in fp32"
                saved = now - trial_cost - seconds
                notes.append(f"{seg.program.name} on {seg.target} {left}, {seg.added_seconds * 1e3:.2f} ms more than "
                             f"the placement priced it at; on {target} its units verify"
                             f"{' within the limit' if target.precision else ''} and the plan costs "
                             f"{saved * 1e3:.2f} ms less by the cost model, so they run there")
                log.info("%s runs on %s instead of %s: %.3g ms less by the cost model",
                         seg.program.name, target, seg.target, saved * 1e3)
                lost = (str(seg.target), kept_fp32.priced_seconds(problem, spec.units, seg.spec.target, seg.added_seconds),
                        f"it {left}: priced with them, the whole plan would cost {saved * 1e3:.3f} ms more than here")
                segments[i] = Lowered(program, target, spec, outcome.artifact, outcome.executable,
                                      outcome.verification, outcome.seconds, seconds, runner_up=lost)
                specs[i], assignment, cost, used = spec, trial, trial_cost, room
                break
        if assignment is placement.assignment:
            return segments, placement, notes
        # the solver's bound (every plan priced all in the lower precision) still bounds this
        # placement's cost, which is no longer the solver's optimum under that model
        return segments, replace(placement, assignment=assignment, cost=cost, optimal=False), notes

    def _lower(self, name: str, units, target, doing: str = ""):
        """The program of ``units`` and its Outcome, lowered once per (target, nodes, outputs) in
        this compile."""
        nodes = tuple(m for u in units for m in self.units[u].members)
        program = build_program(name, self.captured.graph, nodes, self.captured.weights,
                                self.captured.values, self.captured.dynamic_dims,
                                self.captured.dim_ranges, keep_outputs={o for o in self.captured.outputs if o})
        if target.precision in CALIBRATED | FITTED and self.calibration is not None:
            program.calibration = self.calibration.for_segment(program.input_names)
        if target.precision and self.validation is not None:
            program.validation = self.validation.for_segment(program.input_names, program.output_names)
        key = (target, nodes, tuple(program.output_names))
        if key not in self.lowered:
            self.report("lower", f"{doing}{program.name} ({len(nodes)} nodes) on {target}, then verify{self.why}")
            where = self.workdir / f"{target.backend}-{len(self.lowered)}"
            limit = self.budget.segment_limit if target.precision and self.budget else None
            program.accuracy_limit = limit
            self.lowered[key] = _lower_and_verify(program, target, self.backends[target], where,
                                                  self.tolerances, self.cross_compile, self.nan, limit)
        return program, self.lowered[key]

    def _better_end(self, name: str, target, t: int, pieces: list[list[int]], problem,
                    by: str = "saving") -> list[int]:
        """precision.better_end, measured: each piece of segment ``name`` lowered on ``target``
        (index ``t``) and checked against its limit, and what the cost model says it saves against
        the fastest fp32 target. Two lowerings more; the placement that follows usually forms the
        piece kept as a segment and reuses its lowering."""
        if len(pieces) == 1:
            return pieces[0]
        fp32 = [i for i, o in enumerate(self.order) if not o.precision]

        def rate(i, piece):
            end = ("first", "last")[i]
            _, outcome = self._lower(f"{name}_{end}", piece, target,
                                     doing=f"which end of {name} keeps {target.precision}: ")
            if outcome.error is None:
                error, within = outcome.verification.relative_error or 0.0, True
            else:  # beyond the limit, or it failed to run (then never kept over one that ran)
                error, within = outcome.missed if outcome.missed is not None else math.inf, False
            saves = sum(min(problem.cost[u][f] for f in fp32) - problem.cost[u][t] for u in piece)
            log.info("%s on %s, its %s %d units: relative error %.3g%s, saving %.3g ms by the cost model",
                     name, target, end, len(piece), error, "" if within else " (beyond the limit)", saves * 1e3)
            return error, within, saves

        return better_end(pieces, rate, by)

    def _ban_narrowed(self, name, spec, target, error, candidates, notes) -> None:
        """Ban on ``target`` only the units of a failed segment that fail in a part of their own
        (hetcc/narrow.py), within what is left of this compile's narrowing budget."""
        log.warning("segment %s on %s failed (%s); narrowing it down to the nodes that fail",
                    name, target, error)
        before = len(self.lowered)

        def fails(part):
            _, outcome = self._lower(f"{name}_part{len(self.lowered)}", part, target,
                                     doing=f"narrowing {name}: ")
            # a part that runs but misses the accuracy budget's segment limit works: the miss is
            # a choice, handled when the part is lowered in a plan
            return outcome.error if outcome.missed is None else None

        found = narrow(spec.units, fails, error, self.narrow_left)
        lowerings = len(self.lowered) - before
        self.narrow_left -= lowerings
        nodes = [m for u in found.banned for m in self.units[u].members]
        total = sum(len(self.units[u].members) for u in spec.units)
        note = describe(target, total, nodes, found, lowerings, NARROW_BUDGET)
        log.warning("%s", note)
        notes.append(note)
        whole = {*found.untested, *(u for part in found.together for u in part)}
        for u, why in found.banned.items():
            where = f"a part of {name} with this node" if u in whole else "this node"
            candidates.ban(u, spec.target, f"{target} failed on {where}: {why}")


def configure_for_plan(compiled: CompiledModel, backends: dict) -> None:
    """Give each segment the runtime configuration that suits the plan around it. A runtime that
    has the cores to itself (the plan uses one target) may busy-wait between calls, as it does
    when run by hand; beside other runtimes it must not, or it slows them. Backends that tune for
    this say so (``tunes_for_neighbours``) and read ``meta["runs_alone"]`` in ``load``; their
    segments are loaded again here with it set, on a copy of the artifact, since lowered
    segments are shared between the candidate plans of one compile."""
    alone = len(compiled.plan.targets_used()) == 1
    for step in compiled.runtime.steps:
        target = Target.parse(step.target)
        backend = backends.get(target)
        artifact = compiled.artifacts[step.name]
        if not getattr(backend, "tunes_for_neighbours", False) or isinstance(step.run, NotHere) \
                or bool(artifact.meta.get("runs_alone")) == alone:
            continue
        artifact = Artifact(artifact.target, dict(artifact.files), {**artifact.meta, "runs_alone": alone})
        step.run = backend.load(artifact, target)
        compiled.artifacts[step.name] = artifact


def _check_placeable(units, candidates) -> None:
    for u, unit in enumerate(units):
        if not any(candidates.allowed[u]):
            why = "; ".join(f"{t}: {r}" for t, r in candidates.reasons[u].items())
            raise PlacementError(f"node {unit.name} ({', '.join(unit.members[:3])}) may run on no "
                                 f"target: {why}. Remove the pin or exclusion, or add a target "
                                 f"that supports it (torch:cpu supports every op).")


def _target_infos(order, profiles, devices, memory_limits, backends=None) -> list[TargetInfo]:
    limits = {str(Target.parse(k)): v for k, v in (memory_limits or {}).items()}
    for target, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            raise TargetError(f"memory_limits[{target!r}] must be a positive number of bytes, got {value!r}")
    unknown = set(limits) - {str(t) for t in order} - {str(t.base) for t in order}
    if unknown:
        raise TargetError(f"memory_limits names {sorted(unknown)}, which are not among the targets "
                          f"{[str(t) for t in order]}")
    # a calibrated profile (`hetcc calibrate`, $HETCC_PROFILE) fills what profiles=/devices= leave out
    need = any(t.backend not in (profiles or {}) or str(t) not in (devices or {}) for t in order)
    calibration = calibrated() if need else None
    infos = []
    for t in order:
        # a GPU target runs on its GPU's registry spec (copies cross its host link); CPU targets on
        # this machine's calibrated or measured spec. A lower-precision target runs on its base
        # target's device, under its memory limit.
        given = (devices or {}).get(str(t)) or (devices or {}).get(str(t.base))
        device = given or device_for_target(t) or (
            calibration.device if calibration and t.device == "cpu" else this_cpu())
        # the base target's limit, where the target has none of its own: shared with the base
        base_limit = str(t.base) in limits and (t.precision is None or str(t) not in limits)
        capacity = limits.get(str(t), limits.get(str(t.base), device.mem_capacity))
        key = profile_name(t)
        profile = profile_for(key, profiles, calibration)
        if t.device != "cpu" and key in CPU_PROFILES and key not in (profiles or {}):
            profile = ACCELERATOR  # e.g. iree:rocm: its measured profile is of the CPU runtime
        backend = (backends or {}).get(t)
        # what the backend says its precision computes in here: a CPU target runs on this CPU
        # whatever spec it is priced with, a GPU target given a spec may be another GPU
        here = t.precision and (t.device == "cpu" or not given)
        infos.append(TargetInfo(str(t), device, profile, capacity,
                                device.host_link_bandwidth, device.host_link_latency,
                                memory=f"own:{t.base}" if given else _memory_of(t),
                                location=_location_of(t, backend), precision=t.precision,
                                arithmetic=arithmetic_of(backend, t, t.precision) if here else None,
                                limit_group=str(t.base) if base_limit else None))
    return infos


def _location_of(t: Target, backend) -> str:
    """Where the target's executables hand values over: on its GPU when the backend keeps them
    there (``on_device``), else on the host."""
    return _memory_of(t) if t.device in getattr(backend, "on_device", ()) else "cpu"


def _memory_of(t: Target) -> str:
    """The physical memory a target's weights live in: the CPU runtimes share host RAM, and backends
    on one GPU share its memory (an architecture-named target, iree:rocm:gfx942, counts as GPU 0).
    A target given its own spec in compile(devices=...) keeps its own memory."""
    if t.device == "cpu":
        return "cpu"
    return f"{t.device}:{t.index if (t.index or '').isdigit() else 0}"


def _fitted(artifact) -> bool:
    """Whether ``artifact``'s int8 weights were rounded to fit calibration batches
    (backends/onnx_rounding.py)."""
    return bool(((artifact.meta or {}).get("fitted_rounding") or {}).get("weights")) if artifact else False


def _lower_and_verify(program, target, backend, workdir: Path, tolerances, cross_compile=False,
                      nan: str = "report", limit: float | None = None) -> Outcome:
    """Lower, load and verify one segment; ``limit``: the relative error a segment in a lower
    precision may have (the accuracy budget's segment limit), checked instead of ``tolerances``."""
    started = time.perf_counter()
    stage, artifact = "lower", None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        artifact = backend.lower(program, target, workdir)
        stage = "load"
        try:
            executable = backend.load(artifact, target)
        except DeviceNotHere as exc:
            if not cross_compile:
                raise
            return Outcome(artifact, NotHere(program.name, str(target), str(exc)),
                           _keep_check(program, workdir, tolerances, limit), None, time.perf_counter() - started)
        stage = "verify"
        got = executable(*program.example_inputs)
        if limit is None:
            max_error, relative = compare(program, got, tolerances), None
        else:
            max_error, relative = compare_relative(program, got, limit)
            max_error, relative = _validated(program, executable, limit, max_error, relative)
        measured = _median_call(executable, program.example_inputs)
        dropped = _nan_check(program, executable)
        if dropped and nan == "require":
            raise LoweringError(f"{target} does not propagate NaN as torch does ({'; '.join(dropped)}), "
                                "and nan='require' was asked for")
        verification = Verification(max_error=max_error, measured_seconds=measured, nan_differs=tuple(dropped),
                                    relative_error=relative)
    except PrecisionMiss as exc:
        return Outcome(None, None, None, readable(exc), time.perf_counter() - started, missed=exc.relative)
    except Exception as exc:  # any vendor failure becomes a fall-back, never a crash
        # the whole chain and traceback for --debug; the reason is whole too, on one line, with
        # what it was raised from: a cut reason hides the cause
        log.debug("segment %s on %s: %s failed", program.name, target, stage, exc_info=exc)
        reason = readable(exc, causes=True)
        if artifact is not None and not isinstance(exc, DeviceNotHere):
            reason += _where_kept(artifact, workdir, stage, backend)
        return Outcome(None, None, None, reason, time.perf_counter() - started)
    return Outcome(artifact, executable, verification, None, time.perf_counter() - started)


def _validated(program, executable, limit: float, max_error: float, relative: float) -> tuple[float, float]:
    """The segment's check against ``limit`` on each of its validation batches too: the worst
    (max abs error, relative error) over them and the example inputs' (``max_error``,
    ``relative``); PrecisionMiss naming the batch where one misses."""
    for i, (inputs, want) in enumerate(program.validation):
        try:
            error, rel = check_relative(program.name, program.output_names, executable(*inputs), list(want), limit)
        except PrecisionMiss as exc:
            raise PrecisionMiss(f"on validation batch {i}: {exc}", exc.relative) from None
        except Exception as exc:  # it ran on the example inputs: say which batch it failed on
            raise LoweringError(f"on validation batch {i}: {type(exc).__name__}: {readable(exc)}") from exc
        max_error, relative = max(max_error, error), max(relative, rel)
    return max_error, relative


def _where_kept(artifact, workdir: Path, stage: str, backend) -> str:
    """Where the lowered files of a segment that failed to load or verify are (the scratch
    directory is kept when a segment fails), and the command that loads them alone when the backend
    has one (``load_command(artifact)``)."""
    command = getattr(backend, "load_command", None)
    command = command(artifact) if stage == "load" and command else None
    return (f". It lowered, then failed to {stage}; the lowered files are kept in {workdir}"
            + (f"; reproduce the failure alone with: {command}" if command else ""))


def _nan_check(program, executable) -> list[str]:
    """How the segment's answers on NaN inputs differ from torch's (empty if they agree, or if
    torch itself cannot run on them)."""
    probe = nan_probe_inputs(program.example_inputs)
    if probe is None:
        return []
    try:
        want = program.reference(*probe)
    except Exception:  # noqa: BLE001 - e.g. NaN used as an index: torch defines nothing to match
        return []
    try:
        got = executable(*probe)
    except Exception as exc:  # noqa: BLE001 - torch ran; the runtime could not
        return [f"fails on NaN inputs ({type(exc).__name__})"]
    return nan_differences(program.output_names, got, want)


class NotHere:
    """Stands in for a segment compiled for a device that is not on this machine."""

    def __init__(self, segment: str, target: str, why: str):
        self.segment, self.target, self.why = segment, target, why

    def __call__(self, *inputs):
        raise TargetError(f"segment {self.segment} was compiled for {self.target}, which this machine "
                          f"does not have ({self.why}). Save the model (cm.save(dir)) and load the bundle "
                          "where that device is; it is verified there on load")


CHECK_FILE = "check.safetensors"


def _keep_check(program, workdir: Path, tolerances, limit: float | None = None) -> Verification:
    """Write what the load-time check needs beside the artifact: the segment's example inputs and
    reference outputs (safetensors: no pickles) and the tolerances per output dtype (for a segment
    in a lower precision, the relative error it may have instead)."""
    from safetensors.torch import save_file

    import torch

    tensors = {f"in{i}": x.detach().contiguous().clone() for i, x in enumerate(program.example_inputs)
               if isinstance(x, torch.Tensor)}
    if len(tensors) != len(program.example_inputs):
        raise LoweringError(f"{program.name}: a non-tensor input cannot be kept for the load-time check")
    for j, name in enumerate(program.output_names):
        tensors[f"out{j}"] = program.reference_value(name).detach().contiguous().clone()
    path = workdir / CHECK_FILE
    save_file(tensors, str(path))
    return Verification(verified=False, check_file=str(path), check={
        "inputs": len(program.example_inputs), "outputs": list(program.output_names),
        "tolerances": {dtype_name(t.dtype): list(tolerances.for_dtype(t.dtype))
                       for t in (program.reference_value(n) for n in program.output_names)},
        **({"relative_limit": limit} if limit is not None else {})})


def _median_call(fn, inputs, calls: int = 5) -> float:
    """Median seconds of a few calls on the example inputs (the first call above was the warm-up)."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _make_plan(order, segments, units, facts, candidates, placement, problem, objective,
               attempts, notes, captured=None) -> Plan:
    modules = ModulePaths(captured.graph, units, facts) if captured is not None else None
    out = []
    for seg in segments:
        program, target, spec, artifact, checked = seg.program, seg.target, seg.spec, seg.artifact, seg.verification
        nodes = [m for u in spec.units for m in units[u].members]
        alt = RunnerUp(*seg.runner_up) if seg.runner_up else \
            runner_up(problem, placement.assignment, spec.units, candidates.reasons, added=seg.added_seconds)
        fell_back = {}
        for u in spec.units:
            for earlier in order[:spec.target]:
                why = candidates.reasons[u].get(str(earlier))
                if why:
                    fell_back[units[u].name] = f"{earlier}: {why}"
                    break
        out.append(SegmentPlan(
            name=program.name, target=str(target), nodes=tuple(nodes),
            inputs=tuple(program.input_names), outputs=tuple(program.output_names),
            flops=sum(facts[m].flops for m in nodes),
            bytes_moved=sum(facts[m].bytes_moved for m in nodes),
            # the problem's, not the facts': it also holds resident inputs (a KV cache), and
            # weights at the target's precision (int8: a quarter), with the nodes its backend left
            # in fp32 at their size
            resident_bytes=kept_fp32.resident(problem, spec.units, spec.target, artifact),
            predicted_seconds=kept_fp32.priced_seconds(problem, spec.units, spec.target, seg.added_seconds),
            ops=dict(Counter(facts[m].op for m in nodes if facts[m].op_class != "view")),
            fell_back=fell_back, max_error=checked.max_error, lower_seconds=seg.seconds,
            measured_seconds=checked.measured_seconds,
            modules=modules.of(nodes) if modules else (),
            runner_up=alt.target if alt else None, runner_up_seconds=alt.seconds if alt else None,
            runner_up_why=alt.why if alt else "",
            precision=target.precision or artifact.meta.get("precision"),
            relative_error=checked.relative_error, artifact_bytes=_file_bytes(artifact),
            precision_bytes_moved=sum(narrowed(facts[m], target.precision) for m in nodes)
            if target.precision else None,
        ))
        asked, ran = artifact.meta.get("requested_precision"), artifact.meta.get("precision")
        if asked and ran and asked != ran:
            notes = list(notes) + [
                f"{program.name} on {target} ran in {ran}: {asked} was asked for, and this machine's "
                f"{target.backend} runs {ran} for it; verified in {ran}"]
        if kept_fp32.kept(artifact):
            notes = list(notes) + [kept_fp32.note(program.name, target, artifact, seg.added_seconds)]
        if checked.nan_differs:
            notes = list(notes) + [
                f"{program.name} on {target} does not propagate NaN as torch does "
                f"({'; '.join(checked.nan_differs)}); results on finite inputs are verified. "
                "compile(nan='require') (--nan require) moves such parts to a runtime that does"]
    return Plan(
        targets=tuple(str(t) for t in order), segments=tuple(out), objective=objective,
        # latency: the segments' added seconds add to the path (compile plans for latency only),
        # and to the bound, so the plan's gap is still the solve's
        predicted_seconds=placement.cost + sum(seg.added_seconds for seg in segments),
        lower_bound=placement.lower_bound + (sum(seg.added_seconds for seg in segments)
                                             if placement.lower_bound > 0 else 0.0),
        optimal=placement.optimal, solver=placement.method, solve_seconds=placement.seconds,
        attempts=attempts, notes=tuple(notes),
        output_names=output_names(captured.out_spec, captured.outputs) if captured is not None else {},
        producers={v: modules.paths[v] for s in out for v in (*s.inputs, *s.outputs)
                   if modules and v in modules.paths})


def _file_bytes(artifact) -> int | None:
    """Bytes of an artifact's files on disk; None if one cannot be read."""
    try:
        return sum(Path(f).stat().st_size for f in artifact.files.values())
    except (OSError, TypeError):
        return None


def _make_runtime(captured, segments) -> Runtime:
    steps = [Step(seg.program.name, str(seg.target), seg.executable, tuple(seg.program.input_names),
                  tuple(seg.program.output_names), location=location_of(seg.executable),
                  input_locations=input_locations_of(seg.executable))
             for seg in segments]
    specs = [_spec_of(captured, name) for name in captured.user_inputs]
    read = [*captured.outputs, *captured.state_updates.values(), *captured.input_updates.values()]
    constants = {o: captured.weights[o] for o in read if o in captured.weights}
    runtime = Runtime(steps, specs, list(captured.outputs), captured.const_outputs, captured.in_spec,
                      captured.out_spec, constants, state=captured.state,
                      state_updates=captured.state_updates, input_updates=captured.input_updates)
    runtime.output_specs = [_spec_of(captured, o) if o is not None else None for o in captured.outputs]
    return runtime


def _spec_of(captured, name) -> TensorSpec:
    value = captured.values[name]
    dyn = captured.dynamic_dims.get(name, {})
    shape = tuple(dyn.get(i, s) for i, s in enumerate(value.shape))
    ranges = tuple((sym, *captured.dim_ranges[sym]) for sym in dyn.values() if sym in captured.dim_ranges)
    return TensorSpec(name, shape, value.dtype, ranges)
