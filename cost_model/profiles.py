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
        "torch", {"matmul": 0.80, "conv": 0.95, "attention": 0.78, "elementwise": 0.59, "norm": 0.82,
                  "data": 2.2, "default": 0.59},
        per_node=4e-6, call_overhead=13e-6),
    "onnxruntime": BackendProfile(
        "onnxruntime", {"matmul": 1.04, "conv": 1.01, "attention": 0.85, "elementwise": 2.2,
                        "norm": 1.08, "data": 2.5, "default": 1.0},
        per_node=1.5e-6, call_overhead=24e-6),
    "openvino": BackendProfile(
        "openvino", {"matmul": 1.04, "conv": 0.76, "attention": 0.68, "elementwise": 0.63,
                     "norm": 0.67, "data": 0.73, "default": 0.63},
        per_node=1e-6, call_overhead=185e-6),
}

GENERIC = BackendProfile("generic", {"default": 0.5}, per_node=5e-6, call_overhead=50e-6)


def profile_for(backend: str, overrides: dict | None = None) -> BackendProfile:
    if overrides and backend in overrides:
        return overrides[backend]
    return DEFAULT_PROFILES.get(backend, GENERIC)
