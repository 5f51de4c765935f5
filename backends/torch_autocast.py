"""torch:cuda in fp16 or bf16 (``torch:cuda@fp16``): the segment's program under torch.autocast,
made ready for it at load (``cast_weights``, then ``widen_fp32_inputs``; ``declared_dtypes``).

Autocast runs matrix products and convolutions in the lower type, a list of ops that lose most to
it (exponentials, norms, losses) in fp32, ops that combine tensors (cat, add) in the widest type
they are handed, and every other op in the type it is handed. Two things about a segment's program
need help at load:

- **Weights.** A weight autocast casts is cast anew on every call: the fp32 copy read and a lower
  one written, more bytes than fp32 alone would move, which a memory-bound segment (a decode step)
  pays for. So the weights that reach only ops autocast casts (through views, such as the permute
  before an addmm) are cast once, on the host before they move to the GPU: half the bytes held and
  read, and each call's result the same as plain autocast's, the same rounding of the same values
  in the same kernels. Which ops autocast casts differs by device and torch version (on the CPU it
  leaves aten.convolution in fp32, on CUDA it casts it), so it is asked, with a tiny call per op.
- **Decomposed ops.** The program is core ATen, and autocast's fp32 rule is registered on the ops
  a model calls, not on all of their core forms: softmax (aten._softmax), log_softmax and
  group_norm (aten.native_group_norm) would run in the lower type. Their inputs are widened to fp32
  in the graph, as autocast widens the ops they came from.

Outputs return in the dtypes the program declares (float32 for a float32 model), read from its
vetted graph: the next segment, on another runtime, expects them."""
from __future__ import annotations

from functools import lru_cache

import torch

from hetcc.errors import BundleError, clip

aten = torch.ops.aten

LOWER = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""The precisions torch:cuda offers, and the dtype autocast computes them in."""

CASTS = (torch.float32, torch.float16, torch.bfloat16)
"""Weight dtypes autocast casts to the lower type (never float64)."""

_VIEWS = {aten.permute.default, aten.t.default, aten.transpose.int, aten.view.default,
          aten._unsafe_view.default, aten.reshape.default, aten.expand.default, aten.unsqueeze.default,
          aten.squeeze.dim, aten.squeeze.dims, aten.alias.default}
"""Ops a weight passes through on its way to a matrix product (an addmm reads the permuted weight,
a bmm the expanded one): they keep its dtype, so a weight cast ahead reaches the product cast."""

FP32_CORE_OPS = {aten._softmax.default, aten._log_softmax.default, aten._safe_softmax.default,
                 aten.native_group_norm.default}
"""Core ATen forms of ops autocast runs in fp32 (softmax, log_softmax, group_norm) that it does not
recognise itself (``torch._C._dispatch_dump`` lists no Autocast kernel for them); native_layer_norm,
exp and pow it does."""


def _probes(device: torch.device) -> dict:
    """Per op whose weight operand is worth casting ahead: a tiny call of it in fp32 on ``device``."""
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
def cast_ops(device: str, precision: str) -> frozenset:
    """The matrix-product and convolution ops autocast runs in ``precision`` on ``device`` (a
    device string such as ``cuda:1``): asked on that device, with a tiny call of each."""
    where, dtype, out = torch.device(device), LOWER[precision], set()
    try:
        with torch.no_grad(), torch.autocast(where.type, dtype=dtype):
            for op, probe in _probes(where).items():
                try:
                    if probe().dtype == dtype:
                        out.add(op)
                except RuntimeError:  # no kernel for the op there: leave its weights alone
                    pass
    except RuntimeError:  # autocast refuses the type on this device: cast nothing ahead
        return frozenset()
    return frozenset(out)


def weights_to_cast(ep, ops: frozenset) -> set[str]:
    """State names (of ``ep.state_dict`` / ``ep.constants``) of the weights whose every use
    reaches one of ``ops``, through views only."""
    by_arg = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs
              if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and hasattr(spec.arg, "name")}

    def only_feeds(node) -> bool:
        users = list(node.users)
        return bool(users) and all(
            u.op == "call_function" and (u.target in ops or (u.target in _VIEWS and only_feeds(u)))
            for u in users)

    return {by_arg[n.name] for n in ep.graph.nodes if n.op == "placeholder" and n.name in by_arg
            and only_feeds(n)}


def _widened(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16) else x


def cast_weights(ep, precision: str, device: str) -> None:
    """Cast, in ``ep``'s state (its weights still on the host; changed in place), the weights
    autocast would cast to ``precision`` on every call on ``device``."""
    dtype = LOWER[precision]
    names = weights_to_cast(ep, cast_ops(device, precision))
    with torch.no_grad():  # a Parameter's cast would otherwise keep its fp32 original alive
        for state in (ep.state_dict, getattr(ep, "constants", None) or {}):
            for name in names & set(state):
                value = state[name]
                if isinstance(value, torch.Tensor) and value.dtype in CASTS:
                    cast = value.to(dtype)  # a parameter stays one: the program's signature says so
                    state[name] = torch.nn.Parameter(cast, requires_grad=False) \
                        if isinstance(value, torch.nn.Parameter) else cast


def declared_dtypes(ep) -> list:
    """The dtype per output ``ep``'s vetted graph declares (None where it does not say)."""
    output = next(n for n in ep.graph.nodes if n.op == "output")
    results = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
    return [getattr(getattr(r, "meta", {}).get("val"), "dtype", None) for r in results]


def widen_fp32_inputs(graph_module) -> int:
    """Widen to fp32 the inputs of FP32_CORE_OPS in ``graph_module``'s graph (changed in place),
    as autocast widens the ops they came from. Returns how many ops. Call it last: the graph then
    calls a Python function, which torch.export's verifier (run by move_to_device_pass) refuses."""
    graph, count = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in FP32_CORE_OPS:
            with graph.inserting_before(node):
                node.args = tuple(graph.call_function(_widened, (a,)) if isinstance(a, torch.fx.Node) else a
                                  for a in node.args)
            count += 1
    if count:
        graph_module.recompile()
    return count


def autocast_call(call, device_type: str, precision: str, out_dtypes: list):
    """``call`` under torch.autocast in ``precision``; an output in a lower float type than its
    entry of ``out_dtypes`` declares is cast back to it."""
    dtype = LOWER[precision]
    floats = [d if isinstance(d, torch.dtype) and d.is_floating_point else None for d in out_dtypes]

    def run(*inputs):
        with torch.autocast(device_type, dtype=dtype):
            out = call(*inputs)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return tuple(o.to(want) if want is not None and isinstance(o, torch.Tensor) and o.dtype != want
                     and o.is_floating_point() else o
                     for o, want in zip(out, floats + [None] * (len(out) - len(floats))))
    return run


def precision_of(meta: dict, segment: str) -> str | None:
    """The artifact's precision (None: the model's own); a BundleError for one this does not run."""
    precision = meta.get("precision")
    if precision is None or precision == "fp32":
        return None
    if not isinstance(precision, str) or precision not in LOWER:
        raise BundleError(f"segment {segment!r}: its artifact asks torch for precision "
                          f"{clip(repr(precision), 60)}, which torch:cuda does not run (it runs "
                          f"{', '.join(LOWER)}); the bundle is corrupt or from a newer hetcc: recompile it")
    return precision
