"""Measured selection: time the candidate plans on the example inputs and keep the fastest.

The cost model ranks runtimes that are often within 10-20% of each other on one CPU, and it
misjudges some by more than that (docs/benchmarks.md: it picks ONNX Runtime for HF BERT where
OpenVINO runs 12% faster). So compile can build the plans it would otherwise only predict, each
listed target alone (plus torch:cpu for what that target cannot run) beside the solver's own plan,
and time them as they will run. The budget covers building and timing; what was measured goes into
``Plan.candidates``, and with ``learn=True`` into the cost model's corrections
(cost_model/corrections.py), so a later compile chooses the same way without measuring.

How candidates are timed: interleaved, as `hetcc bench` times (hetcc/timing.py): each round
visits every candidate in a new random order, with a pause and one untimed call before each turn
so one runtime's spinning threads do not tax the next; they are compared at the median of their
calls, the time a caller sees. (Not the fast end: a runtime whose calls spread widely, as
OpenVINO's do on a shared 2-core machine, can win at p10 and lose at the median; interleaving
already spreads a neighbour's busy spells over every candidate.) A candidate is dropped once,
after a few rounds, even its fast end is slower than the leader's median by a margin: it cannot
win, and the budget goes to the close calls.
"""
from __future__ import annotations

import logging
import math
import random
import statistics
import time
from dataclasses import dataclass, replace

log = logging.getLogger("hetcc")

AUTO, OFF = "auto", "off"
AUTO_BUDGET = 30.0
"""Seconds tune='auto' may spend building and timing candidates."""
AUTO_RATIO = 2.0
"""tune='auto' builds a candidate only if its predicted time is within this factor of the best
prediction: the cost model's errors seen so far stay under 1.9x (docs/cost_model.md), and a
candidate that far behind would only cost compile time. A budget in seconds builds every one."""
MIN_ROUNDS = 3
"""Rounds timed before anything is dropped, even when the budget is already spent."""
MAX_ROUNDS = 20
AUTO_TIMING = 2.0
"""Seconds tune='auto' times the candidates at least, even when building them spent its budget:
the minimum 3 rounds of 2 calls cannot rank two runtimes 5-10% apart. On MobileViT (~30 ms a call,
40 s of building) that left 3 rounds, whose medians put ONNX Runtime and OpenVINO either way
round (31.1 against 31.4 ms, then 30.6 against 48.4 ms); about 10 rounds fit in 2 s. A budget in
seconds is the caller's and is kept to."""
SHORT_PAUSE = 0.01
"""Seconds of idle before a turn that follows a candidate without ONNX Runtime; after one with it,
hetcc.timing.PAUSE."""
MARGIN = 0.05
"""A candidate whose fast end is this much slower than the leader's median is dropped."""
FAST_END = 0.1
MIN_CALLS = 2
"""Timed calls per turn at least. Each turn starts with one more call that is not timed: it pays
for waking the runtime's threads (+0.5 ms on OpenVINO) and for the previous candidate's threads
still spinning where the pause did not outlast them (hetcc.timing.PAUSE; a torch call 10 ms after
an ONNX Runtime call took 1.7-2x as long), neither of which a plan running alone pays."""
STEADY = 1.25
"""learn=True leaves out a candidate whose median call is more than this over its fast end: it
was disturbed while timed (a neighbour's burst, another runtime's threads); good enough to rank,
not to learn from."""
BUSY = 1.5
"""learn=True learns nothing while the 1-minute load average exceeds this many runnable tasks per
core (tuning's own timing adds about one per core): a busy machine slows runtimes unevenly
(torch's OpenMP pool far more than ONNX Runtime's), so what it measures would mislead."""


