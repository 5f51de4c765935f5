"""What `hetcc bench` measures: the variants of a model (hetcc's plan, each target alone, torch
eager) or of a bundle (its plan, against the torch yardstick), at one or more batch sizes, measured
interleaved by :func:`hetcc.measure.bench.measure`. Returns the results document (plain JSON
data) that the CLI renders and the regression gate (:mod:`hetcc.measure.bench_gate`) compares."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hetcc.errors import HetccError, InputError
from hetcc.measure import bench
from hetcc.timing import PAUSE, quantile

RESULTS_FORMAT = "hetcc-bench-results"
RESULTS_VERSION = 1
PLAN, EAGER, YARDSTICK = "plan", "eager", "yardstick"
"""Variant names of hetcc's plan and the two references; a single target is named by itself."""
DYNAMIC_MAX = 4096
SYNTHETIC_DIM = 8
"""Size a bundle's symbolic dimension takes in synthetic inputs (clamped to its compiled range)."""


@dataclass
class Variant:
    name: str
    label: str
    fn: object
    timed: object = None
    """fn's Runtime.timed_call, to time each segment."""
    targets: tuple = ()
    plan: str = ""
    segments: tuple = ()
    """(segment name, target) of the plan, in run order."""
    compile_s: float | None = None
    reference: bool = False
    own_inputs: bool = False
    """Runs a fixed workload of its own (the yardstick): no throughput at the measured batch."""


class Bench:
    """Variants ready to measure (compiled or loaded once), and the inputs per batch size;
    ``run`` measures them and returns the results document. Run it again to measure again."""

    def __init__(self, name, source, variants, batches, notes, reference, targets, batch_sizes):
        self.name, self.source, self.variants, self.batches = name, source, variants, batches
        self.notes, self.reference, self.targets, self.batch_sizes = notes, reference, targets, batch_sizes

    def run(self, *, warmup: int = 5, runs: int | None = None, budget: float | None = None,
            calls: int | None = None, seed: int = 0, progress=None) -> dict:
        return _run(self, progress or (lambda text: None), warmup=warmup, runs=runs, budget=budget,
                    calls=calls, seed=seed)


def bench_model(model, inputs, targets, *, name: str, compile_options: dict | None = None,
                batch_sizes=None, reference: str = EAGER, progress=None, **run) -> dict:
    """Compile and measure; see :func:`prepare_model` and :meth:`Bench.run` (``run``: warmup,
    runs, budget, calls, seed). Returns the results document."""
    bench_ = prepare_model(model, inputs, targets, name=name, compile_options=compile_options,
                           batch_sizes=batch_sizes, reference=reference, progress=progress)
    return bench_.run(progress=progress, **run)


def prepare_model(model, inputs, targets, *, name: str, compile_options: dict | None = None,
                  batch_sizes=None, reference: str = EAGER, progress=None) -> Bench:
    """Compile ``model`` over ``targets`` and over each target alone, beside torch eager
    (``reference="eager"``, or ``"none"``). ``batch_sizes``: compile with a dynamic batch
    dimension (dim 0 of every input) and measure at each size; sizes that cannot run are skipped
    with a note."""
    import hetcc

    say = progress or (lambda text: None)
    targets = [str(t) for t in targets]
    options, notes = dict(compile_options or {}), []
    names = list(inputs) if isinstance(inputs, dict) else None
    inputs = tuple(inputs.values()) if names else tuple(inputs)
    example = _batch_of(inputs)
    sizes = sorted(set(batch_sizes or ()))
    dynamic = sizes and _dynamic_batch(inputs, example, options, sizes, notes, names)
    variants = []
    say(f"compiling the plan over {', '.join(targets)}")
    try:
        variants.append(_compiled(PLAN, "hetcc plan", hetcc.compile, model, inputs, targets, options,
                                  names))
    except HetccError as exc:
        if not dynamic:
            raise
        notes.append(f"batch sizes skipped: compiling with a dynamic batch dimension failed, so the "
                     f"model's batch is fixed at {example} ({_reason(exc)})")
        options.pop("dynamic_shapes")
        variants.append(_compiled(PLAN, "hetcc plan", hetcc.compile, model, inputs, targets, options,
                                  names))
    for target in targets if len(targets) > 1 else ():
        say(f"compiling for {target} alone")
        try:
            variants.append(_compiled(target, f"{target} alone", hetcc.compile, model, inputs, [target],
                                      options, names))
        except HetccError as exc:
            notes.append(f"{target} alone: not measured, compiling failed: {_reason(exc)}")
    if reference == EAGER:
        variants.append(Variant(EAGER, "torch eager (reference)", model, reference=True))
    if names:  # measured as positional calls, each made by keyword as the model takes them
        for v in variants:
            v.fn, v.timed = _by_keyword(v.fn, names), v.timed and _by_keyword(v.timed, names)
    batches = _batches(inputs, example, sizes, variants[0].fn, notes)
    return Bench(name, "model", variants, batches, notes, reference, targets, sizes)


