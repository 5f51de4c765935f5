"""The one place that parses and prints target strings: ``backend:device[:index][@precision]``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from hetcc.errors import TargetError

_PART = re.compile(r"^[a-z0-9_][a-z0-9_.\-]*$")

PRECISIONS = {
    "fp16": "weights and arithmetic in float16",
    "bf16": "weights and arithmetic in bfloat16",
    "int8": "int8 weights; activations quantized to int8 on each call (int8 matrix products)",
    "int8u": "as int8, the weights stored unsigned (uint8) with a zero point per channel: 8 bits "
             "on an x86 CPU without VNNI, where int8's signed weights take 7",
    "int8w": "int8 weights, dequantized in the kernel (whose activations the runtime may quantize "
             "per call); other arithmetic in float32",
    "int8w-bf16": "int8 weights, as int8w; other arithmetic in bfloat16",
    "int8s": "int8 weights and activations, the activations' scales fixed ahead of time from "
             "calibration batches (static int8: int8 convolutions and matrix products); needs "
             "compile(calibration=...)",
}
"""The lower precisions a target may run in (``onnxruntime:cpu@int8``), and what each means. A
target without one runs the model's own precision (fp32 for a float32 model); which backend offers
which precision on which device is its ``precisions(target)``."""


@dataclass(frozen=True, order=True)
class Target:
    backend: str
    """Backend name as registered, e.g. ``onnxruntime``."""
    device: str
    """Device kind, e.g. ``cpu``, ``cuda``, ``rocm``."""
    index: str | None = None
    """Device index or architecture (``0``, ``gfx942``); None where the device has only one."""
    precision: str | None = None
    """A lower precision (a key of PRECISIONS) the target's segments run in; None: the model's own."""

    @classmethod
    def parse(cls, text: "str | Target") -> "Target":
        if isinstance(text, Target):
            return text
        if not isinstance(text, str):
            raise TargetError(f"a target must be a string like 'onnxruntime:cpu', got {type(text).__name__}")
        where, at, precision = text.strip().lower().partition("@")
        parts = where.split(":")
        if len(parts) not in (2, 3) or not all(_PART.match(p) for p in parts):
            raise TargetError(
                f"malformed target {text!r}: expected 'backend:device[:index][@precision]', "
                "for example 'torch:cpu', 'openvino:cpu', 'tensorrt:cuda:0' or 'onnxruntime:cpu@int8'"
            )
        if at and precision not in (*PRECISIONS, "fp32"):
            raise TargetError(f"target {text!r}: unknown precision {precision!r} after '@'; write one of "
                              f"{', '.join(PRECISIONS)} (or no '@' for the model's own precision)")
        if precision == "fp32":
            precision = ""
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None, precision or None)

    @property
    def base(self) -> "Target":
        """The same target in the model's own precision."""
        return Target(self.backend, self.device, self.index)

    def at(self, precision: str | None) -> "Target":
        """The same target in ``precision`` (None: the model's own)."""
        return Target(self.backend, self.device, self.index, precision)

    def __str__(self) -> str:
        where = ":".join(p for p in (self.backend, self.device, self.index) if p is not None)
        return f"{where}@{self.precision}" if self.precision else where


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
