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
    """Inputs do not match what they must be: at call time, the compiled signature (dtype, shape,
    device, structure); at compile time, what hetcc can take (example inputs, output_device)."""


class PlacementError(HetccError):
    """No placement satisfies the constraints (capacity, pins, support)."""


class LoweringError(HetccError):
    """A backend failed to lower or verify a segment."""


class SegmentError(HetccError):
    """A segment's runtime failed when the compiled model was called."""

    segment: str = ""
    """The segment that failed, where known."""
    cause: str = ""
    """What its runtime raised, in one line."""

    @classmethod
    def at_call(cls, segment: str, target: str, exc: BaseException) -> "SegmentError":
        error = cls(f"segment {segment} on {target} failed during this call: {type(exc).__name__}: "
                    f"{readable(exc)}. It ran correctly on the example inputs at compile time, so "
                    "something in these inputs is what it cannot handle: run the model eagerly on them "
                    f"to compare, or recompile without {target} for this part (exclude=...)")
        error.segment, error.cause = segment, f"{type(exc).__name__}: {readable(exc)}"
        return error


class FallbackError(HetccError):
    """compile(strict=True) or compile(max_fallback=...) found more of the model on torch:cpu than
    allowed, because the targets asked for refused it or failed on it (hetcc/fallback.py)."""


class AccuracyError(HetccError):
    """compile(accuracy=...) found the model's outputs beyond the budget even in the model's own
    precision on every segment: the runtimes' own rounding is beyond it (hetcc/precision.py)."""


_ESCAPES = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks (ESC ] ... BEL or ESC \\)
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"     # CSI: colours, cursor moves (ESC [ or its 8-bit form)
    r"|\x1b[ -/]*[0-~]?"                      # any other escape, and a lone ESC
)
"""Terminal escape sequences, which vendor tools put in their messages and a reason must not keep."""


def plain(text: str) -> str:
    """``text`` on one line without terminal escape codes, and never shortened: vendor runtimes print
    multi-line messages and colour their own names, and a reason cut short hides its cause."""
    text = _ESCAPES.sub("", str(text))
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def readable(exc: BaseException, causes: bool = False) -> str:
    """An exception's whole message on one line (see ``plain``). ``causes``: also each exception it
    was raised from (``raise ... from``) whose message it does not already hold, as "(caused by
    Type: message)": a wrapper's message often leaves out what went wrong underneath."""
    text = plain(str(exc)) or type(exc).__name__
    seen, cause = {id(exc)}, exc.__cause__ if causes else None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        said = plain(str(cause))
        if said and said not in text:
            text += f" (caused by {type(cause).__name__}: {said})"
        cause = cause.__cause__
    return text


def clip(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else cut at a space before the limit and saying
    how much was left out: for echoed source lines that can run to megabytes, never for a reason."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    cut = cut if cut > 0 else limit
    return f"{text[:cut].rstrip()} ... ({len(text) - cut} more characters)"


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
