"""Plan for hardware that is not here: place a model across registry devices and predict latency,
pipelined throughput and cost per million requests. Nothing is lowered or run (``hetcc plan``).

The same cost model and solvers as compile() are used; what differs is where the numbers come from:
device specs from the registry (cost_model/registry.py, docs/devices.md) and, because no runtime can
be measured on a device that is absent, the assumed vendor-runtime profiles of
cost_model/planning.py. docs/planning.md states the model and its limits.
"""
from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass, field, replace

from hetcc.errors import HetccError, PlacementError
from hetcc.explain.text import listing, value_label

OBJECTIVES = ("latency", "throughput", "cost")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
MAX_COST_DEVICES = 8
"""The cost objective tries every subset of the devices (2**n - 1 placements)."""


@dataclass(frozen=True)
class PredictedSegment:
    name: str
    device: str
    nodes: tuple[str, ...]
    flops: float
    bytes_moved: int
    resident_bytes: int
    seconds: float
    """Predicted time of the segment's nodes (hand-overs are listed as cuts)."""
    bound: str
    """What limits it: compute, bandwidth, call overhead or capacity."""
    modules: tuple[str, ...] = ()
    """The model's submodules it runs, rolled up (``model.encoder.layer.0-3``; module_paths.py)."""


@dataclass(frozen=True)
class Cut:
    value: str
    source: str
    """Device (or 'host') the tensor leaves."""
    destination: str
    nbytes: int
    seconds: float
    """Predicted hand-over time, link latency and the receiver's call overhead included."""
    module: str | None = None
    """Module path of the node that makes the value ('' for the model's own forward; None for a
    model input)."""
    output: str = ""
    """The model's own name for the value when it is a model output (``logits``)."""


@dataclass(frozen=True)
class DeviceLoad:
    device: str
    spec: str
    busy_seconds: float
    """Time per request this device works (its nodes plus the hand-overs it receives)."""
    resident_bytes: int
    capacity: float
    price_per_hour: float | None


