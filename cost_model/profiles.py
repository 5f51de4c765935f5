"""How well each backend uses a device, per op class, and what it costs to call it.

The defaults were measured on a 2-core x86 CI machine (see docs/cost_model.md) and are relative:
``efficiency`` multiplies the device's measured GEMM FLOP/s and copy bandwidth. Eager torch runs
every op alone, so it pays a dispatch per node and moves each intermediate through memory; the
graph runtimes fuse elementwise chains, which shows up as a lower per-node cost.
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
        "torch", {"matmul": 0.9, "conv": 0.6, "attention": 0.6, "default": 0.6},
        per_node=4e-6, call_overhead=30e-6),
    "onnxruntime": BackendProfile(
        "onnxruntime", {"matmul": 0.9, "conv": 0.8, "attention": 0.6, "default": 0.8},
        per_node=1.5e-6, call_overhead=25e-6, fused_classes=("elementwise",)),
    "openvino": BackendProfile(
        "openvino", {"matmul": 0.95, "conv": 1.0, "attention": 0.7, "default": 0.9},
        per_node=1e-6, call_overhead=30e-6, fused_classes=("elementwise",)),
}

GENERIC = BackendProfile("generic", {"default": 0.5}, per_node=5e-6, call_overhead=50e-6)


def profile_for(backend: str, overrides: dict | None = None) -> BackendProfile:
    if overrides and backend in overrides:
        return overrides[backend]
    return DEFAULT_PROFILES.get(backend, GENERIC)
