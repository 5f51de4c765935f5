"""The one place that parses and prints target strings: ``backend:device[:index]``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from hetcc.errors import TargetError

_PART = re.compile(r"^[a-z0-9_][a-z0-9_.\-]*$")


@dataclass(frozen=True, order=True)
class Target:
    backend: str
    """Backend name as registered, e.g. ``onnxruntime``."""
    device: str
    """Device kind, e.g. ``cpu``, ``cuda``, ``rocm``."""
    index: str | None = None
    """Device index or architecture (``0``, ``gfx942``); None where the device has only one."""

    @classmethod
    def parse(cls, text: "str | Target") -> "Target":
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise TargetError(f"a target must be a string like 'onnxruntime:cpu', got {type(text).__name__}")
        parts = text.strip().lower().split(":")
        if len(parts) not in (2, 3) or not all(_PART.match(p) for p in parts):
            raise TargetError(
                f"malformed target {text!r}: expected 'backend:device[:index]', "
                "for example 'torch:cpu', 'openvino:cpu' or 'tensorrt:cuda:0'"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return ":".join(p for p in (self.backend, self.device, self.index) if p is not None)


def parse_targets(targets) -> list[Target]:
    """Parse a list (or comma-separated string) of targets, keeping order and dropping repeats."""
    if isinstance(targets, (str, Target)):
        targets = [t for t in str(targets).split(",") if t.strip()] if isinstance(targets, str) else [targets]
    out: list[Target] = []
    for t in targets:
        parsed = Target.parse(t)
        if parsed not in out:
            out.append(parsed)
    if not out:
        raise TargetError("no targets given: pass at least one, for example targets=['torch:cpu']")
    return out
