"""Roofline estimate of one node on one target: max(compute time, memory time) + dispatch cost."""
from __future__ import annotations

from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import BackendProfile


def node_seconds(facts, device: DeviceSpec, profile: BackendProfile, dtype: str = "fp32") -> float:
    """Estimated seconds for one node (a ``NodeFacts``) on a device driven by a backend."""
    if facts.op_class == "view":
        return 0.0  # folded into neighbours by every runtime we drive
    eff = profile.eff(facts.op_class)
    compute = facts.flops / (device.flops_for(dtype) * eff) if facts.flops else 0.0
    moved = facts.bytes_moved
    if facts.op_class in profile.fused_classes:
        # A fused elementwise op reads its input from the producer's registers/cache: only its
        # output counts once, and we keep a quarter of it as the fusion is rarely perfect.
        moved = facts.bytes_written // 4
    memory = moved / (device.mem_bandwidth * eff)
    return max(compute, memory) + profile.per_node
