"""What the CLI reads from the user besides the model: option values (SCOPE=TARGET, byte sizes,
batch ranges, dynamic dims) and the dynamic_shapes they make. MODEL specs and .npz files are read
by hetcc/model_files.py. Kept apart from cli/app.py so that the command code reads as commands;
torch is imported inside functions, so `hetcc --help` stays fast."""
from __future__ import annotations

import argparse
import inspect
import math
import re

from hetcc.errors import HetccError


class CliError(HetccError):
    """A user error found by the CLI itself: a bad option, or options that do not fit together or
    do not fit the model (a --dynamic axis it lacks, a --dynamic-batch its inputs cannot take)."""


# ---- option values (argparse `type=` functions: a ValueError here is a usage error, exit 2) ----

def scope_target(text: str) -> tuple[str, str]:
    scope, sep, target = text.partition("=")
    if not sep or not scope.strip() or not target.strip():
        raise argparse.ArgumentTypeError(f"expected SCOPE=TARGET (e.g. head=torch:cpu), got {text!r}")
    return scope.strip(), target.strip()


def backend_option(text: str) -> tuple[str, str, object]:
    """BACKEND.KEY=VALUE -> (backend, key, value); VALUE is read as JSON when it parses (numbers,
    true/false), else kept as a string: tensorrt.precision=fp16, torch.compile=true."""
    import json

    name, sep, raw = text.partition("=")
    backend, dot, key = name.strip().partition(".")
    if not sep or not dot or not backend or not key.strip():
        raise argparse.ArgumentTypeError(
            f"expected BACKEND.KEY=VALUE (e.g. openvino.precision=bf16 or torch.compile=true), got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw.strip()
    return backend, key.strip(), value


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_count(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size like 2000000000, 2GB or 1.5GiB, got {text!r}")
    try:
        value = float(match.group(1)) * _UNITS[match.group(2)]
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value > 2**62:  # 1e400 is inf; no machine has 4 EiB
        raise argparse.ArgumentTypeError(f"{text!r} is not a size a machine can have; give bytes like "
                                         "2000000000, 2GB or 1.5GiB")
    return int(value)


def _number(text: str) -> float:
    """``text`` as a float, NaN where it is not a number (the checks after it then refuse it)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def tolerance(text: str) -> float:
    """A verification tolerance: a finite number >= 0 (inf or nan would accept any result)."""
    from hetcc.verify import is_tolerance

    value = _number(text)
    if not is_tolerance(value):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 such as 1e-4, got {text!r}")
    return value


def fraction(text: str) -> float:
    """--max-fallback: a share of the model's nodes, 0 to 1."""
    from hetcc.fallback import is_fraction

    value = _number(text)
    if not is_fraction(value):
        hint = f" (for {text}%, write {value / 100:g})" if math.isfinite(value) and 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"expected a fraction of the nodes from 0 to 1 such as 0.05, "
                                         f"got {text!r}{hint}")
    return value


def accuracy_value(text: str):
    """--accuracy: a relative error (0.01) or metric=bound, as hetcc.compile's ``accuracy``."""
    from hetcc.error_budget import AccuracyBudget

    try:
        return AccuracyBudget.make(text)
    except HetccError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("accuracy=", "--accuracy ")) from None


def precision_list(text: str) -> list[str]:
    """--precisions: comma-separated names of hetcc.target.PRECISIONS."""
    from hetcc.target import PRECISIONS

    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected precisions among {', '.join(PRECISIONS)}, "
                                         f"comma-separated; got {text!r}")
    return names


def add_fallback_flags(p) -> None:
    """--strict and --max-fallback, for every command that compiles a model."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--strict", action="store_true",
                       help="fail (exit 5) when any node falls back to torch:cpu because a target asked "
                            "for refused it or failed on it; pinned and excluded nodes do not count")
    group.add_argument("--max-fallback", type=fraction, metavar="FRACTION",
                       help="as --strict, but only when more than this share of the model's nodes falls "
                            "back (0 to 1, e.g. 0.05)")


def fallback_options(args) -> dict:
    """compile's strict/max_fallback from the flags; a flag replaces what the model file set."""
    if args.strict:
        return {"strict": True, "max_fallback": None}
    if args.max_fallback is not None:
        return {"strict": False, "max_fallback": args.max_fallback}
    return {}


def tune_value(text: str):
    """--tune: 'auto', 'off', or a budget in seconds (hetcc.compile's ``tune``)."""
    text = text.strip().lower()
    if text in ("auto", "off"):
        return text
    value = _number(text.removesuffix("s"))
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected auto, off or a budget in seconds (e.g. 60), got {text!r}")
    return value


def target_bytes(text: str) -> tuple[str, int]:
    target, sep, size = text.partition("=")
    if not sep or not target.strip():
        raise argparse.ArgumentTypeError(f"expected TARGET=BYTES (e.g. openvino:cpu=2GiB), got {text!r}")
    return target.strip(), byte_count(size)


