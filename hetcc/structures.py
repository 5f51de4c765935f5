"""The one rule for a serialized treespec that came from outside (a bundle's manifest, a torch
segment's archive): tuples, lists, dicts with plain keys, and leaves. torch's own
``treespec_loads`` imports any module an enum key, a defaultdict or a namedtuple names, so nothing
else may reach it. Imports nothing but json, so both the bundle reader and the torch backend use it.
"""
from __future__ import annotations

import json

CONTAINERS = frozenset({"builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
KEYED = frozenset({"builtins.dict", "collections.OrderedDict"})
MAX_DEPTH = 64
"""Nesting a structure may have; a model's inputs and outputs nest a few levels."""


def structure_problem(tree) -> str | None:
    """Why the decoded treespec node ``tree`` is not a plain structure, or None. The phrase reads
    after "the structure ...". Walks without recursion, so no nesting can crash it."""
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
        if kind not in CONTAINERS:
            return f"has a container of type {kind!r}"
        if not isinstance(context, str):
            return "has a context that is not a string"
        try:
            keys = json.loads(context)
        except (ValueError, RecursionError):
            return "has a context that is not JSON"
        if kind in KEYED:
            if not isinstance(keys, list) or len(keys) != len(children) or any(
                    isinstance(k, (dict, list)) for k in keys):
                return f"has a {kind} whose keys are not a list of {len(children)} plain values"
        elif keys is not None:
            return f"has a {kind} with a context"
        stack.extend((child, depth + 1) for child in children)
    return None
