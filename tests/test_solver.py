"""The placement solver against brute force on small random DAGs, plus targeted cases."""
from __future__ import annotations

import functools
import math
import random

import pytest

from hetcc.errors import PlacementError
from hetcc.passes.problem import HOST, PlacementProblem, Value, evaluate
from hetcc.passes.solve import Placement, brute_force, solve

INF = math.inf
N_RANDOM = 240
"""Random problems checked against brute force."""


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def make(cost, values, *, resident=None, capacity=None, latency=1e-5, bandwidth=1e10, overhead=0.0,
         names=None, targets=None) -> PlacementProblem:
    """A problem with uniform links between distinct locations unless matrices are given."""
    n, k = len(cost), len(cost[0])
    L = k + 1

    def matrix(x):
        if isinstance(x, (int, float)):
            return tuple(tuple(0.0 if s == t and x != INF else x for t in range(L)) for s in range(L))
        return tuple(map(tuple, x))

    bw = bandwidth if not isinstance(bandwidth, (int, float)) else [[bandwidth] * L for _ in range(L)]
    return PlacementProblem(
        nodes=tuple(names or (f"n{i}" for i in range(n))),
        targets=tuple(targets or (f"t{t}" for t in range(k))),
        cost=tuple(tuple(r) for r in cost),
        values=tuple(values),
        resident=tuple(resident or [0] * n),
        capacity=tuple(capacity or [INF] * k),
        link_latency=matrix(latency),
        link_bandwidth=matrix(bw),
        call_overhead=(tuple([overhead] * k + [0.0]) if isinstance(overhead, (int, float))
                       else tuple(overhead)),
    )


def random_problem(rng: random.Random) -> PlacementProblem:
    k = rng.choice([2, 2, 3, 3, 3])
    n = rng.randint(1, 10) if k == 2 or rng.random() < 0.4 else rng.randint(6, 10)
    values = []
    for _ in range(rng.choice([0, 1, 1, 2])):  # model inputs, some read by several nodes
        cons = tuple(sorted(rng.sample(range(n), rng.randint(1, min(3, n)))))
        values.append(Value(HOST, cons, rng.choice([8, 4096, 10**6]), to_host=rng.random() < 0.1))
    for i in range(n):
        later = list(range(i + 1, n))
        cons = tuple(sorted(rng.sample(later, min(len(later), rng.choice([0, 1, 1, 1, 2, 3])))))
        to_host = not cons or rng.random() < 0.15
        values.append(Value(i, cons, rng.choice([0, 64, 10**4, 10**6, 10**7]), to_host=to_host))
        if later and rng.random() < 0.2:  # a second output of the same node
            values.append(Value(i, (rng.choice(later),), rng.randint(1, 10**6)))
    cost = []
    for _ in range(n):
        scale = rng.choice([1e-6, 1e-5, 1e-4])
        cost.append(tuple(INF if rng.random() < 0.1 else scale * rng.uniform(1, 10) for _ in range(k)))
    resident = [rng.choice([0, 0, rng.randint(1, 100)]) for _ in range(n)]
    total = sum(resident)
    capacity = [INF if rng.random() < 0.5 else float(rng.randint(0, total + 1)) for _ in range(k)]
    L = k + 1
    lat = [[0.0 if s == t else rng.choice([0.0, rng.uniform(1e-6, 5e-5)]) for t in range(L)]
           for s in range(L)]
    bw = [[INF if s == t or rng.random() < 0.2 else rng.uniform(1e9, 1e11) for t in range(L)]
          for s in range(L)]
    overhead = [rng.choice([0.0, rng.uniform(1e-6, 2e-5)]) for _ in range(k)] + [rng.choice([0.0, 1e-6])]
    return make(cost, values, resident=resident, capacity=capacity, latency=lat, bandwidth=bw,
                overhead=overhead)


@functools.lru_cache(maxsize=None)
def random_case(seed: int):
    """The seeded random problem and its brute-force optimum (cached: two tests use them)."""
    p = random_problem(random.Random(seed))
    return p, brute_force(p)


def check_against_brute_force(p: PlacementProblem, best: float | None = None) -> Placement | None:
    if best is None:
        _, best = brute_force(p)
    if math.isinf(best):
        with pytest.raises(PlacementError):
            solve(p)
        return None
    r = solve(p)
    assert close(r.cost, best), (r, best)
    assert r.cost == evaluate(p, r.assignment)
    assert r.optimal and r.gap == 0.0
    assert r.lower_bound <= r.cost and close(r.lower_bound, best)
    return r


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_matches_brute_force(seed):
    p, (_, best) = random_case(seed)
    check_against_brute_force(p, best)


