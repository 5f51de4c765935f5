"""Static int8 for openvino:cpu (``openvino:cpu@int8s``): NNCF's post-training quantization of a
segment's converted model, its activation ranges measured on the segment's calibration batches.

``nncf.quantize`` inserts FakeQuantize ops before convolutions and matrix products (weights per
channel, activations per tensor) and corrects the biases for the shift int8 causes; OpenVINO's CPU
plugin then runs those ops in int8, and ``ov.save_model`` stores their weights as int8. Only
lowering needs NNCF (``pip install nncf``, the ``nncf`` extra): a saved segment is plain OpenVINO
IR and loads without it. The MIXED preset is used: symmetric weights, asymmetric activations (a
ReLU's output is not centred on zero), as onnxruntime:cpu@int8s quantizes them. On the
benchmark's ResNet inside hetcc, tuning timed this plan at 9.1 ms against 7.2 ms for ONNX
Runtime's static int8 and 18.9 ms for its fp32 (docs/precision.md)."""
from __future__ import annotations

import importlib.util

from hetcc.backends._common import quiet, quiet_logger, to_numpy

PRESET = "MIXED"
"""nncf.QuantizationPreset: symmetric int8 weights, asymmetric activations."""


def nncf_here() -> bool:
    """Whether NNCF is installed (int8s is offered only then). Found, not imported
    (base.missing_packages would import it): importing NNCF takes 0.7 s here, and every compile
    with an accuracy budget asks what openvino:cpu offers, with calibration batches or not."""
    return importlib.util.find_spec("nncf") is not None


def quantize_static(model, batches):
    """``model`` (an openvino.Model whose inputs are the segment's, in order) quantized by NNCF on
    ``batches`` (tuples of tensors in that order), and what to record of it."""
    import nncf

    items = [[to_numpy(x) for x in batch] for batch in batches]
    # NNCF logs statistics on its own logger and draws progress bars on stdout
    with quiet(), quiet_logger("nncf"):
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                                  preset=getattr(nncf.QuantizationPreset, PRESET))
    return quantized, {"static_int8": f"nncf {nncf.__version__} quantize, preset {PRESET.lower()}",
                       "calibration_batches": len(items)}

