"""Placement of large graphs with a proven lower bound: the block DP of
:mod:`hetcc.passes.block_dp` run under Lagrange multipliers, and its runs mixed into a placement
that fits. docs/placement.md ("Large graphs", "Throughput") explains it;
:func:`hetcc.passes.solve.solve` calls :func:`solve_large` for graphs of ``solve.DP_MIN_NODES``
nodes or more, and of ``solve.DP_CAPPED_MIN_NODES`` or more where a capacity is finite; for
pipelined throughput :func:`hetcc.passes.pipeline.solve_pipeline` calls
:func:`solve_large_bottleneck` from ``DP_CAPPED_MIN_NODES`` nodes.

The DP's relaxed values keep its optimum a lower bound; each placement is priced with
``evaluate`` (or ``bottleneck``) and the difference is the gap it states. Capacities enter the
costs through Lagrange multipliers: the DP's optimum minus the multipliers times the capacities
is again a lower bound. For the bottleneck, weights on the targets that sum to one turn the
busiest target's seconds into their weighted mean, which the DP finds with each target's costs
scaled by its weight: again a lower bound.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from hetcc.passes.block_dp import Group, Prepared, assign, run_dp
from hetcc.passes.problem import PlacementProblem, bottleneck, evaluate, relative_gap

POOL = 6
"""DP runs whose inner placements the capacity fill may mix (those with the best bounds)."""

MIX_SLICES = (1, 2, 4, 8, 16, 32, 64)
"""Into how many slices the mix of DP runs cuts the chain of blocks, each slice mixed on its own;
one placement per entry, the ``MIX_PRICED`` best by the DP's own cost priced exactly."""

MIX_PRICED = 3

COUNTS_MAX_VARIABLES = 4000
"""Most (kind of period, run) pairs for which the mix also solves for whole-period counts."""

COUNTS_SECONDS = 1.0
COUNTS_GAP = 1e-3
"""Time limit and relative gap of the MILP over those counts."""

MIX_KEEP = 12
"""Most DP runs kept for the mix (see _keep_for_mix)."""

MIX_MARGINS = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
"""How far below the capacities the mix of runs is planned, tried in turn until it fits."""

KELLEY_CLOSE = 0.125
"""Once the dual can rise by no more than this share of the target gap (at the default 1%:
0.125%), the mix is tried, and the multiplier search stops if its placement is good enough."""

NEAR_ENOUGH = 0.5
"""Share of the target gap that stops the multiplier search once the dual is near its peak
(elsewhere a quarter): on the eleven graphs of BOX's note, 130 DP runs in all with a quarter,
100 with half, each stopping within 0.35 %."""

BOX = 0.5
"""Half-width of Kelley's first box around the warm multipliers, as a share of them. A box as
wide as them lets the next step swing to a corner of it: over eleven 5k-40k graphs of
bench_solver's generator (seeds 0-3, GPU at 40 %) 100 DP runs in all against 83 with half."""

FILL_EVERY = 8
"""DP runs between two tries of the capacity fill while the multipliers are searched."""

BOTTLENECK_ROUNDS = 200
"""Most multiplier sets the bottleneck's search tries (a DP run each; 15 ms on a 70B decoder)."""


@dataclass(frozen=True)
class Answer:
    assignment: tuple[int, ...]
    cost: float
    """``evaluate(problem, assignment)`` (for :func:`solve_large_bottleneck`,
    ``bottleneck(problem, assignment)``)."""
    lower_bound: float
    relaxed: int
    """Values whose hand-overs the DP charged only in part (0: the DP was exact, so for the
    latency without binding capacities ``lower_bound`` equals ``cost``)."""
    runs: int
    """DP runs (one per set of Lagrange multipliers tried)."""


def _busy(solved: dict, g: Group, prep: Prepared) -> np.ndarray:
    """``g.busy`` under one DP run's solved groups, kept with them as ``_usage`` is."""
    key = ("busy", id(g))
    if key not in solved:
        solved[key] = g.busy(solved[id(g)][1], prep.base, prep.links)
    return solved[key]


def _usage(solved: dict, g: Group, weights: np.ndarray) -> np.ndarray:
    """``g.usage`` under one DP run's solved groups, kept with them: a run is mixed again after
    later runs, and the weights do not change within one solve."""
    key = ("usage", id(g))
    if key not in solved:
        solved[key] = g.usage(solved[id(g)][1], weights)
    return solved[key]


