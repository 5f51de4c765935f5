"""HiGHS in a child process: same answers as in this process, stopped when it overruns."""
from __future__ import annotations

import logging
import math
import random
import sys
import time

import numpy as np
import pytest

from hetcc.passes import highs
from hetcc.passes.pipeline import brute_force_pipeline, solve_pipeline
from hetcc.passes.solve import brute_force, solve
from test_solver import random_problem


def knapsack(n: int = 30, seed: int = 0):
    """max value under a weight limit, as a minimisation with one row."""
    rng = np.random.default_rng(seed)
    value, weight = rng.uniform(1, 10, n), rng.uniform(1, 10, n)
    return dict(c=-value, integrality=np.ones(n), ub=np.ones(n), rows=[0] * n, cols=list(range(n)),
                vals=weight, lo=[-math.inf], hi=[weight.sum() / 3])


def test_child_gives_the_same_answer_as_this_process():
    here = highs.run(**knapsack(), time_limit=10, options={}, child=False)
    there = highs.run(**knapsack(), time_limit=10, options={}, child=True)
    assert here.status == there.status == 0
    np.testing.assert_allclose(there.x, here.x)
    assert there.fun == pytest.approx(here.fun) and there.fun < 0
    assert there.mip_dual_bound == pytest.approx(here.mip_dual_bound)


def test_child_reports_infeasible():
    case = knapsack()
    case.update(lo=[1e9], hi=[math.inf])  # weights cannot reach this
    res = highs.run(**case, time_limit=10, options={}, child=True)
    assert res.status == 2 and res.x is None and res.fun is None


def test_an_overrunning_child_is_stopped(monkeypatch, caplog):
    # No grace and a limit shorter than starting Python: the child is stopped before it answers,
    # as it is when HiGHS itself does not stop at its limit.
    monkeypatch.setattr(highs, "GRACE", 0.0)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger=highs.__name__):
        res = highs.run(**knapsack(), time_limit=0.01, options={}, child=True)
    assert time.perf_counter() - started < 5
    assert res.status == 1 and res.x is None and res.mip_dual_bound is None
    assert "did not stop itself" in res.message
    assert "was stopped" in caplog.text


def test_a_child_that_cannot_start_falls_back_to_this_process(monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with caplog.at_level(logging.WARNING, logger=highs.__name__):
        res = highs.run(**knapsack(), time_limit=10, options={}, child=True)
    assert res.status == 0 and res.x is not None
    assert "solving in this process" in caplog.text


@pytest.mark.parametrize("seed", range(6))
def test_solvers_through_the_child_match_brute_force(monkeypatch, seed):
    monkeypatch.setattr(highs, "CHILD_MIN_VARIABLES", 0)  # every MILP in a child
    p = random_problem(random.Random(1000 + seed))
    _, best = brute_force(p)
    if math.isinf(best):
        return
    assert solve(p).cost == pytest.approx(best, rel=1e-9)
    _, neck = brute_force_pipeline(p)
    assert solve_pipeline(p).cost == pytest.approx(neck, rel=1e-9)
