"""One HiGHS MILP (``scipy.optimize.milp``), with a time limit that holds.

HiGHS checks its ``time_limit`` only at some points: on large placement MILPs its root cut
separation (the mod-k separator) was seen to run for minutes past a 30 s limit (scipy 1.17.1,
HiGHS 1.12; upstream ERGO-Code/HiGHS#885, #1501, #2226). Large models therefore run in a child
process that is stopped at the deadline; small ones, which finish in milliseconds, run here.

The module imports nothing from hetcc so that the child runs it as a plain script
(``python highs.py IN OUT``) without importing torch.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CHILD_MIN_VARIABLES = 10_000
"""MILPs with at least this many variables run in a child process (starting one costs ~0.5 s)."""
GRACE = 2.0
"""Seconds past the time limit before the child is stopped: HiGHS's own stop and the copy back."""


@dataclass(frozen=True)
class Result:
    """What the solvers read of HiGHS's answer (names as in scipy's OptimizeResult)."""

    status: int
    """0 optimal, 1 time limit, 2 infeasible, 3 unbounded, 4 other (scipy's codes)."""
    x: np.ndarray | None
    fun: float | None
    """``c @ x`` at ``x``."""
    mip_dual_bound: float | None
    message: str


def run(c, integrality, ub, rows, cols, vals, lo, hi, time_limit: float, options: dict,
        child: bool | None = None) -> Result:
    """Minimise ``c @ x`` subject to ``lo <= A x <= hi`` (A given as sparse rows, cols, vals),
    ``0 <= x <= ub`` and ``integrality``. Stops after ``time_limit`` seconds; large models
    (``child`` None: at least CHILD_MIN_VARIABLES variables) run in a child process that is
    stopped ``GRACE`` seconds later if HiGHS has not stopped itself, with no solution."""
    arrays = {"c": np.asarray(c, float), "integrality": np.asarray(integrality, np.int8),
              "ub": np.asarray(ub, float), "rows": np.asarray(rows, np.int64),
              "cols": np.asarray(cols, np.int64), "vals": np.asarray(vals, float),
              "lo": np.asarray(lo, float), "hi": np.asarray(hi, float)}
    limit = max(float(time_limit), 0.01)
    if child is None:
        child = arrays["c"].size >= CHILD_MIN_VARIABLES
    if not child:
        return _solve(arrays, limit, options)
    return _in_child(arrays, limit, options)


def _solve(a: dict, time_limit: float, options: dict) -> Result:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    constraints = ()
    if a["lo"].size:
        matrix = csr_array((a["vals"], (a["rows"], a["cols"])), shape=(a["lo"].size, a["c"].size))
        constraints = (LinearConstraint(matrix, a["lo"], a["hi"]),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # options scipy passes to HiGHS verbatim
        res = milp(a["c"], integrality=a["integrality"], bounds=Bounds(0.0, a["ub"]), constraints=constraints,
                   options={"time_limit": time_limit, "presolve": True, **options})
    bound = getattr(res, "mip_dual_bound", None)
    x = None if res.x is None else np.asarray(res.x)
    return Result(int(res.status), x, None if x is None else float(a["c"] @ x),
                  None if bound is None else float(bound), str(res.message))


def _in_child(arrays: dict, time_limit: float, options: dict) -> Result:
    with tempfile.TemporaryDirectory(prefix="hetcc-highs-") as tmp:
        src, dst = Path(tmp, "in.npz"), Path(tmp, "out.npz")
        np.savez(src, time_limit=time_limit, options=json.dumps(options), **arrays)
        proc = subprocess.Popen([sys.executable, __file__, str(src), str(dst)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=time_limit + GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log.warning("HiGHS ran %.0f s past its time limit of %.1f s and was stopped; "
                        "its best placement so far is lost", GRACE, time_limit)
            return Result(1, None, None, None, f"stopped {GRACE:.0f} s past the time limit of "
                                         f"{time_limit:.1f} s (HiGHS did not stop itself)")
        if proc.returncode != 0 or not dst.exists():
            # The child could not run (no interpreter, out of memory): solve here, as before.
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            log.warning("HiGHS's child process failed (exit %s: %s); solving in this process",
                        proc.returncode, tail[0])
            return _solve(arrays, time_limit, options)
        with np.load(dst, allow_pickle=False) as out:
            x = out["x"] if bool(out["has_x"]) else None
            bound = float(out["bound"]) if bool(out["has_bound"]) else None
            return Result(int(out["status"]), x, None if x is None else float(arrays["c"] @ x), bound,
                          str(out["message"]))


def _child(src: str, dst: str) -> None:
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in ("c", "integrality", "ub", "rows", "cols", "vals", "lo", "hi")}
        time_limit = float(data["time_limit"])
        options = json.loads(str(data["options"]))
    res = _solve(arrays, time_limit, options)
    np.savez(dst, status=res.status, has_x=res.x is not None,
             x=res.x if res.x is not None else np.zeros(0),
             has_bound=res.mip_dual_bound is not None,
             bound=res.mip_dual_bound if res.mip_dual_bound is not None else np.nan, message=res.message)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
