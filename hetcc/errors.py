"""One error hierarchy. User errors say what is wrong, where, and what to do; internal errors say
they are bugs. Nothing here imports torch, so the solver can raise these too."""


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