@dataclass(frozen=True)
class Prediction:
    """A placement across devices with predicted figures. Nothing was lowered or run."""

    devices: tuple[str, ...]
    objective: str
    dtype: str
    segments: tuple[PredictedSegment, ...]
    cuts: tuple[Cut, ...]
    loads: tuple[DeviceLoad, ...]
    latency_seconds: float
    """One request alone, segments one after another, hand-overs included."""
    throughput: float
    """Requests per second when requests are pipelined across the devices used."""
    cost_per_million: float | None
    """USD per million requests at that throughput, paying for every device used; None when a
    used device has no price."""
    optimal: bool
    solver: str
    solve_seconds: float
    notes: tuple[str, ...] = field(default=())
    gap: float = 0.0
    """How far the objective may be above the optimum under the model, relative: 0 when proven
    optimal, inf when there is none (the cost objective: unless every device subset was solved to
    a proof)."""

    @property
    def devices_used(self) -> list[str]:
        return [d.device for d in self.loads if d.busy_seconds > 0 or d.resident_bytes > 0]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["prediction"] = True
        out["devices_used"] = self.devices_used
        return out

    def summary(self) -> str:
        lines = [f"PREDICTION from the cost model: nothing was lowered or run. Objective: {self.objective}, "
                 f"{self.dtype}, devices: {', '.join(self.devices)}"]
        for s in self.segments:
            lines.append(f"  {s.name:<6} {s.device:<14} {len(s.nodes):>4} nodes  "
                         f"{s.flops / 1e9:10.3f} GFLOP  {s.resident_bytes / 1e9:8.3f} GB resident  "
                         f"{s.seconds * 1e3:9.4f} ms  {s.bound}")
        for s in self.segments:
            if s.modules:
                lines.append(f"  {s.name} runs {listing(list(s.modules))}")
        for c in self.cuts:
            lines.append(f"  cut {cut_label(c)}: {c.source} -> {c.destination}, {c.nbytes / 1e6:.3f} MB, "
                         f"{c.seconds * 1e3:.4f} ms")
        for d in self.loads:
            cap = "unlimited" if math.isinf(d.capacity) else f"{d.capacity / 1e9:.1f} GB"
            lines.append(f"  {d.device}: busy {d.busy_seconds * 1e3:.4f} ms per request, "
                         f"{d.resident_bytes / 1e9:.3f} GB of {cap} resident")
        cost = "n/a (a device used has no price)" if self.cost_per_million is None \
            else f"${self.cost_per_million:,.2f}"
        lines.append(f"predicted latency {self.latency_seconds * 1e3:.4f} ms, throughput "
                     f"{self.throughput:,.1f} requests/s (pipelined), cost per million requests {cost}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def predict(model, example_inputs, devices, *, objective: str = "latency", dtype: str = "fp32",
            dynamic_shapes=None, device_files=(), memory_fraction: float = 0.9,
            resident_inputs=(), pins: dict | None = None, profiles: dict | None = None,
            time_limit: float = 60.0) -> Prediction:
    """Place ``model`` across ``devices`` (registry names, e.g. ["h100", "mi300x", "epyc"]) and
    predict its latency, pipelined throughput and cost per million requests.

    objective: "latency" (one request, end to end), "throughput" (the busiest device bounds the
        rate of pipelined requests) or "cost" (USD per request: the devices' prices times the time
        each request occupies them; tries every subset of the devices).
    dtype: "fp32", "bf16" or "fp16": the model and its float inputs are cast (on a copy) before
        tracing, and each device's peak for that dtype is used.
    device_files: YAML/JSON files adding or overriding devices (docs/devices.md).
    memory_fraction: share of each device's memory that resident tensors may take (the rest is left
        for activations and the runtime).
    resident_inputs: names (or name prefixes) of model inputs that stay on the device that reads
        them instead of moving per request, e.g. a decoder's KV cache; they count against capacity.
    pins: {submodule path or node name: device} forces those nodes onto one device.
    profiles: {device: BackendProfile} replaces the assumed runtime profile of a device.
    time_limit: seconds for each MILP; past it the best placement found is kept, marked not
        proven optimal.
    """
    from hetcc.capture import capture
    from hetcc.cost_model.planning import planning_profile
    from hetcc.cost_model.registry import registry
    from hetcc.passes.build_problem import TargetInfo, build_problem
    from hetcc.passes.facts import graph_facts
    from hetcc.passes.units import placement_units

    if objective not in OBJECTIVES:
        raise HetccError(f"objective {objective!r} is not known; choose one of: {', '.join(OBJECTIVES)}")
    if dtype not in DTYPES:
        raise HetccError(f"dtype {dtype!r} is not known; choose one of: {', '.join(DTYPES)}")
    if not time_limit > 0:
        raise HetccError(f"time_limit must be positive seconds, got {time_limit}")
    if not 0 < memory_fraction <= 1:
        raise HetccError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    items = [devices] if isinstance(devices, str) else list(devices or [])
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names:
        raise HetccError("no devices given: pass at least one, e.g. devices=['h100', 'epyc'] "
                         "(docs/devices.md lists the registry)")
    reg = registry(device_files)
    labels, canon, specs = _labels(names, reg)
    profiles = _by_label(profiles, labels, reg, "profiles")
    pins = {key: _by_label({device: None}, labels, reg, f"pins[{key!r}]").popitem()[0]
            for key, device in (pins or {}).items()} or None
    if objective == "cost":
        unpriced = [lab for lab, s in zip(labels, specs) if s.price_per_hour is None]
        if unpriced:
            raise HetccError(f"the cost objective needs a price per hour for every device; "
                             f"{', '.join(unpriced)} has none. Give price_per_hour in a devices file "
                             "(docs/devices.md) or drop the device.")
        if len(labels) > MAX_COST_DEVICES:
            raise HetccError(f"the cost objective tries every subset of the devices; at most "
                             f"{MAX_COST_DEVICES} devices, got {len(labels)}")

    started = time.perf_counter()
    model, example_inputs = _cast(model, example_inputs, dtype)
    captured = capture(model, example_inputs, dynamic_shapes=dynamic_shapes)
    facts = graph_facts(captured.graph, captured.values, captured.weights)
    units, unit_of = placement_units(captured.graph, facts)
    infos = []
    for label, name, spec in zip(labels, canon, specs):
        profile = (profiles or {}).get(label) or planning_profile(name, spec)
        infos.append(TargetInfo(label, spec, profile, spec.mem_capacity * memory_fraction,
                                spec.host_link_bandwidth, spec.host_link_latency, dtype=dtype,
                                peer_link=spec.peer_link, peer_bandwidth=spec.peer_link_bandwidth or 0.0))
    allowed = [[True] * len(labels) for _ in units]  # every device may run every node unless pinned
    _apply_pins(captured, units, labels, pins, allowed)
    problem = build_problem(captured, facts, units, unit_of, infos, allowed, objective, resident_inputs)
    placement, notes = _solve(problem, objective, specs, time_limit)
    return _prediction(problem, placement, captured, facts, units, labels, specs, infos, objective,
                       dtype, time.perf_counter() - started, notes)


