"""How hetcc times calls, shared by compile-time tuning (hetcc/tune.py) and the measuring tools:
turns of calls recorded into Samples, their quantiles, and the cores this process may use. It sits
below both, so that compiling never imports a measuring tool."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

PAUSE = 0.1
"""Seconds of idle before each turn of the measuring tools (tuning: after a candidate that runs ONNX
Runtime; hetcc.tune.SHORT_PAUSE after others): longer than the OpenMP/ONNX Runtime spin-wait. ONNX
Runtime's idle threads busy-wait after a call: on a 2-core AMD EPYC VM (2026-12-02,
benchmarks/bench_spin.py) a session's call within 30-45 ms of another session's ran 1.8-2x its own
time when quiet, and up to 60 ms on when busy. With 10 ms, as before, ONNX Runtime paths measured
beside others on a busy machine were taxed: bert's int8 file measured 1.01-1.10x OpenVINO's fp32
that way against 1.42-1.45x with this pause (quiet, three paths: 1.45x against 1.51x)."""
TURN = 0.01
"""Calls per turn are chosen so that a turn lasts about this long."""
MAX_CALLS = 50


@dataclass
class Samples:
    """What one variant measured."""

    calls: list[float] = field(default_factory=list)
    """Seconds of every timed call."""
    turns: list[float] = field(default_factory=list)
    """Mean seconds per call of each turn, one per round in round order (for paired ratios)."""
    steps: dict[str, list[float]] = field(default_factory=dict)
    """Step (segment) name -> seconds per call, for variants timed per step."""
    calls_per_turn: int = 1


def timed_turn(fn, inputs, samples: Samples, clock) -> None:
    """One turn of ``samples.calls_per_turn`` calls of ``fn``, which returns (outputs, {step:
    seconds}) as ``Runtime.timed_call`` does: each call's time and each step's go into ``samples``."""
    total = 0.0
    for _ in range(samples.calls_per_turn):
        start = clock()
        _, steps = fn(*inputs)
        took = clock() - start
        samples.calls.append(took)
        total += took
        for step, seconds in steps.items():
            samples.steps.setdefault(step, []).append(seconds)
    samples.turns.append(total / samples.calls_per_turn)


def quantile(xs, q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo, frac = int(pos), pos - int(pos)
    return xs[lo] if frac == 0 else xs[lo] + (xs[lo + 1] - xs[lo]) * frac


def cores() -> int:
    """CPUs this process may run on (the affinity mask: a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
