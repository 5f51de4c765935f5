"""The Backend protocol and the plain types a backend trades in.

A backend has four jobs (DESIGN.md): say whether it is available, say per node whether it supports
it and why not, lower a segment to files on disk, and load those files into a callable. Cost
estimates live in ``hetcc.cost_model``, not here, so the partitioner stays vendor-neutral.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from hetcc.target import Target


@dataclass(frozen=True)
class Support:
    ok: bool
    reason: str = ""
    """Why not, in words a user can act on; empty when ok."""

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


@dataclass(frozen=True)
class Artifact:
    """What ``lower`` produced: files in a work directory plus a little metadata."""

    target: str
    files: dict[str, str]
    """Role -> path (absolute while in a workdir; relative once saved in a bundle)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Versions, input/output names, options; JSON-serialisable."""


class Executable(Protocol):
    """A loaded segment: takes CPU torch tensors in the segment's input order, returns a tuple of
    tensors in its output order. Must be safe to call from several threads at once."""

    def __call__(self, *inputs) -> tuple: ...


class Backend(Protocol):
    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    """Device kinds this backend can target, e.g. ('cpu',)."""

    def is_available(self, target: Target) -> bool: ...

    def why_unavailable(self, target: Target) -> str: ...

    def supports(self, node, target: Target) -> Support: ...

    def lower(self, segment, target: Target, workdir: Path) -> Artifact: ...

    def load(self, artifact: Artifact, target: Target) -> Executable: ...

    def versions(self) -> dict[str, str]: ...