def bench_bundle(path, *, name: str | None = None, inputs=None, batch_sizes=None,
                 reference: str = YARDSTICK, progress=None, **run) -> dict:
    """Load and measure; see :func:`prepare_bundle` and :meth:`Bench.run`."""
    bench_ = prepare_bundle(path, name=name, inputs=inputs, batch_sizes=batch_sizes, reference=reference,
                            progress=progress)
    return bench_.run(progress=progress, **run)


def prepare_bundle(path, *, name: str | None = None, inputs=None, batch_sizes=None,
                   reference: str = YARDSTICK, progress=None) -> Bench:
    """Load the bundle at ``path`` and measure its plan beside the torch yardstick
    (``reference="yardstick"``, or ``"none"``): a bundle has no model source to run eagerly.
    ``inputs``: tensors to run on; synthetic ones from the bundle's signature if None."""
    import hetcc

    say = progress or (lambda text: None)
    say(f"loading {path}")
    started = time.perf_counter()
    compiled = hetcc.load(path)
    loaded_s = time.perf_counter() - started
    notes = []
    if inputs is None:
        inputs = synthetic_inputs(compiled.runtime.input_specs)
        notes.append(f"inputs: synthetic (floats N(0,1), integers 0, symbolic dims {SYNTHETIC_DIM} "
                     f"within their range); pass --inputs NPZ to measure real ones")
    variant = _variant(PLAN, "hetcc plan (bundle)", compiled, loaded_s)
    # a bundle's inputs come flat (synthetic, or an .npz): called flat, whatever structure the
    # model takes them in (keywords, nested)
    runtime = compiled.runtime
    variant.fn = lambda *flat: runtime.call_flat(flat)
    variant.timed = runtime.timed_flat
    variants = [variant]
    if reference == YARDSTICK:
        model, args = bench.yardstick()
        variants.append(Variant(YARDSTICK, "torch yardstick (reference)", lambda *_: model(*args),
                                reference=True, own_inputs=True))
        notes.append("reference: " + bench.YARDSTICK)
    sizes = sorted(set(batch_sizes or ()))
    batches = _batches(tuple(inputs), _batch_of(inputs), sizes, variant.fn, notes)
    return Bench(name or Path(path).resolve().name, "bundle", variants, batches, notes, reference,
                 list(compiled.plan.targets_used()), sizes)


def synthetic_inputs(specs) -> tuple:
    import torch

    generator = torch.Generator().manual_seed(0)
    out = []
    for spec in specs:
        ranges = {sym: (lo, hi) for sym, lo, hi in spec.ranges}
        shape = [d if isinstance(d, int) else min(max(SYNTHETIC_DIM, ranges.get(d, (1, 2**31))[0]),
                                                  ranges.get(d, (1, 2**31))[1]) for d in spec.shape]
        if spec.dtype.is_floating_point:
            out.append(torch.randn(shape, generator=generator).to(spec.dtype))
        else:
            out.append(torch.zeros(shape, dtype=spec.dtype))
    return tuple(out)


# ---- variants and batches ----

def _by_keyword(fn, names):
    def call(*tensors):
        return fn(**dict(zip(names, tensors)))
    return call


def _compiled(name, label, compile_fn, model, inputs, targets, options, names=None) -> Variant:
    started = time.perf_counter()
    compiled = compile_fn(model, dict(zip(names, inputs)) if names else inputs, targets, **options)
    variant = _variant(name, label, compiled, time.perf_counter() - started)
    variant.targets = tuple(targets)
    return variant


def _variant(name, label, compiled, seconds) -> Variant:
    segments = compiled.plan.segments
    shown = " + ".join(f"{s.target}({len(s.nodes)})" if s.nodes else s.target for s in segments)
    return Variant(name, label, compiled, timed=compiled.runtime.timed_call,
                   targets=tuple(compiled.plan.targets), plan=shown,
                   segments=tuple((s.name, s.target) for s in segments), compile_s=seconds)


def _batch_of(inputs) -> int | None:
    """The size of dim 0, where every input has one and they agree."""
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


