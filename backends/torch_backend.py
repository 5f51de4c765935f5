"""torch:cpu, the fallback of last resort: the segment's own ExportedProgram, saved as .pt2.

It runs every core-ATen node, so a plan always exists. The artifact needs only torch to load, not
the model's Python source."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from hetcc.backends._common import check_arity, lowering_error
from hetcc.backends.base import YES, Artifact, Support
from hetcc.target import Target


class TorchBackend:
    name: ClassVar[str] = "torch"
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def is_available(self, target: Target) -> bool:
        return target.device in self.devices

    def why_unavailable(self, target: Target) -> str:
        if target.device not in self.devices:
            return f"backend 'torch' drives {', '.join(self.devices)}, not {target.device!r}"
        return ""

    def supports(self, node, target: Target) -> Support:
        return YES

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def lower(self, segment, target: Target, workdir: Path) -> Artifact:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "segment.pt2"
        try:
            torch.export.save(segment.export(), str(path))
        except Exception as exc:
            raise lowering_error(segment, self.name, exc, workdir) from exc
        return Artifact(
            target=str(target),
            files={"program": str(path)},
            meta={
                "segment": segment.name,
                "torch": torch.__version__,
                "input_names": list(segment.input_names),
                "output_names": list(segment.output_names),
            },
        )

    def load(self, artifact: Artifact, target: Target) -> "TorchExecutable":
        ep = torch.export.load(artifact.files["program"])
        return TorchExecutable(ep.module(), len(artifact.meta["input_names"]), artifact.meta.get("segment", "?"))


class TorchExecutable:
    """Calls the unlifted module; it keeps no state between calls, so threads may share it."""

    def __init__(self, module, n_inputs: int, segment: str):
        self.module = module
        self.n_inputs = n_inputs
        self.segment = segment

    def __call__(self, *inputs) -> tuple:
        check_arity(inputs, self.n_inputs, self.segment)
        with torch.no_grad():
            out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
