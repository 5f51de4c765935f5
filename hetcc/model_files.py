"""Loading MODEL specs (path/file.py:function or a .pt2 archive) and .npz inputs, with checks.

`hetcc compile`, `run`, `bench` and `plan` read models and inputs through here, and so do the
model-level conformance cases; torch and numpy are imported inside functions, so that importing
this module (and `hetcc --help`) stays fast."""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from hetcc.backends._common import quiet_logger
from hetcc.errors import HetccError
from hetcc.names import first_line


class ModelFileError(HetccError):
    """A user error in what the model files hold: a bad MODEL path, a missing function, a bad .npz."""


# ---- MODEL ----

_counter = itertools.count()
_loaded: dict = {}
"""Resolved path -> the module a model file was imported as in this process, so that
--calibration and --validation FILE.py:FUNCTION in the model's own file run in the module build() ran in."""


def load_model(spec: str, inputs_npz: str | None = None):
    """MODEL -> (model, example inputs, extra compile options). The inputs are a tuple of tensors,
    or a dict of them for a model called by keyword."""
    # The last colon splits off the function, unless the spec already ends like a file name.
    path, _, func = ("", "", "") if spec.endswith((".py", ".pt2")) else spec.rpartition(":")
    path, func = (path, func) if path else (spec, "")
    options, names = {}, None
    _loaded.clear()  # only the files this command loads: an earlier command's may have changed since
    if path.endswith(".pt2"):
        if func:
            raise ModelFileError(f"a .pt2 MODEL names no function; give just {path}")
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
        raise ModelFileError(f"{spec} holds no example inputs; pass them with --inputs file.npz "
                             f"(keys {', '.join(names)}, or arr_0, arr_1, ... as numpy.savez writes them)")
    return model, inputs, options


def _load_python(path: Path, func: str):
    if path.suffix != ".py":
        raise ModelFileError(f"MODEL must be path/to/file.py:function or a .pt2 file, got {str(path)!r}")
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found")
    module = _import_file(path)
    _loaded[path.resolve()] = module
    build = getattr(module, func, None)
    if not callable(build):
        found = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == module.__name__ and not n.startswith("_"))
        raise ModelFileError(f"{path} has no function {func!r}; functions defined there: {', '.join(found) or 'none'}")
    return _check_build_result(_call(path, func, build), f"{path}:{func}()")


def load_batches(spec: str, flag: str = "--calibration") -> list:
    """``flag`` FILE.py:FUNCTION (--calibration, --validation) -> the list of input batches the
    function returns (each given as the example inputs are: a tuple of tensors, or a dict of
    keyword inputs)."""
    what = flag.lstrip("-")
    path, _, func = spec.rpartition(":")
    if not path or not func or not path.endswith(".py"):
        raise ModelFileError(f"{flag} takes path/to/file.py:function (a function returning a "
                             f"list of input batches), got {spec!r}")
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} file {path} not found")
    module = _loaded.get(path.resolve()) or _import_file(path)
    _loaded[path.resolve()] = module  # --calibration and --validation from one file import it once
    make = getattr(module, func, None)
    if not callable(make):
        raise ModelFileError(f"{path} has no function {func!r} for {flag}")
    batches = _call(path, func, make)
    if not isinstance(batches, (list, tuple)):
        raise ModelFileError(f"{path}:{func}() must return a list of input batches; it returned {_kind(batches)}")
    return list(batches)


def _call(path: Path, func: str, fn):
    """``fn()``, the user's function ``func`` of ``path``, run as the user's code runs (_user_code);
    whatever it raises becomes a ModelFileError naming it."""
    with _user_code(path):
        try:
            return fn()
        except (Exception, SystemExit) as exc:  # a stray sys.exit() in user code is their error too
            raise ModelFileError(f"{path}:{func}() raised {type(exc).__name__}: {exc}") from exc


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
            raise ModelFileError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
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
        raise ModelFileError(f"{where} must return {shape}; it returned {_kind(result)}")
    model, inputs, options = (*result, {}) if len(result) == 2 else result
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(f"{where} returned {_kind(model)} as the model; it must be a torch.nn.Module")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, Mapping):  # keyword inputs (a tokenizer's BatchEncoding is a Mapping)
        inputs = dict(inputs)
        if not all(isinstance(k, str) for k in inputs) or not all(isinstance(t, torch.Tensor)
                                                                   for t in inputs.values()):
            raise ModelFileError(f"{where} returned a dict as example_inputs that is not str -> tensor; "
                                 "keyword inputs must be tensors named by the model's argument names")
        return model, inputs, _check_options(options, where)
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ModelFileError(f"{where} returned {_kind(inputs)} as example_inputs; it must be a tensor, a "
                             "tuple/list of tensors, or a dict of them for keyword inputs")
    return model, tuple(inputs), _check_options(options, where)


def _check_options(options, where: str) -> dict:
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ModelFileError(f"{where} returned {_kind(options)} as options; it must be a dict of compile "
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
        raise ModelFileError(f"exported program {path} not found")
    try:
        with quiet_logger("torch.export"):  # torch logs its own traceback before raising
            ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelFileError(f"{path} is not a torch.export archive torch can load: {type(exc).__name__}: "
                             f"{first_line(exc)}") from exc
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    inputs = None
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        if kwargs and args:
            raise ModelFileError(f"{path} takes positional inputs and keyword inputs ({', '.join(kwargs)}); "
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
        raise ModelFileError(f"{path} does not match the inputs {describe or ', '.join(names)}: "
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
            raise ModelFileError(f"{path} is not an .npz or .npy file (write one with numpy.savez)")
        _check_declared_sizes(path, magic.startswith(b"PK"))
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a single .npy array
            return {"arr_0": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except MemoryError as exc:
        raise ModelFileError(f"{path} holds arrays larger than this machine's memory") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"cannot read arrays from {path}: {type(exc).__name__}: {exc}") from exc


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
            raise ModelFileError(f"{path}: array {member} claims {size} bytes ({dtype}{list(shape)}), more than "
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
        raise ModelFileError(f"input {name!r} has numpy dtype {array.dtype}, which has no torch "
                             "equivalent") from exc


def to_array(value):
    """An output as numpy: bfloat16, which numpy lacks, becomes float32."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)
