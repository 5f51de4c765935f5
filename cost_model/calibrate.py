"""Measure each backend's efficiency per op class and its per-call overhead on this machine.

Each case is a tiny model dominated by one op class. We lower it with the backend, time it, and
compare with the roofline at full efficiency: efficiency = roofline time / (measured - overhead).
The defaults in ``profiles.py`` came from this on the CI machine; ``calibrate()`` redoes it here.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
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


class _Matmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1024, 1024, bias=False)

    def forward(self, x):
        return self.lin(x)


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


class _Elementwise(nn.Module):
    def forward(self, x):
        for _ in range(4):
            x = torch.tanh(x) * 0.5 + x.sigmoid()
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


def cases() -> dict[str, tuple[nn.Module, tuple]]:
    """op class -> (model, inputs); 'overhead' is the per-call case, 'handoff' the same with one more
    input (the difference is the cost of wrapping one more value for the runtime)."""
    g = torch.Generator().manual_seed(0)
    qkv = tuple(torch.randn(4, 8, 256, 64, generator=g) for _ in range(3))
    return {
        "overhead": (_Tiny(), (torch.randn(4, generator=g),)),
        "handoff": (_Tiny2(), (torch.randn(4, generator=g), torch.randn(4, generator=g))),
        "matmul": (_Matmul(), (torch.randn(256, 1024, generator=g),)),
        "conv": (_Conv(), (torch.randn(4, 64, 32, 32, generator=g),)),
        "elementwise": (_Elementwise(), (torch.randn(256, 1024, generator=g),)),
        "norm": (_Norm(), (torch.randn(256, 1024, generator=g),)),
        "data": (_Gather(), (torch.randint(0, 50_000, (64, 128), generator=g),)),
        "attention": (_Attention(), qkv),
    }


def time_call(fn, inputs, seconds: float = 0.3, min_runs: int = 5) -> float:
    """Median seconds per call after a warm-up."""
    for _ in range(3):
        fn(*inputs)
    runs, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(runs) < min_runs:
        t0 = time.perf_counter()
        fn(*inputs)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def calibrate_backend(target: str, seconds: float = 0.3, device=None) -> tuple[BackendProfile, dict]:
    """Measure one CPU target; returns its profile and the raw timings (seconds per case).

    ``call_overhead`` is the whole call of a compiled one-op model, so it includes hetcc's own
    input checks (~15-40 us), not only the backend's. ``timings['handoff_per_value']`` is the extra
    cost of one more input value (wrapping it for the runtime); the tensor itself is not copied."""
    from hetcc.cost_model.roofline import node_seconds

    import hetcc
    from hetcc.analysis import analyze

    device = device or this_cpu()
    backend = target.split(":")[0]
    base = profile_for(backend)  # the defaults: a profile being measured must not steer its own run
    ideal = replace(base, efficiency={"default": 1.0}, per_node=0.0, fused_classes=())
    timings, efficiency = {}, {}
    with tempfile.TemporaryDirectory(prefix="hetcc-calibrate-") as tmp:
        for op_class, (model, inputs) in cases().items():
            compiled = hetcc.compile(model.eval(), inputs, targets=[target], workdir=Path(tmp) / op_class,
                                     profiles={backend: base}, devices={target: device})
            timings[op_class] = time_call(compiled, inputs, seconds)
            if op_class in ("overhead", "handoff"):
                continue
            facts = analyze(model, inputs).nodes
            roofline = sum(node_seconds(f, device, ideal) for f in facts if f.op_class == op_class)
            if roofline <= 0:
                continue  # the decomposition left no node of this class (e.g. attention)
            spent = max(timings[op_class] - timings["overhead"], 1e-7)
            efficiency[op_class] = round(roofline / spent, 4)
    timings["handoff_per_value"] = max(timings.pop("handoff") - timings["overhead"], 0.0)
    efficiency["default"] = efficiency.get("elementwise", 0.5)
    profile = replace(base, efficiency=efficiency, call_overhead=timings["overhead"],
                      per_node=base.per_node, fused_classes=())
    return profile, timings


def calibrate(targets: list[str], seconds: float = 0.3, progress=None) -> dict:
    """Measure this CPU and every target; returns the profile as JSON data (profiles.read_profile)."""
    from hetcc.cost_model.devices import _cpu_key, measure_best
    from hetcc.cost_model.profiles import profile_to_json

    if progress:
        progress("device", "peak FLOP/s and bandwidth, best of 3")
    device = measure_best(max(seconds, 0.05))
    backends, timings = {}, {}
    for target in targets:
        if progress:
            progress("measure", target)
        profile, timings[target] = calibrate_backend(target, seconds, device=device)
        backends[profile.backend] = profile
    return profile_to_json(_cpu_key(), device, backends, timings,
                           extra={"seconds_per_case": seconds, "targets": list(targets)})
