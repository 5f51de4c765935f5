"""Build the PlacementProblem: units x targets cost table, values with bytes, capacities, links."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from hetcc.cost_model.precision import resident_held
from hetcc.cost_model.roofline import node_seconds
from hetcc.errors import InputError
from hetcc.passes.problem import HOST, PlacementProblem, Value
from hetcc.passes.units import tensor_inputs

HANDOFF_LATENCY = 2e-6
"""Seconds to wrap a CPU tensor for another runtime (numpy view, OrtValue, ov.Tensor)."""
PEER_LATENCY = 5e-6
"""Seconds per device-to-device hand-over over a peer link (NVLink/Infinity Fabric), DMA set-up."""
CACHE_UPDATES = ("cat", "index_put", "slice_scatter", "copy", "index_copy")
"""Ops that write a resident input's new contents (a KV cache append or update)."""


@dataclass
class TargetInfo:
    """What the problem needs to know about one target."""

    name: str
    device: object  # DeviceSpec
    profile: object  # BackendProfile
    capacity: float
    host_bandwidth: float = math.inf
    host_latency: float = 0.0
    memory: str | None = None
    """Which physical memory the target's resident bytes live in ('cpu', 'cuda:0'): targets with
    the same one share ``device.mem_capacity``. None: its own memory."""
    dtype: str = "fp32"
    """The element type its arithmetic runs in, whose peak the roofline reads (hetcc.predict's
    ``dtype``; compile plans in fp32)."""
    location: str | None = None
    """Where its executables take and return values ('cpu', 'cuda:0'; hetcc/handover.py): two
    targets at one GPU location hand values over without a copy. None: the host, as far as
    hand-overs go (a GPU target whose runtime copies in and out itself, e.g. MIGraphX)."""
    peer_link: str | None = None
    """Name of a device-to-device link (``nvlink``): two targets on the same one hand over on it
    at ``peer_bandwidth`` instead of through the host (hetcc.predict's devices)."""
    peer_bandwidth: float = 0.0
    precision: str | None = None
    """A lower precision the target runs in (hetcc.target.PRECISIONS; cost_model/precision.py)."""
    arithmetic: str | None = None
    """The element type its weight-bearing ops compute in at ``precision`` where the backend says
    it differs from the precision's scheme (Backend.arithmetic: OpenVINO's int8 weights in fp32 on
    a CPU without VNNI); None: as the scheme says."""
    limit_group: str | None = None
    """Targets with the same one hold at most ``capacity`` resident bytes together: a target and
    its lower-precision variants under the user's memory limit for it."""


def unit_costs(units, facts, targets: list[TargetInfo]) -> list[list[float]]:
    return [[sum(node_seconds(facts[m], t.device, t.profile, t.dtype, t.precision, t.arithmetic) for m in u.members)
             for t in targets]
            for u in units]


def unit_resident(units, facts) -> list[int]:
    return [sum(facts[m].resident_bytes for m in u.members) for u in units]


def unit_resident_on(units, facts, targets: list[TargetInfo]) -> list[tuple[int, ...]] | None:
    """Per unit and target, the bytes it keeps resident at that target's precision (int8 weights
    a quarter of fp32); None when no target changes them."""
    if not any(t.precision for t in targets):
        return None
    return [tuple(int(sum(resident_held(facts[m], t.precision) for m in u.members)) for t in targets)
            for u in units]


def build_values(captured, units, unit_of) -> list[Value]:
    """One value per tensor that some other unit (or the host) reads."""
    readers: dict[str, set[int]] = {}
    for u_index, unit in enumerate(units):
        for m in unit.members:
            node = captured.node(m)
            for a in tensor_inputs(node):
                if a.name in captured.weights:
                    continue
                if unit_of.get(a.name) == u_index:
                    continue
                readers.setdefault(a.name, set()).add(u_index)
    # state (buffers the model updates) comes from the runtime each call and goes back to it
    state = getattr(captured, "state", {})
    outputs = {o for o in captured.outputs if o is not None}
    outputs.update(getattr(captured, "state_updates", {}).values())
    outputs.update(getattr(captured, "input_updates", {}).values())
    hosted = list(captured.user_inputs) + list(state)
    values = []
    for name in hosted + [m for u in units for m in u.members]:
        consumers = readers.get(name, set())
        to_host = name in outputs
        if not consumers and not to_host:
            continue
        producer = HOST if name in captured.user_inputs or name in state else unit_of[name]
        val = captured.values.get(name)
        nbytes = val.numel() * val.element_size() if isinstance(val, torch.Tensor) else 0
        values.append(Value(producer, tuple(sorted(consumers)), nbytes, to_host, name))
    return values


