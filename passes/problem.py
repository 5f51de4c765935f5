"""The placement problem as plain data. Nothing here imports torch: solvers work on this alone, so
they can be checked against brute force on small random problems and timed on large ones.

Cost under the model (the function :func:`evaluate` defines it, solvers minimise it)::

    total = sum_i cost[i][a_i]
          + sum over values v, over each location t that needs v and differs from v's source s:
                link_latency[s][t] + v.nbytes / link_bandwidth[s][t] + call_overhead[t]

Locations are the k targets plus ``HOST`` (index k): model inputs come from the host, model
outputs go to it. ``call_overhead[t]`` is charged once per value handed into ``t``: it stands for
the work of entering a new segment on ``t``. It over-counts a segment that receives several values,
which errs towards fewer cuts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

HOST = -1
"""Producer id of a model input, and the sink id for model outputs."""


@dataclass(frozen=True)
class Value:
    producer: int
    """Node index that produces the value, or HOST for a model input."""
    consumers: tuple[int, ...]
    """Node indices that read the value (each at most once)."""
    nbytes: int
    """Bytes handed over when the value crosses between locations."""
    to_host: bool = False
    """True when the value is a model output, so it must reach the host."""
    name: str = field(default="", compare=False)
    """The graph value's name, for reports (solvers ignore it)."""


@dataclass(frozen=True)
class PlacementProblem:
    nodes: tuple[str, ...]
    """Node names, in a topological order."""
    targets: tuple[str, ...]
    """Target names, in preference order (earlier wins a tie)."""
    cost: tuple[tuple[float, ...], ...]
    """cost[i][t]: seconds node i takes on target t; math.inf where it may not run there."""
    values: tuple[Value, ...]
    resident: tuple[int, ...]
    """Bytes node i keeps resident (weights) on whatever target runs it."""
    capacity: tuple[float, ...]
    """Bytes each target can hold resident; math.inf for no limit."""
    link_latency: tuple[tuple[float, ...], ...]
    """(k+1)x(k+1) seconds per hand-over from location s to t; last row/column is the host."""
    link_bandwidth: tuple[tuple[float, ...], ...]
    """(k+1)x(k+1) bytes/s from location s to t; math.inf where handing over is free."""
    call_overhead: tuple[float, ...]
    """k+1 seconds charged per value entering a location (host: usually 0)."""
    meta: dict = field(default_factory=dict, compare=False)
    """Free-form notes (objective, where the numbers came from); solvers ignore it."""
    shared_capacity: tuple[tuple[tuple[int, ...], float], ...] = ()
    """(targets, bytes): targets on one physical memory (the CPU runtimes on host RAM, two
    backends on one GPU) hold at most that many resident bytes together."""
    resident_on: tuple[tuple[float, ...], ...] = ()
    """resident_on[i][t]: bytes node i keeps resident when target t runs it, where that differs by
    target (a lower precision stores weights narrower: int8 a quarter of fp32); empty when every
    target holds ``resident[i]``. Read it through :meth:`held`."""

    def __post_init__(self):
        if self.resident_on and (len(self.resident_on) != self.n
                                 or any(len(row) != self.k for row in self.resident_on)):
            raise ValueError(f"resident_on must have one row of {self.k} byte counts per node "
                             f"({self.n}); got {len(self.resident_on)} rows")

    def held(self, i: int, t: int) -> float:
        """Bytes node i keeps resident on target t."""
        return self.resident_on[i][t] if self.resident_on else self.resident[i]

    def held_rows(self) -> list[tuple[float, ...]]:
        """held(i, t) for every node (rows) and target (columns)."""
        if self.resident_on:
            return [tuple(row) for row in self.resident_on]
        return [(r,) * self.k for r in self.resident]

    def least_held(self, i: int, targets) -> float:
        """The fewest bytes node i keeps on any of ``targets``: what a bound may count on."""
        return min((self.held(i, t) for t in targets), default=self.resident[i])

    def overfull(self, used) -> list[int]:
        """Targets whose resident bytes ``used`` break their own capacity or a shared one."""
        over = {t for t in range(self.k) if used[t] > self.capacity[t]}
        for targets, cap in self.shared_capacity:
            if sum(used[t] for t in targets) > cap:
                over.update(targets)
        return sorted(over)

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def k(self) -> int:
        return len(self.targets)

    def link(self, s: int, t: int, nbytes: int) -> float:
        """Seconds to hand ``nbytes`` from location s to t (HOST may be given as -1 or k)."""
        s = self.k if s == HOST else s
        t = self.k if t == HOST else t
        if s == t:
            return 0.0
        bw = self.link_bandwidth[s][t]
        return self.link_latency[s][t] + (0.0 if math.isinf(bw) else nbytes / bw) + self.call_overhead[t]


def evaluate(problem: PlacementProblem, assignment) -> float:
    """Cost of an assignment (node -> target index) under the model; math.inf if infeasible."""
    k = problem.k
    if len(assignment) != problem.n:
        raise ValueError(f"assignment has {len(assignment)} entries for {problem.n} nodes")
    total = 0.0
    used = [0.0] * k
    cost, held = problem.cost, problem.resident_on
    for i, t in enumerate(assignment):
        c = cost[i][t]
        if math.isinf(c):
            return math.inf
        total += c
        used[t] += held[i][t] if held else problem.resident[i]
    if problem.overfull(used):
        return math.inf
    # handovers(), inlined (this runs for every candidate a solver prices): same order of sums
    link, extra = problem.link, 0
    for v in problem.values:
        src = k if v.producer == HOST else assignment[v.producer]
        if len(v.consumers) == 1 and not v.to_host:
            t = assignment[v.consumers[0]]
            if t != src:
                extra += link(src, t, v.nbytes)
            continue
        dests = {assignment[c] for c in v.consumers}
        if v.to_host:
            dests.add(k)
        for t in sorted(dests):
            if t != src:
                extra += link(src, t, v.nbytes)
    return total + extra


def handovers(problem: PlacementProblem, assignment):
    """(value, from, to) for each location that needs a value other than where it is made; the
    host is location k."""
    k = problem.k
    for v in problem.values:
        src = k if v.producer == HOST else assignment[v.producer]
        dests = {assignment[c] for c in v.consumers}
        if v.to_host:
            dests.add(k)
        for t in sorted(dests):
            if t != src:
                yield v, src, t


def stage_seconds(problem: PlacementProblem, assignment) -> list[float]:
    """Busy seconds per target for one request: its nodes plus the hand-overs it receives (a
    hand-over to the host counts for the sender). When requests are pipelined across targets, the
    largest entry bounds the throughput. All inf if the assignment is infeasible."""
    k = problem.k
    if math.isinf(evaluate(problem, assignment)):
        return [math.inf] * k
    busy = [0.0] * k
    for i, t in enumerate(assignment):
        busy[t] += problem.cost[i][t]
    for v, src, t in handovers(problem, assignment):
        busy[t if t < k else src] += problem.link(src, t, v.nbytes)
    return busy


def bottleneck(problem: PlacementProblem, assignment) -> float:
    """The busiest target's seconds per request: what bounds pipelined throughput."""
    return max(stage_seconds(problem, assignment), default=0.0)


def relative_gap(cost: float, lower: float) -> float:
    """How far ``cost`` may be above the optimum, relative, given a proven ``lower`` bound: 0 when
    they meet, inf when the cost is 0 or infinite."""
    if cost <= lower:
        return 0.0
    if cost == 0 or math.isinf(cost):
        return math.inf
    return (cost - lower) / abs(cost)