def _fill(prep: Prepared, pool, lam, limits, weights, slack: float):
    """A placement within the capacities, built from the blocks' best inner placements found in
    the DP runs of ``pool`` ((multipliers, solved groups) each). Alike layers tie at the dual's
    peak ``lam``, so the DP alone sends all of them one way. Walking the blocks in order, this
    takes at each the inner placement and end state whose cost at ``lam`` plus the best cost to
    go is within ``slack`` of the least and that fits the capacity left after the least the
    rest needs, preferring the one that uses the most of it (the first layers fill one device,
    the rest go to the next). None when nothing fits."""
    free = np.maximum(limits, 1.0)
    options = []  # per block: (costs at lam (V, S_in, S_out), usage (V, S_in, S_out, C), runs)
    used_by = [{id(g): _usage(solved, g, weights) for g in prep.groups} for _, solved in pool]
    alike = {}  # blocks of one group and row have the same options (a model's layers)
    for g, r in prep.blocks:
        row = g.row_of[r]
        if (id(g), row) not in alike:
            costs, uses = [], []
            for (mult, solved), usage in zip(pool, used_by):
                u = usage[id(g)][row]
                t = solved[id(g)][0][row]
                costs.append(t + np.tensordot(u, lam - mult, axes=([2], [0])))
                uses.append(u)
            alike[id(g), row] = (np.stack(costs), np.stack(uses))
        options.append(alike[id(g), row])
    n = len(options)
    togo = [None] * (n + 1)
    togo[-1] = np.zeros(1)
    need = [None] * (n + 1)
    need[-1] = np.zeros((1, len(limits)))
    for b in range(n - 1, -1, -1):
        t, u = options[b]
        togo[b] = (t + togo[b + 1][None, None, :]).min(axis=(0, 2))
        after = u + need[b + 1][None, None, :, :]
        share = np.where(np.isfinite(t), (after / free).sum(axis=3), math.inf)
        flat = share.transpose(1, 0, 2).reshape(share.shape[1], -1)
        pick = flat.argmin(axis=1)
        v, so = np.unravel_index(pick, (share.shape[0], share.shape[2]))
        need[b] = after[v, np.arange(len(pick)), so]
    room = limits.astype(float)
    if (need[0][0] > room + 1e-9 * free).any():
        return None
    state, ends, chosen = 0, [], []
    for b, (t, u) in enumerate(options):
        total = t[:, state] + togo[b + 1][None, :]
        fits = ((u[:, state] + need[b + 1][None]) <= room + 1e-9 * free).all(axis=2) & np.isfinite(total)
        if not fits.any():
            return None
        near = fits & (total <= total[fits].min() + slack)
        fill = np.where(near, (u[:, state] / free).sum(axis=2), -math.inf)
        v, nxt = np.unravel_index(int(fill.argmax()), fill.shape)
        room = room - u[v, state, nxt]
        ends.append((state, int(nxt)))
        chosen.append(v)
        state = int(nxt)
    return assign(prep, [solved for _, solved in pool], np.array(chosen, dtype=np.int64),
                   np.array(ends, dtype=np.int64))


