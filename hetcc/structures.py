"""The one rule for a serialized treespec that came from outside (a bundle's manifest, a torch
segment's archive): tuples, lists, dicts with plain keys, and leaves. torch's own
``treespec_loads`` imports any module an enum key, a defaultdict or a namedtuple names, so nothing
else may reach it. Imports nothing but json and re, so both the bundle reader and the torch
backend use it.
"""
from __future__ import annotations

import json
import re

CONTAINERS = frozenset({"builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
KEYED = frozenset({"builtins.dict", "collections.OrderedDict"})
RECORD = "hetcc.Record"
"""A record output (a ModelOutput, a namedtuple) in a bundle: class and field names as text only;
hetcc.records builds it back without importing anything."""
RECORD_KINDS = ("mapping", "tuple")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,31}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_DEPTH = 64
"""Nesting a structure may have; a model's inputs and outputs nest a few levels."""


def structure_problem(tree, records: bool = False) -> str | None:
    """Why the decoded treespec node ``tree`` is not a plain structure, or None. The phrase reads
    after "the structure ...". Walks without recursion, so no nesting can crash it. ``records``:
    record nodes are allowed too (a bundle's output structure)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"is nested more than {MAX_DEPTH} levels deep"
        if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
            return "has a node that is not {type, context, children_spec}"
        kind, context, children = node["type"], node["context"], node["children_spec"]
        if not isinstance(children, list):
            return "has children_spec that is not a list"
        if kind is None:
            if context is not None or children:
                return "has a leaf with a context or children"
            continue
        record = records and kind == RECORD
        if not record and kind not in CONTAINERS:
            return f"has a container of type {kind!r}"
        owner = "a record whose context" if record else "a context that"
        if not isinstance(context, str):
            return f"has {owner} is not a string"
        try:
            keys = json.loads(context)
        except (ValueError, RecursionError):
            return f"has {owner} is not JSON"
        if record:
            why = record_problem(keys, len(children))
            if why:
                return f"has a record whose {why}"
        elif kind in KEYED:
            if not isinstance(keys, list) or len(keys) != len(children) or any(
                    isinstance(k, (dict, list)) for k in keys):
                return f"has a {kind} whose keys are not a list of {len(children)} plain values"
        elif keys is not None:
            return f"has a {kind} with a context"
        stack.extend((child, depth + 1) for child in children)
    return None


def record_problem(data, children: int | None) -> str | None:
    """Why a record node's decoded context is not {kind, class, keys}, or None. The phrase reads
    after "a record whose ..."; ``children``: how many fields the node has, if known."""
    if not isinstance(data, dict) or set(data) != {"kind", "class", "keys"}:
        return "context is not {kind, class, keys}"
    if data["kind"] not in RECORD_KINDS:
        return f"kind is not one of {', '.join(RECORD_KINDS)}"
    name, keys = data["class"], data["keys"]
    if not isinstance(name, str) or len(name) > 512 or not _CLASS_NAME.fullmatch(name):
        return "class is not a dotted Python name"
    if not isinstance(keys, list) or not all(isinstance(k, str) and _FIELD.fullmatch(k) for k in keys) \
            or len(set(keys)) != len(keys):
        return "keys are not distinct field names"
    if children is not None and len(keys) != children:
        return f"keys number {len(keys)} for {children} fields"
    return None
