"""torch:cpu, the fallback of last resort: the segment's own ExportedProgram, saved as .pt2.

It runs every core-ATen node, so a plan always exists. The artifact needs only torch to load, not
the model's Python source."""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import torch

from hetcc.backends._common import check_arity, lowering_error
from hetcc.backends.base import YES, Artifact, Support
from hetcc.program import dim_order, with_dim_order
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
                "input_dim_orders": [list(dim_order(x)) if isinstance(x, torch.Tensor) else None
                                     for x in segment.example_inputs],
            },
        )

    def load(self, artifact: Artifact, target: Target) -> "TorchExecutable":
        check_archive_is_safe(artifact.files["program"])
        ep = torch.export.load(artifact.files["program"])
        orders = [tuple(o) if o is not None else None
                  for o in artifact.meta.get("input_dim_orders") or [None] * len(artifact.meta["input_names"])]
        return TorchExecutable(_direct_call(ep) or ep.module(), len(artifact.meta["input_names"]),
                               artifact.meta.get("segment", "?"), orders)


def _direct_call(ep):
    """Call the exported graph with its weights as leading arguments, skipping the unlifted
    module's pytree handling and input-constraint hook (~90 us a call here; hetcc's runtime has
    already checked the inputs). None when the program has inputs or outputs we don't model."""
    sig = ep.graph_signature
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    leading = []
    for spec in sig.input_specs:
        if spec.kind.name == "USER_INPUT":
            continue
        if spec.kind.name not in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") or spec.target not in state:
            return None
        leading.append(state[spec.target])
    if any(spec.kind.name != "USER_INPUT" for spec in sig.input_specs[len(leading):]):
        return None  # weights are not all ahead of the user inputs
    if any(spec.kind.name != "USER_OUTPUT" for spec in sig.output_specs):
        return None
    graph_module = ep.graph_module
    return lambda *inputs: graph_module(*leading, *inputs)


class TorchExecutable:
    """Calls the exported graph; it keeps no state between calls, so threads may share it."""

    def __init__(self, module, n_inputs: int, segment: str, dim_orders=None):
        self.module = module
        self.n_inputs = n_inputs
        self.segment = segment
        self.dim_orders = [o if o is not None and o != tuple(range(len(o))) else None
                           for o in (dim_orders or [None] * n_inputs)]
        """Per input: the memory layout it was traced with, where that is not plain row-major."""

    def __call__(self, *inputs) -> tuple:
        check_arity(inputs, self.n_inputs, self.segment)
        if any(self.dim_orders):
            inputs = tuple(x if order is None else with_dim_order(x, order)
                           for x, order in zip(inputs, self.dim_orders))
        with torch.no_grad():
            out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


_ALLOWED_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/weight_\d+|data/weights/[\w.-]+_weights_config\.json"
    r"|data/constants/tensor_\d+|data/constants/[\w.-]+_constants_config\.json"
    r"|data/sample_inputs/[\w.-]+\.pt|extra/[\w./-]+)")
"""Entries a PT2 archive written by torch.export.save holds. Anything else (a legacy weights
pickle, an older archive layout) would make torch.export.load fall back to a reader that unpickles."""


def check_archive_is_safe(path) -> None:
    """Refuse a .pt2 archive that would make ``torch.export.load`` unpickle anything.

    torch.export.load unpickles weights or constants flagged ``use_pickle``, custom and opaque
    objects, legacy ``.pt`` members and whole older archive layouts, and retries sample inputs with
    ``weights_only=False`` when the safe loader fails. Bundles may come from someone else, so every
    entry must be one torch.export.save writes, and each of those paths is checked before torch
    sees the file.
    """
    import io
    import json
    import zipfile

    from hetcc.errors import BundleError

    def refuse(why: str):
        return BundleError(f"{path}: {why}; hetcc refuses to load it (it could run code); recompile "
                           "the bundle from the model")

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            prefixes = {n.split("/", 1)[0] for n in names}
            if len(prefixes) != 1 or any("/" not in n for n in names):
                raise refuse("it is not a single-folder PT2 archive")
            for name in names:
                if not _ALLOWED_ENTRY.fullmatch(name.split("/", 1)[1]):
                    raise refuse(f"it holds {name!r}, which torch.export.save does not write")
            configs = [n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))]
            if not configs or not any(n.endswith("/archive_format") for n in names):
                raise refuse("it is not a torch.export PT2 archive")
            if not any("/data/sample_inputs/" in n for n in names):
                raise refuse("it has no sample inputs (torch would fall back to an older reader)")
            for name in configs:
                for fqn, meta in json.loads(archive.read(name)).get("config", {}).items():
                    stored = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or not stored.startswith(("weight_", "tensor_")):
                        raise refuse(f"{fqn} is stored as a pickled object")
            for name in names:
                if "/data/sample_inputs/" in name:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except BundleError:
        raise
    except Exception as exc:  # a bad zip, bad JSON, or sample inputs the safe unpickler rejects
        raise BundleError(f"{path} is not a safe torch.export archive ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); recompile the bundle") from exc