def budget_of(tune, measure=None) -> tuple[float | None, bool]:
    """(seconds, auto) from compile's ``tune`` and its older name ``measure``; seconds is None
    when tuning is off. ``auto`` prunes candidates the cost model rules out (``AUTO_RATIO``)."""
    from hetcc.errors import HetccError

    if measure is not None:
        if tune != AUTO:
            raise HetccError(f"measure={measure!r} is the older name of tune; give one of them, not both")
        tune = AUTO if measure else OFF
    if tune is True or tune == AUTO:
        return AUTO_BUDGET, True
    if tune is False or tune == OFF:
        return None, False
    if isinstance(tune, (int, float)) and not isinstance(tune, bool) and math.isfinite(tune) and tune > 0:
        return float(tune), False
    raise HetccError(f"tune={tune!r}: give 'auto', 'off', or a budget in seconds (a positive number)")


@dataclass
class Candidate:
    name: str
    solver: bool = False
    """The plan the cost model chose by itself."""
    allowed: object = None
    """The Candidates (capability table) it is placed with; None for the solver's own plan."""
    compiled: object = None
    predicted: float | None = None
    note: str = ""
    samples: object = None
    """hetcc.timing.Samples of its timed calls."""
    dropped: int | None = None
    """The round after which it was dropped as clearly slower."""

    def fast_end(self) -> float | None:
        from hetcc.timing import quantile

        return quantile(self.samples.calls, FAST_END) if self.samples and self.samples.calls else None

    def median(self) -> float | None:
        """The median of its timed calls: what candidates are ranked by."""
        return statistics.median(self.samples.calls) if self.samples and self.samples.calls else None

    def record(self, chosen: bool) -> dict:
        plan = self.compiled.plan if self.compiled else None
        rounds = len(self.samples.turns) if self.samples else 0
        note = self.note or (f"dropped after {self.dropped} rounds: clearly slower" if self.dropped else "")
        return {"name": self.name, "targets": plan.targets_used() if plan else [],
                "predicted_seconds": self.predicted, "measured_seconds": self.median(),
                "fast_end_seconds": self.fast_end(),
                "chosen": chosen, "solver": self.solver, "rounds": rounds, "note": note}


def tune_plan(session, chosen, allowed, budget: float, auto: bool, learn: bool = False):
    """Build the candidates, time them, and return the fastest as a CompiledModel whose plan
    records every candidate. ``session`` is compiler._Session, ``chosen`` the solver's compiled
    plan, ``allowed`` its Candidates."""
    started = time.perf_counter()
    deadline = started + budget
    used = chosen.plan.targets_used()
    pool = [Candidate("mixed plan" if len(used) > 1 else f"{used[0]} alone", solver=True,
                      compiled=chosen, predicted=chosen.plan.predicted_seconds)]
    pool += _single_target_candidates(session, allowed, chosen)
    if len(pool) < 2:
        return chosen
    _build(session, pool, deadline, auto)
    built = [c for c in pool if c.compiled is not None]
    keep, building = pool[0], time.perf_counter() - started
    if len(built) > 1:
        session.report("measure", f"timing {len(built)} candidate plans on the example inputs")
        inputs = [session.captured.values[n].clone() for n in session.captured.user_inputs]
        try:
            race(built, inputs, deadline, AUTO_TIMING if auto else 0.0)
        finally:  # timing calls the models many times: put their state back
            for c in built:
                c.compiled.reset_state()
        timed = [c for c in built if c.median() is not None]
        if timed:
            keep = fastest(timed)
        built = timed
    seconds = time.perf_counter() - started
    notes = [_timing_note(built, keep, seconds, building)] if len(built) > 1 else []
    if learn:
        notes.append(_learn(session, built))
    plan = keep.compiled.plan
    keep.compiled.plan = replace(plan, candidates=tuple(c.record(c is keep) for c in pool),
                                 notes=plan.notes + tuple(notes))
    return keep.compiled


