"""Placement units: the nodes that must move together.

A multi-output op travels with its ``getitem`` readers (a tuple cannot cross runtimes), and a view
travels with the op that produces its input (views are free, so cutting right after one never
pays). Nodes that compute sizes rather than tensors (``sym_size`` and integer arithmetic on it)
are not placed at all: each segment that needs one recomputes it from its own inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch


def is_tensor_node(node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in val)


def tensor_inputs(node) -> list:
    """Nodes holding tensors that ``node`` reads, looking through size computations (a segment
    that recomputes a size needs the tensor it is taken from)."""
    out, seen, stack = [], set(), list(node.all_input_nodes)
    while stack:
        a = stack.pop()
        if a.name in seen:
            continue
        seen.add(a.name)
        if a.op == "call_function" and not is_tensor_node(a):
            stack.extend(a.all_input_nodes)
        else:
            out.append(a)
    return out


@dataclass(frozen=True)
class Unit:
    name: str
    members: tuple[str, ...]
    """Node names, in graph order."""


def placement_units(graph, facts) -> tuple[list[Unit], dict[str, int]]:
    """Group the graph's call_function nodes into units; returns units and node -> unit index."""
    nodes = [n for n in graph.nodes if n.op == "call_function" and is_tensor_node(n)]
    parent = {n.name: n.name for n in nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    for n in nodes:
        val = n.meta.get("val")
        producers = [a for a in n.all_input_nodes if a.name in parent]
        if isinstance(val, (tuple, list)):
            for u in n.users:
                if u.name in parent:
                    union(n.name, u.name)
        if facts[n.name].op_class == "view":
            if producers:
                union(producers[0].name, n.name)
            else:
                users = [u for u in n.users if u.name in parent]
                if len(users) == 1:
                    union(users[0].name, n.name)
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(find(n.name), []).append(n.name)
    ordered = _topological(nodes, groups, find)
    units = [Unit(_unit_name(m, facts), tuple(m)) for m in ordered]
    index = {name: i for i, u in enumerate(units) for name in u.members}
    return units, index


def _topological(nodes, groups, find) -> list[list[str]]:
    """Units in a topological order of the unit graph, ties broken by graph position."""
    position = {n.name: i for i, n in enumerate(nodes)}
    dag = nx.DiGraph()
    dag.add_nodes_from(groups)
    for n in nodes:
        for a in tensor_inputs(n):
            if a.name in position and find(a.name) != find(n.name):
                dag.add_edge(find(a.name), find(n.name))
    order = nx.lexicographical_topological_sort(dag, key=lambda root: position[groups[root][0]])
    return [groups[root] for root in order]


def _unit_name(members, facts) -> str:
    heavy = [m for m in members if facts[m].op_class != "view"]
    return (heavy or members)[0]

