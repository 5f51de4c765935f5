"""Optimal placement: node -> target, minimising :func:`hetcc.passes.problem.evaluate`.

The problem is a multiway cut with hyper-edges (a value with several consumers is paid once per
location that needs it), NP-hard for three or more targets, so :func:`solve` states it as a mixed
integer program and hands it to HiGHS through ``scipy.optimize.milp``. The answer is exact when
HiGHS proves it (``Placement.optimal``); when it stops at the time limit, the reported
``lower_bound`` is HiGHS's dual bound and ``gap`` says how far the answer may be from the optimum.
docs/placement.md explains the formulation.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from hetcc.errors import InternalError, PlacementError
from hetcc.passes.frontier import solve_large
from hetcc.passes.highs import run as run_highs
from hetcc.passes.problem import HOST, PlacementProblem, evaluate, relative_gap

log = logging.getLogger(__name__)

REL_TOL = 1e-9
"""Relative distance between cost and lower bound under which a placement counts as optimal."""

BRUTE_FORCE_MAX_NODES = 12

DP_MIN_NODES = 2000
"""Graphs with at least this many nodes are placed by the dynamic programme of
:mod:`hetcc.passes.frontier` first; the MILP runs only if its gap is above ``max_gap``."""

DP_CAPPED_MIN_NODES = 300
"""From this many nodes, a problem whose capacities are finite is also placed by the DP, before
the MILP: its answer stands where the MILP does not prove a better one in time."""

SMALL_DP_SECONDS = 2.0
"""The most the DP may take on such a graph below DP_MIN_NODES before the MILP starts."""


@dataclass(frozen=True)
class Placement:
    assignment: tuple[int, ...]
    """Target index of each node, in the problem's node order."""
    cost: float
    """``evaluate(problem, assignment)``."""
    lower_bound: float
    """A proven lower bound on the optimal cost."""
    optimal: bool
    """True when cost and lower bound agree to REL_TOL, so the placement is proven optimal."""
    method: str
    """How the placement was found (``milp``, ``single-target``, ``trivial``, ``heuristic``...)."""
    seconds: float
    """Wall time spent in :func:`solve`."""

    @property
    def gap(self) -> float:
        """Relative distance ``(cost - lower_bound) / cost``; 0 when proven optimal."""
        return 0.0 if self.optimal else relative_gap(self.cost, self.lower_bound)


def _is_optimal(cost: float, lower_bound: float) -> bool:
    return math.isfinite(cost) and cost - lower_bound <= REL_TOL * max(abs(cost), 1e-300)


# --------------------------------------------------------------------------------------------
# Reference and feasibility


def brute_force(problem: PlacementProblem) -> tuple[tuple[int, ...], float]:
    """Best assignment by enumerating all k**n of them; ``((), inf)`` when none is feasible.

    Among equal costs the first in ``itertools.product`` order wins, so earlier targets win ties
    on earlier nodes. Refuses more than BRUTE_FORCE_MAX_NODES nodes: this is the tests' reference.
    """
    if problem.n > BRUTE_FORCE_MAX_NODES:
        raise ValueError(f"brute force refuses {problem.n} nodes (at most {BRUTE_FORCE_MAX_NODES})")
    best, best_cost = (), math.inf
    for a in itertools.product(range(problem.k), repeat=problem.n):
        c = evaluate(problem, a)
        if c < best_cost:
            best, best_cost = a, c
    return best, best_cost


def allowed_targets(problem: PlacementProblem) -> list[list[int]]:
    """Targets each node may use: finite cost and its resident bytes fit the target alone."""
    return [[t for t in range(problem.k)
             if not math.isinf(problem.cost[i][t]) and problem.held(i, t) <= problem.capacity[t]]
            for i in range(problem.n)]


def _fmt_bytes(b: float) -> str:
    if math.isinf(b):
        return "unlimited"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:.2f} {unit} ({int(b)} bytes)"
    return f"{int(b)} bytes"


