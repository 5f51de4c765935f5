"""A compiled model's steps cut into pipeline stages, on plain data (step names, targets, the
values each step reads and makes), so it is tested without Ray.

A stage is a run of consecutive steps: by default each maximal run on one target (a device group
of the plan), or cut after the steps the caller names. Each stage receives the values it or a
later stage reads (the model's inputs and earlier stages' outputs) and hands on those that a later
stage or the model's outputs still need: a stage never sends what nobody downstream reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from hetcc.errors import InputError


@dataclass(frozen=True)
class Stage:
    index: int
    steps: tuple[str, ...]
    targets: tuple[str, ...]
    forward: tuple[str, ...]
    """Values this stage hands on: read by a later stage, or an output of the model."""


def cut(steps, outputs, split_after=None) -> list[Stage]:
    """``steps``: objects with ``name``, ``target``, ``inputs``, ``outputs`` (hetcc.runtime.Step);
    ``outputs``: the model's output value names (None for constants)."""
    if not steps:
        raise InputError("the model has no steps to distribute")
    names = [s.name for s in steps]
    if isinstance(split_after, str):
        split_after = [split_after]
    if split_after is None:
        bounds = [i for i in range(1, len(steps)) if steps[i].target != steps[i - 1].target]
    else:
        unknown = [n for n in split_after if n not in names]
        if unknown:
            raise InputError(f"split_after names {unknown}, which are not steps of this model; its steps "
                             f"are {', '.join(names)}")
        bounds = sorted({names.index(n) + 1 for n in split_after if names.index(n) + 1 < len(steps)})
    edges = [0, *bounds, len(steps)]
    groups = [steps[a:b] for a, b in zip(edges, edges[1:])]
    wanted = {o for o in outputs if o is not None}
    out = []
    for i, group in enumerate(groups):
        later = set(wanted)
        for g in groups[i + 1:]:
            for step in g:
                later.update(step.inputs)
        made_before = set()
        for g in groups[:i + 1]:
            for step in g:
                made_before.update(step.outputs)
        # what goes on: whatever a later stage or the outputs read that exists by now (the model's
        # inputs included: a stage passes them along for a stage further down)
        forward = tuple(sorted(n for n in later if n in made_before or not _made_by_any(steps, n)))
        out.append(Stage(i, tuple(s.name for s in group), tuple(dict.fromkeys(s.target for s in group)),
                         forward))
    return out


def _made_by_any(steps, name: str) -> bool:
    return any(name in s.outputs for s in steps)
