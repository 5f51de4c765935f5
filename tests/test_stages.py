"""Throughput placement on large graphs (passes/stages.py): a valid bound, valid placements, and
solve_pipeline's use of them."""
from __future__ import annotations

import math
import random
import time

import pytest

from hetcc.passes import stages
from hetcc.passes.pipeline import bottleneck, brute_force_pipeline, solve_pipeline
from hetcc.passes.problem import HOST, Value, evaluate
from hetcc.passes.solve import DP_MIN_NODES, allowed_targets
from test_solver import make, narrowed_case, random_problem


@pytest.mark.parametrize("case,seed", [("random", s) for s in range(40)] + [("narrowed", s) for s in range(40)])
def test_bound_and_placements_against_brute_force(case, seed):
    """Also where nodes keep different bytes on different targets: stages fill each target by its
    own bytes, and the fractional bound pools nodes by their bytes on every target."""
    p = random_problem(random.Random(20_000 + seed)) if case == "random" else narrowed_case(seed)[0]
    best, neck = brute_force_pipeline(p)
    allowed = allowed_targets(p)
    if any(not ts for ts in allowed):
        return  # check_feasible refuses these before the stages run
    found = stages.solve_stages(p, allowed, time.perf_counter() + 5)
    if found is None:  # the relaxation does not fit: nothing does
        assert not best
        return
    a, b, lower, _ = found
    if best:
        assert lower <= neck * (1 + 1e-9)
    if a is not None:
        assert not math.isinf(evaluate(p, a))
        assert b == bottleneck(p, a) and b >= neck * (1 - 1e-9) and lower <= b


def layers(n: int, k: int = 2, link: float = 1e-7, resident: int = 0, capacity=None):
    """n equal nodes in a chain on k equal targets; each hand-over costs ``link`` seconds."""
    values = [Value(HOST, (0,), 8)] + [Value(i, (i + 1,), 8) for i in range(n - 1)]
    values.append(Value(n - 1, (), 8, to_host=True))
    return make([[1e-4] * k] * n, values, resident=[resident] * n, capacity=capacity,
                latency=link, bandwidth=math.inf)


def test_equal_targets_are_tried_in_one_order():
    p = layers(10, k=3)
    assert len(list(stages._orders(p, allowed_targets(p)))) == 1
    differ = make([[1e-4, 1e-4, 2e-4]] * 2, [Value(0, (1,), 8)])
    assert len(list(stages._orders(differ, allowed_targets(differ)))) == 3  # 3!/2!


def test_targets_with_different_links_are_not_interchangeable():
    lat = [[0.0, 1e-6, 1e-6], [1e-6, 0.0, 1e-6], [1e-6, 5e-6, 0.0]]  # target 1 is slower to reach
    p = make([[1e-4, 1e-4]] * 2, [Value(0, (1,), 8)], latency=lat)
    assert not stages._swappable(p, 0, 1)
    assert stages._swappable(layers(3), 0, 1)


def test_a_stack_of_equal_layers_is_cut_in_even_stages():
    p = layers(3000, k=3)
    allowed = allowed_targets(p)
    bound, _ = stages.fractional_bound(p, allowed)
    assert bound == pytest.approx(1000 * 1e-4, rel=1e-6)
    a, b = stages.contiguous_stages(p, allowed, time.perf_counter() + 5, bound)
    assert [a.count(t) for t in range(3)] == [1000, 1000, 1000]
    assert sum(x != y for x, y in zip(a, a[1:])) == 2  # two cuts, contiguous stages
    # the last stage's work, what it receives and what it sends home: granularity is one node
    assert b == pytest.approx(1000 * 1e-4 + 2e-7, rel=1e-9)


def test_capacity_shapes_the_stages():
    # target 0 holds at most 1,000 of the 3,000 resident nodes: the other two share the rest
    p = layers(3000, k=3, resident=10, capacity=[10_000, math.inf, math.inf])
    a, b = stages.contiguous_stages(p, allowed_targets(p), time.perf_counter() + 5, 0.0)
    assert a.count(0) <= 1000 and not math.isinf(evaluate(p, a))
    assert b <= 1000 * 1e-4 + 1e-6


def test_rounding_follows_the_shares():
    p = layers(10, k=2)
    a = stages.rounded(p, [(list(range(10)), {0: 6.6, 1: 3.4})], order=(0, 1))
    assert a == (0,) * 7 + (1,) * 3  # 6.6 -> 7 by the larger remainder, first nodes first
    a = stages.rounded(p, [(list(range(10)), {0: 6.6, 1: 3.4})], order=(1, 0))
    assert a == (1,) * 3 + (0,) * 7


def test_solve_pipeline_keeps_stages_within_the_gap(monkeypatch):
    import hetcc.passes.pipeline as pipeline

    p = layers(DP_MIN_NODES + 400, k=2)
    r = solve_pipeline(p, time_limit=20)
    assert r.method == "frontier-dp" and r.gap <= 0.01  # the DP over the layers answers first
    assert r.cost == pytest.approx(bottleneck(p, r.assignment))
    monkeypatch.setattr(pipeline, "solve_large_bottleneck", lambda *a, **k: None)
    r = solve_pipeline(p, time_limit=20)
    assert r.method == "pipeline-stages"
    assert r.cost == pytest.approx(bottleneck(p, r.assignment))
    assert r.lower_bound <= r.cost and r.gap <= 0.01
    # below the size, the same chain is solved by the MILP (exactly)
    small = layers(40, k=2)
    assert solve_pipeline(small).method == "milp-pipeline"


def test_stages_stand_when_the_milp_finds_nothing(monkeypatch):
    import hetcc.passes.pipeline as pipeline

    p = layers(DP_MIN_NODES, k=2)
    monkeypatch.setattr(pipeline, "_milp", lambda *a, **k: None)  # as if the limit came first
    monkeypatch.setattr(pipeline, "solve_large_bottleneck", lambda *a, **k: None)
    r = solve_pipeline(p, time_limit=5, max_gap=0.0)  # a zero gap sends it to the MILP
    assert r.method == "pipeline-stages" and not r.optimal
    assert r.lower_bound > 0 and r.gap < 0.01