def check_feasible(problem: PlacementProblem, allowed: list[list[int]]) -> None:
    """Raise PlacementError for the infeasibilities that have a short explanation."""
    for i, ts in enumerate(allowed):
        if ts:
            continue
        why = []
        for t, target in enumerate(problem.targets):
            if math.isinf(problem.cost[i][t]):
                why.append(f"{target}: not supported (cost is inf)")
            else:
                why.append(f"{target}: needs {_fmt_bytes(problem.held(i, t))} resident, "
                           f"capacity is {_fmt_bytes(problem.capacity[t])}")
        raise PlacementError(
            f"node {i} ({problem.nodes[i]!r}) has no allowed target: " + "; ".join(why or ["no targets"])
            + ". Add a target that supports it with enough memory, raise that target's capacity, "
              "or remove the pin that excludes the others.")
    # Hall's condition: the nodes that can only go to a set T of targets must fit into T.
    k = problem.k
    if k <= 10:
        subsets = [ts for r in range(1, k + 1) for ts in itertools.combinations(range(k), r)]
    else:
        subsets = [(t,) for t in range(k)] + [tuple(range(k))]
    for ts in subsets:
        cap = sum(problem.capacity[t] for t in ts)
        if math.isinf(cap):
            continue
        members = set(ts)
        need = sum(problem.least_held(i, allowed[i]) for i in range(problem.n) if set(allowed[i]) <= members)
        if need > cap:
            names = ", ".join(problem.targets[t] for t in ts)
            scope = "in total" if len(ts) == k else f"that can only run on {{{names}}}"
            raise PlacementError(
                f"capacity exceeded on {{{names}}}: the nodes {scope} keep {_fmt_bytes(need)} resident, "
                f"but those targets hold {_fmt_bytes(cap)} (short by {_fmt_bytes(need - cap)} at best). "
                "Add a target with more memory, raise the capacity, or remove a pin.")


def check_shared(problem: PlacementProblem, allowed: list[list[int]]) -> None:
    """Nodes that can only run on targets sharing one memory must fit that memory."""
    for targets, cap in problem.shared_capacity:
        members = set(targets)
        need = sum(problem.least_held(i, allowed[i]) for i in range(problem.n) if set(allowed[i]) <= members)
        if need > cap:
            names = ", ".join(problem.targets[t] for t in targets)
            raise PlacementError(
                f"capacity exceeded on {{{names}}}, which share one memory of {_fmt_bytes(cap)}: the "
                f"nodes that can only run there keep {_fmt_bytes(need)} resident (short by "
                f"{_fmt_bytes(need - cap)} at best). Add a target on another device, or remove a pin.")


def infeasible_error(problem: PlacementProblem) -> PlacementError:
    """The MILP found no placement although every node has a target and Hall's condition holds."""
    if all(math.isinf(c) for c in problem.capacity) and not problem.shared_capacity:
        return PlacementError(
            "no placement avoids the links with infinite cost: some value would have to cross one. "
            "Make those links finite, or allow the nodes on both sides on a common target.")
    need = sum(problem.least_held(i, ts) for i, ts in enumerate(allowed_targets(problem)))
    caps = ", ".join([f"{t}: {_fmt_bytes(c)}" for t, c in zip(problem.targets, problem.capacity)]
                     + [f"{{{', '.join(problem.targets[t] for t in ts)}}} together: {_fmt_bytes(c)}"
                        for ts, c in problem.shared_capacity])
    return PlacementError(
        f"no placement fits the capacities: nodes keep at least {_fmt_bytes(need)} resident in total and no "
        f"split of them over the targets fits ({caps}; links with infinite cost may also rule "
        "splits out). Add a target with more memory, raise a capacity, or remove a pin.")


# --------------------------------------------------------------------------------------------
# Local bounds and moves


def _trivial_lower_bound(problem: PlacementProblem, allowed: list[list[int]]) -> float:
    """Each node at its cheapest target, plus the hand-overs to and from the host that no
    placement avoids. Valid for every assignment, ignoring capacities."""
    k = problem.k
    lb = sum(min(problem.cost[i][t] for t in allowed[i]) for i in range(problem.n))
    for v in problem.values:
        if v.producer == HOST:
            # Every consumer sits on a target, never on the host, so v leaves the host at least once.
            if v.consumers:
                lb += max(min(problem.link(k, t, v.nbytes) for t in allowed[c]) for c in v.consumers)
        elif v.to_host:
            lb += min(problem.link(s, k, v.nbytes) for s in allowed[v.producer])
    return lb