def build_problem(captured, facts, units, unit_of, targets: list[TargetInfo],
                  allowed, objective: str = "latency", resident_inputs=()) -> PlacementProblem:
    """The placement problem, for compile() and for hetcc.predict alike: ``allowed[u][t]`` says
    whether unit u may run on target t (capability, pins and exclusions already applied;
    ``Candidates.allowed`` in a compile). ``resident_inputs``: names (or prefixes) of model inputs
    that stay on the device reading them (a KV cache): no bytes per request, only capacity."""
    costs = unit_costs(units, facts, targets)
    cost = tuple(
        tuple(c if allowed[i][t] else math.inf for t, c in enumerate(row))
        for i, row in enumerate(costs))
    k = len(targets)
    latency = [[0.0] * (k + 1) for _ in range(k + 1)]
    bandwidth = [[math.inf] * (k + 1) for _ in range(k + 1)]
    for s in range(k + 1):
        for t in range(k + 1):
            if s == t:
                continue
            src = targets[s] if s < k else None
            dst = targets[t] if t < k else None
            latency[s][t], bandwidth[s][t] = handoff(src, dst)
    overhead = tuple(t.profile.call_overhead for t in targets) + (0.0,)
    values, resident = build_values(captured, units, unit_of), unit_resident(units, facts)
    resident_on = unit_resident_on(units, facts, targets)
    if resident_inputs:
        kept = list(resident)
        values = _keep_resident(captured, values, resident, resident_inputs)
        if resident_on:  # a resident input (a KV cache) keeps its own width on every target
            resident_on = [tuple(r + resident[u] - kept[u] for r in row) for u, row in enumerate(resident_on)]
    return PlacementProblem(
        nodes=tuple(u.name for u in units),
        targets=tuple(t.name for t in targets),
        cost=cost,
        values=tuple(values),
        resident=tuple(resident),
        capacity=tuple(t.capacity for t in targets),
        link_latency=tuple(map(tuple, latency)),
        link_bandwidth=tuple(map(tuple, bandwidth)),
        call_overhead=overhead,
        meta={"objective": objective},
        shared_capacity=shared_memories(targets),
        resident_on=tuple(resident_on or ()),
    )


def handoff(src, dst) -> tuple[float, float]:
    """(latency, bandwidth) of handing a value from ``src`` to ``dst`` (TargetInfo, None for the
    host), as the runtime does it (hetcc/handover.py): between two targets on one GPU it is the same
    device tensor, so no copy; otherwise one copy, over the slower side's host link, plus each
    runtime's own conversion (its handoff_bandwidth)."""
    if src is not None and dst is not None and src.location == dst.location and src.location not in (None, "cpu"):
        return HANDOFF_LATENCY, math.inf
    if (src is not None and dst is not None and src.peer_link and src.peer_link == dst.peer_link
            and src.peer_bandwidth and dst.peer_bandwidth):
        return PEER_LATENCY, min(src.peer_bandwidth, dst.peer_bandwidth)
    lat, bw = HANDOFF_LATENCY, math.inf
    for side in (src, dst):
        if side is not None:
            lat += side.host_latency
            bw = min(bw, side.host_bandwidth, side.profile.handoff_bandwidth)
    return lat, bw


def shared_memories(targets: list[TargetInfo]) -> tuple:
    """(target indices, bytes) for each physical memory that two or more targets use."""
    groups: dict[str, list[int]] = {}
    limited: dict[str, list[int]] = {}
    for t, info in enumerate(targets):
        if info.memory is not None:
            groups.setdefault(info.memory, []).append(t)
        if info.limit_group is not None:
            limited.setdefault(info.limit_group, []).append(t)
    return tuple((tuple(ts), min(targets[t].device.mem_capacity for t in ts))
                 for ts in groups.values() if len(ts) > 1) + \
        tuple((tuple(ts), min(targets[t].capacity for t in ts)) for ts in limited.values() if len(ts) > 1)


def _keep_resident(captured, values, resident, wanted) -> list[Value]:
    """Inputs that stay where they are read: they move no bytes per request and count against the
    capacity of the device holding each unit that reads them (``resident`` is updated)."""
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    inputs = list(captured.user_inputs)
    chosen = {n for n in inputs if any(n == w or n.startswith(w) for w in wanted)}
    unknown = [w for w in wanted if not any(n == w or n.startswith(w) for n in inputs)]
    if unknown:
        raise InputError(f"resident_inputs names {unknown}, which match no model input; the inputs "
                         f"are: {', '.join(inputs)}")
    kept = []
    for v in values:
        if v.producer == HOST and v.name in chosen:
            # It lives on the device: no hand-over per request, only capacity (counted for each
            # unit reading it, which over-counts when several units on one device read it).
            for c in v.consumers:
                resident[c] += v.nbytes
            continue
        if v.to_host and v.producer != HOST and _updates(captured.node(v.name), chosen):
            # The updated cache (e.g. cat(past, new)) stays where it was made, like the cache.
            v = replace(v, to_host=False)
        kept.append(v)
    return kept


def _updates(node, chosen) -> bool:
    """Whether ``node`` writes a resident input's new contents (a cache append or update)."""
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name not in CACHE_UPDATES:
        return False
    args = [a for x in node.args for a in (x if isinstance(x, (list, tuple)) else [x])]
    return any(getattr(a, "name", None) in chosen for a in args)