def test_random_suite_covers_the_interesting_cases():
    """The random problems above must include splits, infeasible ones and binding capacities."""
    split = infeasible = binding = 0
    for seed in range(N_RANDOM):
        p, (a, best) = random_case(seed)
        if math.isinf(best):
            infeasible += 1
            continue
        split += len(set(a)) > 1
        used = [sum(r for r, t in zip(p.resident, a) if t == u) for u in range(p.k)]
        cheapest = [min(range(p.k), key=lambda t: p.cost[i][t]) for i in range(p.n)]
        binding += any(sum(r for r, t in zip(p.resident, cheapest) if t == u) > p.capacity[u]
                       for u in range(p.k)) and all(x <= c for x, c in zip(used, p.capacity))
    assert split >= 40 and infeasible >= 10 and binding >= 10, (split, infeasible, binding)


# --- targeted cases -------------------------------------------------------------------------


def chain(n):
    return [Value(HOST, (0,), 1000)] + [Value(i, (i + 1,), 1000) for i in range(n - 1)] + \
        [Value(n - 1, (), 1000, to_host=True)]


def test_chain_split_pays_off():
    # Nodes 0-2 are far cheaper on t0, nodes 3-5 on t1; one cut in the middle beats both extremes.
    cost = [(1e-5, 1e-3)] * 3 + [(1e-3, 1e-5)] * 3
    p = make(cost, chain(6), latency=1e-5)
    r = check_against_brute_force(p)
    assert r.assignment == (0, 0, 0, 1, 1, 1)


def test_chain_stays_together_when_the_link_is_slow():
    cost = [(1e-5, 2e-5)] * 3 + [(2e-5, 1e-5)] * 3
    p = make(cost, chain(6), latency=1e-3)
    assert check_against_brute_force(p).assignment == (0,) * 6


def test_diamond():
    # 0 fans out to 1 and 2, which meet at 3. Node 2 is much faster on t1.
    values = [Value(HOST, (0,), 100), Value(0, (1, 2), 10**6), Value(1, (3,), 10**6),
              Value(2, (3,), 10**6), Value(3, (), 100, to_host=True)]
    cost = [(1e-5, 1e-5, 1e-5), (1e-5, 2e-5, 3e-5), (5e-3, 1e-5, 5e-3), (1e-5, 1e-5, 2e-5)]
    p = make(cost, values, latency=1e-4, bandwidth=1e10)
    r = check_against_brute_force(p)
    assert r.assignment[2] == 1


def test_fan_out_pays_once_per_location():
    # Value 0 -> {1, 2, 3}; all consumers on t1 costs one hand-over, not three.
    values = [Value(0, (1, 2, 3), 10**6), Value(1, (), 10, to_host=True), Value(2, (), 10, to_host=True),
              Value(3, (), 10, to_host=True)]
    cost = [(1e-6, 1.0), (1.0, 1e-6), (1.0, 1e-6), (1.0, 1e-6)]
    p = make(cost, values, latency=1e-4)
    r = check_against_brute_force(p)
    assert r.assignment == (0, 1, 1, 1)


def test_capacity_forces_a_split():
    # Everything prefers t0, but t0 holds only two of the four weights.
    cost = [(1e-5, 2e-5)] * 4
    p = make(cost, chain(4), resident=[10, 10, 10, 10], capacity=[20, INF])
    r = check_against_brute_force(p)
    assert sorted(r.assignment).count(0) == 2
    assert r.assignment == (0, 0, 1, 1) or r.assignment == (1, 1, 0, 0)


def test_tie_goes_to_the_earlier_target():
    # Two identical targets: every optimum is a tie between them.
    cost = [(2e-5, 2e-5, 3e-5)] * 5
    p = make(cost, chain(5))
    assert solve(p).assignment == (0,) * 5
    p = make([(3e-5, 2e-5, 2e-5)] * 5, chain(5))
    assert solve(p).assignment == (1,) * 5


def test_single_target_and_trivial_fast_paths():
    p = make([(1e-5,)] * 3, chain(3))
    r = solve(p)
    assert r.assignment == (0, 0, 0) and r.optimal and r.method == "single-target"
    p = make([(1e-5, 1e-4)] * 3, chain(3))
    r = solve(p)
    assert r.assignment == (0, 0, 0) and r.optimal and r.method == "trivial"


def test_infinite_cost_and_infinite_link_are_respected():
    # Node 1 can only run on t1; the t0 <-> t1 link is forbidden both ways, so everything moves.
    inf_link = [[0.0, INF, 0.0], [INF, 0.0, 0.0], [0.0, 0.0, 0.0]]
    p = make([(1e-6, 1e-3), (INF, 1e-3), (1e-6, 1e-3)], chain(3), latency=inf_link)
    r = check_against_brute_force(p)
    assert r.assignment == (1, 1, 1)


