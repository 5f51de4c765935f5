"""One error hierarchy. User errors say what is wrong, where, and what to do; internal errors say
they are bugs. Nothing here imports torch, so the solver can raise these too."""
import re


class HetccError(Exception):
    """Base class of every error hetcc raises on purpose."""


class TargetError(HetccError):
    """A target string is malformed, unknown, or not usable on this machine."""


class ExportError(HetccError):
    """torch.export could not capture the model."""


class InputError(HetccError):
    """Inputs given at call time do not match the compiled signature."""


class PlacementError(HetccError):
    """No placement satisfies the constraints (capacity, pins, support)."""


class LoweringError(HetccError):
    """A backend failed to lower or verify a segment."""


class SegmentError(HetccError):
    """A segment's runtime failed when the compiled model was called."""

    @classmethod
    def at_call(cls, segment: str, target: str, exc: BaseException) -> "SegmentError":
        return cls(f"segment {segment} on {target} failed during this call: {type(exc).__name__}: "
                   f"{readable(exc)}. It ran correctly on the example inputs at compile time, so "
                   "something in these inputs is what it cannot handle: run the model eagerly on them "
                   f"to compare, or recompile without {target} for this part (exclude=...)")


def readable(exc: BaseException) -> str:
    """An exception's whole message on one line, without terminal colour codes: vendor runtimes
    print multi-line messages and colour their own names."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc))
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(exc).__name__


class InternalError(HetccError):
    """A bug in hetcc. Please report it with the message and the model that triggered it."""

    def __init__(self, message: str):
        super().__init__(f"internal error (this is a bug in hetcc, please report it): {message}")


class BundleError(HetccError):
    """A bundle cannot be written or read: corrupt, incomplete, newer format, missing runtime."""


class DeviceNotHere(TargetError, BundleError):
    """An artifact was built for a device this machine does not have, so it cannot run here.
    compile(cross_compile=True) keeps such segments (verified when the bundle is loaded where the
    device is); everywhere else it is a TargetError for a caller of ``load``, and a BundleError so
    that ``hetcc.load`` passes its message through as it is."""
