"""Side-by-side latency: several callables on the same inputs, measured interleaved in one run.

Each round runs every variant for a turn of a few calls, in a new random order, with a short pause
before each turn (longer than the runtimes' thread-pool spin-wait, so a turn starts from idle and
one runtime's spinning threads do not tax the next). Machine drift then moves every variant alike,
and a variant's median over the reference's median, measured in the same rounds, is stable even on
a shared machine where the absolute times are not. `hetcc bench` and benchmarks/bench_examples.py
measure with this; docs/benchmarks.md says how to read the numbers.
"""
from __future__ import annotations

import os
import platform
import random
import statistics
import time

from hetcc.cost_model.devices import cpu_model
from hetcc.timing import MAX_CALLS, PAUSE, TURN, Samples, cores, quantile, timed_turn

DEFAULT_RUNS = 30
MIN_RUNS = 5
"""Rounds measured even when a --budget runs out first: fewer give no usable percentiles."""
SPREAD = "p10-p90 of per-call latency"


def measure(fns: dict, inputs, *, warmup: int = 3, runs: int | None = None, budget: float | None = None,
            calls: int | None = None, pause: float = PAUSE, seed: int = 0, timed: dict | None = None,
            min_runs: int = MIN_RUNS, settle: bool = True) -> dict[str, Samples]:
    """Measure ``{name: callable}`` on ``inputs``, interleaved: ``runs`` rounds, or rounds until
    ``budget`` seconds have passed (at least ``min_runs``); ``DEFAULT_RUNS`` rounds if neither.
    ``calls`` per turn, or None to choose per variant from the warm-up so a turn lasts ~``TURN``.
    ``timed``: {name: callable returning (outputs, {step: seconds})} used instead of the plain
    callable where given (a Runtime's ``timed_call``), to time each segment too. ``settle``: one
    untimed call starts each turn, because a runtime that busy-waits after its calls would otherwise
    tax whichever variant runs next: torch measured 1.4-2x slower right after an ONNX Runtime turn
    on 2 cores. ``pause`` must outlast that spin-wait (hetcc.timing.PAUSE)."""
    import torch

    if runs is None and budget is None:
        runs = DEFAULT_RUNS
    timed = timed or {}
    clock = time.perf_counter
    out = {name: Samples() for name in fns}
    with torch.no_grad():
        for name, fn in fns.items():
            took = []
            for _ in range(max(1, warmup)):
                start = clock()
                fn(*inputs)
                took.append(clock() - start)
            typical = max(statistics.median(took), 1e-7)
            out[name].calls_per_turn = calls or max(1, min(MAX_CALLS, round(TURN / typical)))
        order, rng, started, done = list(fns), random.Random(seed), clock(), 0
        while (done < runs) if runs is not None else (done < min_runs or clock() - started < budget):
            rng.shuffle(order)
            for name in order:
                samples = out[name]
                time.sleep(pause)
                if settle:
                    fns[name](*inputs)
                if name in timed:
                    timed_turn(timed[name], inputs, samples, clock)
                else:
                    _turn(fns[name], inputs, samples, clock)
            done += 1
    return out


def _turn(fn, inputs, samples: Samples, clock) -> None:
    total = 0.0
    for _ in range(samples.calls_per_turn):
        start = clock()
        fn(*inputs)
        took = clock() - start
        samples.calls.append(took)
        total += took
    samples.turns.append(total / samples.calls_per_turn)


def stats(xs) -> dict:
    """Seconds: n, mean, min, max, median, p10, p25, p75, p90, p95 and the IQR (p75 - p25)."""
    qs = {f"p{round(q * 100)}_s": quantile(xs, q) for q in (0.10, 0.25, 0.75, 0.90, 0.95)}
    return {"n": len(xs), "mean_s": statistics.fmean(xs), "min_s": min(xs), "max_s": max(xs),
            "median_s": statistics.median(xs), **qs, "iqr_s": qs["p75_s"] - qs["p25_s"]}


def paired_ratios(samples: Samples, reference: Samples) -> list[float]:
    """Per round: the variant's turn over the reference's turn in the same round."""
    return [a / b for a, b in zip(samples.turns, reference.turns) if b > 0]


# ---- the machine, and what ran ----

def machine_class() -> str:
    """What a baseline is keyed by: ``<arch>-<cores>cpu`` (e.g. x86_64-2cpu), or the value of
    HETCC_MACHINE_CLASS where CI names its runners itself. Timing ratios move with the core count
    and the architecture, so baselines from one class say nothing about another."""
    return os.environ.get("HETCC_MACHINE_CLASS") or f"{platform.machine() or 'unknown'}-{cores()}cpu"


def machine_info() -> dict:
    import torch

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"machine_class": machine_class(), "cpu": cpu_model(), "arch": platform.machine(),
            "cores": cores(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gib": round(memory, 1) if memory else None, "os": platform.platform(),
            "python": platform.python_version(), "cuda": torch.cuda.is_available()}


def versions(backends=()) -> dict:
    """hetcc, torch, and what each named backend reports (its runtime and exporter versions)."""
    import torch

    from hetcc import __version__
    from hetcc.backends.registry import get_backend

    found = {"hetcc": __version__, "torch": torch.__version__}
    for name in sorted(set(backends)):
        try:
            found.update(get_backend(name).versions())
        except Exception as exc:  # noqa: BLE001 - versions are informative
            found[name] = f"unknown ({type(exc).__name__})"
    return found


# ---- the yardstick: the reference for a bundle, whose model source is not at hand ----

YARDSTICK = ("torch eager yardstick: a fixed MLP 512-1024-1024-512 (GELU), fp32, batch 32, "
             "seed 0; a bundle has no model source, so its ratio is to this machine's torch speed")


def yardstick():
    """(module, inputs) of the fixed workload that stands in for the reference when a bundle is
    measured: it tracks how fast this machine runs torch today, so a bundle's ratio to it stays
    comparable from run to run. Never change it without re-recording the baselines that use it."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(),
                          nn.Linear(1024, 512)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model, (torch.randn(32, 512, generator=generator),)
