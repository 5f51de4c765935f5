"""Static int8 for openvino:cpu (``openvino:cpu@int8s``): NNCF's post-training quantization of a
segment's converted model, its activation ranges measured on the segment's calibration batches.

``nncf.quantize`` inserts FakeQuantize ops before convolutions and matrix products (weights per
channel, activations per tensor) and corrects the biases for the shift int8 causes; OpenVINO's CPU
plugin then runs those ops in int8, and ``ov.save_model`` stores their weights as int8. Only
lowering needs NNCF (``pip install nncf``, the ``nncf`` extra): a saved segment is plain OpenVINO
IR and loads without it. The MIXED preset is used: symmetric weights, asymmetric activations (a
ReLU's output is not centred on zero), as onnxruntime:cpu@int8s quantizes them. On the
benchmark's ResNet inside hetcc, tuning timed this plan at 9.1 ms against 7.2 ms for ONNX
Runtime's static int8 and 18.9 ms for its fp32 (docs/precision.md).

A segment with attention (``scaled_dot_product_attention``, or a softmax beside batched matrix
products, as attention written out computes its scores) or an embedding lookup is quantized as
NNCF's TRANSFORMER model type, which keeps additions, normalizations and the attention's output
out of int8 (NNCF's ignored patterns) and smooths the activation outliers of matrix products into
their weights (SmoothQuant). On the benchmark's transformers (AMX Xeon, NNCF 3.4) it moved the outputs
1.4-3.4x less at the same speed (bert 3.7 % -> 1.1 %, vit 4.4 -> 2.1, t5 4.4 -> 1.7, wav2vec2
5.5 -> 4.0; docs/precision.md); and NNCF's default type failed on BERT's embedding part (a
KeyError in its quantizer setup). On ResNet the default type was faster (1.7 against 2.1 ms),
so it stays the default elsewhere."""
from __future__ import annotations

import importlib.util

from hetcc.backends._common import quiet, quiet_logger, to_numpy

PRESET = "MIXED"
"""nncf.QuantizationPreset: symmetric int8 weights, asymmetric activations."""

TRANSFORMER_OPS = frozenset({"aten.scaled_dot_product_attention.default", "aten.embedding.default"})
"""Ops (in a segment's exported graph) that make NNCF quantize it as a transformer."""
SOFTMAX_OPS = frozenset({"aten._softmax.default", "aten.softmax.int"})
BATCHED_PRODUCTS = frozenset({"aten.bmm.default", "aten.baddbmm.default"})
"""A softmax makes a transformer only beside one of these: attention written out scores with a
batched product of two activations, while a classifier's softmax follows a Linear (``mm``)."""


def nncf_here() -> bool:
    """Whether NNCF is installed (int8s is offered only then). Found, not imported
    (base.missing_packages would import it): importing NNCF takes 0.7 s here, and every compile
    with an accuracy budget asks what openvino:cpu offers, with calibration batches or not."""
    return importlib.util.find_spec("nncf") is not None


def is_transformer(graph) -> bool:
    """Whether a segment's exported graph (a torch.fx.Graph, decomposed as hetcc captures) computes
    attention or looks up an embedding: one of ``TRANSFORMER_OPS``, or a softmax and a batched
    matrix product."""
    ops = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    return bool(ops & TRANSFORMER_OPS) or bool(ops & SOFTMAX_OPS and ops & BATCHED_PRODUCTS)


def quantize_static(model, batches, transformer: bool = False):
    """``model`` (an openvino.Model whose inputs are the segment's, in order) quantized by NNCF on
    ``batches`` (tuples of tensors in that order), and what to record of it. ``transformer``: as
    NNCF's TRANSFORMER model type (``is_transformer``)."""
    import nncf

    items = [[to_numpy(x) for x in batch] for batch in batches]
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    # NNCF logs statistics on its own logger and draws progress bars on stdout
    with quiet(), quiet_logger("nncf"):
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                                  preset=getattr(nncf.QuantizationPreset, PRESET), **extra)
    kind = ", model type transformer" if transformer else ""
    return quantized, {"static_int8": f"nncf {nncf.__version__} quantize, preset {PRESET.lower()}{kind}",
                       "calibration_batches": len(items)}
