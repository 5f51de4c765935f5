"""Narrow a failed segment down to the units that really fail, by bisecting it.

One op that a runtime refuses used to send its whole segment to the fall-back (all 215 nodes of a
HF Llama for one op). Instead the segment's units, in topological order, are split into two
contiguous halves and each half is lowered alone; a half that fails is split again, a half that
passes is spared. ``narrow`` knows nothing of torch or backends: ``fails(part)`` says why a part
fails, or None, so the search is checked against brute force with a fake predicate.

A failure that only the whole shows (error accumulated over many nodes, a bug that needs two parts
together) makes both halves pass: that part is banned whole, as before, and the result says so.
A failure that depends on where the part was cut counts as the part's own: the re-solve then cuts
elsewhere, and a new failure there is narrowed again.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

NARROW_BUDGET = 32
"""Lowerings that narrowing may spend in one compile. Finding one failing unit among n takes about
2*log2(n) lowerings, about 14 for a 100-unit segment (a small HF decoder), and the parts shrink as
they go, so narrowing costs about twice the failed segment's own lowering; 32 finds two failing
ops in a segment of that size. A model where one op fails in every layer of a deep stack would
take many more, so past the budget the rest of a segment is banned whole, as without narrowing."""


@dataclass(frozen=True)
class Narrowed:
    """What narrowing found for one failed segment."""

    banned: dict
    """Unit -> reason, in the segment's order: the units that must leave the target."""
    reason: str
    """Why the smallest failing part that was tried failed: the clearest account of the cause."""
    calls: int
    """Parts tried (calls of ``fails``)."""
    together: tuple = ()
    """Parts of several units that fail while each of their halves passes: banned whole."""
    untested: tuple = ()
    """Units banned without being narrowed down, because the budget ran out."""

    @property
    def whole_only(self) -> bool:
        """Both halves of the whole passed: the failure needs all of it."""
        return self.calls == 2 and bool(self.together)


def narrow(units: Sequence[Hashable], fails: Callable[[tuple], str | None], reason: str,
           budget: int = NARROW_BUDGET) -> Narrowed:
    """The units of a failed part that fail, and why, within ``budget`` calls of ``fails``.

    ``units`` failed together with ``reason``; ``fails(part)`` tries a contiguous sub-tuple and
    returns why it fails, or None. Parts are split breadth-first, so when the budget runs out the
    parts left over are of like size rather than one branch finished and another untouched. When
    failures are per unit, the result is exactly the failing units. A unit is spared only when a
    part holding it passed, so the result never spares a unit that fails on its own.
    """
    banned: dict = {}
    together, untested = [], []
    calls = 0
    smallest = (len(units), reason)
    queue = deque([(tuple(units), reason)])
    while queue:
        part, why = queue.popleft()
        if len(part) == 1:
            banned[part[0]] = why
            continue
        if budget - calls < 2:  # both halves must be tried to tell "one half" from "only together"
            untested.extend(part)
            banned.update(dict.fromkeys(part, why))
            continue
        mid = len(part) // 2
        halves = (part[:mid], part[mid:])
        results = [fails(h) for h in halves]
        calls += 2
        failing = [(h, r) for h, r in zip(halves, results) if r is not None]
        if not failing:
            together.append(part)
            banned.update(dict.fromkeys(part, why))
        for h, r in failing:
            if len(h) < smallest[0]:
                smallest = (len(h), r)
        queue.extend(failing)
    order = {u: i for i, u in enumerate(units)}
    return Narrowed(dict(sorted(banned.items(), key=lambda kv: order[kv[0]])), smallest[1], calls,
                    tuple(together), tuple(sorted(untested, key=order.__getitem__)))


def describe(target, total: int, nodes: Sequence[str], narrowed: Narrowed, lowerings: int,
             budget: int = NARROW_BUDGET) -> str:
    """The plan note for one narrowed segment: what fell back, why, and what narrowing cost.
    ``total``: the segment's node count; ``nodes``: the banned units' nodes, in order; ``budget``:
    the lowerings narrowing may spend per compile."""
    shown = ", ".join(nodes[:3]) + (", ..." if len(nodes) > 3 else "")
    # the reason last: it ends with the command that reproduces the failure, to copy whole
    text = f"{target} rejected {len(nodes)} of {total} node(s) ({shown}), narrowed in {lowerings} lowering(s)"
    if narrowed.whole_only:
        text += "; each half passes alone, so the failure needs the whole segment, and all of it falls back"
    if narrowed.together:
        text += f"; {len(narrowed.together)} part(s) fail only as a whole and fall back whole"
    if narrowed.untested:
        text += (f"; the narrowing budget ({budget} lowerings per compile) ran out, so "
                 f"{len(narrowed.untested)} unit(s) fall back untested")
    return f"{text}. Reason: {narrowed.reason}"