def _mix(prep: Prepared, pool, lam, limits, weights, bottleneck: bool = False):
    """Placements within the capacities that take each block as one of the DP runs of ``pool``
    ((multipliers, solved groups, end states) each) placed it, in the proportions that cost least:
    the Dantzig-Wolfe master LP over those runs. At the dual's peak the bound is a convex
    combination of a few runs' placements, each alone over or under a capacity (alike layers all
    go one way in one run), so stretches of blocks taken from each in those proportions come
    within a few blocks' rounding and a hand-over per stretch of it. Yields one placement per
    slicing of ``MIX_SLICES``: the chain cut into that many slices, each mixed on its own (the
    blocks differ along it, an embedding first and the output projection last, so one proportion
    for the whole chain misjudges a run's share of a capacity by where its stretch lies; more
    slices, more stretches and hand-overs), and one from whole periods (``_mix_counts``), for
    the caller to price. ``bottleneck``: the LPs minimise the busiest target's seconds (then, a
    ten-thousandth as much, the latency)."""
    n_blocks, runs = len(prep.blocks), len(pool)
    if not n_blocks or not runs:
        return
    cost = np.zeros((n_blocks, runs))
    use = np.zeros((n_blocks, runs, len(limits)))
    busy = np.zeros((n_blocks, runs, prep.p.k)) if bottleneck else None
    # per run: {group: (lam-free costs, usage[, busy seconds]) per (U, s_in, s_out)}
    tables = []
    for v, (mult, solved, ends) in enumerate(pool):
        table = {}
        for g in prep.groups:
            u = _usage(solved, g, weights)
            table[id(g)] = (solved[id(g)][0] - np.tensordot(u, mult, axes=([3], [0])), u)
            if bottleneck:
                table[id(g)] += (_busy(solved, g, prep),)
            at, rows = g.positions, g.row_of
            use[at, v] = table[id(g)][1][rows, ends[at, 0], ends[at, 1]]
            if bottleneck:
                busy[at, v] = table[id(g)][2][rows, ends[at, 0], ends[at, 1]]
                cost[at, v] = busy[at, v].sum(axis=1)  # the latency, without the runs' own weights
            else:
                cost[at, v] = table[id(g)][0][rows, ends[at, 0], ends[at, 1]]
        tables.append(table)
    if not np.isfinite(cost).all():
        return
    # The heaviest users of the capacities first within a slice.
    heavy = np.argsort(-(use.sum(axis=0) / np.maximum(limits, 1.0)).sum(axis=1), kind="stable")
    found = []  # (its rank, its label: 0 the counts or the slices, its picks, its end states)

    def fits(pick, label) -> bool:
        ends = _stitch(prep, pool, tables, pick, lam)
        if ends is None:
            return False
        at = _priced(prep, tables, pick, ends)
        if not (at[1] <= limits).all():
            return False
        rank = (float(at[2].max()), float(at[2].sum())) if bottleneck else (float(at[0]),)
        found.append((rank, label, pick, ends))
        return True

    # Whole periods (a layer's blocks) from one run each, so that runs meet only where one
    # stretch ends: taken block by block, a layer's blocks came from different runs and each
    # meeting moved the layer's inner placement (4 ms on each busy time of a 70B decoder).
    unit = _periods(_kinds(cost, use, busy)[0])
    starts = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]])
    sums = [None if x is None else np.add.reduceat(x, starts, axis=0) for x in (cost, use, busy)]
    kinds = _kinds(*sums)
    if len(kinds[1]) * runs <= COUNTS_MAX_VARIABLES:
        for margin in MIX_MARGINS[:3]:
            pick = _mix_counts(*sums[:2], limits, heavy, margin, sums[2], kinds)
            if pick is None or fits(pick[unit], 0):
                break
    for slices in sorted({min(k, n_blocks) for k in MIX_SLICES}):
        for margin in MIX_MARGINS:  # whole blocks and the runs' meeting points may need some room
            pick = _mix_pick(cost, use, limits, heavy, slices, margin, busy)
            if pick is None or fits(pick, slices):
                break
    # evaluate prices a placement exactly but takes a tenth of a second at 40,000 nodes: the
    # DP's own count (relaxed values at their shares) ranks the candidates, by the cost or by the
    # busiest target's seconds then their sum, and the best few are priced
    for _, _, pick, ends in sorted(found, key=lambda f: (f[0], f[1]))[:MIX_PRICED]:
        yield assign(prep, [solved for _, solved, _ in pool], pick, ends)


def _priced(prep: Prepared, tables, pick, ends) -> list:
    """What the tables hold (the lam-free cost, the usage, the busy seconds where kept) for taking
    block b from run ``pick[b]`` between the end states ``ends[b]``, summed over the blocks (inf
    where a block cannot run so)."""
    sums = None
    for g in prep.groups:
        picks = pick[g.positions]
        for v in np.unique(picks):
            members = np.flatnonzero(picks == v)
            at = g.positions[members]
            rows = g.row_of[members]
            parts = [t[rows, ends[at, 0], ends[at, 1]].sum(axis=0) for t in tables[v][id(g)]]
            sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
    return sums


def _stitch(prep: Prepared, pool, tables, pick, lam):
    """The end states of each block when it is taken from run ``pick[b]``: those of that run's own
    path, since a run's placement of a block is set by them (a block that starts and ends on the
    GPU runs mostly there, whichever run it came from); where two runs meet, the later block
    starts from where the earlier ended. None when a block cannot start from there."""
    n_blocks = len(prep.blocks)
    own = np.stack([e for _, _, e in pool])[pick, np.arange(n_blocks), 1]
    ends = np.stack([np.concatenate([[0], own[:-1]]), own], axis=1)
    if math.isfinite(_priced(prep, tables, pick, ends)[0]):  # every block can start where the one before it ended
        return ends
    # Some cannot: walk the chain, moving such a block's end to the best one it can reach.
    state = 0
    for b, (g, r) in enumerate(prep.blocks):
        lam_free, u = tables[pick[b]][id(g)][:2]
        end = int(own[b])
        if not math.isfinite(lam_free[g.row_of[r]][state, end]):
            priced = lam_free[g.row_of[r]][state] + u[g.row_of[r]][state] @ lam
            end = int(priced.argmin())
            if not math.isfinite(priced[end]):
                return None
        ends[b] = (state, end)
        state = end
    return ends


