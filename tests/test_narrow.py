"""Narrowing a failed segment down to its failing units (hetcc/narrow.py), with fake predicates:
no backend, so the search is checked against brute force on many random cases."""
import math
import random

import pytest

from hetcc.narrow import NARROW_BUDGET, describe, narrow


def per_unit(failing):
    """A part fails when it holds a failing unit, with that unit's reason."""
    calls = []

    def fails(part):
        calls.append(part)
        bad = [u for u in part if u in failing]
        return f"op {bad[0]} refused" if bad else None

    return fails, calls


@pytest.mark.parametrize("seed", range(300))
def test_per_unit_failures_are_found_exactly_within_the_bisection_bound(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    units = [f"u{i}" for i in range(n)]
    failing = set(rng.sample(units, rng.randint(1, min(n, 5))))
    fails, calls = per_unit(failing)
    found = narrow(units, fails, "whole failed", budget=10_000)
    assert set(found.banned) == failing
    assert found.banned == {u: f"op {u} refused" for u in units if u in failing}
    assert not found.together and not found.untested
    # each failing unit costs at most two tries per level of the bisection
    assert found.calls == len(calls) <= 2 * len(failing) * math.ceil(math.log2(n))
    assert all(part == tuple(units[units.index(part[0]):units.index(part[0]) + len(part)])
               for part in calls), "every part tried is contiguous"


@pytest.mark.parametrize("seed", range(200))
def test_a_small_budget_is_kept_and_never_spares_a_failing_unit(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    units = list(range(n))
    failing = set(rng.sample(units, rng.randint(1, min(n, 8))))
    budget = rng.randint(0, 20)
    fails, calls = per_unit(failing)
    found = narrow(units, fails, "whole failed", budget=budget)
    assert len(calls) == found.calls <= budget
    assert failing <= set(found.banned)
    # a unit is spared only when a part holding it was tried and passed
    passed = {u for part in calls if not failing & set(part) for u in part}
    assert set(units) - set(found.banned) == passed
    assert set(found.untested) <= set(found.banned)
    assert (set(found.banned) == failing) or found.untested


def test_a_failure_that_needs_two_units_together_bans_the_smallest_part_holding_both():
    units = list(range(16))
    fails = lambda part: "needs 5 and 6" if {5, 6} <= set(part) else None  # noqa: E731
    found = narrow(units, fails, "whole failed", budget=100)
    # halves 0-7, then 4-7 hold both; 4-5 and 6-7 each pass
    assert found.together == ((4, 5, 6, 7),)
    assert list(found.banned) == [4, 5, 6, 7]
    assert found.reason == "needs 5 and 6"
    assert not found.whole_only


def test_a_failure_only_the_whole_shows_bans_the_whole_and_says_so():
    units = list(range(10))
    found = narrow(units, lambda part: None, "error accumulated past the tolerance", budget=100)
    assert found.whole_only and found.calls == 2
    assert list(found.banned) == units
    assert set(found.banned.values()) == {"error accumulated past the tolerance"}
    note = describe("openvino:cpu", 10, [f"n{u}" for u in units], found, 2)
    assert "rejected 10 of 10" in note and "needs the whole segment" in note


def test_the_reason_is_that_of_the_smallest_failing_part():
    def fails(part):
        if 3 in part:
            return f"part of {len(part)} failed"
        return None

    found = narrow(list(range(8)), fails, "whole failed", budget=100)
    assert found.banned == {3: "part of 1 failed"}
    assert found.reason == "part of 1 failed"


def test_a_cut_dependent_failure_counts_as_the_part_that_shows_it():
    # a part that begins at unit 4 fails (say its first input cannot cross the boundary): the
    # unit at the cut is banned, and nothing else
    found = narrow(list(range(8)), lambda part: "bad input" if part[0] == 4 else None, "whole failed")
    assert found.banned == {4: "bad input"}


def test_describe_says_what_was_narrowed_and_what_it_cost():
    units = list(range(40))
    fails, _ = per_unit({7, 30})
    found = narrow(units, fails, "whole failed", budget=100)
    note = describe("onnxruntime:cpu", 215, ["mul_7", "cat_3"], found, 11)
    assert note.startswith("onnxruntime:cpu rejected 2 of 215 node(s) (mul_7, cat_3), narrowed in 11 lowering(s)")
    assert note.endswith(". Reason: op 7 refused")  # last: a reason ends with its reproduce command
    short = narrow(units, fails, "whole failed", budget=4)
    note = describe("onnxruntime:cpu", 215, [str(u) for u in short.banned], short, 4)
    assert f"budget ({NARROW_BUDGET} lowerings per compile) ran out" in note
    assert f"{len(short.untested)} unit(s) fall back untested" in note