class _Mover:
    """Incremental cost changes when moving a set of nodes to another target."""

    def __init__(self, problem: PlacementProblem, assignment):
        self.p = problem
        self.a = list(assignment)
        self.used = [0.0] * problem.k
        for i, t in enumerate(self.a):
            self.used[t] += problem.held(i, t)
        self.incident: list[list[int]] = [[] for _ in range(problem.n)]
        for j, v in enumerate(problem.values):
            if v.producer != HOST:
                self.incident[v.producer].append(j)
            for c in v.consumers:
                self.incident[c].append(j)
        self.neighbours: list[set[int]] = [set() for _ in range(problem.n)]
        for v in problem.values:
            if v.producer != HOST:
                for c in v.consumers:
                    self.neighbours[v.producer].add(c)
                    self.neighbours[c].add(v.producer)

    def _value_cost(self, j: int) -> float:
        v, k = self.p.values[j], self.p.k
        src = k if v.producer == HOST else self.a[v.producer]
        dests = {self.a[c] for c in v.consumers}
        if v.to_host:
            dests.add(k)
        return sum(self.p.link(src, t, v.nbytes) for t in dests)

    def delta(self, nodes, target: int) -> float:
        """Cost change of moving ``nodes`` (all on one target) to ``target``; inf if it breaks a
        capacity or a node may not run there."""
        p = self.p
        src = self.a[nodes[0]]
        arriving = sum(p.held(i, target) for i in nodes)
        if p.capacity[target] < self.used[target] + arriving:
            return math.inf
        leaving = sum(p.held(i, src) for i in nodes)
        for targets, cap in p.shared_capacity:
            # a move within one memory changes its bytes too, where precisions differ
            grows = (arriving if target in targets else 0.0) - (leaving if src in targets else 0.0)
            if grows > 0 and sum(self.used[t] for t in targets) + grows > cap:
                return math.inf
        d = 0.0
        for i in nodes:
            if math.isinf(p.cost[i][target]):
                return math.inf
            d += p.cost[i][target] - p.cost[i][src]
        vals = {j for i in nodes for j in self.incident[i]}
        before = sum(self._value_cost(j) for j in vals)
        for i in nodes:
            self.a[i] = target
        after = sum(self._value_cost(j) for j in vals)
        for i in nodes:
            self.a[i] = src
        return d + after - before

    def move(self, nodes, target: int) -> None:
        for i in nodes:
            self.used[self.a[i]] -= self.p.held(i, self.a[i])
            self.used[target] += self.p.held(i, target)
            self.a[i] = target

    def components(self) -> list[list[int]]:
        """Connected groups of nodes on the same target (linked by a value)."""
        seen = [False] * self.p.n
        out = []
        for root in range(self.p.n):
            if seen[root]:
                continue
            seen[root], stack, comp = True, [root], []
            while stack:
                i = stack.pop()
                comp.append(i)
                for j in self.neighbours[i]:
                    if not seen[j] and self.a[j] == self.a[root]:
                        seen[j] = True
                        stack.append(j)
            out.append(sorted(comp))
        return out


def _prefer_earlier(problem: PlacementProblem, assignment, cost: float) -> tuple[tuple[int, ...], float]:
    """Among equal costs prefer earlier targets: move whole same-target groups, then single nodes,
    to an earlier target whenever that does not raise the cost. Not on graphs of DP_MIN_NODES or
    more: there it took longer than placing them (1 s of 2.5 at 40,000 nodes), so ties stay as the
    solver left them (the DP's argmin keeps the first of equal choices at each step, which leans
    to earlier targets but does not guarantee them)."""
    if problem.k < 2 or problem.n == 0 or problem.n >= DP_MIN_NODES:
        return tuple(assignment), cost
    m = _Mover(problem, assignment)
    tol = 1e-13 * max(abs(cost), 1e-300)
    changed = True
    while changed:
        changed = False
        groups = m.components() + [[i] for i in range(problem.n)]
        for g in groups:
            for t in range(m.a[g[0]]):
                if all(m.a[i] == m.a[g[0]] for i in g) and m.delta(g, t) <= tol:
                    m.move(g, t)
                    changed = True
                    break
    new = tuple(m.a)
    new_cost = evaluate(problem, new)
    if new_cost <= cost + problem.n * tol:
        return new, new_cost
    return tuple(assignment), cost