def _keep_for_mix(every: list, entry) -> None:
    """Add a DP run (its cost without multipliers, its share of each capacity, its data) to the
    runs the mix may take blocks from: the extremes as well as those near the dual's peak, since
    the peak is a combination of placements over and under the capacities. A run no cheaper and
    using no less of every capacity than another adds nothing to the one-slice master LP (on a
    slice it might still win: dropping it is a heuristic); beyond ``MIX_KEEP`` the oldest that is
    neither the cheapest nor the lightest on a capacity goes, or the oldest when all are (each
    holds its inner placements: megabytes on a large graph)."""
    def dominated(a, b):  # a is no better than b anywhere
        return a[0] >= b[0] and (a[1] >= b[1]).all()

    if any(dominated(entry, e) for e in every):
        return
    every[:] = [e for e in every if not dominated(e, entry)] + [entry]
    while len(every) > MIX_KEEP:
        extremes = {min(range(len(every)), key=lambda i: every[i][0])}
        extremes |= {min(range(len(every)), key=lambda i: every[i][1][c]) for c in range(len(entry[1]))}
        del every[min((i for i in range(len(every)) if i not in extremes), default=0)]


def _kinds(cost, use, busy):
    """Blocks alike for the mix: (kind of each block, its first block per kind), where blocks of
    a kind cost, use and keep busy the same in every run (a model's layers)."""
    seen: dict[bytes, int] = {}
    kind = np.empty(len(cost), dtype=np.int64)
    for b in range(len(cost)):
        key = cost[b].tobytes() + use[b].tobytes() + (b"" if busy is None else busy[b].tobytes())
        kind[b] = seen.setdefault(key, len(seen))
    return kind, np.unique(kind, return_index=True)[1]


def _periods(kind: np.ndarray) -> np.ndarray:
    """Per block, the period it belongs to (non-decreasing): a new period starts at every block of
    the kind that occurs most often (a layer's first block), so a stack of alike layers splits
    into one period per layer. Blocks before the first such block are periods of their own."""
    counts = np.bincount(kind) if len(kind) else np.zeros(1, dtype=np.int64)
    if counts.max() < 2:  # nothing repeats: every block its own period
        return np.arange(len(kind))
    anchor = counts.argmax()
    starts = kind == anchor
    first = int(np.argmax(starts))
    starts[:first + 1] = True  # the head: one block per period
    return np.cumsum(starts) - 1


