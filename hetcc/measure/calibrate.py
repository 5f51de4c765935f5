"""Measure each backend's efficiency per op class, its per-node and per-call costs, and this CPU's
cache, on this machine.

Each case is a tiny model dominated by one op class. We lower it with the backend, time the
backend's own call (the segment's step in ``Runtime.timed_call``, not hetcc's input checks) at the
fast end of many calls (p10: a busy neighbour only adds time), and compare with the roofline at
full efficiency: efficiency = roofline time / (measured - call overhead - per-node cost).
The call overhead is the one-op case; the per-node cost is what a chain of small nodes adds per
node. The defaults in ``profiles.py`` came from this on the CI machine; ``calibrate()`` redoes it.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from hetcc.cost_model.devices import this_cpu
from hetcc.cost_model.profiles import BackendProfile, profile_for
from torch import nn

log = logging.getLogger(__name__)


class _Tiny(nn.Module):
    def forward(self, x):
        return x + 1


class _Tiny2(nn.Module):
    def forward(self, x, y):
        return x + y


class _Chain(nn.Module):
    """Many small nodes of the kinds transformer graphs are made of (matmul, activation, residual
    add, RMS norm, rotation by slicing and concatenating), no views: their time is nearly all
    dispatch. With ``views``, each block also splits its output into heads and back, as attention
    does (reshape, transpose, and the copy a reshape of a transposed tensor needs)."""

    def __init__(self, views: bool = False, blocks: int = 8, width: int = 16):
        super().__init__()
        self.views = views
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(width, width) / width) for _ in range(blocks))

    def forward(self, x):
        half = x.shape[-1] // 2
        for w in self.weights:
            x = x + torch.relu(x @ w)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            x = torch.cat((x[:, half:], x[:, :half]), dim=-1)
            if self.views:
                rows, width = x.shape
                x = x.view(rows, 4, width // 4).transpose(1, 2).reshape(rows, width)
        return x


class _Matmul(nn.Module):
    def __init__(self, d_in: int = 1024, d_out: int = 1024):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.lin(x)


class _Conv(nn.Module):
    def __init__(self, channels: int = 64, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(x)


class _Unary(nn.Module):
    """One transcendental function (gelu, sigmoid, tanh, exp): compute-bound on the runtimes here,
    and their costs differ by up to 10x between runtimes (torch's tanh against its gelu, say)."""

    def __init__(self, fn: str):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return getattr(torch.nn.functional if self.fn == "gelu" else torch, self.fn)(x)


class _Arithmetic(nn.Module):
    """Adds and multiplies only: memory-bound."""

    def forward(self, x):
        for _ in range(4):
            x = x * 0.5 + 1.0
        return x


class _Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(1024)

    def forward(self, x):
        return self.norm(x).softmax(-1)


class _Gather(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50_000, 256)

    def forward(self, ids):
        return self.table(ids)


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


TRANSCENDENTAL = ("gelu", "sigmoid", "tanh", "exp")
"""Elementwise ops measured one by one (compute side): the activations models use most."""
SIDES = {"matmul": ("matmul", "compute"), "matmul:memory": ("matmul", "memory"),
         "conv": ("conv", "compute"), "conv:memory": ("conv", "memory"),
         "elementwise": ("elementwise", None),
         **{f"elementwise:{fn}": ("elementwise", "compute") for fn in TRANSCENDENTAL},
         "norm": ("norm", None), "data": ("data", None), "attention": ("attention", None)}
"""Efficiency case (its key in the profile) -> (op class, the side of the roofline it measures;
None: one number for both). A class with a case on each side gets two efficiencies; an
'elementwise:<op>' case is that op's own compute side (BackendProfile.eff)."""


def cases() -> dict[str, tuple[nn.Module, tuple]]:
    """case -> (model, inputs). 'overhead' is the per-call case; 'handoff' the same with one more
    input (the difference is the cost of wrapping one more value for the runtime); 'dispatch' and
    'views' two chains of small nodes, without and with views, that together give the per-node and
    per-view costs (``profile_from``).
    The others measure an efficiency (``SIDES``): a GEMM, a GEMV-like product whose 8 MiB of
    weights stay in cache, a dense and a depthwise 3x3 conv, an arithmetic elementwise chain and
    each function of ``TRANSCENDENTAL``, LayerNorm + softmax, a gather, and attention."""
    g = torch.Generator().manual_seed(0)
    qkv = tuple(torch.randn(4, 8, 256, 64, generator=g) for _ in range(3))
    return {
        "overhead": (_Tiny(), (torch.randn(4, generator=g),)),
        "handoff": (_Tiny2(), (torch.randn(4, generator=g), torch.randn(4, generator=g))),
        "dispatch": (_Chain(), (torch.randn(2, 16, generator=g),)),
        "views": (_Chain(views=True), (torch.randn(2, 16, generator=g),)),
        "matmul": (_Matmul(), (torch.randn(256, 1024, generator=g),)),
        "matmul:memory": (_Matmul(1024, 2048), (torch.randn(2, 1024, generator=g),)),
        "conv": (_Conv(), (torch.randn(4, 64, 32, 32, generator=g),)),
        "conv:memory": (_Conv(64, groups=64), (torch.randn(4, 64, 56, 56, generator=g),)),
        "elementwise": (_Arithmetic(), (torch.randn(256, 1024, generator=g),)),
        **{f"elementwise:{fn}": (_Unary(fn), (torch.randn(256, 1024, generator=g),)) for fn in TRANSCENDENTAL},
        "norm": (_Norm(), (torch.randn(256, 1024, generator=g),)),
        "data": (_Gather(), (torch.randint(0, 50_000, (64, 128), generator=g),)),
        "attention": (_Attention(), qkv),
    }


FAST_END = 0.1
"""The quantile of per-call times kept: a busy neighbour only ever adds time (hetcc.timing)."""
CALLS_PER_TURN = 3


def compile_cases(target: str, device, workdir: Path) -> dict:
    """case -> (compiled model, inputs, NodeFacts), each case lowered for ``target``
    alone with the default profile (a profile being measured must not steer its own run)."""
    import hetcc
    from hetcc.analysis import analyze

    backend = target.split(":")[0]
    out = {}
    for case, (model, inputs) in cases().items():
        compiled = hetcc.compile(model.eval(), inputs, targets=[target], workdir=workdir / case,
                                 profiles={backend: profile_for(backend)}, devices={target: device},
                                 tune="off")
        out[case] = (compiled, inputs, list(analyze(model, inputs).nodes))
    return out


def time_cases(compiled: dict, seconds: float = 0.3, raw: dict | None = None) -> dict:
    """Time every (target, case) of ``{key: (compiled, inputs, facts)}`` and every plain callable of
    ``raw`` ({key: fn()}) interleaved, with hetcc.measure.bench's method, for about ``seconds`` per
    entry in all: a busy spell of a neighbour then hits every entry a little instead of one entry
    wholly. Returns key -> (the fast end of the whole call, the fast end of its segments' own time:
    the backend's call without hetcc's checks; the whole call again for ``raw`` entries)."""
    from hetcc.measure.bench import measure
    from hetcc.timing import quantile

    def call(model, inputs):
        return lambda: model(*inputs)

    def timed(model, inputs):
        return lambda: model.runtime.timed_call(*inputs)

    raw = raw or {}
    keys = list(compiled) + list(raw)
    fns = {str(i): call(m, x) for i, (m, x, _) in enumerate(compiled.values())}
    steps = {str(i): timed(m, x) for i, (m, x, _) in enumerate(compiled.values())}
    fns.update({str(len(compiled) + i): fn for i, fn in enumerate(raw.values())})
    # 3 calls a turn: the first after the pause wakes the runtime's threads (+0.5 ms seen on
    # OpenVINO); the fast end then comes from the warm calls, as a model called back to back runs
    samples = measure(fns, (), budget=seconds * len(keys), timed=steps, calls=CALLS_PER_TURN)
    out = {}
    for i, key in enumerate(keys):
        got = samples[str(i)]
        per_call = [sum(x) for x in zip(*got.steps.values())] if got.steps else got.calls
        out[key] = (quantile(got.calls, FAST_END), quantile(per_call, FAST_END))
    return out


def device_cases() -> dict:
    """The CPU's own measurements as plain callables, timed among the cases: a 1024^3 GEMM, a
    64 MiB copy (DRAM) and, where the last-level cache size is known, a copy whose source and
    destination take a quarter of it (cache). key -> (fn, FLOPs or bytes per call)."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"gemm": (lambda: torch.mm(a, b), 2.0 * n**3)}
    for key, nbytes in (("dram copy", 64 * 2**20), ("cache copy", (llc_bytes() or 0) // 8)):
        if nbytes:
            src = torch.ones(nbytes // 4)
            dst = torch.empty_like(src)
            out[key] = ((lambda d, s: lambda: d.copy_(s))(dst, src), 2.0 * nbytes)
    return out


def with_cache(device, rates: dict):
    """``device`` with the cache fields roofline.bandwidth reads: the last-level cache's size, and
    its bandwidth as the spec's DRAM bandwidth times the cache-to-DRAM ratio of the two copies
    timed side by side (the ratio survives a busy neighbour better than either number)."""
    extra = {**device.extra, "interleaved": rates}
    if "cache copy" in rates and rates.get("dram copy"):
        ratio = max(rates["cache copy"] / rates["dram copy"], 1.0)
        extra.update(llc_bytes=llc_bytes(), cache_bandwidth=device.mem_bandwidth * ratio)
    return replace(device, extra=extra)


def profile_from(target: str, measured: dict, device) -> tuple[BackendProfile, dict]:
    """The profile of one target from its timed cases (``{case: (call, step, facts)}``).

    Timings are the backend's own call (the segment's step), so ``call_overhead`` leaves out
    hetcc's input checks, as the defaults do; ``timings['runtime_per_call']`` records those
    (whole call minus step, of the one-op case). ``timings['handoff_per_value']`` is the extra cost
    of one more input value (wrapping it for the runtime); the tensor itself is not copied.
    ``per_node`` and ``per_view`` solve what the 'dispatch' and 'views' chains add over the one-op
    case, per node and per view. An efficiency is the case's roofline at full efficiency (its
    side: compute or memory) over the time left when the call, the dispatches and the case's
    other nodes (at full efficiency) are taken out."""
    from hetcc.cost_model.roofline import base_op, node_parts

    base = profile_for(target.split(":")[0])
    ideal = replace(base, efficiency={"default": 1.0}, per_node=0.0, per_view=0.0, fused_classes=())
    timings = {case: step for case, (_, step, _) in measured.items()}
    nodes = {case: facts for case, (_, _, facts) in measured.items()}

    def count(case, views=False):
        return sum(1 for f in nodes[case] if (f.op_class == "view") == views)

    def bare(facts):  # roofline seconds at full efficiency, no dispatch
        return sum(max(node_parts(f, device, ideal)) for f in facts)

    # Both chains pay per node and per view: t - overhead - roofline = per_node * (nodes - the
    # one-op case's) + per_view * views. Two chains, two unknowns.
    overhead = timings["overhead"]
    (n1, v1, t1), (n2, v2, t2) = ((count(k) - count("overhead"), count(k, True),
                                   timings[k] - overhead - bare(nodes[k])) for k in ("dispatch", "views"))
    det = n1 * v2 - v1 * n2
    per_node = max((t1 * v2 - v1 * t2) / det, 0.0) if det else max(t1, 0.0) / max(n1, 1)
    per_view = max((n1 * t2 - n2 * t1) / det, 0.0) if det else 0.0
    call_overhead = max(overhead - per_node * count("overhead"), 0.0)
    efficiency = {}
    for case, (op_class, side) in SIDES.items():
        op = case.split(":")[1] if ":" in case and side == "compute" and op_class == "elementwise" else None
        mine = [f for f in nodes[case] if f.op_class == op_class and (op is None or base_op(f) == op)]
        parts = [node_parts(f, device, ideal) for f in mine]
        roofline = sum(c if side == "compute" else m if side == "memory" else max(c, m) for c, m in parts)
        if roofline <= 0:
            continue  # the decomposition left no node of this class
        others = bare([f for f in nodes[case] if f not in mine and f.op_class != "view"])
        spent = timings[case] - call_overhead - per_node * count(case) - per_view * count(case, True) - others
        efficiency[case] = round(roofline / max(spent, 1e-7), 4)
    timings["handoff_per_value"] = max(timings.pop("handoff") - overhead, 0.0)
    timings["runtime_per_call"] = max(measured["overhead"][0] - overhead, 0.0)
    # classes without a case of their own (reductions, ...) are memory-bound like arithmetic
    efficiency["default"] = efficiency.get("elementwise", 0.5)
    profile = replace(base, efficiency=efficiency, call_overhead=call_overhead, per_node=per_node,
                      per_view=per_view, fused_classes=())
    return profile, timings


def calibrate_backend(target: str, seconds: float = 0.3, device=None) -> tuple[BackendProfile, dict]:
    """Measure one CPU target; returns its profile and the raw timings (seconds per case)."""
    device = device or this_cpu()
    with tempfile.TemporaryDirectory(prefix="hetcc-calibrate-") as tmp:
        compiled = compile_cases(target, device, Path(tmp))
        times = time_cases(compiled, seconds)
    return profile_from(target, {c: (*times[c], compiled[c][2]) for c in compiled}, device)


# ---- this CPU's last-level cache: size from the OS, bandwidth measured ----

def llc_bytes() -> int | None:
    """Size of this CPU's last-level cache (Linux sysfs), or None where it cannot be read."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    best = None
    try:
        for index in root.glob("index*"):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
            units = {"K": 2**10, "M": 2**20, "G": 2**30}
            size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
            if best is None or level > best[0]:
                best = (level, size)
    except (OSError, ValueError):
        return None
    return best[1] if best else None


