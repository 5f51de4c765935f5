"""Whether a model that torch.export could not capture runs at all on its example inputs.

Asked only where the export failure is not one hetcc recognises (hetcc/capture.py): a model that
fails in eager PyTorch too (a sequence longer than its position table, a missing keyword, a typo in
``forward``) gets an InputError naming its own line, instead of an export error that tells the user
to debug torch.export."""
from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from hetcc.errors import InputError, plain
from hetcc.names import first_line

_SKIPPED_DIRS = (str(Path(torch.__file__).parent) + os.sep, str(Path(__file__).parent) + os.sep)
"""Frames in these packages (torch's, hetcc's) are not the model's line."""


def eager_failure(model: torch.nn.Module, args, kwargs) -> Exception | None:
    """What ``model`` raises when called on copies of the example inputs in eager PyTorch, or None
    where it runs, or where it cannot be asked without changing the model: weights or inputs on the
    meta device (``hetcc plan --meta``), or parameters a lazy module has not created yet.

    The model's buffers are put back as they were: the same objects, with the same values, so a
    call that updates statistics or a counter, reassigns a cache or registers a buffer leaves no
    trace. Parameters are not copied (a model's weights may be most of the memory there is);
    inference does not write them."""
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    weights = list(model.parameters()) + list(model.buffers())
    if any(t.is_meta for t in tensors + weights) or \
            any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        return None
    args, kwargs = pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
                                   (tuple(args), dict(kwargs or {})))
    held = buffers_held(model)
    values = {id(b): b.detach().clone() for b in model.buffers()}
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as exc:  # the model's own failure, of any type: reported, not handled
        return exc
    finally:
        put_back(held)
        with torch.no_grad():
            for b in model.buffers():
                if id(b) in values:
                    b.copy_(values[id(b)])
    return None


def buffers_held(model: torch.nn.Module) -> dict:
    """Each module's buffer objects by name (not copies), for ``put_back``."""
    return {m: dict(m._buffers) for m in model.modules()}


def put_back(held: dict) -> None:
    """Each module's buffers as ``buffers_held`` found them: a buffer reassigned, set to None or
    registered since is undone (torch.export, failing mid-trace, leaves a fake tensor where the
    model reassigns one)."""
    for module, buffers in held.items():
        module._buffers.clear()
        module._buffers.update(buffers)


def input_error(eager: Exception) -> InputError:
    """The InputError for a model that fails in eager PyTorch on its example inputs."""
    name = type(eager).__name__
    detail = plain(first_line(eager)).rstrip(".")
    said = f"{name}: {detail}" if detail and detail != name else name
    return InputError(
        f"the model fails on the example inputs when PyTorch runs it as it is, so there is nothing to "
        f"compile: {said}{model_line(eager)}. Call the model on these inputs yourself and fix what "
        "fails; often it is the inputs (their shapes, token ids beyond the embedding table, a "
        "sequence longer than the position table).")


def model_line(exc: BaseException) -> str:
    """`` at file:line (in function)`` for the innermost frame of ``exc``'s traceback outside torch
    and hetcc (the model's own line, in the user's or transformers' code), or "" where there is
    none (a wrong keyword fails inside torch's module call)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_SKIPPED_DIRS)]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} (in {f.name})"