def _mix_counts(cost, use, limits, heavy, margin: float, busy, kinds):
    """Which run each unit (``_mix`` passes periods: a layer's blocks) is taken from: how many
    units of each kind each run gives (a small MILP over the counts, alike units being
    interchangeable), laid out in chain order in the order ``heavy``. The slicing LPs round
    their shares to single blocks, so a layer's blocks may come from different runs and its
    inner placement moves where they meet (4 ms of 80 on each busy time of a 70B decoder); whole
    periods do not. None when HiGHS finds nothing in COUNTS_SECONDS."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    kind, first = kinds
    n_k, runs = len(first), cost.shape[1]
    size = np.bincount(kind, minlength=n_k)
    free = np.maximum(limits, 1.0)
    rows = [np.kron(np.eye(n_k), np.ones(runs))]  # each kind's blocks all taken from some run
    lo, hi = [size.astype(float)], [size.astype(float)]
    rows.append(use[first].reshape(n_k * runs, -1).T / free[:, None])
    lo.append(np.full(len(limits), -np.inf))
    hi.append(limits / free * (1 - margin))
    c = cost[first].ravel()
    if busy is not None:  # T, the busiest target's seconds, as the last column
        rows = [np.c_[r, np.zeros(len(r))] for r in rows]
        rows.append(np.c_[busy[first].reshape(n_k * runs, -1).T, -np.ones(busy.shape[2])])
        lo.append(np.full(busy.shape[2], -np.inf))
        hi.append(np.zeros(busy.shape[2]))
        c = np.r_[1e-4 * c, 1.0]
    n_var = len(c)
    scale = float(np.abs(c[np.isfinite(c)]).max()) or 1.0
    integer = np.ones(n_var)
    upper = np.repeat(size, runs).astype(float)
    if busy is not None:
        integer[-1], upper = 0, np.r_[upper, np.inf]
    res = milp(c / scale, constraints=LinearConstraint(np.vstack(rows), np.concatenate(lo), np.concatenate(hi)),
               integrality=integer, bounds=Bounds(0, upper),
               options={"time_limit": COUNTS_SECONDS, "mip_rel_gap": COUNTS_GAP})
    if res.x is None:
        return None
    counts = np.round(res.x[:n_k * runs]).astype(np.int64).reshape(n_k, runs)
    for j in range(n_k):  # HiGHS's integrality tolerance: rounded counts must still fill the kind
        counts[j, counts[j].argmax()] += size[j] - counts[j].sum()
    pick = np.empty(len(kind), dtype=np.int64)
    for j in range(n_k):
        at, lo_ = np.flatnonzero(kind == j), 0
        for v in heavy:
            pick[at[lo_:lo_ + counts[j, v]]] = v
            lo_ += counts[j, v]
    return pick


def _mix_pick(cost, use, limits, heavy, slices: int, margin: float, busy=None):
    """Which run each block is taken from: the master LP over (slice, run) with the capacities
    ``margin`` (a share) below their limits, its proportions laid out in each slice in the order
    ``heavy``; None when the LP finds no mix within them. With ``busy`` (block, run, target) the
    LP minimises the busiest target's seconds T first, the cost a ten-thousandth as much."""
    from scipy.optimize import linprog

    n_blocks, runs = cost.shape
    edges = np.unique(np.linspace(0, n_blocks, slices + 1).round().astype(np.int64))
    n_sl = len(edges) - 1
    slice_cost = np.add.reduceat(cost, edges[:-1], axis=0)  # (slice, run)
    # shares of each capacity, so that the LP sees numbers near 1 rather than bytes
    slice_use = np.add.reduceat(use, edges[:-1], axis=0) / np.maximum(limits, 1.0)  # (slice, run, capacity)
    # Alike slices make the LP degenerate: any spread of the runs over them costs the same, and a
    # spread that alternates pays a hand-over at every change. A small tilt breaks the tie
    # towards a staircase: the heaviest users of the capacities in the first slices. It moves the
    # LP's cost by at most 1e-5 x slices of the total (6e-4 at 64); evaluate prices the result.
    rank = np.empty(runs)
    rank[heavy] = np.arange(runs)
    tilt = 1e-5 * float(np.abs(cost.min(axis=1)).sum()) / (n_blocks * runs)
    per_block = (np.arange(n_sl) * np.diff(edges))[:, None]  # slices differ in size by a block
    c = (slice_cost + tilt * per_block * (runs - 1 - rank)[None, :]).ravel()
    a_ub = slice_use.reshape(n_sl * runs, -1).T
    b_ub = limits / np.maximum(limits, 1.0) * (1 - margin)
    a_eq = np.kron(np.eye(n_sl), np.ones(runs))
    if busy is not None:  # one more column, T: every target's summed busy seconds <= T
        slice_busy = np.add.reduceat(busy, edges[:-1], axis=0).reshape(n_sl * runs, -1).T
        c = np.r_[1e-4 * c, 1.0]
        a_ub = np.block([[a_ub, np.zeros((len(a_ub), 1))], [slice_busy, -np.ones((len(slice_busy), 1))]])
        b_ub = np.r_[b_ub, np.zeros(len(slice_busy))]
        a_eq = np.c_[a_eq, np.zeros(n_sl)]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n_sl), bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    share = res.x[:n_sl * runs].reshape(n_sl, runs)[:, heavy]
    pick = np.empty(n_blocks, dtype=np.int64)
    for k in range(n_sl):
        lo, size = edges[k], edges[k + 1] - edges[k]
        cut = np.concatenate([[0], np.round(np.cumsum(share[k]) * size).astype(np.int64)])
        for j, v in enumerate(heavy):
            pick[lo + min(cut[j], size):lo + min(cut[j + 1], size)] = v
    return pick


def capacities(p: PlacementProblem):
    """The finite capacities as (weights, limits): ``weights[i, t, c]`` is what node i on target t
    puts against capacity c (a target's own or a shared one), ``limits[c]`` its bytes."""
    resident = np.asarray(p.held_rows(), float).reshape(p.n, p.k)
    caps = [((t,), p.capacity[t]) for t in range(p.k) if math.isfinite(p.capacity[t])]
    caps += [(tuple(ts), cap) for ts, cap in p.shared_capacity if math.isfinite(cap)]
    weights = np.zeros((p.n, p.k, len(caps)))
    for c, (ts, _) in enumerate(caps):
        weights[:, list(ts), c] = resident[:, list(ts)]
    return weights, np.array([cap for _, cap in caps], dtype=float)