def test_node_without_target_is_named():
    p = make([(1e-5, 1e-5), (INF, INF)], chain(2), names=["conv", "weird_op"], targets=["gpu", "cpu"])
    with pytest.raises(PlacementError) as e:
        solve(p)
    msg = str(e.value)
    assert "weird_op" in msg and "gpu" in msg and "cpu" in msg and "pin" in msg


def test_node_too_big_for_every_target_is_named():
    p = make([(1e-5, 1e-5)] * 2, chain(2), resident=[10, 500], capacity=[100, 200], names=["a", "big"],
             targets=["gpu", "npu"])
    with pytest.raises(PlacementError, match="big"):
        solve(p)


def test_capacity_error_names_targets_and_shortfall():
    p = make([(1e-5, INF)] * 3, chain(3), resident=[40, 40, 40], capacity=[100, 1000],
             targets=["gpu", "cpu"])
    with pytest.raises(PlacementError) as e:
        solve(p)
    msg = str(e.value)
    assert "gpu" in msg and "120 bytes" in msg and "100 bytes" in msg and "memory" in msg


def test_packing_error_when_no_subset_argument_applies():
    # 3 x 60 bytes into two targets of 100: totals fit (180 <= 200), the packing does not.
    p = make([(1e-5, 1e-5)] * 3, chain(3), resident=[60, 60, 60], capacity=[100, 100])
    assert math.isinf(brute_force(p)[1])
    with pytest.raises(PlacementError, match="capacit"):
        solve(p)


def test_time_limited_answers_are_honest():
    # A problem too big for brute force, stopped early: the bound must stay below the true optimum.
    rng = random.Random(7)
    n, k = 400, 3
    values = [Value(HOST, (0,), 1000)]
    for i in range(n - 1):
        cons = tuple(sorted({i + 1} | ({rng.randrange(i + 1, n)} if rng.random() < 0.3 else set())))
        values.append(Value(i, cons, rng.randint(10**3, 10**7)))
    values.append(Value(n - 1, (), 10**4, to_host=True))
    cost = [tuple(rng.uniform(1e-6, 1e-4) for _ in range(k)) for _ in range(n)]
    resident = [rng.randint(0, 10**6) for _ in range(n)]
    p = make(cost, values, resident=resident, capacity=[0.3 * sum(resident), 0.5 * sum(resident), INF],
             latency=1e-5)
    exact = solve(p)
    assert exact.optimal
    for kwargs in ({"time_limit": 0.05}, {"exact_node_limit": 100}):
        r = solve(p, **kwargs)
        assert r.method != "milp", r.method
        assert r.cost == evaluate(p, r.assignment) and not math.isinf(r.cost)
        assert r.lower_bound <= exact.cost * (1 + 1e-9) and r.cost >= exact.cost * (1 - 1e-9)
        assert r.optimal == (r.gap == 0.0)


def test_brute_force_refuses_large_problems():
    with pytest.raises(ValueError):
        brute_force(make([(1.0, 1.0)] * 13, chain(13)))


def test_repair_moves_nodes_off_an_overfull_target():
    from hetcc.passes.solve import repair

    p = make([(1e-5, 2e-5)] * 4, chain(4), resident=[10, 10, 10, 10], capacity=[20, INF])
    fixed = repair(p, (0, 0, 0, 0), deadline=math.inf)
    assert fixed is not None and fixed.count(0) == 2 and not math.isinf(evaluate(p, fixed))


def test_forbidden_links_that_leave_no_placement_are_explained():
    inf_link = [[0.0, INF, 0.0], [INF, 0.0, 0.0], [0.0, 0.0, 0.0]]
    p = make([(1e-6, INF), (1e-6, 1e-6), (INF, 1e-6)], chain(3), latency=inf_link)
    assert math.isinf(brute_force(p)[1])
    with pytest.raises(PlacementError, match="infinite cost"):
        solve(p)
    # Both ends pinned on either side of the forbidden link: caught before the MILP.
    p = make([(1e-6, INF), (INF, 1e-6)], chain(2), latency=inf_link)
    with pytest.raises(PlacementError, match="infinite cost"):
        solve(p)


@pytest.mark.parametrize("seed", range(60))
def test_shared_capacity_against_brute_force(seed):
    """Targets on one physical memory (CPU runtimes on host RAM, two backends on one GPU) share it."""
    import dataclasses

    rng = random.Random(10_000 + seed)
    p = random_problem(rng)
    total = sum(p.resident)
    group = tuple(sorted(rng.sample(range(p.k), 2)))
    p = dataclasses.replace(p, shared_capacity=((group, float(rng.randint(0, total + 1))),))
    check_against_brute_force(p)
    check_pipeline_against_brute_force(p)


def check_pipeline_against_brute_force(p: PlacementProblem) -> None:
    from hetcc.passes.pipeline import brute_force_pipeline, solve_pipeline

    best, neck = brute_force_pipeline(p)
    if not best:
        with pytest.raises(PlacementError):
            solve_pipeline(p)
    else:
        got = solve_pipeline(p)
        assert close(got.cost, neck) and not math.isinf(evaluate(p, got.assignment))


