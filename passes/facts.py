"""Per-node facts: FLOPs, bytes moved, bytes resident, operational intensity, op class.

Shapes come from the reference run (concrete tensors), so a dynamic dimension is counted at its
example size. Views move no bytes: every runtime we target folds them into their consumer.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import torch

from hetcc.cost_model.precision import SMALLEST_NARROWED, SMALLEST_TABLE
from hetcc.names import op_name

aten = torch.ops.aten


@dataclass(frozen=True)
class NodeFacts:
    name: str
    op: str
    """ATen op name, e.g. 'aten.addmm.default'."""
    op_class: str
    """One of: matmul, conv, attention, elementwise, reduction, norm, data (gather/cat/copy), view."""
    flops: float
    bytes_read: int
    bytes_written: int
    resident_bytes: int
    """Weights this node reads, which must stay in the memory of the device that runs it."""
    weight_bytes: int = 0
    """Weights this node reads directly or through views (a Linear's weight reaches its addmm
    through a permute): what a lower precision stores narrower (cost_model/precision.py)."""
    holds_for: str = ""
    """Where the node keeps weights resident: the op class of the node that computes with them
    (its own, or the reader at the end of its views: a Linear's permute holds for a matmul)."""
    narrowable_bytes: int = 0
    """Of ``resident_bytes``, what a lower precision stores narrower for a ``holds_for`` reader: a
    matrix or convolution weight (not a bias, not one under ``SMALLEST_NARROWED`` elements), or a
    gather's table of ``SMALLEST_TABLE`` rows or more (cost_model/precision.py)."""

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Operational intensity: FLOPs per byte moved (0 where nothing moves)."""
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0


_VIEWS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze",
          "unsqueeze", "alias", "slice", "select", "as_strided", "detach", "lift_fresh_copy",
          "sym_size", "sym_numel", "sym_stride", "unbind", "split", "split_with_sizes"}
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addbmm"}
_ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "scaled_dot_product_attention",
              "_scaled_dot_product_attention_math", "_scaled_dot_product_cudnn_attention"}
_NORM = {"native_layer_norm", "native_batch_norm", "_native_batch_norm_legit_no_training",
         "native_group_norm", "_softmax", "_log_softmax", "rms_norm", "_fused_rms_norm"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "var", "var_mean", "prod", "argmax",
           "argmin", "any", "all", "cumsum", "logsumexp"}
_DATA = {"embedding", "index", "gather", "index_select", "cat", "stack", "clone", "copy",
         "_to_copy", "constant_pad_nd", "scatter", "index_put", "where", "full", "zeros", "ones",
         "arange", "empty", "scalar_tensor", "new_zeros", "new_ones", "full_like", "zeros_like"}
_GATHERS = {"embedding", "index_select", "index", "gather"}
# Elementwise ops cost more than one FLOP per element; rough counts from their usual expansions.
_ELEMENTWISE_FLOPS = {"gelu": 8, "silu": 4, "sigmoid": 4, "tanh": 6, "exp": 4, "erf": 6, "log": 4,
                      "pow": 2, "rsqrt": 2, "sqrt": 2, "div": 1, "softplus": 6}


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from _tensors(item)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _base_name(node) -> str:
    target = node.target
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def classify(node) -> str:
    base = _base_name(node)
    if base in ("getitem",) or base in _VIEWS or not isinstance(node.target, torch._ops.OpOverload):
        return "view"
    if base in _MATMUL:
        return "matmul"
    if base == "convolution":
        return "conv"
    if base in _ATTENTION:
        return "attention"
    if base in _NORM:
        return "norm"
    if base in _REDUCE:
        return "reduction"
    if base in _DATA:
        return "data"
    return "elementwise"


def _matmul_flops(base: str, ins: list, out: torch.Tensor) -> float:
    if base in ("mm", "bmm", "matmul"):
        a = ins[0]
        return 2.0 * out.numel() * a.shape[-1]
    if base in ("addmm", "baddbmm", "addbmm"):
        a = ins[1]
        return 2.0 * out.numel() * a.shape[-1] + out.numel()
    if base == "linear":
        return 2.0 * out.numel() * ins[0].shape[-1] + (out.numel() if len(ins) > 2 else 0)
    return 2.0 * out.numel()


def _conv_flops(node, ins, out) -> float:
    weight = ins[1]
    per_output = weight.shape[1] * math.prod(weight.shape[2:])  # Cin/groups * kernel elements
    bias = out.numel() if len(ins) > 2 and node.args[2] is not None else 0
    return 2.0 * out.numel() * per_output + bias


def _attention_flops(ins) -> float:
    q, k = ins[0], ins[1]
    batch = math.prod(q.shape[:-2])
    lq, d = q.shape[-2], q.shape[-1]
    lk = k.shape[-2]
    # QK^T and PV: 2 matmuls of 2*Lq*Lk*D each, plus softmax ~5 per score
    return batch * (4.0 * lq * lk * d + 5.0 * lq * lk)


def node_facts(node, values: dict, weights: set[str]) -> NodeFacts:
    """Facts for one call_function node, from the reference-run ``values``."""
    base = _base_name(node)
    cls = classify(node)
    ins = [values[a.name] for a in node.all_input_nodes if a.name in values]
    in_tensors = [t for x in ins for t in _tensors(x)]
    out_tensors = list(_tensors(values.get(node.name)))
    resident = sum(_nbytes(values[a.name]) for a in node.all_input_nodes if a.name in weights)
    if cls == "view":
        return NodeFacts(node.name, op_name(node.target), cls, 0.0, 0, 0, resident)
    read = sum(_nbytes(t) for t in in_tensors)
    if base in _GATHERS and resident:
        # a lookup reads the rows it returns, not the whole table it keeps resident
        read = read - resident + sum(_nbytes(t) for t in out_tensors)
    written = sum(_nbytes(t) for t in out_tensors)
    out_numel = sum(t.numel() for t in out_tensors)
    tensor_args = [x for x in ins if isinstance(x, torch.Tensor)]
    if cls == "matmul" and out_tensors:
        flops = _matmul_flops(base, tensor_args, out_tensors[0])
    elif cls == "conv":
        flops = _conv_flops(node, tensor_args, out_tensors[0])
    elif cls == "attention":
        flops = _attention_flops(tensor_args)
    elif cls in ("reduction",):
        flops = float(sum(t.numel() for t in in_tensors[:1]))
    elif cls == "norm":
        flops = 5.0 * out_numel if base != "native_layer_norm" else 5.0 * in_tensors[0].numel()
    elif cls == "data":
        flops = 0.0
    else:
        flops = float(out_numel) * _ELEMENTWISE_FLOPS.get(base, 1)
    weight = sum(_nbytes(values[a.name]) for a in node.all_input_nodes
                 if isinstance(values.get(a.name), torch.Tensor) and _is_weight(a, weights))
    return NodeFacts(node.name, op_name(node.target), cls, flops, read, written, resident, weight)


def _is_weight(node, weights: set[str]) -> bool:
    """Whether ``node`` is a weight, or a view of one (a permute, a transpose, a reshape...)."""
    while node.name not in weights:
        if node.op != "call_function" or classify(node) != "view" or len(node.all_input_nodes) != 1:
            return False
        node = node.all_input_nodes[0]
    return True


def graph_facts(graph, values: dict, weights) -> dict[str, NodeFacts]:
    names = set(weights)
    out = {}
    for n in graph.nodes:
        if n.op == "call_function":
            facts = node_facts(n, values, names)
            if facts.resident_bytes:
                reader = _reader_class(n)
                facts = replace(facts, holds_for=reader, narrowable_bytes=_narrowable(n, values, names, reader))
            out[n.name] = facts
    return out


def _narrowable(node, values: dict, weights: set[str], reader: str) -> int:
    """The bytes of ``node``'s resident weights a lower precision stores narrower (NodeFacts)."""
    total = 0
    for a in node.all_input_nodes:
        t = values.get(a.name)
        if a.name not in weights or not isinstance(t, torch.Tensor) or t.numel() < SMALLEST_NARROWED:
            continue
        if (reader == "matmul" and t.dim() == 2) or (reader == "conv" and t.dim() >= 3):  # not a bias
            total += _nbytes(t)
        elif reader == "data" and _base_name(node) in _GATHERS and t.dim() == 2 and t.shape[0] >= SMALLEST_TABLE:
            total += _nbytes(t)
    return total


def _reader_class(node) -> str:
    """The op class of the node that computes with ``node``'s output, looking through views
    ("view" where a view has no single reader)."""
    while classify(node) == "view":
        readers = [u for u in node.users if u.op == "call_function"]
        if len(readers) != 1:
            return "view"
        node = readers[0]
    return classify(node)
