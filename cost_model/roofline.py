"""Roofline estimate of one node on one target: max(compute time, memory time) + dispatch cost.

Each side has its own efficiency (``BackendProfile.eff(op_class, side)``): a backend's fraction of
the device's peak FLOP/s on compute-bound work of a class need not be its fraction of the
bandwidth on memory-bound work of the same class (a dense convolution against a depthwise one, a
transcendental elementwise op against an add). ``hetcc calibrate`` measures both where it has a
case for each side, and the compute side of the common transcendental functions one by one
(``'elementwise:gelu'``...): their cost differs by up to 10x between runtimes, far more than the
FLOP weights of passes/facts.py can say.

Memory time is bytes over bandwidth, and the bandwidth depends on where the bytes live. A device
whose spec knows its last-level cache (``extra['llc_bytes']`` and ``extra['cache_bandwidth']``,
measured by ``hetcc calibrate``) gets a two-level memory: the share of a node's working set that
fits in half the last-level cache moves at cache bandwidth, the rest at DRAM bandwidth (the half
leaves room for code, other data and imperfect replacement; on the CI machine a copy runs at cache
speed up to a working set of half the 32 MiB L3 and falls towards DRAM speed past it). Without
those fields the device has one level, its DRAM bandwidth.

A view moves nothing, but a runtime that runs it as an op still dispatches it: it costs the
profile's ``per_view`` (0 for runtimes that fold views into their neighbours).
"""
from __future__ import annotations

from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.precision import arithmetic_rate, bytes_moved, narrows, scheme_of
from hetcc.cost_model.profiles import BackendProfile


def bandwidth(device: DeviceSpec, working_set: float) -> float:
    """Bytes/s for a node that touches ``working_set`` bytes on ``device``."""
    llc, fast = device.extra.get("llc_bytes"), device.extra.get("cache_bandwidth")
    if not llc or not fast or working_set <= 0:
        return device.mem_bandwidth
    hit = min(1.0, llc / 2 / working_set)
    return 1.0 / (hit / fast + (1.0 - hit) / device.mem_bandwidth)


def base_op(facts) -> str:
    """The ATen op's base name of a node: 'aten.gelu.default' -> 'gelu'."""
    parts = facts.op.split(".")
    return parts[1] if len(parts) > 2 else parts[-1]


def node_parts(facts, device: DeviceSpec, profile: BackendProfile, dtype: str = "fp32",
               precision: str | None = None, arithmetic: str | None = None) -> tuple[float, float]:
    """(compute seconds, memory seconds) of one node (a ``NodeFacts``), before dispatch costs;
    ``precision``: a lower precision the node runs in (cost_model/precision.py); ``arithmetic``:
    the element type its weight-bearing ops compute in where the backend knows better than the
    precision's scheme (Backend.arithmetic)."""
    if facts.op_class == "view":
        return 0.0, 0.0
    eff = profile.eff(facts.op_class, "compute", base_op(facts))
    rate = device.flops_for(dtype)
    moved = bytes_moved(facts, precision)  # the weights at the precision's width
    scheme = scheme_of(precision)
    if scheme is not None:
        rate = arithmetic_rate(device, (arithmetic or scheme.weighted) if narrows(scheme, facts) else scheme.other)
    compute = facts.flops / (rate * eff) if facts.flops else 0.0
    if facts.op_class in profile.fused_classes:
        # A fused elementwise op reads its input from the producer's registers/cache: only its
        # output counts once, and we keep a quarter of it as the fusion is rarely perfect.
        moved = facts.bytes_written // 4
    memory = moved / (bandwidth(device, facts.bytes_moved) * profile.eff(facts.op_class, "memory"))
    return compute, memory


def node_seconds(facts, device: DeviceSpec, profile: BackendProfile, dtype: str = "fp32",
                 precision: str | None = None, arithmetic: str | None = None) -> float:
    """Estimated seconds for one node (a ``NodeFacts``) on a device driven by a backend."""
    if facts.op_class == "view":
        return profile.per_view
    return max(node_parts(facts, device, profile, dtype, precision, arithmetic)) + profile.per_node