def _improve(problem: PlacementProblem, assignment, deadline: float) -> tuple[int, ...]:
    """Strict local search: move single nodes or same-target groups while the cost drops."""
    m = _Mover(problem, assignment)
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for g in m.components() + [[i] for i in range(problem.n)]:
            if time.perf_counter() >= deadline:
                break
            if not all(m.a[i] == m.a[g[0]] for i in g):
                continue
            best_t, best_d = None, -1e-12
            for t in range(problem.k):
                if t != m.a[g[0]]:
                    d = m.delta(g, t)
                    if d < best_d:
                        best_t, best_d = t, d
            if best_t is not None:
                m.move(g, best_t)
                improved = True
    return tuple(m.a)


def repair(problem: PlacementProblem, assignment, deadline: float):
    """Move nodes off overfull targets, cheapest move first; None if that does not work out."""
    m = _Mover(problem, assignment)
    while time.perf_counter() < deadline:
        over = problem.overfull(m.used)
        if not over:
            return tuple(m.a)
        moves = ((m.delta([i], s), i, s) for i in range(problem.n) if m.a[i] in over
                 and problem.held(i, m.a[i]) > 0 for s in range(problem.k) if s != m.a[i])
        d, i, s = min(moves, default=(math.inf, -1, -1))
        if math.isinf(d):
            return None
        m.move([i], s)
    return None


def heuristic(problem: PlacementProblem, allowed: list[list[int]], deadline: float):
    """A feasible assignment without proof: best of one-target-for-all and greedy cheapest target
    repaired for capacity, then local search. None when nothing feasible was found."""
    p, cands = problem, []
    for t in range(p.k):
        cands.append(tuple([t] * p.n))
    greedy = [min(ts, key=lambda t: p.cost[i][t]) for i, ts in enumerate(allowed)]
    used = [0.0] * p.k
    for i, t in enumerate(greedy):
        used[t] += p.held(i, t)
    for t in range(p.k):
        if used[t] <= p.capacity[t]:
            continue
        # Move off the nodes whose next-best target costs least extra per byte freed.
        order = sorted((i for i in range(p.n) if greedy[i] == t and p.held(i, t) > 0),
                       key=lambda i: min((p.cost[i][s] - p.cost[i][t] for s in allowed[i] if s != t),
                                         default=math.inf) / p.held(i, t))
        for i in order:
            if used[t] <= p.capacity[t]:
                break
            for s in sorted((s for s in allowed[i] if s != t), key=lambda s: p.cost[i][s]):
                if used[s] + p.held(i, s) <= p.capacity[s]:
                    used[s] += p.held(i, s)
                    used[t] -= p.held(i, t)
                    greedy[i] = s
                    break
    cands.append(tuple(greedy))
    if p.shared_capacity and math.isinf(evaluate(p, tuple(greedy))):
        # the loop above keeps each target's own capacity; a memory two targets share (a runtime
        # and its int8 variant under one limit) may still be overfull
        shared = repair(p, greedy, deadline)
        if shared is not None:
            cands.append(shared)
    feasible = [a for a in cands if not math.isinf(evaluate(p, a))]
    if not feasible:
        return None
    best = min(feasible, key=lambda a: evaluate(p, a))
    return _improve(p, best, deadline)


# --------------------------------------------------------------------------------------------
# The mixed-integer program


class _Model:
    """Sparse MILP builder. A linear term is ``(const, var)``: ``var`` None means the constant."""

    def __init__(self, stages: int = 0):
        self.stage: list[dict[int, float]] = [{} for _ in range(stages)]
        """Per target, var -> seconds of that target's busy time (the pipeline objective's rows)."""
        self.stage_const = [0.0] * stages
        self.c: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.rows, self.cols, self.vals = [], [], []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.offset = 0.0

    def var(self, cost: float = 0.0, integer: bool = False, stage: int | None = None) -> int:
        self.c.append(0.0)
        self.ub.append(1.0)
        self.integer.append(1 if integer else 0)
        j = len(self.c) - 1
        self.charge(j, cost, stage)
        return j

    def charge(self, j: int | None, seconds: float, stage: int | None) -> None:
        """Add ``seconds`` to the objective when var ``j`` is 1 (always, for j None), and count it
        as busy time of target ``stage`` (a hand-over is charged to the target receiving it)."""
        if j is None:
            self.offset += seconds
        else:
            self.c[j] += seconds
        if stage is not None and stage < len(self.stage) and seconds:
            if j is None:
                self.stage_const[stage] += seconds
            else:
                self.stage[stage][j] = self.stage[stage].get(j, 0.0) + seconds

    def row(self, terms, lo: float, hi: float) -> None:
        r = len(self.lo)
        for j, a in terms:
            self.rows.append(r)
            self.cols.append(j)
            self.vals.append(a)
        self.lo.append(lo)
        self.hi.append(hi)