def solve_large(problem: PlacementProblem, allowed, deadline: float, target_gap: float = 0.01) -> Answer | None:
    """Best placement the DP finds, with a lower bound; None when it finds nothing feasible."""
    prep = Prepared(problem, allowed)
    p = problem
    base = prep.base
    weights, limits = capacities(p)
    lam = np.zeros(len(limits))
    caps = len(limits) > 0

    def priced(lam):
        return base + weights @ lam

    def load(a):
        return weights[np.arange(p.n), np.asarray(a)].sum(axis=0)

    runs, best, lower, peak, pool, every, filled_at = 0, None, -math.inf, [None], [], [], [-1]

    def attempt(lam):
        """DP under multipliers ``lam``: (its optimum, the capacities' usage); keeps the best
        feasible placement and the best bound seen."""
        nonlocal runs, best, lower
        runs += 1
        with np.errstate(over="ignore", invalid="ignore"):
            dp, a, solved, ends = run_dp(prep, priced(lam))
        bound = dp - float(np.dot(lam, limits)) if caps else dp
        if bound > lower:
            lower, peak[0] = bound, lam
        if a is None:
            return dp, None
        used = load(a)
        offer(a, used)
        # The fill mixes the runs with the best bounds (near the peak) and those whose own
        # placement fitted (they hold the inner placements that leave room).
        fitted = bool((used <= limits).all())
        _keep_for_mix(every, (dp - float(np.dot(lam, used)), used / np.maximum(limits, 1.0), (lam, solved, ends)))
        pool.append((fitted, bound, runs, lam, solved))
        keep = sorted((e for e in pool if not e[0]), key=lambda e: -e[1])[:POOL // 2]
        keep += sorted((e for e in pool if e[0]), key=lambda e: -e[1])[:POOL - len(keep)]
        pool[:] = keep
        return dp, used

    def offer(a, used) -> bool:
        """Keep ``a`` if it fits and is the best so far; whether it fits."""
        nonlocal best
        if not (used <= limits).all():
            return False
        cost = evaluate(p, a)
        if math.isfinite(cost) and (best is None or cost < best[1]):
            best = (a, cost)
        return math.isfinite(cost)

    def fill():
        """Mix the runs' placements into one that fits: by stretches of blocks in the proportions of
        the master LP, or where none fits, block by block from the pooled runs at a few tie
        tolerances."""
        if peak[0] is None or not pool or filled_at[0] == runs:
            return  # nothing new to mix since the last time
        filled_at[0] = runs
        fitted = False
        for a in _mix(prep, [e[2] for e in every], peak[0], limits, weights):
            fitted = offer(a, load(a)) or fitted
        if good() or fitted:  # the block-by-block fill has not beaten a mix that fits (and is slow)
            return
        step = target_gap * abs(lower) / max(len(prep.blocks), 1)
        for slack in (0.0, step):
            a = _fill(prep, [(e[3], e[4]) for e in pool], peak[0], limits, weights, slack)
            if a is not None:
                offer(a, load(a))

    def good(share: float = 0.25) -> bool:
        return best is not None and relative_gap(best[1], lower) <= share * target_gap

    def close_enough(near: bool = False):
        """Whether the best placement is good enough to stop; tries the fill every FILL_EVERY
        runs, and whenever the multipliers are ``near`` the dual's peak. Near it the bound can
        hardly rise, and the mix of more runs rarely beats its rounding (0.2-0.3 %), so a
        placement within NEAR_ENOUGH of the target gap is kept there."""
        if (near or runs % FILL_EVERY == 0) and not good():
            fill()
        return good(NEAR_ENOUGH if near else 0.25)

    dp, used = attempt(lam)
    if used is not None and caps and not (used <= limits).all():
        cuts, start = [(dp, used)], None
        warm = _warm_start(base, weights, limits, 10.0 * max(abs(dp), 1e-12))
        if warm is not None and time.perf_counter() < deadline:
            dp_w, used_w = attempt(warm)
            if used_w is not None:
                cuts.append((dp_w - float(np.dot(warm, used_w)), used_w))
                # a start whose bound is below lam = 0's would centre the box on the worse point
                start = warm if dp_w - float(np.dot(warm, limits)) > dp else None
        _kelley(attempt, cuts, lower, limits, close_enough, deadline, KELLEY_CLOSE * target_gap, start=start)
        if not close_enough() and time.perf_counter() < deadline:
            fill()
    if best is None:
        return None
    return Answer(best[0], best[1], min(lower, best[1]), prep.charged_in_part, runs)


def solve_large_bottleneck(problem: PlacementProblem, allowed, deadline: float,
                           target_gap: float = 0.01) -> Answer | None:
    """Least bottleneck (the busiest target's seconds per request, ``stage_seconds``) the DP finds
    within the capacities, with a lower bound: ``Answer.cost`` is that bottleneck. None when the
    DP finds nothing that fits.

    The bottleneck is the largest busy time, so for weights mu >= 0 on the targets that sum to 1
    it is at least their weighted mean, and a placement within the capacities costs at least
    sum_t mu_t busy_t + lam . (usage - limits) for lam >= 0. Both are linear in what each node
    does on its target (busy time goes to the target that runs the node or receives the
    hand-over), so the DP finds the least of it: node costs times mu of their target, hand-overs
    into t times mu_t. Its optimum minus lam . limits is a lower bound (the DP's relaxed values
    are charged at most what evaluate charges, target by target). Kelley's planes raise it over
    (mu, lam) together, and the master LP over the runs (the busiest target's summed seconds
    as its objective) mixes them into a placement, priced exactly with ``bottleneck``; among
    equal bottlenecks the lower latency wins."""
    from scipy.optimize import linprog

    prep = Prepared(problem, allowed)
    p, k = problem, problem.k
    weights, limits = capacities(p)
    m = len(limits)
    scale = np.maximum(limits, 1.0)
    finite = np.isfinite(prep.base)
    base = np.where(finite, prep.base, 0.0)
    state = {"runs": 0, "lower": -math.inf, "best": None, "peak": np.zeros(m), "filled": -1}
    planes, every = [], []

    def load(a):
        return weights[np.arange(p.n), np.asarray(a)].sum(axis=0)

    def offer(a) -> None:
        if not (load(a) <= limits).all():
            return
        here = (bottleneck(p, a), evaluate(p, a))
        best = state["best"]
        if math.isfinite(here[0]) and (best is None or here < best[1:]):
            state["best"] = (a,) + here

    def attempt(mu, lam):
        """One DP run: its plane (busy seconds per target, usage as shares), or None."""
        state["runs"] += 1
        with np.errstate(over="ignore", invalid="ignore"):
            dp, a, solved, ends = run_dp(prep, np.where(finite, base * mu + weights @ lam, math.inf), mu)
        if a is None:
            return None
        bound = dp - float(lam @ limits)
        if bound > state["lower"]:
            state["lower"], state["peak"] = bound, lam
        alone = np.zeros(len(prep.blocks), dtype=np.int64)
        busy = _priced(prep, [{id(g): (_busy(solved, g, prep),) for g in prep.groups}], alone, ends)[0]
        used = load(a)
        offer(a)
        # for the mix: no run adds anything that is no lighter on some target or capacity
        _keep_for_mix(every, (float(busy.max()), np.r_[busy, used / scale], (lam, solved, ends)))
        planes.append((busy, used / scale))
        return busy

    def gap() -> float:
        best = state["best"]
        return math.inf if best is None else relative_gap(best[1], state["lower"])

    def fill() -> None:
        if state["filled"] == state["runs"]:
            return
        state["filled"] = state["runs"]
        for a in _mix(prep, [e[2] for e in every], state["peak"], limits, weights, bottleneck=True):
            offer(a)

    first = attempt(np.full(k, 1.0 / k), np.zeros(m))
    if first is None:
        return None
    top = 10.0 * max(float(first.sum()), 1e-12)
    near_tried = False
    for rounds in range(1, BOTTLENECK_ROUNDS + 1):
        if gap() <= target_gap / 4 or time.perf_counter() > deadline:
            break
        # z <= mu . busy_i + mu_lam . (use_i - 1), mu on the simplex: where their envelope peaks
        res = linprog(np.r_[np.zeros(k + m), -1.0],
                      A_ub=[list(-b) + list(limits / scale - u) + [1.0] for b, u in planes],
                      b_ub=np.zeros(len(planes)),
                      A_eq=[[1.0] * k + [0.0] * (m + 1)], b_eq=[1.0],
                      bounds=[(0, 1)] * k + [(0, top)] * m + [(None, None)], method="highs")
        if res.status != 0:
            break
        peak = -res.fun
        if peak - state["lower"] <= 1e-9 * max(abs(peak), 1e-300):
            break  # the planes meet the dual: no better multipliers exist
        if peak - state["lower"] <= KELLEY_CLOSE * target_gap * abs(peak) and not near_tried:
            near_tried = True
            fill()
            if gap() <= NEAR_ENOUGH * target_gap:
                break
        elif rounds % FILL_EVERY == 0:
            fill()
        mu = np.clip(res.x[:k], 0.0, None)  # HiGHS's tolerances: the bound needs the simplex exactly
        if attempt(mu / mu.sum(), np.clip(res.x[k:k + m], 0.0, None) / scale) is None:
            break
    if gap() > target_gap / 4 and (state["best"] is None or time.perf_counter() < deadline):
        fill()
    best = state["best"]
    if best is None:
        return None
    return Answer(best[0], best[1], min(state["lower"], best[1]), prep.charged_in_part, state["runs"])


def _warm_start(base: np.ndarray, weights: np.ndarray, limits, top: float, rounds: int = 60):
    """Multipliers at the peak of the dual without hand-overs, where each node alone picks the
    target cheapest at its price: milliseconds at 40,000 nodes, against a second per DP run, and
    near the DP's own peak when compute outweighs the hand-overs (the first DP run there saves
    Kelley's first few wide steps). Scaled multipliers stay within [0, ``top``], Kelley's own
    range: where the peak lies beyond, the corner is returned. None when a node may run nowhere."""
    scale = np.maximum(limits, 1.0)
    w = weights / scale
    rows = np.arange(len(base))
    finite = np.where(np.isfinite(base), base, np.inf)
    mu, cuts, best = np.zeros(len(limits)), [], -math.inf
    for _ in range(rounds):
        pick = (finite + w @ mu).argmin(axis=1)
        cost, used = float(finite[rows, pick].sum()), w[rows, pick].sum(axis=0)
        if not math.isfinite(cost):
            return None
        best = max(best, cost + float(mu @ (used - limits / scale)))
        cuts.append((cost, used))
        mu, peak = _planes_peak(cuts, np.zeros(len(mu)), np.full(len(mu), top), limits / scale)
        if mu is None:
            return None
        if peak - best <= 1e-6 * max(abs(best), 1e-300):
            break
    return mu / scale


def _planes_peak(cuts, lo, hi, room):
    """Where the lower envelope of the planes z <= C_i + mu . (u_i - room) peaks for lo <= mu <= hi
    (``cuts``: (C_i, u_i), usage and ``room`` as shares of the capacities' scale: room is 1 but
    for a capacity under one byte): (mu, z), or (None, None) when the LP fails. Kelley's step, for
    the DP's dual and for the warm start's."""
    from scipy.optimize import linprog

    m = len(lo)
    res = linprog(np.r_[np.zeros(m), -1.0], A_ub=[list(room - u) + [1.0] for _, u in cuts],
                  b_ub=[c for c, _ in cuts], bounds=list(zip(lo, hi)) + [(None, None)], method="highs")
    return (res.x[:m], -res.fun) if res.status == 0 else (None, None)


def _kelley(attempt, cuts: list, bound: float, limits, done, deadline: float, close: float = 0.0,
            start=None, rounds: int = 40) -> None:
    """Raise the Lagrange multipliers towards the dual's peak by Kelley's cutting planes: each DP
    run at multipliers lam gives a placement i with lam-free cost C_i and usage u_i, and the dual
    L(lam) = min_i C_i + lam . (u_i - limits) is bounded above by every such plane; the next lam
    is where their lower envelope peaks (a small LP). Multipliers are scaled by the limits so
    the LP sees seconds, not seconds per byte. Once the planes' peak is within ``close``
    (relative) of the best bound found, the bound can rise by no more than that and the runs so
    far usually hold what the mix needs: ``done(True)`` tries it then, once, and the search stops
    if that is good enough. ``cuts``: (lam-free cost, usage) of the runs made so far, the first
    at lam = 0; ``bound``: the best of their bounds."""
    scale = np.maximum(limits, 1.0)
    dp = cuts[0][0]  # lam = 0: C is the DP's optimum itself
    cuts = [(c, u / scale) for c, u in cuts]
    top = 10.0 * max(abs(dp), 1e-12)
    m = len(limits)
    best_bound, tried = bound, False
    # Kelley's plain steps swing to the corners of [0, top] while few planes are known; from a
    # good start (start, the warm multipliers) a box around the best point so far steadies them
    center = None if start is None else start * scale
    radius = None if start is None else np.maximum(BOX * center, 0.05 * top)
    for _ in range(rounds):
        if done() or time.perf_counter() > deadline:
            return
        mu, peak = _planes_peak(cuts, np.zeros(m), np.full(m, top), limits / scale)
        if mu is None:
            return
        if peak - best_bound <= 1e-9 * max(abs(peak), 1e-300):
            return  # the planes meet the dual: no better multipliers exist
        if peak - best_bound <= close * abs(peak) and not tried and done(True):
            return
        tried = tried or peak - best_bound <= close * abs(peak)
        if center is not None:  # the next step stays in a box around the best multipliers
            boxed, _ = _planes_peak(cuts, np.maximum(center - radius, 0.0), np.minimum(center + radius, top),
                                    limits / scale)
            mu = boxed if boxed is not None else mu
        lam = mu / scale
        dp_t, used_t = attempt(lam)
        if used_t is None:
            return
        bound_t = dp_t - float(np.dot(lam, limits))
        if center is not None:  # a step that raised the bound moves the box; one that did not shrinks it
            center, radius = (mu, radius) if bound_t > best_bound else (center, radius / 2)
        best_bound = max(best_bound, bound_t)
        cuts.append((dp_t - float(np.dot(lam, used_t)), used_t / scale))
