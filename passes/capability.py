"""Capability: per unit and target, may it run there, and if not, why (shown in the plan).

Sources of a 'no', in order: a pin to another target, an exclusion, the backend's own answer for
one of the unit's nodes, a failure seen while lowering or verifying (added later with ``ban``).
"""
from __future__ import annotations

from hetcc.errors import TargetError, plain
from hetcc.fallback import CHOICE, FAILED, REFUSED, USER
from hetcc.target import Target


class Candidates:
    def __init__(self, n_units: int, targets: list[Target], fallback: int | None = None):
        self.targets = [str(t) for t in targets]
        self.fallback = fallback
        """Index of a target that takes only what no other target can run."""
        self.allowed = [[True] * len(targets) for _ in range(n_units)]
        self.reasons: list[dict[str, str]] = [{} for _ in range(n_units)]
        self.kinds: list[dict[str, str]] = [{} for _ in range(n_units)]
        """Per unit, target -> why it is ruled out, in kind: hetcc.fallback's REFUSED, FAILED, USER
        or CHOICE (what tells fallback from the user's or the cost model's choice)."""

    def forbid(self, unit: int, target: int, reason: str, kind: str = REFUSED) -> None:
        if self.allowed[unit][target]:
            self.allowed[unit][target] = False
            # stored whole and plain: the plan, explain and errors show it as it is here
            self.reasons[unit][self.targets[target]] = plain(reason)
            self.kinds[unit][self.targets[target]] = kind

    def ban(self, unit: int, target: int, reason: str) -> None:
        """Forbid after a failure; a unit that loses its last listed target goes to the fall-back."""
        self.forbid(unit, target, reason, FAILED)
        fb = self.fallback
        if fb is not None and not any(ok for i, ok in enumerate(self.allowed[unit]) if i != fb):
            self.allowed[unit][fb] = True
            self.reasons[unit].pop(self.targets[fb], None)
            self.kinds[unit].pop(self.targets[fb], None)

    def restricted_to(self, target: int, reason: str | None = None, also: int | None = None) -> "Candidates":
        """A copy where every unit that may run on ``target`` runs only there, or on ``also``
        (``reason``: what the plan says kept the unit off the other targets)."""
        out = Candidates(len(self.allowed), self.targets, self.fallback)
        out.allowed = [list(row) for row in self.allowed]
        out.reasons = [dict(r) for r in self.reasons]
        out.kinds = [dict(k) for k in self.kinds]
        reason = reason or f"comparing against {self.targets[target]} alone"
        for u, row in enumerate(out.allowed):
            if row[target]:
                for t in range(len(row)):
                    if t not in (target, also):
                        out.forbid(u, t, reason, CHOICE)
        return out


def _scopes(node) -> list[str]:
    """Submodule paths a node belongs to ('' is the root), from torch.export's metadata."""
    stack = node.meta.get("nn_module_stack") or {}
    return [path for path, _ in stack.values() if isinstance(path, str)]


def matches(node, key: str) -> bool:
    """Whether ``key`` names the node or a submodule it belongs to (pins, exclude)."""
    if node.name == key:
        return True
    return any(p == key or p.startswith(key + ".") for p in _scopes(node))


def check_keys(captured, keys, what: str) -> None:
    """TargetError naming the submodules when a key of ``what`` (pins, exclude) matches no node."""
    nodes = [n for n in captured.graph.nodes if n.op == "call_function"]
    for key in keys:
        if not any(matches(n, key) for n in nodes):
            known = sorted({p for n in nodes for p in _scopes(n) if p})
            raise TargetError(
                f"{what} names {key!r}, which is neither a submodule nor a node of this model. "
                f"Submodules: {', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}")


def candidates_for(captured, units, order: list[Target], backends: dict, pins: dict | None,
                   exclude: dict | None, fallback: Target | None = None) -> Candidates:
    """Who may run what. ``fallback`` (torch:cpu when the user did not list it) only takes units
    that no listed target can run."""
    index = {t: i for i, t in enumerate(order)}
    cand = Candidates(len(units), order, index[fallback] if fallback is not None else None)
    pins = {k: Target.parse(v) for k, v in (pins or {}).items()}
    exclude = {k: [Target.parse(t) for t in ([v] if isinstance(v, str) else v)]
               for k, v in (exclude or {}).items()}
    for what, table in (("pins", pins), ("exclude", exclude)):
        check_keys(captured, table, what)
        for targets in table.values():
            for t in targets if isinstance(targets, list) else [targets]:
                if t not in index:
                    raise TargetError(f"{what} uses target {t}, which is not among the targets "
                                      f"{[str(x) for x in order]}; add it to targets")
    for u, unit in enumerate(units):
        nodes = [captured.node(m) for m in unit.members]
        for key, pinned in pins.items():
            if any(matches(n, key) for n in nodes):
                for t in order:
                    # a pin to a target leaves its precision to the accuracy budget; a pin to
                    # target@precision is exact
                    if t != pinned and not (pinned.precision is None and t.base == pinned):
                        cand.forbid(u, index[t], f"pinned to {pinned} by pins[{key!r}]", USER)
        for key, banned in exclude.items():
            if any(matches(n, key) for n in nodes):
                for b in banned if isinstance(banned, list) else [banned]:
                    # excluding a target excludes it in every precision
                    for t in order if b.precision is None else [b]:
                        if t == b or t.base == b:
                            cand.forbid(u, index[t], f"excluded by exclude[{key!r}]", USER)
        for t in order:
            if not cand.allowed[u][index[t]]:
                continue
            for n in nodes:
                support = backends[t].supports(n, t)
                if not support.ok:
                    cand.forbid(u, index[t], support.reason or f"{t} does not support {n.name}")
                    break
        if fallback is not None:
            others = [i for t, i in index.items() if t != fallback]
            if any(cand.allowed[u][i] for i in others):
                cand.forbid(u, index[fallback], "torch:cpu is only the fall-back here (not listed in targets)",
                            CHOICE)
    return cand