def _build(session, pool, deadline: float, auto: bool) -> None:
    """Build the candidates after the first (the solver's, built already) in order of predicted
    time, so that the budget cuts the least promising; each gets its plan or a note why not."""
    from hetcc.errors import HetccError, readable

    best = min(c.predicted for c in pool if c.predicted is not None)
    for c in sorted(pool[1:], key=lambda c: c.predicted if c.predicted is not None else math.inf):
        if c.note:
            continue
        if auto and c.predicted > AUTO_RATIO * best:
            c.note = (f"not built: predicted {c.predicted / best:.1f}x the best prediction "
                      "(a budget in seconds, tune=S, builds it)")
        elif time.perf_counter() >= deadline:
            c.note = "not built: the tuning budget was spent"
        else:
            try:
                # its Candidates are a copy of the solver's plan's, with what that plan gave up
                c.compiled = session.place(c.allowed, why=f" [candidate plan: {c.name}]",
                                           inherited=(pool[0].compiled.plan.accuracy or {}).get("dropped", ()))
            except HetccError as exc:
                c.note = f"failed to build: {readable(exc)}"
                continue
            c.predicted = c.compiled.plan.predicted_seconds
            layout = _layout(c.compiled)
            same = [o for o in pool if o is not c and o.compiled and _layout(o.compiled) == layout]
            if same:  # a failure and re-solve can land on another candidate's plan
                c.compiled, c.note = None, f"the same plan as {same[0].name}"
            elif c.compiled.not_here():  # cross_compile: a segment for a device that is not here
                c.compiled, c.note = None, "not timed: it needs a device this machine does not have"


def _single_target_candidates(session, allowed, chosen) -> list[Candidate]:
    """One candidate per listed target (not the fall-back), with its predicted time; none for a
    target whose plan would be the solver's own."""
    from hetcc.errors import HetccError, readable
    from hetcc.passes.build_problem import build_problem
    from hetcc.passes.solve import solve

    placed = _layout(chosen)
    out = []
    for t, target in enumerate(session.order):
        if allowed.fallback == t:
            continue
        name = f"{target} alone"
        # a lower precision's plan may also use its own target in fp32 (onnxruntime:cpu@int8 alone
        # is ONNX Runtime, in int8 where the budget allows and the cost model prefers it), so a
        # segment that misses the budget moves to fp32 there instead of finding no target
        base = session.order.index(target.base) if target.precision and target.base in session.order else None
        alone = allowed.restricted_to(t, f"compile-time tuning timed {name}, and it ran fastest", also=base)
        problem = build_problem(session.captured, session.facts, session.units, session.unit_of,
                                session.infos, alone.allowed, session.objective, session.resident_inputs)
        try:
            placement = solve(problem)
        except HetccError as exc:
            out.append(Candidate(name, note=f"no plan: {readable(exc)}"))
            continue
        layout = {m: str(session.order[placement.assignment[u]])
                  for u, unit in enumerate(session.units) for m in unit.members}
        if layout != placed:
            out.append(Candidate(name, allowed=alone, predicted=placement.cost))
    return out


def _layout(compiled) -> dict:
    return {m: s.target for s in compiled.plan.segments for m in s.nodes}


def fastest(timed: list[Candidate]) -> Candidate:
    """The candidate to keep: the lowest median among those raced to the end (the first on a tie:
    the solver's). One dropped as clearly slower was timed in the first rounds only, and on a
    machine that slows down later (a neighbour starts) its median would beat the survivors' without
    it being faster: racing compared them in the same rounds, which is what counts."""
    raced = [c for c in timed if not c.dropped] or timed
    return min(raced, key=lambda c: c.median())


