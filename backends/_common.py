"""Small pieces the built-in backends share: quieting vendor exporters, wrapping their failures
(with the command that reproduces one), reading dtypes off fx nodes, handing tensors to numpy
without copies, and remembering which native-code files this process built (trust_engines). The
ONNX export they share is backends/onnx_export.py."""
from __future__ import annotations

import contextlib
import io
import logging
import operator
import warnings
from functools import lru_cache
from pathlib import Path

from hetcc.errors import InputError, LoweringError, readable
from hetcc.names import dtype_name, op_name

log = logging.getLogger(__name__)

_CHATTY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "openvino")


@contextlib.contextmanager
def quiet_logger(name: str = ""):
    """Only errors from one logger (the root logger: ``""``) for the duration of a call that
    logs advice or tracebacks of its own (ONNX Runtime's quantizer, torch.export)."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


@contextlib.contextmanager
def quiet():
    """Silence an exporter's console chatter for the duration of one call.

    Exporters print progress lines and log warnings (``torchvision is not installed``) that mean
    nothing to a hetcc user. stdout is captured and re-logged at DEBUG. ``redirect_stdout`` is
    process-wide, so lowering from several threads at once may also capture the other threads'
    prints; hetcc lowers segments one after another."""
    saved = {}
    for name in _CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if out.getvalue().strip():
            log.debug("exporter output:\n%s", out.getvalue())


def lowering_error(segment, backend: str, exc: BaseException, workdir: Path,
                   step: str | None = None) -> LoweringError:
    """A LoweringError naming the segment, the backend and the whole cause (with the exceptions it
    was raised from), with the segment written to ``workdir`` so the failure can be reproduced
    alone. ``step``: Python statements that redo the failed step on the saved program, which they
    find as ``ep`` (e.g. "torch.onnx.export(ep, (), dynamo=True)"); the message then gives the
    command that runs them. Raise it ``from exc``."""
    saved = _dump_segment(segment, Path(workdir))
    if saved is None:
        where = " The segment could not be written to disk."
    elif saved.suffix == ".py":
        # export itself failed: there is no program to re-run, only its graph to read
        where = (f" The segment could not be exported, so its graph is saved as text at {saved}; "
                 "hetcc --debug (or logging at DEBUG) shows the full traceback.")
    elif step:
        where = f" The segment is saved at {saved}; reproduce the failure alone with: {repro_command(saved, step)}"
    else:
        where = f" The segment is saved at {saved} (torch.export.load reads it)."
    return LoweringError(
        f"segment {segment.name!r}: backend {backend!r} could not lower it: "
        f"{type(exc).__name__}: {readable(exc, causes=True)}.{where}"
    )


def repro_command(program: Path, step: str) -> str:
    """A shell command that loads the torch.export archive ``program`` as ``ep`` and runs ``step``."""
    return python_command(f"import torch; ep = torch.export.load({py_str(program)}); {step}")


def python_command(code: str) -> str:
    """A shell command that runs ``code`` with this Python, so in the environment hetcc ran in."""
    import shlex
    import sys

    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def py_str(path) -> str:
    """``path`` as a Python string literal (double-quoted, so it survives the shell's single quotes)."""
    import json

    return json.dumps(str(path))


def _dump_segment(segment, workdir: Path) -> Path | None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    try:
        import torch

        path = workdir / "failed_segment.pt2"
        torch.export.save(segment.export(), str(path))
        return path
    except Exception:  # the export itself may be what failed: keep the readable graph instead
        try:
            path = workdir / "failed_segment.py"
            path.write_text(segment.gm.print_readable(print_output=False))
            return path
        except Exception:
            return None


def is_structural(node) -> bool:
    """getitem, Python operators on SymInts, sym_* ops and export's assertion nodes: every backend
    handles, folds or drops these."""
    target = node.target
    if target is operator.getitem or getattr(target, "__module__", None) in ("_operator", "operator", "math"):
        return True
    name = getattr(target, "__name__", "") or ""
    text = str(target)
    if name.startswith("sym_") or text.startswith(("aten.sym_", "torch.sym_")):
        return True
    # Runtime assertions from export (shape/metadata checks): exporters drop them.
    return text.startswith(("aten._assert_", "aten.sym_constrain_range"))


def node_dtypes(node) -> set:
    """dtypes of the tensors a node reads and writes, from the export's fake values."""
    import torch

    found = set()

    def visit(v):
        if isinstance(v, torch.Tensor):
            found.add(v.dtype)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    visit(node.meta.get("val"))
    for a in node.all_input_nodes:
        visit(a.meta.get("val"))
    return found


def dtype_problem(node, banned: dict) -> str | None:
    """The reason for the first dtype in ``banned`` (dtype -> why) that the node touches."""
    for dtype in node_dtypes(node):
        if dtype in banned:
            return f"{op_name(node.target)} on {dtype_name(dtype)} tensors: {banned[dtype]}"
    return None


def data_dependent_shape(node) -> bool:
    """True when a node's output size depends on tensor values (nonzero, masked_select, unique):
    export gives those sizes unbacked symbols. Engines that size their outputs before running
    (TensorRT without an output allocator, MIGraphX) cannot take such nodes."""
    import torch

    try:
        from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    except ImportError:  # a torch without it: no claim
        return False
    val = node.meta.get("val")
    values = val if isinstance(val, (list, tuple)) else [val]
    return any(isinstance(v, torch.Tensor) and free_unbacked_symbols(v) for v in values)


def check_arity(inputs, expected: int, segment: str) -> None:
    if len(inputs) != expected:
        raise InputError(f"segment {segment!r} takes {expected} inputs, got {len(inputs)}")


@lru_cache(maxsize=None)
def _torch_from_numpy():
    import torch

    return torch.from_numpy


def to_numpy(value):
    """A numpy view of a CPU tensor (no copy when it is already contiguous)."""
    try:  # the common case first: this is on every hand-over, so it costs a few hundred ns
        if value.is_contiguous():
            return value.numpy()  # raises for a tensor that needs grad, a GPU tensor, conj/neg bits
    except (AttributeError, RuntimeError, TypeError):
        pass
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        return t.numpy()
    return np.asarray(value)


def from_numpy(array):
    """A tensor sharing ``array``'s memory (copied only when the array is read-only)."""
    try:  # the common case first, without imports: this is on every hand-over
        if array.flags.writeable and array.flags.c_contiguous:
            return _torch_from_numpy()(array)
    except AttributeError:
        pass
    import numpy as np
    import torch

    array = np.asarray(array)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


# ---- compiled native code in artifacts (TensorRT engines, MIGraphX programs) ----

TRUST_ENV = "HETCC_TRUST_ENGINES"
"""Set to 1 to load compiled engines that another process built (see docs/gpu_backends.md)."""
_built_here: set[str] = set()


def _digest(path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remember_built(path) -> None:
    """Note that this process built the engine at ``path``, so loading it needs no trust."""
    _built_here.add(_digest(path))


def check_native_code_trusted(path, what: str, segment: str) -> None:
    """Refuse to hand ``path`` to a vendor runtime unless this process built it or the user said
    they trust the bundle (``HETCC_TRUST_ENGINES=1``). A TensorRT engine or a MIGraphX program is
    compiled native code that the runtime executes; NVIDIA documents deserializing an untrusted
    engine as running untrusted native code (embedded plugins run host code). hetcc reads bundles
    as untrusted data otherwise (no pickles), so this is opt-in."""
    import os

    if os.environ.get(TRUST_ENV) == "1" or _digest(path) in _built_here:
        return
    from hetcc.errors import BundleError

    raise BundleError(
        f"segment {segment!r}: {path} is {what}, compiled native code that its runtime executes when "
        f"loading it, and this process did not build it. Load it only if you built the bundle or got it "
        f"over a channel you trust: set {TRUST_ENV}=1, or recompile the model on this machine")