def _labels(names, reg):
    """Registry specs for the names; a device named twice becomes two devices ('h100#0', 'h100#1')."""
    canon = [reg.canonical(n) for n in names]
    counts = {c: canon.count(c) for c in canon}
    seen: dict[str, int] = {}
    labels = []
    for c in canon:
        if counts[c] > 1:
            labels.append(f"{c}#{seen.get(c, 0)}")
            seen[c] = seen.get(c, 0) + 1
        else:
            labels.append(c)
    return labels, canon, [reg[c] for c in canon]


def _by_label(table, labels, reg, what: str) -> dict:
    """{device name or alias: x} -> {label: x}; a name that is not among the devices is an error."""
    out = {}
    for key, value in (table or {}).items():
        if key in labels:
            out[key] = value
            continue
        try:
            name = reg.canonical(key)
        except HetccError:
            name = None
        matches = [lab for lab in labels if lab == name or lab.startswith(f"{name}#")]
        if not matches:
            raise HetccError(f"{what} names device {key!r}, which is not among the devices {labels}")
        if len(matches) > 1:
            raise HetccError(f"{what} names device {key!r}, which is given more than once; use one "
                             f"of {matches}")
        out[matches[0]] = value
    return out


def _cast(model, example_inputs, dtype: str):
    import torch

    if dtype == "fp32":
        return model, example_inputs
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()  # an exported program cannot be cast; its module can
    target = getattr(torch, DTYPES[dtype])
    model = copy.deepcopy(model).to(target)  # never change the user's model

    def cast(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(target)
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        return x

    return model, cast(tuple(example_inputs) if isinstance(example_inputs, list) else example_inputs)


def _apply_pins(captured, units, labels, pins, allowed) -> None:
    from hetcc.passes.capability import check_keys, matches

    if not pins:
        return
    index = {lab: i for i, lab in enumerate(labels)}
    check_keys(captured, pins, "pins")
    for key, device in pins.items():  # devices are labels already (_by_label)
        for u, unit in enumerate(units):
            if any(matches(captured.node(m), key) for m in unit.members):
                allowed[u] = [i == index[device] for i in range(len(labels))]


def _solve(problem, objective: str, specs, time_limit: float):
    from hetcc.passes.pipeline import SolveTimeout, bottleneck, solve_pipeline
    from hetcc.passes.solve import solve

    if objective == "latency":
        return solve(problem, time_limit=time_limit), []
    if objective == "throughput":
        return solve_pipeline(problem, time_limit=time_limit), []
    best, best_cost, tried, skipped, timed_out, proven, notes = None, math.inf, 0, 0, 0, True, []
    subsets = [s for r in range(1, problem.k + 1) for s in itertools.combinations(range(problem.k), r)]
    for subset in sorted(subsets, key=lambda s: sum(specs[t].price_per_hour for t in s)):
        price = sum(specs[t].price_per_hour for t in subset)
        # The busiest of |S| devices works at least the cheapest total work / |S|: if even that
        # costs more than the best so far, this subset cannot win.
        work = sum(min(row[t] for t in subset) for row in problem.cost)
        if price * work / len(subset) >= best_cost:
            skipped += 1
            continue
        cost = tuple(tuple(c if t in subset else math.inf for t, c in enumerate(row))
                     for row in problem.cost)
        try:
            placement = solve_pipeline(replace(problem, cost=cost), time_limit=time_limit)
        except SolveTimeout:
            timed_out += 1
            continue
        except PlacementError:
            continue  # this subset cannot hold the model
        tried += 1
        proven = proven and placement.optimal
        used = set(placement.assignment)
        dollars = sum(specs[t].price_per_hour for t in used) * bottleneck(problem, placement.assignment)
        if dollars < best_cost * (1 - 1e-9):
            best, best_cost = placement, dollars
    if best is None and timed_out:
        raise PlacementError(f"no placement found within time_limit={time_limit}s on {timed_out} device "
                             "subset(s); raise the time limit")
    if best is None:
        solve_pipeline(problem, time_limit=time_limit)  # raises the error that explains why nothing fits
        raise PlacementError("no subset of the devices can hold the model")
    notes.append(f"cost objective: solved the pipelined placement on {tried} device subset(s) that fit; "
                 f"{skipped} more were ruled out by a bound without solving")
    if timed_out:
        notes.append(f"{timed_out} device subset(s) found no placement within time_limit={time_limit}s "
                     "and were not compared: the answer may not be the cheapest")
    if not proven or timed_out:
        best = replace(best, optimal=False)
    return best, notes


def _prediction(problem, placement, captured, facts, units, labels, specs, infos, objective, dtype,
                seconds, notes) -> Prediction:
    from hetcc.module_paths import ModulePaths, output_names
    from hetcc.passes.pipeline import bottleneck
    from hetcc.passes.problem import evaluate, handovers, stage_seconds
    from hetcc.passes.segments import form_segments

    a = placement.assignment
    modules = ModulePaths(captured.graph, units, facts)
    names = output_names(captured.out_spec, captured.outputs)
    segments = []
    for index, spec in enumerate(form_segments(problem, a)):
        nodes = tuple(m for u in spec.units for m in units[u].members)
        flops = sum(facts[m].flops for m in nodes)
        moved = sum(facts[m].bytes_moved for m in nodes)
        resident = sum(problem.held(u, spec.target) for u in spec.units)
        secs = sum(problem.cost[u][spec.target] for u in spec.units)
        kernels = sum(1 for m in nodes if facts[m].op_class != "view")
        segments.append(PredictedSegment(f"seg{index}", labels[spec.target], nodes, flops, moved,
                                         resident, secs, _bound(flops, moved, resident, secs, kernels,
                                                                infos[spec.target]),
                                         modules.of(nodes)))
    k = problem.k
    cuts = []
    for v, src, t in handovers(problem, a):
        if v.nbytes or not (src == k or t == k):
            cuts.append(Cut(v.name, "host" if src == k else labels[src], "host" if t == k else labels[t],
                            v.nbytes, problem.link(src, t, v.nbytes), modules.paths.get(v.name),
                            names.get(v.name, "") if t == k else ""))
    busy = stage_seconds(problem, a)
    used_resident = [0] * k
    for i, t in enumerate(a):
        used_resident[t] += problem.held(i, t)
    loads = tuple(DeviceLoad(labels[t], specs[t].name, busy[t], used_resident[t], infos[t].capacity,
                             specs[t].price_per_hour) for t in range(k))
    neck = bottleneck(problem, a)
    throughput = 1.0 / neck if neck > 0 else math.inf
    used = [t for t in range(k) if t in set(a)]
    prices = [specs[t].price_per_hour for t in used]
    cost = None if any(p is None for p in prices) else sum(prices) / 3600.0 * neck * 1e6
    # The cost objective's bound would have to cover every device subset; only a proof counts.
    gap = placement.gap if objective != "cost" else (0.0 if placement.optimal else math.inf)
    return Prediction(tuple(labels), objective, dtype, tuple(segments), tuple(cuts), loads,
                      evaluate(problem, a), throughput, cost, placement.optimal, placement.method,
                      seconds, tuple(notes), gap)


def cut_label(cut: Cut) -> str:
    """``logits = addmm_7 (model.lm_head)``: the model's name, the graph's, the module making it."""
    return value_label(cut.value, {cut.value: cut.output} if cut.output else {},
                       {} if cut.module is None else {cut.value: cut.module})


def _bound(flops, moved, resident, seconds, nodes, info) -> str:
    if resident >= 0.9 * info.capacity:
        return "capacity"
    # fixed costs (entering the segment, launching each kernel) against the roofline time
    launches = info.profile.per_node * nodes
    if info.profile.call_overhead + launches > seconds - launches:  # fixed costs > roofline time
        return "call overhead"
    ridge = info.device.flops_for(info.dtype) / info.device.mem_bandwidth
    if not moved or flops / moved >= ridge:
        return "compute"
    return "bandwidth"