def race(pool: list[Candidate], inputs, deadline: float, floor: float = 0.0) -> None:
    """Time the candidates' runtimes interleaved into each ``samples``; drop the clearly slower
    ones after ``MIN_ROUNDS``; stop when one is left, after ``MAX_ROUNDS``, or at ``deadline``
    once ``floor`` seconds of timing have passed."""
    import torch

    from hetcc.timing import MAX_CALLS, PAUSE, TURN, Samples
    from hetcc.errors import readable

    clock = time.perf_counter
    live, rng, rounds, last = [], random.Random(0), 0, None

    def failed(c, exc) -> None:  # verified segments should run; if one does not, it is out
        c.note, c.samples = f"failed when called: {readable(exc)}", None
        if c in live:
            live.remove(c)

    with torch.no_grad():
        for c in pool:
            took = []
            try:
                for _ in range(2):  # the first call after loading pays one-off costs
                    t0 = clock()
                    c.compiled.runtime.call_flat(inputs)  # flat: a model may take keywords
                    took.append(clock() - t0)
            except Exception as exc:  # noqa: BLE001 - any runtime's failure
                failed(c, exc)
                continue
            per_turn = round(TURN / max(min(took), 1e-7))  # a turn of ~10 ms, as in hetcc bench
            c.samples = Samples(calls_per_turn=max(MIN_CALLS, min(MAX_CALLS, per_turn)))
            live.append(c)
            last = c  # the first turn follows the last warm-up call
        began = clock()
        while len(live) > 1 and rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or clock() < deadline
                                                         or clock() - began < floor):
            rng.shuffle(live)
            for c in list(live):
                # after ONNX Runtime, long enough for its threads to stop spinning (PAUSE); after
                # the others a short pause will do, which keeps tuning's compile time down
                time.sleep(PAUSE if last is not None and _spins(last) else SHORT_PAUSE)
                last = c
                try:
                    _turn(c.compiled.runtime, inputs, c.samples, clock)
                except Exception as exc:  # noqa: BLE001
                    failed(c, exc)
            rounds += 1
            if rounds >= MIN_ROUNDS and len(live) > 1:
                leader = min(live, key=lambda c: c.median())
                bar = leader.median() * (1 + MARGIN)
                for c in [c for c in live if c is not leader and c.fast_end() > bar]:
                    c.dropped = rounds
                    live.remove(c)


def _spins(candidate) -> bool:
    """Whether the candidate's plan runs ONNX Runtime, whose idle threads may busy-wait after a call
    (hetcc.timing.PAUSE)."""
    return any(t.startswith("onnxruntime:") for t in candidate.compiled.plan.targets_used())


def _turn(runtime, inputs, samples, clock) -> None:
    from hetcc.timing import timed_turn

    runtime.call_flat(inputs, {})  # settles the cores; see MIN_CALLS
    timed_turn(runtime.timed_flat, inputs, samples, clock)


def _timing_note(built, keep, seconds: float, building: float) -> str:
    # "measured on the example inputs ... kept the ..." is what the notes said before candidates
    # had a field of their own; tests and users read it
    times = ", ".join(f"{c.name} {c.median() * 1e3:.3f} ms" for c in built)
    return (f"measured on the example inputs (median of interleaved calls): {times}; kept the "
            f"{keep.name} (tuning added {seconds:.1f}s to compile: {building:.1f}s building "
            f"candidates, {seconds - building:.1f}s timing)")


