"""What the CLI reads from the user: MODEL specs (file.py:function or a .pt2 archive), .npz inputs,
and option values (SCOPE=TARGET, byte sizes, batch ranges). Kept apart from cli/app.py so that the
command code reads as commands; torch and numpy are imported inside functions, so `hetcc --help`
stays fast."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import itertools
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from hetcc.errors import HetccError
from hetcc.names import first_line


class CliError(HetccError):
    """A user error found by the CLI itself: a bad MODEL path, a missing function, a bad .npz."""


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


# ---- MODEL ----

_counter = itertools.count()


def load_model(spec: str, inputs_npz: str | None = None):
    """MODEL -> (model, example inputs, extra compile options). The inputs are a tuple of tensors,
    or a dict of them for a model called by keyword."""
    # The last colon splits off the function, unless the spec already ends like a file name.
    path, _, func = ("", "", "") if spec.endswith((".py", ".pt2")) else spec.rpartition(":")
    path, func = (path, func) if path else (spec, "")
    options, names = {}, None
    if path.endswith(".pt2"):
        if func:
            raise CliError(f"a .pt2 MODEL names no function; give just {path}")
        model, inputs, names = _load_exported(Path(path))
    else:
        model, inputs, options = _load_python(Path(path), func or "build")
    if inputs_npz:  # the user's own inputs replace the model's examples
        if isinstance(inputs, dict):  # keyword inputs: the .npz names them
            inputs = dict(zip(inputs, read_npz(inputs_npz, list(inputs), describe=None)))
        else:
            inputs = tuple(read_npz(inputs_npz, names or [f"arr_{i}" for i in range(len(inputs or ()))],
                                    describe=None))
    if inputs is None:
        raise CliError(f"{spec} holds no example inputs; pass them with --inputs file.npz "
                       f"(keys {', '.join(names)}, or arr_0, arr_1, ... as numpy.savez writes them)")
    return model, inputs, options


def _load_python(path: Path, func: str):
    if path.suffix != ".py":
        raise CliError(f"MODEL must be path/to/file.py:function or a .pt2 file, got {str(path)!r}")
    if not path.is_file():
        raise CliError(f"model file {path} not found")
    module = _import_file(path)
    build = getattr(module, func, None)
    if not callable(build):
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_"))
        raise CliError(f"{path} has no function {func!r}; functions defined there: {', '.join(found) or 'none'}")
    with _user_code(path):
        try:
            result = build()
        except (Exception, SystemExit) as exc:  # a stray sys.exit() in user code is their error too
            raise CliError(f"{path}:{func}() raised {type(exc).__name__}: {exc}") from exc
    return _check_build_result(result, f"{path}:{func}()")


def _import_file(path: Path):
    # A unique name per load: two model files called model.py must not share a module.
    name = f"_hetcc_model_{next(_counter)}_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up here
    with _user_code(path):
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise CliError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


@contextlib.contextmanager
def _user_code(path: Path):
    """Run the user's file as `python file.py` would see it (its folder importable), and keep its
    prints off stdout, which belongs to the CLI's output (and to --json)."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _check_build_result(result, where: str):
    import torch

    shape = "(model, example_inputs) or (model, example_inputs, options)"
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise CliError(f"{where} must return {shape}; it returned {_kind(result)}")
    model, inputs, options = (*result, {}) if len(result) == 2 else result
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"{where} returned {_kind(model)} as the model; it must be a torch.nn.Module")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, Mapping):  # keyword inputs (a tokenizer's BatchEncoding is a Mapping)
        inputs = dict(inputs)
        if not all(isinstance(k, str) for k in inputs) or not all(isinstance(t, torch.Tensor)
                                                                   for t in inputs.values()):
            raise CliError(f"{where} returned a dict as example_inputs that is not str -> tensor; "
                           "keyword inputs must be tensors named by the model's argument names")
        return model, inputs, _check_options(options, where)
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise CliError(f"{where} returned {_kind(inputs)} as example_inputs; it must be a tensor, a "
                       "tuple/list of tensors, or a dict of them for keyword inputs")
    return model, tuple(inputs), _check_options(options, where)