def _dynamic_batch(inputs, example, options, sizes, notes, names=None) -> bool:
    """Set a dynamic batch dim in ``options``; False (and a note) where that cannot be."""
    import torch

    if example is None:
        notes.append("batch sizes skipped: the inputs share no batch dimension (dim 0)")
        return False
    if "dynamic_shapes" in options:
        return True  # the model file chose its own dynamic dims
    if example < 2:
        notes.append("batch sizes skipped: the example batch is 1, and torch.export fixes a dimension "
                     "whose example size is 1; give example inputs with batch >= 2")
        return False
    dim = torch.export.Dim("batch", min=1, max=max(DYNAMIC_MAX, *sizes))
    options["dynamic_shapes"] = ({n: {0: dim} for n in names} if names
                                 else tuple({0: dim} for _ in inputs))
    return True


def _batches(inputs, example, sizes, probe, notes) -> list[tuple]:
    """(batch, inputs) to measure: each size the compiled program accepts, else the example."""
    import torch

    out = []
    for size in sizes if example is not None else ():
        resized = tuple(t.repeat(-(-size // example), *([1] * (t.dim() - 1)))[:size] for t in inputs)
        try:
            with torch.no_grad():
                probe(*resized)
        except InputError as exc:
            notes.append(f"batch {size} skipped: the compiled program does not take it ({_reason(exc)})")
            continue
        out.append((size, resized))
    if not out:
        if sizes:
            notes.append("measured the example inputs" + (f" (batch {example})" if example else "")
                         + " instead")
        out.append((example, tuple(inputs)))
    return out


# ---- measuring and the results document ----

def _run(b: Bench, say, *, warmup, runs, budget, calls, seed) -> dict:
    fns = {v.name: v.fn for v in b.variants}
    timed = {v.name: v.timed for v in b.variants if v.timed}
    rows = []
    for batch, inputs in b.batches:
        say(f"measuring batch {batch}: {len(fns)} variants, "
            + (f"{budget / len(b.batches):.1f}s" if budget else f"{runs or bench.DEFAULT_RUNS} rounds"))
        samples = bench.measure(fns, inputs, warmup=warmup, runs=runs, calls=calls, timed=timed, seed=seed,
                                budget=budget / len(b.batches) if budget else None)
        ref = next((samples[v.name] for v in b.variants if v.reference), None)
        for v in b.variants:
            rows.append(_row(v, batch, samples[v.name], ref))
    backends = {t.split(":")[0] for v in b.variants for t in v.targets}
    return {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION, "model": b.name, "source": b.source,
        "reference": next((v.name for v in b.variants if v.reference), None),
        "machine": bench.machine_info(), "versions": bench.versions(backends),
        "settings": {"targets": list(b.targets), "warmup": warmup, "runs": runs, "budget_s": budget,
                     "calls_per_turn": calls or "auto", "pause_s": PAUSE, "seed": seed,
                     "batch_sizes": list(b.batch_sizes), "reference": b.reference, "spread": bench.SPREAD,
                     "ratio": "variant median / reference median, measured in the same rounds",
                     "ratio_fast": "variant p10 / reference p10 (what the regression gate compares)",
                     "ratio_spread": "p10-p90 over rounds of (variant turn / reference turn)"},
        "results": rows, "notes": list(b.notes),
    }


def _row(v: Variant, batch, samples, ref) -> dict:
    lat = bench.stats(samples.calls)
    row = {"variant": v.name, "label": v.label, "batch": batch, "reference": v.reference,
           "targets": list(v.targets), "plan": v.plan, "compile_s": v.compile_s,
           "calls_per_turn": samples.calls_per_turn, "latency": lat,
           "throughput_per_s": batch / lat["median_s"] if batch and not v.own_inputs else None,
           "ratio": None, "ratio_fast": None, "ratio_spread": None, "reference_median_s": None,
           "segments": [], "overhead_s": None}
    if ref is not None:
        ref_lat = bench.stats(ref.calls)
        paired = bench.paired_ratios(samples, ref)
        row.update(ratio=lat["median_s"] / ref_lat["median_s"], ratio_fast=lat["p10_s"] / ref_lat["p10_s"],
                   ratio_spread=[quantile(paired, 0.1), quantile(paired, 0.9)],
                   reference_median_s=ref_lat["median_s"])
    if samples.steps:
        steps = [{"name": n, "target": t, "median_s": bench.stats(samples.steps[n])["median_s"]}
                 for n, t in v.segments if n in samples.steps]
        for s in steps:
            s["share"] = s["median_s"] / lat["median_s"]
        row["segments"] = steps
        row["overhead_s"] = lat["median_s"] - sum(s["median_s"] for s in steps)
    return row


def _reason(exc: BaseException) -> str:
    """Why a variant could not be compiled, for the notes: the whole message (a reason cut short
    hides its cause), on one line."""
    from hetcc.errors import readable

    return readable(exc)