def _link(p: PlacementProblem, s: int, t: int, v) -> float:
    w = p.link(s, t, v.nbytes)
    if w < 0 or math.isnan(w):
        raise ValueError(f"link cost from location {s} to {t} is {w}; it must be >= 0")
    return w


def _payer(p: PlacementProblem, s: int, t: int) -> int:
    """Whose busy time a hand-over from s to t counts as: the receiver's, or the sender's when it
    goes to the host (the host is not a pipeline stage)."""
    return s if t >= p.k else t


def _add_fixed_source(m: _Model, p: PlacementProblem, v, s: int, x) -> None:
    """Value from a known location s (the host, or a node with one allowed target): it reaches
    location t exactly when u[v,t] = OR of x[c,t] over its consumers is 1."""
    by_t: dict[int, list[int]] = {p.k: [-1]} if v.to_host else {}
    for c in v.consumers:
        for t, j in x[c].items():
            by_t.setdefault(t, []).append(j)
    for t, js in by_t.items():
        if t == s:
            continue
        w = _link(p, s, t, v)
        if w == 0:
            continue
        if -1 in js:
            if math.isinf(w):
                where = "a model input" if v.producer == HOST else f"node {v.producer}'s output"
                raise PlacementError(
                    f"{where} must cross from location {s} to {t} over a link with infinite cost. "
                    "Make that link finite or remove the pin that forces it.")
            m.charge(None, w, _payer(p, s, t))
            continue
        if math.isinf(w):
            for j in js:
                m.ub[j] = 0.0
        elif len(js) == 1:
            m.charge(js[0], w, t)
        else:
            u = m.var(w, stage=t)
            for j in js:
                m.row([(u, 1.0), (j, -1.0)], 0.0, math.inf)


def _add_free_source(m: _Model, p: PlacementProblem, v, x) -> None:
    """Value from a node that may sit on several targets. Per consumer c a transport plan
    y[c,s,t] >= 0 with marginals x[producer,s] and x[c,t] says where v goes from where; the value
    enters t from s when some consumer's plan uses (s, t): z[v,s,t] >= y[c,s,t]. This is the
    local-polytope relaxation: much tighter than z >= x + x - 1, which a half/half split defeats."""
    src = x[v.producer]
    fixed_dst = {p.k} if v.to_host else set()
    free = []
    for c in v.consumers:
        if len(x[c]) == 1:
            fixed_dst.add(next(iter(x[c])))
        else:
            free.append(c)
    for t in fixed_dst:
        for s, js in src.items():
            if s != t:
                w = _link(p, s, t, v)
                if math.isinf(w):
                    m.ub[js] = 0.0
                else:
                    m.charge(js, w, _payer(p, s, t))
    cells: dict[tuple[int, int], list[int]] = {}
    for c in free:
        y = {}
        for s in src:
            for t in x[c]:
                w = 0.0 if s == t or t in fixed_dst else _link(p, s, t, v)
                if not math.isinf(w):
                    y[s, t] = m.var()
                    if w > 0:
                        cells.setdefault((s, t), []).append(y[s, t])
        for s, js in src.items():
            m.row([(j, 1.0) for (a, _), j in y.items() if a == s] + [(js, -1.0)], 0.0, 0.0)
        for t, jt in x[c].items():
            m.row([(j, 1.0) for (_, b), j in y.items() if b == t] + [(jt, -1.0)], 0.0, 0.0)
    for (s, t), ys in cells.items():
        w = _link(p, s, t, v)
        if len(ys) == 1:
            m.charge(ys[0], w, t)
        else:
            z = m.var(w, stage=t)
            for j in ys:
                m.row([(z, 1.0), (j, -1.0)], 0.0, math.inf)