def _learn(session, built) -> str:
    """Fold what was timed into the corrections file; the note says where and what."""
    from hetcc.timing import quantile
    from hetcc.cost_model import corrections
    from hetcc.cost_model.profiles import calibrated

    overhead = {info.name: info.profile.call_overhead for info in session.infos}
    arithmetic = {info.name: info.arithmetic for info in session.infos}
    sums: dict[str, list[float]] = {}
    unsteady = [c.name for c in built if c.samples and _spread(c) > STEADY]
    for c in built:
        if c.name in unsteady:
            continue
        for segment in c.compiled.plan.segments if c.samples else ():
            calls = c.samples.steps.get(segment.name)
            if not calls:
                continue
            # the step's time covers the runtime's call as well as its nodes: predict both
            got = quantile(calls, FAST_END)
            want = segment.predicted_seconds + overhead.get(segment.target, 0.0)
            entry = sums.setdefault(corrections.key(segment.target, arithmetic.get(segment.target)), [0.0, 0.0])
            entry[0] += got
            entry[1] += want
    skipped = f" ({', '.join(unsteady)}: timed unsteadily, left out)" if unsteady else ""
    if len(sums) < 2:
        return ("learn=True: nothing learnt: fewer than two runtimes were timed steadily, so there "
                f"was nothing to rank them against{skipped}")
    busy = _busy()
    if busy:
        return f"learn=True: nothing learnt: {busy}; timings under load teach the load, not the runtimes"
    # relative to the run: a machine that is slower today slows every runtime, and the factors
    # are there to rank the runtimes, not to re-measure the machine. The run's scale is set by the
    # runtimes that already have a factor (their predictions were corrected: what is left is the
    # machine's mood), so that runs timing different runtimes agree; by all of them at first.
    ratios = {k: got / want for k, (got, want) in sums.items() if got > 0 and want > 0}
    known = corrections.current(calibrated())
    anchors = [r for k, r in ratios.items() if known and k in known.factors] or list(ratios.values())
    scale = math.exp(statistics.fmean(math.log(r) for r in anchors))
    path, factors = corrections.learn({k: (r / scale, 1.0) for k, r in ratios.items()}, calibrated())
    shown = ", ".join(f"{k} x{factors[k]:.2f}" for k in sorted(sums) if k in factors)
    log.info("cost model corrections written to %s: %s", path, shown)
    return f"cost model corrections learnt and written to {path}: {shown}{skipped}"


def _spread(c) -> float:
    return c.median() / c.fast_end()


def _busy() -> str | None:
    import os

    from hetcc.timing import cores

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every OS
        return None
    n = cores()
    return f"the machine was busy (load {load:.1f} on {n} cores)" if load > BUSY * n else None


def corrected_infos(infos, explicit: dict | None) -> tuple[list, str | None]:
    """``infos`` (compiler._target_infos) with the learnt corrections applied to every profile the
    caller did not give explicitly (``compile(profiles=...)`` is taken as it is), and a plan note
    saying which were applied (None when none were)."""
    from hetcc.cost_model import corrections
    from hetcc.cost_model.profiles import calibrated
    from hetcc.cost_model.target_devices import profile_name

    found = corrections.current(calibrated())
    if found is None:
        return infos, None
    out, applied = [], {}
    for info in infos:
        k = corrections.key(info.name, info.arithmetic)
        if k in found.factors and profile_name(info.name) not in (explicit or {}):
            info = replace(info, profile=corrections.scaled(info.profile, found.factors[k]))
            applied[k] = found.factors[k]
        out.append(info)
    if not applied:
        return infos, None
    shown = ", ".join(f"{k} x{f:.2f}" for k, f in applied.items())
    return out, f"cost model: learnt corrections from {found.path} applied ({shown})"


def candidate_lines(candidates) -> list[str]:
    """The candidates (``Plan.candidates``, or the same dicts read from report.json) as a few
    lines of text; tolerant of a hand-edited report."""
    rows = [c for c in candidates or () if isinstance(c, dict)]
    if not rows:
        return []

    def ms(value) -> str:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return f"{value * 1e3:.3f} ms" if ok else "-"

    timed = sum(1 for c in rows if ms(c.get("measured_seconds")) != "-")
    width = max(len(str(c.get("name"))) for c in rows)
    lines = [f"candidate plans ({timed} timed on the example inputs; measured = median of the calls):"]
    for c in rows:
        mark = "kept" if c.get("chosen") is True else "    "
        extra = "; ".join(x for x in ("cost model's choice" if c.get("solver") is True else "",
                                      str(c.get("note") or "")) if x)
        lines.append(f"  {mark}  {str(c.get('name')).ljust(width)}  predicted {ms(c.get('predicted_seconds')):>11}"
                     f"  measured {ms(c.get('measured_seconds')):>11}" + (f"  ({extra})" if extra else ""))
    return lines
