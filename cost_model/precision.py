"""What a lower precision changes in the roofline: the bytes a weight takes, and the arithmetic rate.

Each precision of hetcc.target.PRECISIONS is a ``Scheme``: the bytes per weight element, the
element type the weight-bearing ops (a MatMul, a convolution) compute in, and that of every other
float op. A node that keeps weights resident reads them at the scheme's width; its compute runs at
the device's peak for its element type (``DeviceSpec.peak_flops``), or, where the spec has no figure
for it, at the fp32 peak times ``ASSUMED_SPEEDUP``. Those speed-ups are assumptions, not
measurements: compile-time tuning times each target's plan, lower precisions included, and keeps the
fastest (docs/precision.md). Capacity is charged at the scheme's width too (``resident_held``): the
placement problem holds resident bytes per node and target, so a memory limit the model's fp32
weights break can still take it in int8."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scheme:
    weight_bytes: float
    """Bytes per weight element (scales included, roughly)."""
    weighted: str
    """The element type the arithmetic of weight-bearing ops runs in (a ``peak_flops`` key, or
    int8u: int8's arithmetic, slower, ``arithmetic_rate``)."""
    other: str
    """The element type of every other float op's arithmetic (bf16 inference precision runs all
    of them in bf16; int8 matrix products sit beside fp32 elementwise ops)."""
    narrows: tuple[str, ...] = ("matmul", "conv")
    """The op classes whose weights it stores narrower and computes in ``weighted``: the int8
    paths quantize matrix products (backends/onnxruntime_backend.py quantized,
    backends/openvino_weights.py), static int8 convolutions too (quantized_static)."""
    stores: tuple[str, ...] = ()
    """Further op classes whose resident weights it stores narrower without computing in
    ``weighted``: both dynamic int8 paths compress embedding tables too (a gather, class data)."""


SCHEMES = {
    "fp16": Scheme(2.0, "fp16", "fp16"),
    "bf16": Scheme(2.0, "bf16", "bf16"),
    "int8": Scheme(1.0, "int8", "fp32", ("matmul",), ("data",)),
    # ONNX Runtime's int8 with unsigned weights, whose x86 kernels do not saturate without VNNI
    # (its signed ones do), and are slower (backends/onnx_quantize.py reduced_range)
    "int8u": Scheme(1.0, "int8u", "fp32", ("matmul",), ("data",)),  # int8's rate x INT8U_SHARE
    # OpenVINO's CPU plugin quantizes the activations of a layer with int8 weights on each call
    # where the CPU has VNNI (elsewhere it computes in fp32: OpenVinoBackend.arithmetic); its
    # weights carry an f32 scale per 32 (backends/openvino_weights.py GROUP). It quantizes only an
    # f32 layer's activations: at bf16 it widens the int8 weights to bf16 in the kernel.
    "int8w": Scheme(1.125, "int8", "fp32", ("matmul",), ("data",)),
    "int8w-bf16": Scheme(1.125, "bf16", "bf16", ("matmul",), ("data",)),
    # ONNX Runtime's static int8: convolutions and matrix products with their activation scales
    # fixed ahead of time (backends/onnxruntime_backend.py quantized_static)
    "int8s": Scheme(1.0, "int8", "fp32", ("matmul", "conv")),
}

SMALLEST_NARROWED = 1024
"""Weights of fewer elements stay in the model's precision (backends/openvino_weights.py): their
bytes do not matter, and a few rows lose the most to rounding."""

SMALLEST_TABLE = 1024
"""A gather's table of fewer rows (positions, token types) stays in the model's precision: a
vocabulary is what takes the bytes, and a small table's rows are read by every token."""

ASSUMED_SPEEDUP = {"fp32": 1.0, "fp16": 2.0, "bf16": 2.0, "int8": 2.0}
"""Arithmetic rate over the fp32 peak where a device spec gives none for the type: a 512-bit bf16
dot product (AVX512-BF16) does twice the fp32 FMAs per instruction; VNNI's int8 does four, of which
the runtimes' int8 GEMMs realise about half once activations are quantized per call. Static int8
(int8s) is priced at the same rate, though it quantizes no activations per call: tuning measures
it (ResNet's int8 convolutions ran 2.4x fp32, docs/precision.md)."""

INT8U_SHARE = 0.75
"""int8u's arithmetic rate over int8's: ONNX Runtime's kernel for unsigned weights is slower. On an
AVX2-only EPYC the whole bert, vit and mlp ran 0.87-0.89x as fast with them as with signed 7-bit
weights (benchmarks/bench_int8_range.py), most of which is their matrix products."""


def arithmetic_rate(device, dtype: str) -> float:
    """FLOP/s of ``device`` in ``dtype``: its spec's figure, else fp32's times the assumed speed-up
    (int8u: int8's rate, from the spec or assumed, times INT8U_SHARE)."""
    if dtype == "int8u":
        return arithmetic_rate(device, "int8") * INT8U_SHARE
    return device.peak_flops.get(dtype) or device.peak_flops["fp32"] * ASSUMED_SPEEDUP.get(dtype, 1.0)


def scheme_of(precision: str | None) -> Scheme | None:
    return SCHEMES.get(precision) if precision else None


def narrows(scheme: Scheme | None, facts) -> bool:
    """Whether ``scheme`` stores this node's weights narrower (and computes it in ``weighted``)."""
    return scheme is not None and facts.op_class in scheme.narrows and getattr(facts, "weight_bytes", 0) > 0


def bytes_moved(facts, precision: str | None) -> float:
    """Bytes a node (a ``NodeFacts``) moves in ``precision``: its weights at the precision's width
    where the precision narrows its op class, everything else as in fp32."""
    scheme = scheme_of(precision)
    if not narrows(scheme, facts):
        return facts.bytes_moved
    return facts.bytes_moved - facts.weight_bytes * (1.0 - scheme.weight_bytes / 4.0)


def resident_held(facts, precision: str | None) -> float:
    """Bytes a node (a ``NodeFacts``) keeps resident in ``precision``: its narrowable weights
    (``narrowable_bytes``: matrix weights, large tables) at the precision's width where the
    precision stores them narrower for the class of node that computes with them (``holds_for``);
    everything else (biases, norms, small weights, a KV cache) as in fp32."""
    scheme = scheme_of(precision)
    if scheme is None or not facts.narrowable_bytes or facts.holds_for not in scheme.narrows + scheme.stores:
        return facts.resident_bytes
    return facts.resident_bytes - facts.narrowable_bytes * (1.0 - scheme.weight_bytes / 4.0)
