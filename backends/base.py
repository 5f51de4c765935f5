"""The Backend base class and the plain types a backend trades in.

A backend has four jobs: say whether a target is usable here, say per node whether it supports it
and why not, lower a segment to files on disk, and load those files into a callable. The base class
owns the shared parts of the first two; a backend writes its op predicate, ``lower`` and ``load``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol, final

from hetcc.backends._common import dtype_problem, is_structural
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
    """A loaded segment: takes torch tensors in the segment's input order, returns a tuple of
    tensors in its output order. Must be safe to call from several threads at once. An executable
    on a GPU says so with ``location`` ("cuda:0"; hetcc/handover.py): it then takes and returns
    tensors there; without it, CPU tensors."""

    def __call__(self, *inputs) -> tuple: ...


class Backend(ABC):
    """The template every backend fills in (tinygrad's ``Compiled`` works this way). A backend
    declares what it is as data (``name``, ``devices``, ``options``, ``packages``,
    ``banned_dtypes``) and writes only what differs between vendors:

    - ``supports_op(node, target)``: whether it takes this node's op, and why not;
    - ``lower(segment, target, workdir)``: the segment to files on disk (an Artifact);
    - ``load(artifact, target)``: those files to a callable (an Executable);
    - ``target_problem(target)`` where a target needs more than the packages (an SDK that can
      start, a GPU): what is missing and what to do, or None.

    The base owns the rest, so no backend can forget a shared check: ``supports`` answers yes for
    graph plumbing, then refuses a target that is unusable here (with the reason), then a node
    that touches a banned dtype, and only then asks ``supports_op``. Cost estimates live in
    ``hetcc.cost_model``, not here. docs/backends.md "A whole backend" shows one in full."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    """Device kinds this backend can target, e.g. ('cpu',)."""
    options: ClassVar[tuple] = ()
    """The keyword options its constructor takes (hetcc.backends.options.Option), as data."""
    untested: ClassVar[dict[str, str]] = {}
    """Device kind -> why its targets have not run on real hardware (`hetcc targets` shows it)."""
    packages: ClassVar[tuple[str, ...]] = ()
    """Import names every target needs; a missing one makes the backend unusable, saying what to
    install."""
    on_device: ClassVar[tuple[str, ...]] = ()
    """Device kinds whose executables take and return tensors on the device (``location``
    "cuda:N"), so a neighbour there gets them without a copy; others take host tensors and copy
    in and out themselves. The cost model charges hand-overs by it."""
    banned_dtypes: ClassVar[dict[str, str]] = {}
    """torch dtype name ("float64") -> why the backend refuses nodes that read or write it; a name
    this torch lacks (an older torch without float8) is ignored."""

    # ---- what the base owns ----

    @final
    def unavailable(self, target: Target) -> str | None:
        """Why ``target`` cannot be used here, in words that say what to do; None when it can."""
        if target.device not in self.devices:
            return f"backend {self.name!r} drives {', '.join(self.devices)}, not {target.device!r}"
        missing = missing_packages(self.packages)
        if missing:
            return not_installed(missing)
        return self.target_problem(target) or None

    @final
    def is_available(self, target: Target) -> bool:
        return self.unavailable(target) is None

    @final
    def why_unavailable(self, target: Target) -> str:
        return self.unavailable(target) or ""

    @final
    def supports(self, node, target: Target) -> Support:
        """Per node, whether this backend takes it on ``target`` and why not."""
        if node.op != "call_function" or is_structural(node):
            return YES  # placeholders, outputs, getitem, SymInt arithmetic: every backend handles them
        why = self.unavailable(target)
        if why:
            return Support(False, why)
        problem = dtype_problem(node, self.banned())
        if problem:
            return Support(False, problem)
        return self.supports_op(node, target)

    @classmethod
    def banned(cls) -> dict:
        """``banned_dtypes`` as torch dtypes (dtype -> why)."""
        return _banned_of(cls)

    def versions(self) -> dict[str, str]:
        """Versions a bundle records and a load compares: torch and each of ``packages``."""
        import importlib

        out = {}
        for module in ("torch",) + tuple(self.packages):
            try:
                out[module] = importlib.import_module(module).__version__
            except Exception:
                pass
        return out

    # ---- what a backend writes ----

    def target_problem(self, target: Target) -> str | None:
        """What beyond ``packages`` the target needs and this machine lacks, or None."""
        return None

    def supports_op(self, node, target: Target) -> Support:
        """Whether the backend takes this node's op (a call_function on allowed dtypes)."""
        return YES

    def precisions(self, target: Target) -> tuple[str, ...]:
        """The lower precisions (keys of hetcc.target.PRECISIONS) this backend runs on ``target``
        here, in its own arithmetic: what compile(accuracy=...) may choose among. A backend that
        offers one takes it as its ``precision`` option (docs/precision.md)."""
        return ()

    def arithmetic(self, target: Target, precision: str) -> str | None:
        """The element type ``precision``'s weight-bearing ops (a matrix product) compute in on
        ``target`` here, where the backend knows it differs from the one the cost model assumes
        for the precision (``weighted`` of cost_model/precision.py SCHEMES): OpenVINO's int8
        weights compute in fp32 on a CPU without VNNI. None: as assumed."""
        return None

    def precision_missing(self, target: Target, precision: str) -> str | None:
        """Why ``precision``, which this backend can run on ``target`` with something installed,
        is not offered here (what to install); None where that is not the case."""
        return None

    @abstractmethod
    def lower(self, segment, target: Target, workdir: Path) -> Artifact: ...

    @abstractmethod
    def load(self, artifact: Artifact, target: Target) -> Executable: ...


@lru_cache(maxsize=None)
def _banned_of(cls) -> dict:
    import torch

    return {getattr(torch, n): why for n, why in cls.banned_dtypes.items() if hasattr(torch, n)}


def not_installed(missing, why: str = "") -> str:
    """What to say about Python packages that do not import; ``why``: what they are for."""
    return (f"Python package{'s' if len(missing) > 1 else ''} {', '.join(missing)}{f' ({why})' if why else ''} "
            f"not installed; install with: pip install {' '.join(missing)}")


@lru_cache(maxsize=None)
def missing_packages(packages: tuple[str, ...]) -> tuple[str, ...]:
    """The import names in ``packages`` that do not import here."""
    import importlib

    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except Exception:
            missing.append(name)
    return tuple(missing)