def test_shared_capacity_splits_what_separate_capacities_would_not():
    # two targets of one 100-byte memory, each alone allowed 100: 150 bytes cannot stay on them
    p = make([[1.0, 1.0, 5.0]] * 3, [Value(HOST, (0, 1, 2), 8)], resident=[50, 50, 50],
             capacity=[100, 100, INF])
    assert set(solve(p).assignment) <= {0, 1}
    import dataclasses

    shared = dataclasses.replace(p, shared_capacity=(((0, 1), 100.0),))
    got = solve(shared)
    assert sum(1 for t in got.assignment if t == 2) == 1
    with pytest.raises(PlacementError, match="share one memory"):
        solve(dataclasses.replace(shared, cost=tuple((1.0, 1.0, INF) for _ in range(3))))


# --- resident bytes per target (a lower precision stores weights narrower) ---------------------


def narrowed(p: PlacementProblem, rng: random.Random, shared: bool) -> PlacementProblem:
    """``p`` where one or two targets hold most nodes' bytes in a quarter (an int8 variant),
    optionally with two targets (either kind) sharing one memory."""
    import dataclasses

    narrow = set(rng.sample(range(p.k), rng.choice([1, 1, 2])))
    rows = tuple(tuple(r // 4 if t in narrow and rng.random() < 0.8 else r for t in range(p.k))
                 for r in p.resident)
    p = dataclasses.replace(p, resident_on=rows)
    if shared:
        group = tuple(sorted(rng.sample(range(p.k), 2)))
        p = dataclasses.replace(p, shared_capacity=((group, float(rng.randint(0, sum(p.resident) + 1))),))
    return p


@functools.lru_cache(maxsize=None)
def narrowed_case(seed: int):
    """A seeded problem with bytes per target and its brute-force optimum (cached: several tests
    use them, tests/test_frontier.py and tests/test_stages.py too)."""
    rng = random.Random(20_000 + seed)
    p = narrowed(random_problem(rng), rng, shared=seed % 2 == 1)
    return p, brute_force(p)


@pytest.mark.parametrize("seed", range(80))
def test_resident_per_target_against_brute_force(seed):
    p, (_, best) = narrowed_case(seed)
    check_against_brute_force(p, best)
    check_pipeline_against_brute_force(p)


def test_the_per_target_suite_has_cases_only_the_narrow_bytes_fit():
    """Some of the problems above are infeasible, or costlier, with every target at full bytes."""
    import dataclasses

    rescued = cheaper = 0
    for seed in range(80):
        p, (_, best) = narrowed_case(seed)
        _, best_full = brute_force(dataclasses.replace(p, resident_on=()))
        rescued += math.isinf(best_full) and not math.isinf(best)
        cheaper += not math.isinf(best_full) and best < best_full * (1 - 1e-9)
        assert best <= best_full * (1 + 1e-9)  # fewer bytes never make the optimum worse
    assert rescued >= 3 and cheaper >= 3, (rescued, cheaper)


def test_repair_moves_a_node_to_its_narrow_target_inside_a_shared_memory():
    from hetcc.passes.solve import repair

    # targets 0 and 1 share 100 bytes; on 1 (int8) each node keeps 15 instead of 60
    p = make([(1e-5, 3e-5, 1e-3)] * 2, chain(2), resident=[60, 60], capacity=[INF, INF, INF])
    p = PlacementProblem(**{**p.__dict__, "shared_capacity": (((0, 1), 100.0),),
                            "resident_on": ((60, 15, 60), (60, 15, 60))})
    fixed = repair(p, (0, 0), deadline=math.inf)
    assert fixed is not None and sorted(fixed) == [0, 1] and not math.isinf(evaluate(p, fixed))
    assert solve(p).assignment in ((0, 1), (1, 0))  # one stays fp32: the cheaper fit


def test_a_node_goes_where_its_narrow_bytes_fit():
    # target 1 holds a quarter of the bytes (int8): 100 bytes of fp32 weights fit there in 25 of 30
    p = make([(1e-5, 2e-5, 1e-3)], chain(1), resident=[100], capacity=[INF, 30, INF],
             targets=["fast:fp32", "fast:int8", "slow"])
    p = PlacementProblem(**{**p.__dict__, "capacity": (60.0, 30.0, INF), "resident_on": ((100, 25, 100),)})
    assert solve(p).assignment == (1,)
    with pytest.raises(ValueError, match="one row of 3"):
        PlacementProblem(**{**p.__dict__, "resident_on": ((100, 25),)})
    with pytest.raises(PlacementError, match="needs 100 bytes resident"):
        solve(PlacementProblem(**{**p.__dict__, "cost": ((1e-5, INF, INF),)}))
