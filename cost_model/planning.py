"""Backend profiles for planning on devices that are not here (``hetcc.predict``, ``hetcc plan``).

Nothing is lowered when planning, so no runtime was measured on these devices. Each device kind gets
one profile standing for "the vendor's own runtime on it" (TensorRT on NVIDIA, MIGraphX or IREE on
AMD, the Gaudi graph compiler, ONNX Runtime or OpenVINO on a server CPU). The numbers are stated
assumptions, not measurements, and docs/cost_model.md ("Planning for hardware that is not here")
gives the reasoning for each. Users who know better pass their own ``profiles=`` per device.

The one exception is the ``cpu`` device (this machine): its spec is measured, so it uses this
machine's calibrated profile (``hetcc calibrate``) or the measured defaults.
"""
from __future__ import annotations

from hetcc.cost_model.profiles import DEFAULT_PROFILES, BackendProfile, calibrated

ACCELERATOR = BackendProfile(
    "vendor-runtime (assumed)",
    # Fractions of the datasheet's dense peak (compute) and bandwidth (memory) that tuned vendor
    # kernels commonly reach on large shapes: GEMMs ~70% of tensor-core peak, convolutions less
    # (im2col/implicit-GEMM overheads), fused attention ~55%; streaming kernels ~80% of HBM
    # bandwidth. Elementwise ops are fused into their producer by every vendor compiler.
    {"matmul": 0.70, "conv": 0.60, "attention": 0.55, "elementwise": 0.80, "norm": 0.70,
     "data": 0.70, "default": 0.60},
    # ~5 us per kernel launch without CUDA/HIP graphs; ~20 us to enter an engine (bind and enqueue).
    per_node=5e-6, call_overhead=20e-6,
    fused_classes=("elementwise",),
)

SERVER_CPU = BackendProfile(
    "cpu-runtime (assumed)",
    # CPU peaks in the registry are derived (cores x clock x FLOP/cycle) and AVX-512/AMX clocks run
    # lower, so a well-tuned GEMM reaches ~60%; memory-bound ops ~50% of the DDR5 channels' peak.
    {"matmul": 0.60, "conv": 0.50, "attention": 0.40, "elementwise": 0.50, "norm": 0.50,
     "data": 0.50, "default": 0.50},
    per_node=2e-6, call_overhead=25e-6,
    fused_classes=("elementwise",),
)


def planning_profile(device_name: str, spec) -> BackendProfile:
    """The profile assumed for ``spec`` when planning (see the module doc)."""
    if device_name == "cpu":
        calibration = calibrated()
        if calibration is not None and "onnxruntime" in calibration.backends:
            return calibration.backends["onnxruntime"]
        return DEFAULT_PROFILES["onnxruntime"]
    kind = spec.extra.get("kind", "gpu")
    return SERVER_CPU if kind == "cpu" else ACCELERATOR
