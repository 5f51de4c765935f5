"""How well each backend uses a device, per op class, and what it costs to call it.

``efficiency`` multiplies the device's measured GEMM FLOP/s and copy bandwidth (so a runtime whose
GEMM beats torch's shows above 1). Elementwise efficiency is counted against unfused traffic, so a
runtime that fuses elementwise chains shows well above 1 there. The defaults below were measured
with ``hetcc.cost_model.calibrate`` on the 2-core AMD EPYC CI machine (docs/cost_model.md), with
hetcc's own ~40 us of input checking taken out of the call overheads.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackendProfile:
    backend: str
    efficiency: dict[str, float]
    """op class -> fraction of the device's peak FLOP/s (and bandwidth) this backend reaches."""
    per_node: float
    """Seconds of fixed cost per graph node (dispatch, kernel launch)."""
    call_overhead: float
    """Seconds to enter one segment (argument binding, session bookkeeping)."""
    handoff_bandwidth: float = float("inf")
    """Bytes/s when a tensor is handed to this backend from another CPU runtime (inf: zero-copy)."""
    fused_classes: tuple[str, ...] = field(default=())
    """Op classes this backend fuses into a neighbour, so they move no extra bytes."""

    def eff(self, op_class: str) -> float:
        return self.efficiency.get(op_class, self.efficiency.get("default", 0.5))


DEFAULT_PROFILES = {
    "torch": BackendProfile(
        "torch", {"matmul": 0.91, "conv": 0.91, "attention": 0.91, "elementwise": 0.58, "norm": 0.84,
                  "data": 1.6, "default": 0.58},
        per_node=4e-6, call_overhead=15e-6),
    "onnxruntime": BackendProfile(
        "onnxruntime", {"matmul": 1.04, "conv": 1.02, "attention": 1.04, "elementwise": 2.25,
                        "norm": 1.1, "data": 1.8, "default": 1.0},
        per_node=1.5e-6, call_overhead=25e-6),
    "openvino": BackendProfile(
        "openvino", {"matmul": 0.93, "conv": 0.65, "attention": 0.93, "elementwise": 0.54,
                     "norm": 0.63, "data": 0.48, "default": 0.54},
        per_node=1e-6, call_overhead=190e-6),
}

GENERIC = BackendProfile("generic", {"default": 0.5}, per_node=5e-6, call_overhead=50e-6)


def profile_for(backend: str, overrides: dict | None = None) -> BackendProfile:
    if overrides and backend in overrides:
        return overrides[backend]
    return DEFAULT_PROFILES.get(backend, GENERIC)
