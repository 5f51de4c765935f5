"""Throughput placement on large graphs: contiguous pipeline stages, measured against a bound.

When requests are pipelined the busiest target sets the rate (:mod:`hetcc.passes.pipeline`).
Three parts, each cheap on a model of thousands of nodes:

- **The bound.** Let every node's work be split freely across the targets it may use, with
  capacities kept and hand-overs free: the least possible busiest time of that relaxation is a
  small LP once nodes of equal cost and size are pooled, and no placement beats it.
- **The placement.** Cut the node order (topological) into contiguous stages, one target each,
  for every order of the targets (equal targets in one order only). For a trial bottleneck T a
  stage runs as far as T and its target's memory allow, paying the hand-overs that cross its
  first cut, the model inputs it reads and the outputs it sends home; bisection finds the least
  T that places every node. Each result is priced exactly (``problem.stage_seconds``).

- **The rounding.** The relaxation's shares, rounded to whole nodes pool by pool, are a second
  placement (repaired where rounding overfills a target).

The answer is kept when it is within the caller's gap of the bound. The bound ignores hand-overs,
so it is tight when the stages' cuts are few and cheap against the work, and weak where cheap
nodes could hop to an idle device (11-15% below the best placement of the 70B decode graph with
free capacities); there the MILP decides (docs/placement.md).
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
from scipy.sparse import csr_array

from hetcc.passes.problem import HOST, PlacementProblem, bottleneck, evaluate
from hetcc.passes.solve import repair

BISECTIONS = 40
"""Halvings of the bracket on the trial bottleneck (to well below the 1e-9 relative tolerance)."""
MAX_ORDERS = 720
"""Orders of the targets tried at most (all of them for six distinct targets)."""


def fractional_bound(p: PlacementProblem, allowed):
    """(bound, shares): a lower bound on the bottleneck of every placement (work split freely,
    capacities kept, hand-overs free) and the relaxation's answer as [(nodes of one pool, {target:
    how many of them})]; None when even the relaxation cannot fit the model."""
    from scipy.optimize import linprog

    pools: dict[tuple, list[int]] = {}
    held = p.held_rows()
    for i, ts in enumerate(allowed):
        key = (tuple(p.cost[i][t] if t in ts else math.inf for t in range(p.k)), held[i])
        pools.setdefault(key, []).append(i)
    keys = list(pools)
    var = [(g, t) for g, (costs, _) in enumerate(keys) for t in range(p.k) if not math.isinf(costs[t])]
    nv = len(var) + 1  # the last variable is the bottleneck T
    g_of = np.array([g for g, _ in var], dtype=np.int64)
    t_of = np.array([t for _, t in var], dtype=np.int64)
    cost_of = np.array([keys[g][0][t] for g, t in var], float)
    size_of = np.array([keys[g][1][t] for g, t in var], float)
    c = np.zeros(nv)
    c[-1] = 1.0
    # One row per pool (all its nodes placed), sparse: pools can number as many as the nodes.
    a_eq = csr_array((np.ones(len(var)), (g_of, np.arange(len(var)))), shape=(len(keys), nv))
    b_eq = np.array([len(pools[key]) for key in keys], float)
    # Scaled to O(1) so HiGHS's tolerances mean the same for seconds and bytes: T is counted in
    # units of an even share of the cheapest work, capacity rows in units of their capacity.
    unit = sum(min(p.cost[i][t] for t in ts) for i, ts in enumerate(allowed) if ts) / p.k or 1.0
    rows, cols, vals, b_ub = [], [], [], []
    for t in range(p.k):  # each target's work <= T
        on = np.flatnonzero(t_of == t)
        rows += [len(b_ub)] * (len(on) + 1)
        cols += list(on) + [nv - 1]
        vals += list(cost_of[on] / unit) + [-1.0]
        b_ub.append(0.0)
    for targets, cap in [((t,), p.capacity[t]) for t in range(p.k)] + list(p.shared_capacity):
        if math.isinf(cap):
            continue
        on = np.flatnonzero(np.isin(t_of, targets) & (size_of > 0))
        scale = cap if cap > 0 else 1.0
        rows += [len(b_ub)] * len(on)
        cols += list(on)
        vals += list(size_of[on] / scale)
        b_ub.append(cap / scale)
    a_ub = csr_array((vals, (rows, cols)), shape=(len(b_ub), nv))
    b = np.array(b_ub)
    # Interior point (with crossover): 2.7 s against 9.7 s for dual simplex on 40,000 pools.
    res = linprog(c, A_ub=a_ub, b_ub=b, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs-ipm")
    if res.status != 0:
        return None
    single = max((min(p.cost[i][t] for t in ts) for i, ts in enumerate(allowed) if ts), default=0.0)
    shares = [(pools[key], {}) for key in keys]
    for (g, t), y in zip(var, res.x):
        if y > 1e-9:
            shares[g][1][t] = float(y)
    # The LP's optimum less its tolerance: the bound must stay below every placement.
    return max(float(res.fun) * unit * (1 - 1e-7), single), shares


def rounded(p: PlacementProblem, shares, order) -> tuple[int, ...]:
    """An assignment that follows the relaxation's shares: each pool's nodes, in graph order, go
    to the targets in ``order`` by whole numbers (largest remainder), so equal layers fill one
    target before the next and cuts stay few."""
    a = [0] * p.n
    rank = {t: r for r, t in enumerate(order)}
    for nodes, share in shares:
        targets = sorted(share, key=lambda t: rank.get(t, len(rank)))
        whole = [math.floor(share[t] + 1e-9) for t in targets]
        rest = sorted(range(len(targets)), key=lambda j: whole[j] - share[targets[j]])
        for j in rest[:len(nodes) - sum(whole)]:
            whole[j] += 1
        start = 0
        for t, count in zip(targets, whole):
            for i in nodes[start:start + count]:
                a[i] = t
            start += count
    return tuple(a)


class _Chain:
    """The problem laid out along the node order, with prefix sums for O(1) stage costs."""

    def __init__(self, p: PlacementProblem, allowed):
        n, k = p.n, p.k
        self.p, self.n, self.k = p, n, k
        cost = np.array(p.cost, float).reshape(n, k)
        ok = np.zeros((n, k), bool)
        for i, ts in enumerate(allowed):
            ok[i, ts] = True
        cost[~ok] = 0.0
        self.host_reads = []  # (sorted reader positions, nbytes) of model inputs
        cross = np.zeros(n + 1)  # values live across the cut before node j: count and bytes
        cross_bytes = np.zeros(n + 1)
        for v in p.values:
            if v.producer == HOST:
                if v.consumers:
                    self.host_reads.append((np.array(sorted(v.consumers)), v.nbytes))
                continue
            if v.to_host:  # the sender pays the trip home, whichever stage holds it
                cost[v.producer] += [p.link(t, HOST, v.nbytes) for t in range(k)]
            last = max(v.consumers, default=v.producer)
            if last > v.producer:
                cross[v.producer + 1:last + 1] += 1
                cross_bytes[v.producer + 1:last + 1] += v.nbytes
        self.cross, self.cross_bytes = cross, cross_bytes
        self.work = np.vstack([np.zeros(k), np.cumsum(cost, axis=0)])  # work[j, t]: nodes < j on t
        self.banned = np.vstack([np.zeros(k, int), np.cumsum(~ok, axis=0)])
        held = np.asarray(p.held_rows(), float).reshape(p.n, k)
        self.size = np.vstack([np.zeros(k), np.cumsum(held, axis=0)])  # size[j, t]: nodes < j on t

    def entry(self, j: int, src: int, t: int) -> float:
        """Seconds for target t to receive the values live across the cut before node j from src."""
        if self.cross[j] == 0:
            return 0.0
        p = self.p
        bw = p.link_bandwidth[src][t]
        return self.cross[j] * (p.link_latency[src][t] + p.call_overhead[t]) + (
            0.0 if math.isinf(bw) else self.cross_bytes[j] / bw)

    def inputs(self, s: int, e: int, t: int) -> float:
        """Seconds for target t to receive the model inputs that nodes s..e-1 read."""
        total = 0.0
        for readers, nbytes in self.host_reads:
            j = np.searchsorted(readers, s)
            if j < len(readers) and readers[j] < e:
                total += self.p.link(HOST, t, nbytes)
        return total

    def place(self, order, limit: float):
        """Stages along ``order`` with no stage above ``limit`` seconds (approximately: values
        that skip a stage are charged at exact pricing only); None if the nodes do not fit."""
        p, n = self.p, self.n
        ends, s, prev = [], 0, None
        used = [0.0] * self.k
        for t in order:
            if s == n:
                break
            room = p.capacity[t] - used[t]
            for targets, cap in p.shared_capacity:
                if t in targets:
                    room = min(room, cap - sum(used[u] for u in targets))
            head = 0.0 if prev is None else self.entry(s, prev, t)
            lo, hi = s, n  # the stage is nodes s..e-1 for the largest e that fits
            while lo < hi:
                e = (lo + hi + 1) // 2
                fits = (self.banned[e, t] == self.banned[s, t]
                        and self.size[e, t] - self.size[s, t] <= room
                        and self.work[e, t] - self.work[s, t] + head + self.inputs(s, e, t) <= limit)
                lo, hi = (e, hi) if fits else (lo, e - 1)
            if lo > s:
                ends.append((lo, t))
                used[t] += self.size[lo, t] - self.size[s, t]
                s, prev = lo, t
        if s < n:
            return None
        a, start = [], 0
        for e, t in ends:
            a.extend([t] * (e - start))
            start = e
        return tuple(a)


def _orders(p: PlacementProblem, allowed):
    """Orders of the targets, each order of interchangeable targets once; targets no node may use
    are left out."""
    used = sorted({t for ts in allowed for t in ts})
    label: dict[int, int] = {}
    for t in used:
        label[t] = next((label[u] for u in label if _swappable(p, u, t)), len(set(label.values())))
    seen = set()
    for perm in itertools.permutations(used):
        key = tuple(label[t] for t in perm)
        if key in seen:
            continue
        seen.add(key)
        yield perm
        if len(seen) >= MAX_ORDERS:
            return


def _swappable(p: PlacementProblem, s: int, t: int) -> bool:
    """Whether exchanging targets s and t maps the problem onto itself (two equal GPUs)."""
    swap = list(range(p.k + 1))
    swap[s], swap[t] = t, s
    if p.capacity[s] != p.capacity[t] or p.call_overhead[s] != p.call_overhead[t]:
        return False
    if any(row[s] != row[t] for row in p.cost) or any(row[s] != row[t] for row in p.resident_on):
        return False
    if any(p.link_latency[i][j] != p.link_latency[swap[i]][swap[j]]
           or p.link_bandwidth[i][j] != p.link_bandwidth[swap[i]][swap[j]]
           for i in range(p.k + 1) for j in range(p.k + 1)):
        return False
    return all((s in ts) == (t in ts) for ts, _ in p.shared_capacity)


def solve_stages(p: PlacementProblem, allowed, deadline: float):
    """(assignment, bottleneck, lower bound, method) for a pipelined placement (assignment None
    and bottleneck inf when neither way found one), or None when the relaxation shows that
    nothing fits. The better of contiguous stages and the relaxation's shares
    rounded (repaired where rounding overfills a target), each in every order of the targets."""
    found = fractional_bound(p, allowed)
    if found is None:
        return None
    bound, shares = found
    best = (math.inf, math.inf, None, "")
    staged = contiguous_stages(p, allowed, deadline, bound)
    if staged is not None:
        best = (staged[1], evaluate(p, staged[0]), staged[0], "pipeline-stages")
    for order in _orders(p, allowed):
        if time.perf_counter() > deadline:
            break
        a = rounded(p, shares, order)
        latency = evaluate(p, a)
        if math.isinf(latency):
            a = repair(p, a, min(deadline, time.perf_counter() + 1.0))
            if a is None:
                continue
            latency = evaluate(p, a)
        key = (bottleneck(p, a), latency, a, "pipeline-lp-rounding")
        if key[:2] < best[:2]:
            best = key
    return best[2], best[0], min(bound, best[0]), best[3]


def contiguous_stages(p: PlacementProblem, allowed, deadline: float, bound: float):
    """The best contiguous-stage placement found by ``deadline``: (assignment, bottleneck), or
    None when no order of the targets fits the model. ``bound`` seeds the bisection."""
    chain = _Chain(p, allowed)
    best, best_key = None, (math.inf, math.inf)
    for order in _orders(p, allowed):
        if time.perf_counter() > deadline and best is not None:
            break
        hi = max(bound, 1e-12)
        a = chain.place(order, hi)
        doublings = 0
        while a is None and doublings < 60:
            hi *= 2
            doublings += 1
            a = chain.place(order, hi)
        if a is None:
            continue  # this order cannot hold the model at any bottleneck
        lo = bound
        for _ in range(BISECTIONS):
            if hi - lo <= 1e-10 * hi:
                break
            mid = (lo + hi) / 2
            trial = chain.place(order, mid)
            if trial is None:
                lo = mid
            else:
                hi, a = mid, trial
        key = (bottleneck(p, a), evaluate(p, a))
        if key < best_key:
            best, best_key = a, key
    return None if best is None else (best, best_key[0])
