"""Find backends through the ``hetcc.backends`` entry-point group; built-ins register the same way.

A source checkout that was not pip-installed has no entry points, so the built-ins are also listed
here as a fallback (the same names, so the two never disagree)."""
from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from importlib.metadata import entry_points

from hetcc.backends.options import check_options, for_device
from hetcc.errors import TargetError
from hetcc.target import Target

log = logging.getLogger(__name__)

BUILTIN = {
    "torch": "hetcc.backends.torch_backend:TorchBackend",
    "onnxruntime": "hetcc.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "hetcc.backends.openvino_backend:OpenVinoBackend",
    "tensorrt": "hetcc.backends.tensorrt_backend:TensorRTBackend",
    "migraphx": "hetcc.backends.migraphx_backend:MIGraphXBackend",
    "iree": "hetcc.backends.iree_backend:IreeBackend",
}


_REGISTERED: dict[str, object] = {}


def _load(spec):
    if not isinstance(spec, str):
        return spec  # a class registered in-process
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_backend(name: str, backend_class) -> None:
    """Register a backend class in this process (plugins normally use the entry-point group)."""
    _REGISTERED[name] = backend_class
    installed.cache_clear()
    get_backend.cache_clear()


@lru_cache(maxsize=None)
def installed() -> dict:
    """Backend name -> 'module:Class' for every backend known to this installation."""
    found = dict(BUILTIN)
    for ep in entry_points(group="hetcc.backends"):
        found[ep.name] = ep.value
    found.update(_REGISTERED)
    return found


@lru_cache(maxsize=None)
def get_backend(name: str):
    specs = installed()
    if name not in specs:
        raise TargetError(
            f"unknown backend {name!r}. Installed backends: {', '.join(sorted(specs))}. "
            f"Usable here: {', '.join(usable_targets()) or 'none'}"
        )
    return _load(specs[name])()


def usable_targets() -> list[str]:
    """Targets that work on this machine now, for error messages and `hetcc targets`."""
    out = []
    for name in sorted(installed()):
        try:
            backend = _load(installed()[name])()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            log.warning("backend %s failed to import: %s", name, exc)
            continue
        for device in backend.devices:
            target = Target(name, device)
            if backend.is_available(target):
                out.append(str(target))
    return out


def precisions_of(backend, target: Target) -> tuple[str, ...]:
    """The lower precisions ``backend`` offers on ``target`` (none for a plugin that predates them
    or does not derive from backends/base.Backend)."""
    offered = getattr(backend, "precisions", None)
    return tuple(offered(target)) if callable(offered) else ()


def arithmetic_of(backend, target: Target, precision: str) -> str | None:
    """The element type ``backend`` says ``precision``'s weight-bearing ops compute in on ``target``
    here (Backend.arithmetic; None: as the cost model assumes, and for a plugin without the method)."""
    arithmetic = getattr(backend, "arithmetic", None)
    return arithmetic(target, precision) if callable(arithmetic) else None


def arithmetic_here(target) -> str | None:
    """``arithmetic_of`` for a CPU target's own precision (``openvino:cpu@int8w``) on this machine,
    its backend resolved with default options; None for a target in the model's precision, one off
    the CPU (a spec, not this machine, prices it), or one whose backend is not usable here."""
    target = Target.parse(str(target))
    if not target.precision or target.device != "cpu":
        return None
    try:  # advisory: a plugin that fails to import or to answer prices as the cost model assumes
        return arithmetic_of(resolve(target), target, target.precision)
    except Exception:  # noqa: BLE001
        return None


def precision_missing(backend, target: Target, precision: str) -> str | None:
    """What to install for ``backend`` to offer ``precision`` on ``target`` (None: nothing would)."""
    missing = getattr(backend, "precision_missing", None)
    return missing(target, precision) if callable(missing) else None


def resolve(target: Target, options: dict | None = None):
    """The backend object for a target; a clear error if it is unknown or unusable here.
    ``options`` are keyword arguments for the backend's constructor (e.g. OpenVINO precision),
    checked against what the backend declares (``options``, see hetcc.backends.options); the
    backend gets those that change the target's device (torch's compile reaches torch:cuda, not
    torch:cpu). ``check_backend_options`` refuses an option that no target of a compile uses."""
    backend = get_backend(target.backend)  # raises the "unknown backend" error
    if target.device == "cpu" and target.index is not None:
        raise TargetError(f"target {target}: a cpu target takes no index (hetcc runs on this machine's "
                          f"one CPU, every core); write {target.backend}:cpu")
    declared = getattr(type(backend), "options", None)
    if target.precision:
        # the base target with the same options (MIGraphX's route decides what it offers); its
        # errors come first
        base = resolve(target.base, {k: v for k, v in (options or {}).items() if k != "precision"})
        offered = precisions_of(base, target.base)
        if target.precision not in offered:
            missing = precision_missing(base, target.base, target.precision)
            raise TargetError(
                f"target {target}: {target.backend} does not run {target.precision} on {target.device} here "
                f"({'it offers ' + ', '.join(offered) if offered else 'it offers no lower precision there'}); "
                + (f"{missing}" if missing else
                   "compile(accuracy=...) picks among what each target offers by itself (docs/precision.md)"))
        options = {**(options or {}), "precision": target.precision}  # the target's own wins
    if options and declared is not None:
        options = for_device(declared, check_options(target.backend, declared, options), target.device,
                             target.backend)
    if options:
        try:
            backend = type(backend)(**options)
        except TypeError as exc:
            raise TargetError(f"bad options for backend {target.backend!r}: {exc}") from exc
    if target.device not in backend.devices:
        raise TargetError(
            f"backend {target.backend!r} does not drive device {target.device!r} (it drives "
            f"{', '.join(backend.devices)}). Usable here: {', '.join(usable_targets())}"
        )
    if not backend.is_available(target):
        raise TargetError(
            f"target {target} is not available here: {backend.why_unavailable(target)}. "
            f"Usable here: {', '.join(usable_targets())}"
        )
    return backend
