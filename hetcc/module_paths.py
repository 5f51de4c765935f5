"""Names from the model's own structure, for reading plans: the submodule each node came from (as
torch.export records it), a set of nodes rolled up to the fewest module paths that describe it,
and the model's own names for its outputs (dict keys, ModelOutput fields).

FX node names (``expand_2``, ``getitem_12``) say nothing to someone who knows the model only by its
source; ``model.encoder.layer.0-3`` and ``last_hidden_state`` do.
"""
from __future__ import annotations

import re

from hetcc.records import Record

ROOT = "top level"
"""How the model's own forward (nodes in no submodule) is named in a roll-up."""
WHOLE = "whole model"
_INDEX = re.compile(r"^(.*)\.(\d+)$")
_COUNTS = re.compile(r"^: (\d+) of (\d+)")


def module_path(node) -> str:
    """The innermost submodule ``node`` was called from ('' for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [entry[0] for entry in stack.values()
             if isinstance(entry, (tuple, list)) and entry and isinstance(entry[0], str)]
    return paths[-1] if paths else ""


def node_paths(graph, counted) -> dict[str, str]:
    """Node name -> module path for the call_function nodes of ``graph`` named in ``counted``, in
    graph order."""
    return {n.name: module_path(n) for n in graph.nodes if n.op == "call_function" and n.name in counted}


class ModulePaths:
    """Module paths of the placed nodes of a graph (``units``' members), to name segments by."""

    def __init__(self, graph, units, facts):
        self.paths = node_paths(graph, {m for unit in units for m in unit.members})
        """Node name -> module path."""
        # views are free and travel with the node whose output they view (passes/units.py), so
        # they do not count towards which modules a segment runs
        self._counted = {n: p for n, p in self.paths.items() if facts[n].op_class != "view"}

    def of(self, nodes) -> tuple[str, ...]:
        """The modules ``nodes`` run, rolled up (roll_up); by their views if they hold nothing else."""
        return roll_up(nodes, self._counted) or roll_up(nodes, self.paths)


def _prefixes(path: str) -> list[str]:
    if not path:
        return [""]
    parts = path.split(".")
    return [""] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def roll_up(chosen, paths: dict[str, str]) -> tuple[str, ...]:
    """The fewest module paths that describe the nodes ``chosen`` among all nodes of ``paths``
    (node -> module path, in graph order), in graph order.

    A module all of whose nodes are chosen is named alone (``model.embeddings``), consecutive
    numbered siblings as a range (``model.encoder.layer.0-3``), a module chosen but for a few
    parts by what it leaves out (``model.encoder.layer.0 except output.LayerNorm``), and a module
    only some of whose own nodes (those in none of its submodules) are chosen with a count
    (``model.pooler: 2 of 5 nodes``). Nodes not in ``paths`` are not counted.
    """
    chosen = {c for c in chosen if c in paths}
    if not chosen:
        return ()
    return tuple(_join(path, part) for path, part in _ranges(_Tree(paths, chosen).describe("", True)))


class _Tree:
    """Node counts per module path: all, chosen, and own (in none of its submodules)."""

    def __init__(self, paths: dict[str, str], chosen: set[str]):
        self.total: dict[str, int] = {}
        self.inside: dict[str, int] = {}
        self.own_total: dict[str, int] = {}
        self.own_inside: dict[str, int] = {}
        self.children: dict[str, list[str]] = {}
        for node, path in paths.items():
            prefixes = _prefixes(path)
            for parent, child in zip(prefixes, prefixes[1:]):
                kids = self.children.setdefault(parent, [])
                if child not in kids:  # first appearance: graph order, so layer.2 before layer.10
                    kids.append(child)
            hit = node in chosen
            for p in prefixes:
                self.total[p] = self.total.get(p, 0) + 1
                self.inside[p] = self.inside.get(p, 0) + hit
            self.own_total[path] = self.own_total.get(path, 0) + 1
            self.own_inside[path] = self.own_inside.get(path, 0) + hit

    def describe(self, path: str, side: bool, leave_out: bool = True) -> list[tuple[str, str]]:
        """(path, part) entries naming the nodes under ``path`` that are chosen (``side``) or not;
        part is '' for a whole module. ``leave_out``: a module may be named by what it leaves out
        when that is shorter (not inside such a list itself)."""
        total = self.total.get(path, 0)
        got = self.inside.get(path, 0) if side else total - self.inside.get(path, 0)
        if not got:
            return []
        if got == total:
            return [(path, "")]
        of = self.own_total.get(path, 0)
        own = self.own_inside.get(path, 0) if side else of - self.own_inside.get(path, 0)
        entries = []
        if own:
            mark = " own" if self.children.get(path) else ""  # its submodules are listed apart
            entries.append((path, ": own nodes only" if own == of else f": {own} of {of}{mark} nodes"))
        for child in self.children.get(path, []):
            entries += self.describe(child, side, leave_out)
        if leave_out and len(entries) > 1:
            rest = _ranges(self.describe(path, not side, leave_out=False))
            if len(rest) < len(_ranges(entries)):  # ties: name what is there
                return [(path, " except " + ", ".join(_relative(path, p, part) for p, part in rest))]
        return entries


def _ranges(entries) -> list[tuple[str, str]]:
    """Whole modules ``a.3``, ``a.4``, ``a.5`` next to each other become one: ``a.3-5``."""
    out: list[list] = []  # [first path, last index of a range or None, part]
    for path, part in entries:
        match = _INDEX.match(path)
        if out and match and not part and not out[-1][2]:
            first, last, _ = out[-1]
            head = _INDEX.match(first)
            if head and head.group(1) == match.group(1) \
                    and int(match.group(2)) == (last if last is not None else int(head.group(2))) + 1:
                out[-1][1] = int(match.group(2))
                continue
        out.append([path, None, part])
    return [(path if last is None else f"{path}-{last}", part) for path, last, part in out]


def _join(path: str, part: str) -> str:
    if not path:
        return WHOLE + part if not part or part.startswith(" except") else ROOT + part
    return path + part


def _relative(parent: str, path: str, part: str) -> str:
    """An entry inside ``parent``'s 'except' list, named from ``parent``."""
    if path == parent:  # part is ': own nodes only' or ': K of N own nodes'
        counts = _COUNTS.match(part)
        return f"{counts.group(1)} of its {counts.group(2)} own nodes" if counts else "its own nodes"
    return _join(path[len(parent) + 1:] if parent else path, part)


def label(path: str) -> str:
    """A module path for a reader: the model's own forward is 'top level'."""
    return path or ROOT


def output_names(out_spec, outputs) -> dict[str, str]:
    """Graph value -> the model's own name for that output: dict keys and ModelOutput fields
    (``last_hidden_state``), namedtuple fields, positions (``[0]``, ``past_key_values[1]``); a
    model that returns one bare tensor calls it ``output``. ``outputs`` are the flattened outputs'
    value names (None for a constant). A value returned twice gets both names."""
    names = leaf_names(out_spec)
    if len(names) != len(outputs):
        return {}  # not the structure these outputs came from: no names rather than wrong ones
    out: dict[str, str] = {}
    for value, name in zip(outputs, names):
        if value:
            out[value] = f"{out[value]}, {name}" if value in out else name
    return out


def _children(spec) -> list:
    kids = getattr(spec, "children", None)
    return list(kids()) if callable(kids) else list(getattr(spec, "children_specs", []))


def leaf_names(spec) -> list[str]:
    """The model's own name for each flattened output, in order (see output_names)."""
    names: list[str] = []
    stack = [(spec, "")]
    while stack:
        node, prefix = stack.pop()
        if node.is_leaf():
            names.append(prefix or "output")
            continue
        kids = _children(node)
        context = node.context
        keys = getattr(context, "_fields", None)  # a namedtuple's spec holds its class
        if node.type is Record:  # a loaded bundle's record: (kind, class name, field names)
            keys = context[2]
        if keys is None and isinstance(context, (list, tuple)) and len(context) == len(kids):
            keys = context  # dict keys, ModelOutput fields
        parts = []
        for i, _ in enumerate(kids):
            key = keys[i] if keys is not None else i
            if isinstance(key, str) and key.isidentifier():
                parts.append(f"{prefix}.{key}" if prefix else key)
            else:
                parts.append(f"{prefix}[{key!r}]")
        stack.extend(reversed(list(zip(kids, parts))))
    return names
