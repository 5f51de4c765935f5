"""torch:cuda in fp16 or bf16 (``torch:cuda@fp16``): torch.autocast runs the segment's program, with
the weights autocast would narrow on every call narrowed once, at load.

Under autocast, matrix products and convolutions run in the narrow type and the ops that lose most
to it (softmax's exp, norms, reductions) in fp32; every other op runs in the type it is handed. A
weight autocast narrows is cast anew on each call: the fp32 copy read and a narrow one written, more
bytes than fp32 alone would move, which is what a memory-bound segment (a decode step) pays for.
So the weights that reach only narrowed ops (through views such as the permute before an addmm)
are held narrow instead, half the bytes resident and read, and each call's result is the same as
plain autocast's: the same rounding of the same values, in the same kernels.

Which ops autocast narrows differs by device and torch version (on the CPU it leaves
aten.convolution in fp32, on CUDA it narrows it), so it is asked, on a tiny call per op, rather than
listed here: a weight narrowed for an op autocast leaves alone would meet fp32 activations and fail.

Outputs return in the dtypes the segment declared (float32 for a float32 model): the next segment,
on another runtime, expects them."""
from __future__ import annotations

from functools import lru_cache

import torch

from hetcc.errors import BundleError, clip

aten = torch.ops.aten

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""The precisions torch:cuda offers, and the dtype autocast computes them in."""

_VIEWS = {aten.permute.default, aten.t.default, aten.transpose.int, aten.view.default,
          aten._unsafe_view.default, aten.reshape.default, aten.expand.default, aten.unsqueeze.default,
          aten.squeeze.dim, aten.squeeze.dims, aten.alias.default}
"""Ops a weight passes through on its way to a matrix product (an addmm reads the permuted weight,
a bmm the expanded one): they keep its dtype, so a narrowed weight reaches the product narrow."""


def _probes(device: str) -> dict:
    """Per op whose weight operand is worth narrowing: a tiny call of it in fp32 on ``device``."""
    def t(*shape):
        return torch.ones(*shape, device=device)
    return {
        aten.mm.default: lambda: aten.mm.default(t(1, 1), t(1, 1)),
        aten.addmm.default: lambda: aten.addmm.default(t(1), t(1, 1), t(1, 1)),
        aten.bmm.default: lambda: aten.bmm.default(t(1, 1, 1), t(1, 1, 1)),
        aten.baddbmm.default: lambda: aten.baddbmm.default(t(1, 1, 1), t(1, 1, 1), t(1, 1, 1)),
        aten.convolution.default: lambda: aten.convolution.default(
            t(1, 1, 1, 1), t(1, 1, 1, 1), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
    }


@lru_cache(maxsize=None)
def narrowed_ops(device_type: str, precision: str) -> frozenset:
    """The matrix-product and convolution ops autocast runs in ``precision`` on ``device_type``."""
    dtype, out = HALF[precision], set()
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        for op, probe in _probes(device_type).items():
            try:
                if probe().dtype == dtype:
                    out.add(op)
            except RuntimeError:  # no kernel for the op on this device: leave its weights alone
                pass
    return frozenset(out)


def narrowable(ep, ops: frozenset) -> set[str]:
    """State names (of ``ep.state_dict`` / ``ep.constants``) of the floating weights whose every
    use reaches one of ``ops``, through views only."""
    by_arg = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs
              if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and hasattr(spec.arg, "name")}

    def reaches(node) -> bool:
        users = list(node.users)
        return bool(users) and all(
            u.op == "call_function" and (u.target in ops or (u.target in _VIEWS and reaches(u)))
            for u in users)

    return {by_arg[n.name] for n in ep.graph.nodes if n.op == "placeholder" and n.name in by_arg
            and reaches(n)}


def narrow_state(ep, precision: str, device_type: str) -> dict:
    """{state name: the weight in ``precision``} for the weights autocast would narrow on each call."""
    dtype = HALF[precision]
    state = {**dict(ep.state_dict), **dict(getattr(ep, "constants", {}) or {})}
    names = narrowable(ep, narrowed_ops(device_type, precision))
    return {name: state[name].to(dtype) for name in names
            if isinstance(state.get(name), torch.Tensor) and state[name].is_floating_point()}


def autocast_call(call, device_type: str, precision: str, out_dtypes: list):
    """``call`` under torch.autocast in ``precision``; each output cast back to its entry of
    ``out_dtypes`` (a torch.dtype, or None to leave it)."""
    dtype = HALF[precision]

    def run(*inputs):
        with torch.autocast(device_type, dtype=dtype):
            out = call(*inputs)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.to(want) if want is not None and isinstance(o, torch.Tensor) and o.dtype != want else o
                     for o, want in zip(out, list(out_dtypes) + [None] * (len(out) - len(out_dtypes))))
    return run


def precision_of(meta: dict, segment: str) -> str | None:
    """The artifact's precision (None: the model's own); a BundleError for one this does not run."""
    precision = meta.get("precision")
    if precision is None or precision == "fp32":
        return None
    if precision not in HALF:
        raise BundleError(f"segment {segment!r}: its artifact asks torch for precision {precision!r}, "
                          f"which torch:cuda does not run (it runs {', '.join(HALF)}); the bundle is "
                          "corrupt or from a newer hetcc: recompile it")
    return precision


def out_dtypes_of(meta: dict, segment: str) -> list:
    """The dtypes the artifact's outputs return in; a BundleError where the metadata is not a list
    of torch dtype names, one per output."""
    names = meta.get("output_dtypes")
    outputs = meta.get("output_names") or []
    ok = isinstance(names, list) and len(names) == len(outputs) and all(
        n is None or (isinstance(n, str) and isinstance(getattr(torch, n, None), torch.dtype)) for n in names)
    if not ok:
        raise BundleError(f"segment {segment!r}: its artifact's output_dtypes {clip(repr(names), 80)} are not a "
                          f"dtype name per output ({len(outputs)}); the bundle is corrupt: recompile it")
    return [None if n is None else getattr(torch, n) for n in names]
