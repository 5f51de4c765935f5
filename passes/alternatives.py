"""Why a segment is where it is: the runner-up target for a segment's units, and why it lost.

Works on the PlacementProblem alone, like the solvers. For each other target, the segment's units
are moved there and the whole placement is costed again (problem.evaluate), so "why it lost"
counts what the solver counted: the units' own time on that target, and the hand-overs the move
would add or save (each with the receiving runtime's call overhead, as problem.py charges it).
A target that refuses a unit cannot take the segment; its reason is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hetcc.passes.problem import evaluate


@dataclass(frozen=True)
class RunnerUp:
    target: str
    seconds: float | None
    """Predicted time of the segment's units on this target; None where it refuses one of them."""
    why: str
    """Why it lost, with the numbers: slower, hand-overs, does not fit, or refused and why."""


def runner_up(problem, assignment, units, reasons=None, added: float = 0.0) -> RunnerUp | None:
    """The best other target for ``units`` (a segment's unit indices, all on one target under
    ``assignment``), or None when there is no other target. ``reasons[u][target name]`` says why a
    target may not run unit u (Candidates.reasons). ``added``: seconds the segment costs beyond the
    problem's price of its units (nodes its backend left in fp32: hetcc/kept_fp32.py), so that
    "here" is what the plan says it costs."""
    units = list(units)
    if not units or problem.k < 2:
        return None
    chosen = assignment[units[0]]
    mine = sum(problem.cost[u][chosen] for u in units) + added
    base = evaluate(problem, assignment) + added
    feasible, refused = [], []
    for t in range(problem.k):
        if t == chosen:
            continue
        blocked = [u for u in units if math.isinf(problem.cost[u][t])]
        if blocked:
            refused.append((len(blocked), t, blocked))
            continue
        moved = list(assignment)
        for u in units:
            moved[u] = t
        feasible.append((evaluate(problem, moved), t, sum(problem.cost[u][t] for u in units)))
    if feasible:
        total, t, seconds = min(feasible)  # ties: the earlier target, as the solver prefers
        why = _why_lost(problem, chosen, t, mine, seconds, base, total)
        return RunnerUp(problem.targets[t], seconds, why)
    _, t, blocked = min(refused)  # the target that refuses fewest units, then the earlier one
    name = problem.targets[t]
    why = (reasons[blocked[0]].get(name) if reasons else None) or "it may not run it"
    which = problem.nodes[blocked[0]] + (f" and {len(blocked) - 1} more" if len(blocked) > 1 else "")
    return RunnerUp(name, None, f"refused {which}: {why}")


def _why_lost(problem, chosen: int, t: int, mine: float, seconds: float, base: float, total: float) -> str:
    here, there = problem.targets[chosen], problem.targets[t]
    if math.isinf(total):
        return (f"does not fit: with these units, {there} (or a memory it shares) would hold more "
                "resident bytes than it may")
    said = f"predicted {_ms(seconds)} vs {_ms(mine)} here"
    extra = total - base - (seconds - mine)  # what the move changes in hand-overs
    if total > base * (1 + 1e-9):
        if seconds > mine:
            tail = f"; it would also add {_ms(extra)} of hand-overs and calls" if extra > 1e-12 else ""
            return f"slower: {said}{tail}"
        return (f"{'faster' if seconds < mine else 'as fast'} alone ({said}), but the hand-overs and "
                f"calls it needs cost {_ms(extra)} more: whole plan {_ms(total)} vs {_ms(base)}")
    if total >= base * (1 - 1e-9):
        pick = f"{here} is listed earlier" if chosen < t else "the solver picked one of equals"
        return f"a tie under the cost model ({said}, whole plan {_ms(total)}); {pick}"
    return (f"{said}: moving it there would make the whole plan {_ms(total)} instead of "
            f"{_ms(base)}, which the solver did not find (see whether the plan is proven optimal)")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"