def calibrate(targets: list[str], seconds: float = 0.3, progress=None) -> dict:
    """Measure this CPU and every target; returns the profile as JSON data (profiles.read_profile).
    Every target's cases, and the CPU's GEMM and copies, are timed together, interleaved
    (``time_cases``); the CPU spec is measure_best's, with the cache from ``with_cache``."""
    from hetcc.cost_model.devices import _cpu_key, measure_best
    from hetcc.cost_model.profiles import profile_to_json

    if progress:
        progress("device", "peak FLOP/s and DRAM bandwidth, best of 3")
    seconds = max(seconds, 0.05)
    device = measure_best(seconds)
    compiled = {}
    with tempfile.TemporaryDirectory(prefix="hetcc-calibrate-") as tmp:
        for target in targets:
            if progress:
                progress("lower", f"{len(cases())} cases on {target}")
            for case, value in compile_cases(target, device, Path(tmp) / target.replace(":", "-")).items():
                compiled[(target, case)] = value
        raw = device_cases()
        if progress:
            progress("measure", f"{len(compiled) + len(raw)} cases interleaved, "
                                f"~{seconds * (len(compiled) + len(raw)):.0f}s")
        times = time_cases(compiled, seconds, {k: fn for k, (fn, _) in raw.items()})
    device = with_cache(device, {k: work / times[k][0] for k, (_, work) in raw.items()})
    backends, timings = {}, {}
    for target in targets:
        measured = {case: (*times[(t, case)], compiled[(t, case)][2]) for t, case in compiled if t == target}
        profile, timings[target] = profile_from(target, measured, device)
        backends[profile.backend] = profile
    return profile_to_json(_cpu_key(), device, backends, timings,
                           extra={"seconds_per_case": seconds, "targets": list(targets)})
