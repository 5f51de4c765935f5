"""The one spelling of what messages and reports name: an op, a dtype, an exception's first line."""
from __future__ import annotations

from hetcc.errors import plain


def op_name(target) -> str:
    """``aten.add.Tensor`` for an ATen overload (a node's ``target``), ``higher_order.cond`` for a
    higher-order op, the function's name otherwise."""
    import torch

    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


def dtype_name(dtype) -> str:
    """``float32`` for torch.float32."""
    return str(dtype).removeprefix("torch.")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, whole and without terminal escape codes (for short
    answers such as why a runtime is unusable; a failure's reason uses ``errors.readable``). Never
    empty: a message that is blank or starts with a newline gives its first non-blank line, or the
    exception's type."""
    return next((plain(line) for line in str(exc).splitlines() if plain(line)), type(exc).__name__)