def _check_options(options, where: str) -> dict:
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise CliError(f"{where} returned {_kind(options)} as options; it must be a dict of compile "
                       "keyword arguments")
    return dict(options)


def _kind(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _load_exported(path: Path):
    import torch

    if not path.is_file():
        raise CliError(f"exported program {path} not found")
    try:
        with _quiet("torch.export"):  # torch logs its own traceback before raising
            ep = torch.export.load(str(path))
    except Exception as exc:
        raise CliError(f"{path} is not a torch.export archive torch can load: {type(exc).__name__}: "
                       f"{first_line(exc)}") from exc
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    inputs = None
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        if kwargs and args:
            raise CliError(f"{path} takes positional inputs and keyword inputs ({', '.join(kwargs)}); "
                           "the CLI compiles one or the other: export it with all inputs by keyword, "
                           "or all positional")
        inputs = dict(kwargs) if kwargs else tuple(args)
    # check_guards=False: the archive's guards pin the shapes it was exported with, which would
    # forbid --dynamic-batch; hetcc exports the module again and torch re-checks every shape then.
    model = ep.module(check_guards=False)
    # compile takes the program itself where nothing asks to export it again, so the dynamic
    # dims it was exported with are kept (hetcc compile reads this; see cli/app.py cmd_compile)
    model.hetcc_program = ep
    # The unlifted module refuses train()/eval(), but its graph is already traced in the mode it
    # was exported in, so the ordinary nn.Module methods (which only set flags) are harmless.
    del model.train, model.eval
    return model, inputs, names


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


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


# ---- .npz in and out ----

def read_npz(path: str, names: list[str], describe: str | None):
    """Tensors for inputs `names`, from keys named so or arr_0, arr_1, ... (numpy.savez's names)."""
    arrays = _npz_arrays(path)
    positional = [f"arr_{i}" for i in range(len(names))]
    named = bool(set(arrays) & set(names)) or not any(k.startswith("arr_") for k in arrays)
    keys = names if named else positional
    missing = [k for k in keys if k not in arrays]
    extra = sorted(set(arrays) - set(keys))
    if missing or extra:
        problems = [f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else ""]
        raise CliError(f"{path} does not match the inputs {describe or ', '.join(names)}: "
                       f"{'; '.join(p for p in problems if p)}; the keys must be {names}, or "
                       f"{positional} in order as numpy.savez names them")
    return [to_tensor(arrays[k], name) for k, name in zip(keys, names)]


def _npz_arrays(path: str) -> dict:
    import zipfile

    import numpy as np

    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if not magic.startswith((b"PK\x03\x04", b"\x93NUMPY")):  # numpy would guess "pickle" here
            raise CliError(f"{path} is not an .npz or .npy file (write one with numpy.savez)")
        _check_declared_sizes(path, magic.startswith(b"PK"))
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a single .npy array
            return {"arr_0": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except MemoryError as exc:
        raise CliError(f"{path} holds arrays larger than this machine's memory") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CliError(f"cannot read arrays from {path}: {type(exc).__name__}: {exc}") from exc


NPZ_EXPANSION = 16
"""How much larger than the file its arrays may be (compression); with a 64 MiB floor. A member
that claims more is refused from its header, before numpy inflates or allocates it."""


def _check_declared_sizes(path: str, is_zip: bool) -> None:
    import zipfile

    import numpy as np

    limit = max(64 * 2**20, NPZ_EXPANSION * os.path.getsize(path))

    def check(f, member: str) -> None:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > limit:
            raise CliError(f"{path}: array {member} claims {size} bytes ({dtype}{list(shape)}), more than "
                           f"{NPZ_EXPANSION}x the file; refusing to inflate it (a damaged or hostile file)")

    if not is_zip:
        with open(path, "rb") as f:
            check(f, "arr_0")
        return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                with archive.open(info) as f:
                    check(f, info.filename[:-4])


def to_tensor(array, name: str):
    import numpy as np
    import torch

    if array.dtype.byteorder not in ("=", "|", "<" if sys.byteorder == "little" else ">"):
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as exc:
        raise CliError(f"input {name!r} has numpy dtype {array.dtype}, which has no torch "
                       "equivalent") from exc


def to_array(value):
    """An output as numpy: bfloat16, which numpy lacks, becomes float32."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)