def batch_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 1 <= MIN <= MAX (e.g. 1:64), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def dynamic_dim(text: str) -> tuple[str, int, int, list[tuple[str, int]]]:
    """NAME[:MIN:MAX]=INPUT.AXIS[,INPUT.AXIS...] -> (name, min, max, [(input, axis), ...])."""
    match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?::\s*(\d+)\s*:\s*(\d+)\s*)?=(.+)", text)
    uses = []
    for part in (match.group(4).split(",") if match else ()):
        where = re.fullmatch(r"\s*(\w+)\.(\d+)\s*", part)
        if not where:
            match = None
            break
        uses.append((where.group(1), int(where.group(2))))
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected NAME[:MIN:MAX]=INPUT.AXIS[,INPUT.AXIS...] (e.g. seq:1:512=input_ids.1,"
            f"attention_mask.1; INPUT is an input's name or position), got {text!r}")
    low, high = (int(match.group(2)), int(match.group(3))) if match.group(2) else (1, DYNAMIC_MAX)
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text!r}: the range needs 1 <= MIN <= MAX")
    return match.group(1), low, high, uses


DYNAMIC_MAX = 4096
"""The default largest size of a dynamic dimension the CLI marks (torch's own default is
unbounded, which some runtimes cannot plan memory for)."""


def dynamic_shapes_for(model, inputs, dims: list, flags: dict | None = None) -> object:
    """torch.export's dynamic_shapes for ``dims`` (as :func:`dynamic_dim` parses them): a tuple
    per positional input, or a dict per keyword input. Each named dim is one torch.export.Dim
    shared by every input axis it lists, so equal sizes stay equal (ids and their mask)."""
    import torch

    names = list(inputs) if isinstance(inputs, dict) else _positional_names(model, len(inputs))
    tensors = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    per_input: list[dict] = [{} for _ in tensors]
    for name, low, high, uses in dims:
        dim, sizes = torch.export.Dim(name, min=low, max=high), set()
        flag = (flags or {}).get(name, f"--dynamic {name}")  # what the user wrote, for the messages
        for which, axis in uses:
            i = int(which) if which.isdigit() else (names.index(which) if which in names else None)
            if i is None or i >= len(tensors):
                raise CliError(f"{flag}: the model has no input {which!r}; its inputs are "
                               f"{', '.join(n for n in names if n) or f'0..{len(tensors) - 1} by position'}")
            if axis >= tensors[i].dim():
                raise CliError(f"{flag}: input {which} has {tensors[i].dim()} dimensions "
                               f"{tuple(tensors[i].shape)}, so it has no axis {axis}")
            if axis in per_input[i]:
                raise CliError(f"{flag}: axis {axis} of input {which} is already dynamic "
                               f"as {per_input[i][axis].__name__}")
            per_input[i][axis] = dim
            sizes.add(int(tensors[i].shape[axis]))
        if len(sizes) != 1:
            raise CliError(f"{flag} spans axes of different example sizes {sorted(sizes)}: "
                           "one dim is one size; give each size its own NAME")
        (size,) = sizes
        if size < 2:
            raise CliError(f"{flag}: the example size is {size}, and torch.export fixes a "
                           "dimension whose example size is 0 or 1; use example inputs with size >= 2")
        if not low <= size <= high:
            raise CliError(f"{flag}: the example size {size} is outside {low}:{high}")
    if isinstance(inputs, dict):
        return {n: shape or None for n, shape in zip(names, per_input)}
    return tuple(shape or None for shape in per_input)


def _positional_names(model, n: int) -> list:
    """The names of forward's first ``n`` parameters, as torch.export names the inputs; None
    where forward takes *args."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError, AttributeError):
        return [None] * n
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (named + [None] * n)[:n]


def batch_dynamic_shapes(inputs, low: int, high: int):
    """dynamic_shapes making dim 0 of every input one shared `batch` dim (keyed by name for
    keyword inputs)."""
    import torch

    named = inputs if isinstance(inputs, dict) else None
    inputs = tuple(named.values()) if named is not None else inputs
    sizes = {tuple(t.shape[:1]) for t in inputs}
    if any(t.dim() == 0 for t in inputs) or len(sizes) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise CliError(f"--dynamic-batch needs every input to share dimension 0, but the example "
                       f"inputs have shapes {shapes}")
    (batch,), = sizes
    if batch < 2:
        raise CliError("--dynamic-batch needs an example batch of 2 or more: torch.export fixes a "
                       "dimension whose example size is 1; return example inputs with batch >= 2")
    if not low <= batch <= high:
        raise CliError(f"the example batch {batch} is outside --dynamic-batch {low}:{high}")
    dim = torch.export.Dim("batch", min=low, max=high)
    if named is not None:
        return {name: {0: dim} for name in named}
    return tuple({0: dim} for _ in inputs)
