"""Placement for throughput: requests are pipelined across targets, so the busiest target bounds
the rate. Minimise the largest per-target busy time (``problem.stage_seconds``), then, among the
placements that reach it, the latency (``problem.evaluate``), with the same MILP as
:mod:`hetcc.passes.solve` plus one bottleneck variable; large graphs first by the DP over their
layers (:func:`hetcc.passes.frontier.solve_large_bottleneck`) and :mod:`hetcc.passes.stages`.
docs/placement.md explains it."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np

from hetcc.errors import PlacementError
from hetcc.passes.frontier import solve_large_bottleneck
from hetcc.passes.problem import PlacementProblem, bottleneck, evaluate
from hetcc.passes.solve import (
    BRUTE_FORCE_MAX_NODES,
    DP_CAPPED_MIN_NODES,
    DP_MIN_NODES,
    SMALL_DP_SECONDS,
    Placement,
    allowed_targets,
    build_model,
    check_feasible,
    check_shared,
    cost_scale,
    decode,
    heuristic,
    infeasible_error,
    repair,
    run_highs,
)
from hetcc.passes.stages import solve_stages

class SolveTimeout(PlacementError):
    """The time limit came before any placement was found (not: nothing fits)."""


SLACK = 1e-7
"""Relative slack on the bottleneck when the second pass minimises latency under it."""


def brute_force_pipeline(problem: PlacementProblem) -> tuple[tuple[int, ...], float]:
    """Reference for the tests: least bottleneck, then least latency, over all k**n assignments."""
    if problem.n > BRUTE_FORCE_MAX_NODES:
        raise ValueError(f"brute force refuses {problem.n} nodes (at most {BRUTE_FORCE_MAX_NODES})")
    best, key = (), (math.inf, math.inf)
    for a in itertools.product(range(problem.k), repeat=problem.n):
        b = bottleneck(problem, a)
        if math.isinf(b):
            continue
        here = (b, evaluate(problem, a))
        if here[0] < key[0] * (1 - 1e-12) or (here[0] <= key[0] * (1 + 1e-12) and here[1] < key[1]):
            best, key = a, here
    return best, key[0]


def solve_pipeline(problem: PlacementProblem, *, time_limit: float = 30.0, max_gap: float = 0.01,
                   large_graphs: bool = True) -> Placement:
    """Placement minimising the bottleneck; ``Placement.cost`` is the bottleneck in seconds and
    ``lower_bound`` a proven bound on it. Raises PlacementError when nothing fits. When the
    time limit comes first, the best placement found (or a latency heuristic's, repaired for
    capacity) is returned with ``optimal`` False.

    Graphs of ``DP_MIN_NODES`` nodes or more are first placed by the DP over their layers
    (:func:`hetcc.passes.frontier.solve_large_bottleneck`, method ``frontier-dp``), then by
    :mod:`hetcc.passes.stages` (contiguous stages, or the fractional relaxation rounded); the
    better answer is kept when it is within ``max_gap`` of the better bound; else the MILP runs
    in the time left and the best answer wins, with the best bound. From
    ``DP_CAPPED_MIN_NODES`` nodes the DP runs first for at most ``SMALL_DP_SECONDS``; the MILP's
    exact answer wins unless it ends at its limit with a worse one or none. ``large_graphs=False``
    skips the DP and the stages."""
    t0 = time.perf_counter()
    p = problem
    if p.k == 0:
        raise PlacementError("no targets to place on.")
    allowed = allowed_targets(p)
    check_feasible(p, allowed)
    check_shared(p, allowed)
    if p.k == 1:
        a = (0,) * p.n
        b = bottleneck(p, a)
        return Placement(a, b, b, True, "single-target", time.perf_counter() - t0)
    large = None
    if large_graphs and p.n >= DP_MIN_NODES:
        # up to half the time limit, as solve() gives its DP: 40,000 differing nodes under a
        # binding capacity need about 30 runs (7 s here); the MILP that follows rarely does better
        dp = solve_large_bottleneck(p, allowed, t0 + time_limit / 2, max_gap)
        if dp is not None and dp.cost - dp.lower_bound <= max_gap * dp.cost:
            return Placement(tuple(dp.assignment), dp.cost, dp.lower_bound,
                             dp.cost - dp.lower_bound <= 1e-6 * dp.cost, "frontier-dp", time.perf_counter() - t0)
        large = solve_stages(p, allowed, max(t0 + time_limit / 4, time.perf_counter() + time_limit / 8))
        if large is None:
            raise infeasible_error(p)  # even the fractional relaxation does not fit
        if dp is not None:  # the better placement of the two, and the better bound
            if large[0] is None or (dp.cost, evaluate(p, dp.assignment)) < (large[1], evaluate(p, large[0])):
                large = (dp.assignment, dp.cost, large[2], "frontier-dp")
            large = (large[0], large[1], max(large[2], dp.lower_bound), large[3])
        a, b, lower, method = large
        if a is not None and b - lower <= max_gap * b:
            return Placement(tuple(a), b, lower, b - lower <= 1e-6 * b, method, time.perf_counter() - t0)
    big = large is not None
    if large_graphs and DP_CAPPED_MIN_NODES <= p.n < DP_MIN_NODES:
        # The DP first, for a moment and to max_gap only, in case the MILP ends at its limit
        # without an answer or a bound; its exact answer wins else. solve() does this where a
        # capacity is finite; here alike layers are symmetric for the MILP without one too
        # (1,998 alike nodes, free capacities: 30 s and no bound).
        dp = solve_large_bottleneck(p, allowed, t0 + min(time_limit / 4, SMALL_DP_SECONDS), max_gap)
        if dp is not None:
            large = (dp.assignment, dp.cost, dp.lower_bound, "frontier-dp")
    # Large graphs stop at max_gap, as the stages above would have; small ones are solved exactly.
    rel_gap = max_gap if big else 1e-9
    first = _milp(p, allowed, t0 + time_limit, cap=None, rel_gap=rel_gap)
    if first == "infeasible":
        raise infeasible_error(p)
    method = None
    if first is None and large is not None and large[0] is not None:
        first, method = (large[0], 0.0, False), large[3]  # the limit came first: the stages stand
    if first is None:  # the time limit came before HiGHS found any placement
        a = heuristic(p, allowed, time.perf_counter() + max(5.0, time_limit / 4))
        if a is None:
            raise SolveTimeout(f"no placement found within time_limit={time_limit}s; raise the limit")
        first = (a, 0.0, False)
    a, lower, proven = first
    method = method or ("milp-pipeline" if proven else "milp-pipeline-time-limit")  # proven: to rel_gap
    if large is not None:  # the DP's or the stages' placement where it is better, and their bound
        lower = max(lower, large[2])
        if large[0] is not None and large[1] < bottleneck(p, a) * (1 - SLACK):
            a, method = large[0], large[3]
    best = bottleneck(p, a)
    # The second pass only shortens latency under that bottleneck: on large graphs it gets a
    # sixth of the time limit, not all that is left.
    until = max(t0 + time_limit, time.perf_counter() + 1.0)
    if big:
        until = min(until, time.perf_counter() + max(time_limit / 6, 1.0))
    second = _milp(p, allowed, until, cap=best * (1 + SLACK), rel_gap=rel_gap)
    if isinstance(second, tuple) and bottleneck(p, second[0]) <= best * (1 + SLACK):
        a = second[0]
    b = bottleneck(p, a)
    lower = min(lower, b)
    optimal = b - lower <= 1e-6 * max(b, 1e-300)  # lower is a proven bound, whoever found it
    return Placement(tuple(a), b, lower, optimal, method, time.perf_counter() - t0)


def _milp(p: PlacementProblem, allowed, deadline: float, cap: float | None, rel_gap: float = 1e-9):
    """cap None: minimise the bottleneck T. Otherwise minimise latency with every stage <= cap.
    Returns (assignment, lower bound on the objective, finished: HiGHS reached ``rel_gap``);
    "infeasible" when HiGHS proved that nothing fits; None when it stopped at the time limit
    without a placement."""
    m, x = build_model(p, allowed)
    n_base = len(m.c)
    latency_c = np.asarray(m.c + [0.0])
    scale = cost_scale(latency_c)
    t_var = n_base  # the bottleneck in units of `scale`, continuous in [0, inf)
    rows, cols, vals, lo, hi = list(m.rows), list(m.cols), list(m.vals), list(m.lo), list(m.hi)
    for stage, terms in enumerate(m.stage):
        r = len(lo)
        for j, w in terms.items():
            rows.append(r), cols.append(j), vals.append(w / scale)
        if cap is None:
            rows.append(r), cols.append(t_var), vals.append(-1.0)
            lo.append(-math.inf), hi.append(-m.stage_const[stage] / scale)
        else:
            lo.append(-math.inf), hi.append((cap - m.stage_const[stage]) / scale)
    if cap is None:
        c = np.zeros(n_base + 1)
        c[t_var] = 1.0
    else:
        c = latency_c / scale
    res = run_highs(c, m.integer + [0], m.ub + [math.inf], rows, cols, vals, lo, hi,
                    max(deadline - time.perf_counter(), 0.05), {"mip_rel_gap": rel_gap})
    if res.status == 2:
        return "infeasible"
    if res.x is None:
        return None
    a = decode(x, res.x)
    if math.isinf(evaluate(p, a)):
        a = repair(p, a, time.perf_counter() + 1.0)
        if a is None:
            return None
    bound = res.mip_dual_bound
    if bound is None or not math.isfinite(bound):
        bound = res.fun if res.status == 0 else 0.0  # a pure LP (every node fixed) has no dual bound
    lower = bound * scale if cap is None else 0.0
    return a, lower, res.status == 0