def build_model(problem: PlacementProblem, allowed: list[list[int]]):
    """x[i,t] binary (a constant where node i has one allowed target), value hand-overs as in
    _add_fixed_source / _add_free_source, one capacity row per target that can overflow."""
    p, k, m = problem, problem.k, _Model(problem.k)
    # x[i][t]: variable index, or -1 for the constant 1; absent when not allowed.
    x: list[dict[int, int]] = []
    for i, ts in enumerate(allowed):
        if len(ts) == 1:
            x.append({ts[0]: -1})
            m.charge(None, p.cost[i][ts[0]], ts[0])
        else:
            x.append({t: m.var(p.cost[i][t], integer=True, stage=t) for t in ts})
            m.row([(j, 1.0) for j in x[i].values()], 1.0, 1.0)

    for v in p.values:
        if v.producer == HOST:
            _add_fixed_source(m, p, v, k, x)
        elif len(x[v.producer]) == 1:
            _add_fixed_source(m, p, v, next(iter(x[v.producer])), x)
        else:
            _add_free_source(m, p, v, x)

    for t in range(k):
        cap = p.capacity[t]
        if math.isinf(cap):
            continue
        fixed = sum(p.held(i, t) for i in range(p.n) if x[i].get(t) == -1)
        free = [(x[i][t], float(p.held(i, t))) for i in range(p.n)
                if x[i].get(t, -1) != -1 and p.held(i, t) > 0]
        if fixed + sum(r for _, r in free) > cap:
            m.row(free, -math.inf, cap - fixed)
    for targets, cap in p.shared_capacity:
        fixed = sum(p.held(i, t) for i in range(p.n) for t in targets if x[i].get(t) == -1)
        free = [(x[i][t], float(p.held(i, t))) for i in range(p.n) for t in targets
                if x[i].get(t, -1) != -1 and p.held(i, t) > 0]
        if fixed + sum(r for _, r in free) > cap:
            m.row(free, -math.inf, cap - fixed)
    return m, x


def cost_scale(c) -> float:
    """A typical coefficient: dividing by it brings the costs to O(1), so HiGHS's absolute
    tolerances mean something at microseconds."""
    nz = np.abs(np.asarray(c, float))
    nz = nz[nz != 0]
    return float(np.median(nz)) if nz.size else 1.0


def decode(x, xs) -> tuple[int, ...]:
    """The assignment a MILP solution ``xs`` picks: per node, the target whose variable is largest
    (-1 in ``x`` marks a target fixed by elimination)."""
    return tuple(min(xi, key=lambda t: 0.0 if xi[t] == -1 else -xs[xi[t]]) for xi in x)


def _solve_milp(problem, allowed, time_limit, rel_gap: float = REL_TOL / 10):
    m, x = build_model(problem, allowed)
    nvar = len(m.c)
    if nvar == 0:
        return tuple(next(iter(xi)) for xi in x), None, "fixed"
    scale = cost_scale(m.c)
    res = run_highs(np.asarray(m.c) / scale, m.integer, m.ub, m.rows, m.cols, m.vals, m.lo, m.hi, time_limit,
                    {"mip_rel_gap": rel_gap, "mip_abs_gap": 0.0})
    log.debug("milp: %d vars, %d rows, status %s: %s", nvar, len(m.lo), res.status, res.message)
    if res.status == 2:
        return None, None, "infeasible"
    bound = res.mip_dual_bound
    lb = None if bound is None or not math.isfinite(bound) else bound * scale + m.offset
    if res.x is None:
        return None, lb, "no-solution"
    return decode(x, res.x), lb, "milp" if res.status == 0 else "milp-time-limit"


# --------------------------------------------------------------------------------------------


