"""Where values live between segments, and the copies the runtime makes.

Each segment's executable takes and returns tensors in one place, its *location*: "cpu" for the
host runtimes (ONNX Runtime, OpenVINO, IREE on the CPU, torch:cpu), "cuda:0" for a segment on GPU 0
(torch:cuda, tensorrt:cuda, onnxruntime:cuda). A value stays where it was made; the runtime copies
it only when a consumer is elsewhere, once per location, and drops the copies with the value. Two
segments on one GPU hand each other the same device tensor: no host copy, whatever their runtimes
(TensorRT and ONNX Runtime read its device address; torch uses it as is).

The cost model charges the same copies (passes/build_problem.handoff: targets at one GPU location
hand over for free, a value crossing between host and GPU pays the link). Plain functions of strings, so the
bookkeeping is tested on a machine without a GPU."""
from __future__ import annotations

import torch

from hetcc.errors import InputError

CPU = "cpu"
KEEP = "keep"
"""Output placement: each output stays where the segment that made it left it."""


def location_of(run) -> str:
    """Where an executable takes its inputs and leaves its outputs ("cpu" unless it says otherwise)."""
    return getattr(run, "location", CPU)


def input_locations_of(run) -> tuple:
    """Per input, where the executable reads it, for one that reads some inputs elsewhere than at
    its location (TensorRT reads shape tensors from host memory); () when all are at its location."""
    return tuple(getattr(run, "input_locations", ()) or ())


def tensor_location(x) -> str:
    """"cpu", or "cuda:N" (torch always gives a CUDA tensor its index)."""
    return CPU if x.is_cpu else str(x.device)


def parse_output_device(value) -> str:
    """The one spelling of an output placement: "cpu" (default), "cuda:N" ("cuda" is GPU 0), or
    "keep". An InputError that lists the choices for anything else."""
    text = str(value).strip().lower() if isinstance(value, (str, torch.device)) else None
    if text == "cuda":
        text = "cuda:0"
    if text in (CPU, KEEP):
        return text
    if text and text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise InputError(f"output_device must be 'cpu', 'cuda:N' (a GPU's number) or 'keep' (each output "
                     f"stays where its segment made it); got {value!r}")


def move(x, location: str):
    """``x`` in ``location``: the same tensor when it is already there, else one copy (host to GPU,
    GPU to host, or GPU to GPU). Synchronous: the copy is complete when this returns."""
    return x.to(location)
