"""Core-ATen ops that torch-mlir's torch dialect lacks, written in ops it has before a segment is
imported. torch's own decompositions do not serve: the batch-norm one produces a mutating op that
export refuses. Each rewrite is checked against torch in tests/test_iree_backend.py."""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.fx as fx

aten = torch.ops.aten


def _shape_for_channels(x, c):
    return [1, c] + [1] * (x.dim() - 2)


def _batch_norm_inference(x, weight, bias, mean, var, momentum, eps):
    shape = _shape_for_channels(x, mean.shape[0])
    out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    empty = x.new_zeros((0,))
    return out, empty, empty


def _batch_norm_batch_stats(x, weight, bias, training, momentum, eps):
    """``_native_batch_norm_legit.no_stats``: normalise with the batch's own statistics (what
    instance norm lowers to); returns (out, mean, 1/std) per channel like the op."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    shape = _shape_for_channels(x, mean.shape[0])
    out = (x - mean.view(shape)) * rstd.view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out, mean, rstd


def _squeeze_dims(x, dims):
    for d in sorted({d % x.dim() if x.dim() else 0 for d in dims}, reverse=True):
        x = aten.squeeze.dim(x, d)
    return x


def _bitwise_scalar(op):
    def run(x, other):
        return op(x, torch.scalar_tensor(other, dtype=x.dtype))
    return run


def _attention_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention as two matmuls and a softmax (inference: no dropout)."""
    if dropout_p:
        raise NotImplementedError("scaled_dot_product_attention with dropout is not rewritten for IREE")
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    weights = scores.softmax(-1)
    if is_causal or attn_mask is not None:
        # a fully masked row: torch's kernels give zeros there, a plain softmax gives NaN
        weights = weights.masked_fill(torch.isneginf(scores).all(-1, keepdim=True), 0.0)
    out = weights @ v
    if out.dim() == 4:
        # torch's CPU kernel returns (B, H, L, E) laid out as (B, L, H, E), and the captured graph
        # may view its output as such (the usual transpose(1, 2).reshape); keep that layout.
        out = out.transpose(1, 2).contiguous().transpose(1, 2)
    return out


CPU_REWRITES = {
    # IREE 3.13 lowers the whole op to its attention kernel, which on the CPU took 1.2 s where the
    # matmul form takes ~36 ms (4x8x256x64, docs/iree.md). GPU targets keep the kernel: it is the
    # path IREE tunes for them.
    aten.scaled_dot_product_attention.default: _attention_math,
}

REWRITES = {
    aten._native_batch_norm_legit_no_training.default: _batch_norm_inference,
    aten._native_batch_norm_legit.no_stats: _batch_norm_batch_stats,
    aten.squeeze.dims: _squeeze_dims,
    aten.bitwise_or.Scalar: _bitwise_scalar(aten.bitwise_or.Tensor),
    aten.bitwise_xor.Scalar: _bitwise_scalar(aten.bitwise_xor.Tensor),
    aten.bitwise_and.Scalar: _bitwise_scalar(aten.bitwise_and.Tensor),
}
"""ATen overload -> a function of the same arguments in ops the torch dialect has."""


def rewrites_for(device: str) -> dict:
    return {**REWRITES, **CPU_REWRITES} if device == "cpu" else dict(REWRITES)


def rewritten(segment, device: str):
    """``segment`` itself when it has nothing to rewrite for ``device``, else a copy whose graph
    calls the rewrites (the weights are shared, not copied); its export() traces through them."""
    table = rewrites_for(device)
    if not any(n.op == "call_function" and n.target in table for n in segment.gm.graph.nodes):
        return segment
    graph = fx.Graph()
    env: dict = {}
    out = graph.graph_copy(segment.gm.graph, env)
    graph.output(out)
    for node in graph.nodes:
        if node.op == "call_function" and node.target in table:
            node.target = table[node.target]
    gm = fx.GraphModule(segment.gm, graph)
    return dataclasses.replace(segment, gm=gm, _exported=None)