def solve(problem: PlacementProblem, *, time_limit: float = 30.0,
          exact_node_limit: int | None = None, max_gap: float = 0.01,
          large_graphs: bool = True) -> Placement:
    """Placement minimising ``evaluate(problem, assignment)`` under capacities and inf costs.

    Optimal when ``Placement.optimal``. HiGHS stops after ``time_limit`` seconds; the placement
    then carries its dual bound and gap (building the model and polishing an early answer can
    add a second or two). Graphs of DP_MIN_NODES nodes or more are first placed by dynamic
    programming over their repeated layers (:mod:`hetcc.passes.frontier`, method
    ``frontier-dp``), which is exact unless it had to relax long-lived values or capacities
    bind; its answer is kept when its proven gap is at most ``max_gap``, else the MILP runs in
    the time left and the better answer wins. Graphs of DP_CAPPED_MIN_NODES or more with a
    finite capacity go through the DP too (for at most SMALL_DP_SECONDS), but keep the MILP's
    exact answer unless the DP's is proven optimal or the MILP ends at its time limit with a
    worse one. Among equal costs the earlier target wins, on graphs below DP_MIN_NODES (see
    _prefer_earlier). Problems with more than ``exact_node_limit`` nodes skip the MILP: a
    local-search heuristic answers, with the simple bound of
    :func:`_trivial_lower_bound`. Raises PlacementError when no placement is feasible,
    ValueError on a negative link cost. ``large_graphs=False`` skips the DP (for comparisons).
    """
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    p = problem
    if p.k == 0:
        raise PlacementError("no targets to place on. Add a target (torch:cpu is always available).")
    allowed = allowed_targets(p)
    check_feasible(p, allowed)
    check_shared(p, allowed)
    lb0 = _trivial_lower_bound(p, allowed)

    def done(a, lb, method):
        cost = evaluate(p, a)
        if math.isinf(cost):
            raise PlacementError("the only possible placement needs a hand-over over a link with "
                                 "infinite cost. Make that link finite or remove a pin.")
        a, cost = _prefer_earlier(p, a, cost)
        lb = min(max(lb, lb0), cost)
        return Placement(tuple(a), cost, lb, _is_optimal(cost, lb), method, time.perf_counter() - t0)

    if p.k == 1:
        return done((0,) * p.n, evaluate(p, (0,) * p.n), "single-target")
    cheapest = tuple(min(ts, key=lambda t: p.cost[i][t]) for i, ts in enumerate(allowed))
    cheap_cost = evaluate(p, cheapest)
    if _is_optimal(cheap_cost, lb0):
        return done(cheapest, lb0, "trivial")

    large, big = None, p.n >= DP_MIN_NODES
    capped = any(math.isfinite(c) for c in p.capacity) or any(math.isfinite(c) for _, c in p.shared_capacity)
    if large_graphs and (big or (capped and p.n >= DP_CAPPED_MIN_NODES)):
        # Smaller graphs keep the MILP's exact answer unless the DP's is proven optimal; the DP
        # runs first there only as a fallback, since a binding capacity over alike layers can
        # leave the MILP far from optimal at its time limit (symmetry).
        # (there the MILP usually proves its answer in a second: the DP gets only a few)
        stop = t0 + (time_limit / 2 if big else min(time_limit / 4, SMALL_DP_SECONDS))
        large = solve_large(p, allowed, stop, max_gap if big else REL_TOL / 10)
        if large is not None and large.cost - large.lower_bound <= (max_gap if big else 0.0) * large.cost:
            return done(large.assignment, large.lower_bound, "frontier-dp")
        lb0 = max(lb0, large.lower_bound) if large is not None else lb0

    if exact_node_limit is not None and p.n > exact_node_limit:
        a = heuristic(p, allowed, deadline)
        if a is None:
            raise PlacementError(
                f"heuristic found no placement that fits ({p.n} nodes > exact_node_limit="
                f"{exact_node_limit}); raise the limit to solve exactly.")
        return done(a, lb0, "heuristic")

    # After the DP, the MILP stops at max_gap too (the DP's own bar); smaller graphs are exact.
    a, lb, method = _solve_milp(p, allowed, deadline - time.perf_counter(),
                                max_gap if big and large is not None else REL_TOL / 10)
    if large is not None and method != "milp" and (a is None or large.cost < evaluate(p, a)):
        return done(large.assignment, max(lb or 0.0, large.lower_bound), "frontier-dp")
    if method == "fixed":
        return done(a, math.inf, "fixed")
    if method == "infeasible":
        raise infeasible_error(p)
    if a is None:
        a = heuristic(p, allowed, deadline + 1.0)
        if a is None:
            raise PlacementError(f"no placement found within time_limit={time_limit}s; raise the limit.")
        return done(a, lb if lb is not None else lb0, "heuristic-time-limit")
    if math.isinf(evaluate(p, a)):
        # HiGHS's tolerances let a capacity row overflow by a hair once x is rounded.
        a = repair(p, a, time.perf_counter() + 1.0)
        if a is None:
            raise InternalError("the MILP's assignment breaks a capacity and could not be repaired")
        method += "+repair"
    if method != "milp":
        # Stopped early: polish HiGHS's incumbent and keep the heuristic's answer if it is better.
        a = _improve(p, a, time.perf_counter() + 1.0)
        h = heuristic(p, allowed, time.perf_counter() + 1.0)
        if h is not None and evaluate(p, h) < evaluate(p, a):
            a, method = h, "heuristic-time-limit"
    return done(a, lb if lb is not None else lb0, method)
