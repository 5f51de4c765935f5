"""Check a lowered segment's outputs against the torch reference, with tolerances per dtype."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hetcc.errors import HetccError, LoweringError

NAN_POLICIES = ("report", "require")
"""What compile does with a segment whose runtime turns NaN into numbers where torch propagates
it (OpenVINO's ReLU and max-pool do): "report" keeps it and says so in the plan's notes, as the
vendor's own whole-model path would behave; "require" treats it as a wrong result, so that part
falls back to a runtime that propagates NaN."""

# (rtol, atol) per dtype: fp32 leaves room for a different summation order in a reduction of a few
# thousand terms; half types for their 8- and 11-bit mantissas.
DEFAULT_TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}


class PrecisionMiss(LoweringError):
    """A segment in a lower precision ran, but further from the reference than the accuracy
    budget lets one segment be: that precision is given up there, nothing failed."""

    def __init__(self, message: str, relative: float):
        super().__init__(message)
        self.relative = relative
        """The segment's relative error."""


@dataclass(frozen=True)
class Tolerances:
    per_dtype: dict = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    @classmethod
    def make(cls, rtol: float | None = None, atol: float | None = None) -> "Tolerances":
        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None and not is_tolerance(value):
                raise HetccError(f"{name} must be a finite number >= 0 (the verification tolerance, e.g. "
                                 f"1e-4), got {value!r}; an infinite or NaN tolerance would accept any "
                                 "result")
        table = dict(DEFAULT_TOLERANCES)
        if rtol is not None or atol is not None:
            for dtype, (r, a) in table.items():
                table[dtype] = (r if rtol is None else rtol, a if atol is None else atol)
        return cls(table)

    def for_dtype(self, dtype) -> tuple[float, float]:
        return self.per_dtype.get(dtype, (0.0, 0.0))  # integers and bools must match exactly


@dataclass(frozen=True)
class Verification:
    """What compiling learnt about one segment by running it against the PyTorch reference. It is
    held beside the segment's Artifact (the backend's files and data) and saved into the same
    manifest entry, under the meta keys bundles have always used (``meta``, ``from_manifest``)."""

    max_error: float | None = None
    """The largest absolute difference from the reference; None until the segment has run."""
    measured_seconds: float | None = None
    """Median seconds of a call on the example inputs, timed when it was verified at compile time."""
    nan_differs: tuple[str, ...] = ()
    """How its answers on NaN inputs differ from torch's (kept under compile(nan="report"))."""
    verified: bool | None = None
    """None: verified when compiled. False: compiled for a device that was not there
    (cross_compile), so it is verified when its bundle is loaded where the device is; True: it
    was, on load."""
    check: dict | None = None
    """What that load-time check needs: ``inputs`` (how many), ``outputs`` (names) and
    ``tolerances`` (dtype -> [rtol, atol])."""
    relative_error: float | None = None
    """‖y − y_ref‖ / ‖y_ref‖ of its worst floating-point output: set for a segment in a lower
    precision, which is checked against the accuracy budget's ``segment_limit`` instead of the
    per-dtype tolerances."""
    check_file: str | None = None
    """The check's tensors (safetensors: example inputs in0, in1, ..., reference outputs out0, ...);
    a bundle keeps it among the segment's files, in the role "check"."""

    def meta(self) -> dict:
        """These facts as a manifest's segment ``meta`` keys; unset ones are left out, as before."""
        out = {"max_error": self.max_error, "measured_seconds": self.measured_seconds,
               "nan_differs": list(self.nan_differs) or None, "verified": self.verified,
               "check": self.check, "relative_error": self.relative_error}
        return {k: v for k, v in out.items() if v is not None}

    def files(self) -> dict[str, str]:
        """These facts' files as a manifest's segment ``files`` roles."""
        return {"check": self.check_file} if self.check_file else {}

    @classmethod
    def from_manifest(cls, meta: dict, files: dict) -> tuple[Verification, dict, dict]:
        """(the facts, the backend's own meta, the backend's own files) of a manifest's segment
        entry: the inverse of ``meta`` and ``files``."""
        meta, files = dict(meta), dict(files)
        facts = {k: meta.pop(k) for k in ("max_error", "measured_seconds", "nan_differs", "verified",
                                          "check", "relative_error") if k in meta}
        # the role "check" is hetcc's only for a segment left to verify on load; a third-party
        # backend may name a file of its own so
        check_file = files.pop("check", None) if facts.get("verified") is not None else None
        return cls(max_error=facts.get("max_error"), measured_seconds=facts.get("measured_seconds"),
                   nan_differs=tuple(facts.get("nan_differs") or ()), verified=facts.get("verified"),
                   check=facts.get("check"), check_file=check_file,
                   relative_error=_finite(facts.get("relative_error"))), meta, files


def _finite(value) -> float | None:
    """A manifest's number, or None where it is not one (a bundle is checked, not trusted)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def is_tolerance(value) -> bool:
    """A usable verification tolerance: a finite number >= 0 (inf or NaN would accept anything)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def compare(program, got, tolerances: Tolerances) -> float:
    """Raise LoweringError if ``got`` differs from the reference; return the max abs error."""
    want = [program.reference_value(name) for name in program.output_names]
    return check_outputs(program.name, program.output_names, got, want, tolerances)


def check_outputs(segment: str, names, got, want, tolerances: Tolerances) -> float:
    """Raise LoweringError if ``got`` differs from ``want`` (per dtype tolerances); return the max
    abs error. Used at compile time, and at load time for segments compiled for a device that was
    not there (compile(cross_compile=True))."""
    got = list(got)
    if len(got) != len(want):
        raise LoweringError(f"{segment} returned {len(got)} outputs, expected {len(want)}")
    worst = 0.0
    for name, g, w in zip(names, got, want):
        if isinstance(g, torch.Tensor) and not g.is_cpu:  # a GPU segment leaves its outputs there
            g = g.cpu()
        if tuple(g.shape) != tuple(w.shape):
            raise LoweringError(f"output {name} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
        if g.dtype != w.dtype:
            raise LoweringError(f"output {name} has dtype {g.dtype}, expected {w.dtype}")
        if w.numel() == 0:
            continue
        rtol, atol = tolerances.for_dtype(w.dtype)
        err, off = tensor_error(g, w, rtol, atol)
        worst = max(worst, err)
        if off:
            raise LoweringError(
                f"output {name} differs from the torch reference: max abs error {err:.3g} "
                f"(rtol {rtol}, atol {atol}, {off} of {w.numel()} elements off)")
    return worst


def compare_relative(program, got, limit: float) -> tuple[float, float]:
    """``check_relative`` against the segment's reference outputs."""
    want = [program.reference_value(name) for name in program.output_names]
    return check_relative(program.name, program.output_names, got, want, limit)


def check_relative(segment: str, names, got, want, limit: float) -> tuple[float, float]:
    """The check of a segment in a lower precision: shapes and dtypes as the reference's, integer
    outputs exact, and each floating-point output within relative error ``limit`` (the accuracy
    budget's segment limit). Returns (max abs error, worst relative error); LoweringError beyond
    (PrecisionMiss naming the output that moved most, whose error decides how much of the segment
    keeps the precision). Used at compile time, and at load time for a cross-compiled segment."""
    from hetcc.error_budget import relative_error

    exact = Tolerances({})  # integers and bools exactly; floats are judged below
    got = list(got)
    if len(got) != len(want):
        raise LoweringError(f"{segment} returned {len(got)} outputs, expected {len(want)}")
    worst_abs, worst_rel, worst_name = 0.0, 0.0, None
    for name, g, w in zip(names, got, want):
        if isinstance(g, torch.Tensor) and not g.is_cpu:
            g = g.cpu()
        if not w.is_floating_point() or tuple(g.shape) != tuple(w.shape) or g.dtype != w.dtype:
            check_outputs(segment, [name], [g], [w], exact)  # raises with the reason
            continue
        if w.numel() == 0:
            continue
        rel = relative_error(g, w)
        rel = rel if rel == rel else math.inf  # NaN: the worst, not an unordered value
        if worst_name is None or rel > worst_rel:
            worst_rel, worst_name = rel, name
        worst_abs = max(worst_abs, float((g.double() - w.double()).abs().nan_to_num(0.0).max()))
    if not worst_rel <= limit:
        raise PrecisionMiss(f"output {worst_name} is off the torch reference by relative error {worst_rel:.3g}, "
                            f"beyond the accuracy budget's {limit:.3g} for one segment", worst_rel)
    return worst_abs, worst_rel


def tensor_error(got, want, rtol: float, atol: float) -> tuple[float, int]:
    """(max abs error, elements out of tolerance) of one tensor against its reference, same shape
    and dtype. Floats: |got - want| <= atol + rtol * |want|, and equal infinities and NaN against
    NaN agree. Integers and bools must match exactly; their error is the count that differ."""
    if want.is_floating_point():
        diff = (got.double() - want.double()).abs()
        bad = ~((diff <= atol + rtol * want.double().abs()) | (got == want)
                | (torch.isnan(got) & torch.isnan(want)))
        return float(diff.nan_to_num(0.0).max()), int(bad.sum())
    off = int((got != want).sum())
    return float(off), off


def nan_probe_inputs(inputs) -> tuple | None:
    """The example inputs with a NaN in a few places of every floating-point input (None if the
    segment has none): what a runtime that drops NaN is caught with."""
    probe, poisoned = [], False
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
            x = x.clone(memory_format=torch.contiguous_format)
            flat = x.view(-1)
            for i in {0, flat.numel() // 2, flat.numel() - 1}:
                flat[i] = math.nan
            poisoned = True
        probe.append(x)
    return tuple(probe) if poisoned else None


def nan_differences(names, got, want) -> list[str]:
    """Outputs where a runtime's answer on NaN inputs differs from torch's: NaN turned into a
    number, or a NaN torch does not make."""
    out = []
    for name, g, w in zip(names, got, want):
        if isinstance(g, torch.Tensor) and not g.is_cpu:
            g = g.cpu()
        if not (isinstance(w, torch.Tensor) and w.is_floating_point()) or g.shape != w.shape:
            continue
        dropped = int((torch.isnan(w) & ~torch.isnan(g)).sum())
        made = int((torch.isnan(g) & ~torch.isnan(w)).sum())
        if dropped or made:
            what = []
            if dropped:
                what.append(f"{dropped} NaN turned into numbers")
            if made:
                what.append(f"{made} NaN where torch gives a number")
            out.append(f"{name}: {', '.join(what)}")
    return out
