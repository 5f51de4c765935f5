"""Backend options as data. Each backend declares the options it takes in one tuple (``options``):
name, type, allowed values, default, meaning and the devices it changes. The registry checks what a
user gives against it, `hetcc targets` and docs/backends.md list it, and an option a backend would
ignore is refused with the reason instead of being dropped in silence.

Options several backends share are spelled alike: ``precision`` (fp32, fp16, bf16; OpenVINO's
older f32/f16 are accepted as deprecated aliases) and ``threads`` (0: the runtime's own default)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

from hetcc.errors import TargetError

log = logging.getLogger(__name__)

_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string", dict: "mapping", list: "list of strings",
               tuple: "list of strings"}


@dataclass(frozen=True)
class Option:
    name: str
    meaning: str
    """What it changes, in a line a user reads in `hetcc targets`."""
    types: tuple[type, ...] = (str,)
    """Python types a value may have (a CLI value is read as JSON first: 4, true, "fp16")."""
    choices: tuple = ()
    """The allowed values when they are a fixed set; empty: any value of ``types``."""
    default: object = None
    minimum: int | None = None
    """Least allowed value of an integer option."""
    maximum: int | None = None
    """Largest allowed value of an integer option (a bundle's metadata is checked too)."""
    aliases: tuple[tuple[str, str], ...] = ()
    """(old spelling, the one spelling): accepted, with a deprecation warning."""
    devices: tuple[str, ...] = ()
    """Device kinds the option changes; empty: every device the backend drives."""
    elsewhere: str = ""
    """Why the option does nothing on the backend's other devices (said when it is refused)."""

    def check(self, backend: str, value):
        """``value`` in its one spelling; a TargetError that says what is allowed otherwise."""
        if isinstance(value, str) and value in dict(self.aliases):
            new = dict(self.aliases)[value]
            log.warning("%s option %s=%r is a deprecated spelling; write %r, as every backend "
                        "spells it", backend, self.name, value, new)
            value = new
        if value is None and self.default is None:
            return None
        # bool is an int to Python; an integer option must not take true, nor a boolean 1
        fits = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in self.types)
        if not fits or (self.choices and value not in self.choices) or \
                (self.minimum is not None and value < self.minimum) or \
                (self.maximum is not None and value > self.maximum):
            raise TargetError(f"{backend} option {self.name} must be {self.allowed()}, got {value!r} "
                              f"({self.name}: {self.meaning})")
        return value

    def allowed(self) -> str:
        if self.choices:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        kinds = " or ".join(dict.fromkeys(_TYPE_NAMES.get(t, t.__name__) for t in self.types))
        if self.minimum is not None and self.maximum is not None:
            return f"{kinds} from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"{kinds} >= {self.minimum}"
        return kinds

    def describe(self) -> dict:
        """JSON-ready: what `hetcc targets --json` shows."""
        return {"name": self.name, "values": self.allowed(), "default": self.default,
                "devices": list(self.devices), "meaning": self.meaning,
                "deprecated_spellings": {old: new for old, new in self.aliases}}


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


MAX_THREADS = 1024
"""A cap, far above the cores of the largest servers, so that a bundle cannot make a runtime start
millions of threads."""

PRECISION_ALIASES = (("f32", "fp32"), ("f16", "fp16"))
"""OpenVINO's own spellings, which hetcc used for it before precision was named alike."""


def precision_option(choices: tuple[str, ...], meaning: str, default: str = "fp32", **more) -> Option:
    """The ``precision`` option, spelled as every backend spells it; ``more``: further Option fields
    (the devices it changes)."""
    return Option("precision", meaning, choices=choices, default=default, aliases=PRECISION_ALIASES, **more)


def threads_option(meaning: str) -> Option:
    """The ``threads`` option: 0 leaves the runtime's own default."""
    return Option("threads", meaning, types=(int,), default=0, minimum=0, maximum=MAX_THREADS)


def check_options(backend: str, declared: Iterable[Option], given: Mapping) -> dict:
    """``given`` checked against a backend's declared options, values in their one spelling."""
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        takes = "; ".join(f"{o.name} ({o.allowed()})" for o in by_name.values()) or "none"
        raise TargetError(f"bad options for backend {backend!r}: it has no option "
                          f"{', '.join(map(repr, unknown))}; it takes {takes} (`hetcc targets` lists "
                          "every backend's options)")
    return {name: by_name[name].check(backend, value) for name, value in given.items()}


def for_device(declared: Iterable[Option], given: Mapping, device: str, backend: str = "") -> dict:
    """The options in ``given`` that change ``device``: a backend built for one of its targets
    gets only those (torch's compile applies to torch:cuda, not torch:cpu)."""
    by_name = {o.name: o for o in declared}
    kept = {}
    for name, value in given.items():
        option = by_name.get(name)
        if option is None or not option.devices or device in option.devices:
            kept[name] = value
        else:
            log.info("%s option %s does not reach %s:%s%s", backend, name, backend, device,
                     f" ({option.elsewhere})" if option.elsewhere else "")
    return kept


def check_backend_options(targets, backend_options: Mapping | None) -> dict:
    """``backend_options`` with values in their one spelling, or a TargetError for options no
    given target would use: a backend that no target names, an unknown option or value, or an
    option for a device none of its targets is (torch.compile=true with torch:cpu alone: the CPU
    runs eagerly). Call it once with the whole target list; the registry then builds each
    target's backend with the options that change its device."""
    from hetcc.backends.registry import get_backend

    options = backend_options or {}
    strays = sorted(set(options) - {t.backend for t in targets})
    if strays:
        raise TargetError(f"backend_options name {', '.join(map(repr, strays))}, which no target uses "
                          f"(targets: {', '.join(map(str, targets))}); add the target, or drop the options")
    checked = {}
    for backend, given in options.items():
        if not isinstance(given, Mapping):
            raise TargetError(f"backend_options[{backend!r}] must be a mapping of option names to values, "
                              f"got {type(given).__name__}")
        declared = getattr(get_backend(backend), "options", None)
        if declared is None:  # a plugin that declares nothing: its constructor judges
            checked[backend] = dict(given)
            continue
        checked[backend] = check_options(backend, declared, given)
        devices = {t.device for t in targets if t.backend == backend}
        for option in declared:
            if option.name in given and option.devices and not devices & set(option.devices):
                reaches = ", ".join(f"{backend}:{d}" for d in option.devices)
                why = f" ({option.elsewhere})" if option.elsewhere else ""
                raise TargetError(f"{backend} option {option.name} changes only {reaches}, and no such target "
                                  f"is given (targets: {', '.join(map(str, targets))}){why}; add the target, "
                                  "or drop the option")
    return checked
