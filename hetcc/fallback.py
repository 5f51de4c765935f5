"""Fallback: the nodes that run on torch:cpu only because the targets asked for could not take them,
and the bound that compile(strict=..., max_fallback=...) puts on them.

A node has fallen back when it ends on torch:cpu and every other listed target was ruled out for it,
at least one of them because it refused the node (its capability answer) or failed on it (lowering,
loading or verification). The others may be ruled out by hetcc's own choice, as in a candidate plan
that tuning builds on one target alone: if that plan were kept, the node would run on torch:cpu
because its target could not take it, so it counts. These are not fallback:

- a node the cost model put on torch:cpu while another listed target could take it (torch:cpu is
  listed, and was the better choice);
- a node kept on torch:cpu by the user's own pins or exclusions alone;
- anything, when torch:cpu is the only target.

With targets onnxruntime:cpu,torch:cpu, a node ONNX Runtime refused that runs on torch:cpu is
fallback; a node ONNX Runtime could run that the cost model gave to torch:cpu is not.

The share is counted in nodes, the unit `hetcc explain` shows, not in FLOPs: a model of cheap ops
around one large matmul would otherwise pass any bound while most of its graph runs on torch.
Nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hetcc.errors import FallbackError, HetccError

REFUSED, FAILED, USER, CHOICE = "refused", "failed", "user", "choice"
"""Why a target was ruled out for a unit (passes/capability.py): the backend said no, it failed on
the unit's segment, the user's pins or exclusions, or hetcc's own choice (measuring one target)."""
SHOWN = 5
"""Nodes named per group in the error; the rest are counted."""


@dataclass(frozen=True)
class Fallback:
    """One placement unit that fell back to torch:cpu."""

    nodes: tuple[str, ...]
    refusals: tuple[tuple[str, str, str], ...]
    """(target, REFUSED or FAILED, reason) for each listed target that could not take the unit."""


def fallen_back(units, candidates, on_torch, torch_index: int) -> list[Fallback]:
    """The units among ``on_torch`` (unit indices placed on torch:cpu) that fell back (see above)."""
    others = [t for t in range(len(candidates.targets)) if t != torch_index]
    out = []
    for u in on_torch:
        if not others or any(candidates.allowed[u][t] for t in others):
            continue  # torch:cpu alone, or the cost model chose torch:cpu over a target that could
        names = [candidates.targets[t] for t in others]
        kinds = [candidates.kinds[u].get(name) for name in names]
        # hetcc's own choice (a candidate plan that keeps to one target) excuses nothing: if that
        # plan is kept, the unit runs on torch:cpu because its target refused it or failed on it
        refusals = tuple((name, kind, candidates.reasons[u][name])
                         for name, kind in zip(names, kinds) if kind in (REFUSED, FAILED))
        if refusals:
            out.append(Fallback(tuple(units[u].members), refusals))
    return out


def is_fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 1


@dataclass(frozen=True)
class Limit:
    """How much fallback a compile accepts: none (strict), or at most a share of the nodes."""

    strict: bool = False
    max_fallback: float | None = None
    """Largest share of the model's nodes that may fall back, 0 to 1; more raises."""

    @classmethod
    def make(cls, strict, max_fallback) -> "Limit | None":
        """The limit for compile's arguments (None: fallback is allowed), or a HetccError saying
        what is wrong with them."""
        if not isinstance(strict, bool):
            raise HetccError(f"strict must be True or False, got {strict!r}")
        if strict and max_fallback is not None:
            raise HetccError(f"strict=True and max_fallback={max_fallback!r} both bound the fallback; "
                             "give one: strict=True allows none, max_fallback a share of the nodes")
        if max_fallback is not None and not is_fraction(max_fallback):
            raise HetccError(f"max_fallback must be a fraction of the model's nodes from 0 to 1 (0.05 "
                             f"allows 5%), got {max_fallback!r}")
        if not strict and max_fallback is None:
            return None
        return cls(strict, None if strict else float(max_fallback))

    def describe(self) -> str:
        return "strict=True" if self.strict else f"max_fallback={self.max_fallback:g}"

    def check(self, fallbacks: list[Fallback], total_nodes: int, torch_listed: bool,
              at_least: bool = False) -> None:
        """Raise FallbackError when ``fallbacks`` exceed the limit. ``at_least``: more may follow
        (checked before lowering has finished), so the count is a lower bound."""
        count = sum(len(f.nodes) for f in fallbacks)
        share = count / total_nodes if total_nodes else 0.0
        if count == 0 or (not self.strict and share <= self.max_fallback):
            return
        rule = "strict=True allows none" if self.strict else \
            f"max_fallback={self.max_fallback:g} allows {self.max_fallback:.1%}"
        raise FallbackError(
            f"{'at least ' if at_least else ''}{count} of {total_nodes} nodes ({share:.1%}) fall back to "
            f"torch:cpu because the targets asked for could not take them, and {rule}. "
            + "; ".join(_groups(fallbacks)) + ". " + _advice(fallbacks, torch_listed, self.strict))


def _groups(fallbacks: list[Fallback]) -> list[str]:
    """One sentence per set of refusals: the nodes it covers (a few named, the rest counted), and
    what each target said, whole."""
    by_why: dict[tuple, list[str]] = {}
    for f in fallbacks:
        by_why.setdefault(f.refusals, []).extend(f.nodes)
    out = []
    for refusals, nodes in sorted(by_why.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(nodes[:SHOWN]) + (f" and {len(nodes) - SHOWN} more" if len(nodes) > SHOWN else "")
        said = "; ".join(why if kind == FAILED else f"{target} refused them: {why}"
                         for target, kind, why in refusals)
        out.append(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} ({shown}): {said}")
    return out


def _advice(fallbacks: list[Fallback], torch_listed: bool, strict: bool) -> str:
    node = fallbacks[0].nodes[0]
    target = fallbacks[0].refusals[0][0]
    pin = (f"pin them there (pins={{{node!r}: 'torch:cpu'}}, CLI --pin {node}=torch:cpu)" if torch_listed
           else "list torch:cpu in the targets and pin them there")
    return (f"To accept these nodes on torch:cpu, keep them off the target that refused them "
            f"(exclude={{{node!r}: [{target!r}]}}, CLI --exclude {node}={target}; a submodule path "
            f"covers all its nodes) or {pin}; "
            + ("to accept some fallback, use max_fallback (--max-fallback FRACTION) instead of strict"
               if strict else "to accept more fallback, raise max_fallback (--max-fallback)")
            + "; if the target should take the op, report it with the reason above")
