"""Contract placed units into segments so that the segment graph stays acyclic.

Units are visited in topological order; a unit joins a segment of its own target when that cannot
close a cycle (no other segment lies on a path from that segment to the unit), preferring the
segment of one of its producers, otherwise it opens a new segment.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from hetcc.passes.problem import HOST


@dataclass(frozen=True)
class SegmentSpec:
    target: int
    units: tuple[int, ...]


def form_segments(problem, assignment) -> list[SegmentSpec]:
    preds: list[set[int]] = [set() for _ in range(problem.n)]
    for v in problem.values:
        if v.producer != HOST:
            for c in v.consumers:
                preds[c].add(v.producer)
    seg_of: list[int] = [-1] * problem.n
    members: list[list[int]] = []
    seg_target: list[int] = []
    ancestors: list[set[int]] = []  # segments each segment (transitively) depends on
    for u in range(problem.n):
        deps: set[int] = set()
        for p in preds[u]:
            deps.add(seg_of[p])
            deps |= ancestors[seg_of[p]]
        t = assignment[u]
        chosen = None
        candidates = [s for s in range(len(members)) if seg_target[s] == t]
        # producers' segments first, then the most recent segment of the same target
        candidates.sort(key=lambda s: (s not in {seg_of[p] for p in preds[u]}, -s))
        for s in candidates:
            if all(s not in ancestors[x] for x in deps if x != s):
                chosen = s
                break
        if chosen is None:
            chosen = len(members)
            members.append([])
            seg_target.append(t)
            ancestors.append(set())
        members[chosen].append(u)
        seg_of[u] = chosen
        ancestors[chosen] |= deps - {chosen}
        # segments that depend on the chosen one now also depend on what it depends on
        for s in range(len(members)):
            if chosen in ancestors[s]:
                ancestors[s] |= ancestors[chosen]
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(members)))
    for u in range(problem.n):
        for p in preds[u]:
            if seg_of[p] != seg_of[u]:
                dag.add_edge(seg_of[p], seg_of[u])
    order = list(nx.lexicographical_topological_sort(dag, key=lambda s: min(members[s])))
    return [SegmentSpec(seg_target[s], tuple(sorted(members[s]))) for s in order]
