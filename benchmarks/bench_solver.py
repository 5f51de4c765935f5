"""Time the placement solver against graph size on transformer-like graphs (no torch needed).

    python benchmarks/bench_solver.py [--nodes 1000,5000,10000,40000] [--seed 0] [--time-limit 60]
                                      [--milp] [--objective latency|throughput]

The graph is a chain of decoder layers with the DAG shape of a real one: a LayerNorm fanning out
to q/k/v, attention, output projection, a residual add that reaches back over the block, a second
LayerNorm fanning out to up/gate, the MLP, and a second residual add; one host-produced mask read
by every attention node; logits back to the host. Three targets (a fast GPU, a second accelerator,
the CPU) with per-node costs 1e-6..1e-3 s, values 1e3..1e7 bytes, and per-node noise so the best
placement is split. Four variants per size: layers that differ (each its own kernel-quality
factors and noise) or are alike (as in a real model), each with capacities that never bind or with
a GPU that holds 40% of the weights. Per variant one line: wall time of ``solve`` (which places
graphs of DP_MIN_NODES nodes or more by the layer DP of hetcc/passes/frontier.py), the method,
cost, proven lower bound and gap; ``--milp`` also times the MILP alone with the time limit, for
comparison. ``--objective throughput`` times ``solve_pipeline`` instead (requests pipelined over
the targets: the cost is the busiest target's seconds per request). Nothing here is a test.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time

from hetcc.passes.pipeline import solve_pipeline
from hetcc.passes.problem import HOST, PlacementProblem, Value
from hetcc.passes.solve import solve

TARGETS = ("tensorrt:cuda:0", "migraphx:rocm:0", "torch:cpu")
# Speed of each target relative to the GPU, by kind of op: (gpu, second accelerator, cpu).
SLOWDOWN = {"matmul": (1.0, 1.3, 12.0), "attn": (1.0, 1.1, 15.0), "norm": (1.0, 0.8, 2.0),
            "elementwise": (1.0, 0.7, 1.2)}
BASE = {"matmul": (2e-5, 8e-5), "attn": (3e-5, 6e-5), "norm": (2e-6, 6e-6), "elementwise": (1e-6, 4e-6)}


def transformer_problem(n_nodes: int, seed: int = 0, gpu_share: float | None = None,
                        alike: bool = False) -> PlacementProblem:
    """A decoder-like DAG with about ``n_nodes`` nodes. ``gpu_share``: the GPU holds only that
    fraction of all resident weight bytes (None: capacities never bind). ``alike``: every layer
    has the same costs, weights and bytes, as the layers of a real model do (by default each
    layer gets its own kernel-quality factors and noise)."""
    rng = random.Random(seed)
    drawn: dict = {}

    def place(name: str) -> str:
        return name.split(".", 1)[-1]  # "l7.q" -> "q": the same place in every layer

    def same(key, draw):
        """``draw()``, or for alike layers the value drawn for this place in the first layer."""
        if not alike:
            return draw()
        if key not in drawn:
            drawn[key] = draw()
        return drawn[key]
    names: list[str] = []
    layer_of: list[int] = []
    kinds: list[str] = []
    resident: list[int] = []
    values: list[Value] = []
    consumers: dict[int, list[int]] = {}

    def node(name: str, kind: str, inputs: list[int], weights: int = 0) -> int:
        i = len(names)
        names.append(name)
        layer_of.append(layer)
        kinds.append(kind)
        resident.append(same(("w", place(name)), lambda: weights))
        for j in inputs:
            consumers.setdefault(j, []).append(i)
        return i

    hidden = 4096 * 2 * rng.choice([4, 16, 64])  # bytes of one activation row block
    layer = 0
    tokens = node("embed", "elementwise", [], weights=rng.randint(10**7, 10**8))
    mask_consumers: list[int] = []
    x = tokens
    while len(names) + 14 <= n_nodes - 2:
        w = lambda: rng.randint(10**6, 10**7)  # noqa: E731
        ln1 = node(f"l{layer}.ln1", "norm", [x], weights=rng.randint(10**3, 10**4))
        q = node(f"l{layer}.q", "matmul", [ln1], w())
        k = node(f"l{layer}.k", "matmul", [ln1], w())
        v = node(f"l{layer}.v", "matmul", [ln1], w())
        rope = node(f"l{layer}.rope", "elementwise", [q, k])
        attn = node(f"l{layer}.attn", "attn", [rope, v])
        mask_consumers.append(attn)
        o = node(f"l{layer}.o", "matmul", [attn], w())
        add1 = node(f"l{layer}.add1", "elementwise", [x, o])
        ln2 = node(f"l{layer}.ln2", "norm", [add1], weights=rng.randint(10**3, 10**4))
        up = node(f"l{layer}.up", "matmul", [ln2], w())
        gate = node(f"l{layer}.gate", "matmul", [ln2], w())
        act = node(f"l{layer}.act", "elementwise", [gate])
        mul = node(f"l{layer}.mul", "elementwise", [up, act])
        down = node(f"l{layer}.down", "matmul", [mul], w())
        x = node(f"l{layer}.add2", "elementwise", [add1, down])
        layer += 1
    norm = node("final_norm", "norm", [x], weights=10**4)
    head = node("lm_head", "matmul", [norm], weights=rng.randint(10**7, 5 * 10**7))
    n = len(names)

    # A value per producer (rope emits q and k as one value here), bytes 1e3..1e7.
    values.append(Value(HOST, (tokens,), rng.randint(10**3, 10**4)))
    values.append(Value(HOST, tuple(mask_consumers), rng.randint(10**4, 10**5)))
    for i in range(n):
        cons = tuple(sorted(consumers.get(i, [])))
        nbytes = same(("b", place(names[i])), lambda: min(10**7, max(10**3, int(hidden * rng.uniform(0.5, 2.0)))))
        values.append(Value(i, cons, nbytes, to_host=(i == head)))

    # Kernel quality varies by layer shape: per layer and target a factor, per node some noise.
    layer_factor = [(1.0, rng.uniform(0.5, 1.6), rng.uniform(0.8, 1.2)) for _ in range(layer + 1)]
    if alike:
        layer_factor = [layer_factor[0]] * len(layer_factor)

    def cost_row(i: int, kind: str) -> tuple:
        lo, hi = BASE[kind]
        base = rng.uniform(lo, hi)
        f = layer_factor[layer_of[i]]
        row = [min(1e-3, max(1e-6, base * s * f[t] * rng.uniform(0.8, 1.25)))
               for t, s in enumerate(SLOWDOWN[kind])]
        if kind == "attn" and rng.random() < 0.3:
            row[1] = math.inf  # the second accelerator lacks this attention variant
        return tuple(row)

    cost = [same(("c", place(names[i])), lambda: cost_row(i, kind)) for i, kind in enumerate(kinds)]

    total = sum(resident)
    if gpu_share is None:
        capacity = (math.inf, math.inf, math.inf)
    else:
        capacity = (gpu_share * total, 0.5 * total, math.inf)
    # Locations: gpu, accel, cpu, host. The CPU shares memory with the host.
    gbps = 1e9
    bw = ((math.inf, 8 * gbps, 25 * gbps, 25 * gbps),
          (8 * gbps, math.inf, 16 * gbps, 16 * gbps),
          (25 * gbps, 16 * gbps, math.inf, math.inf),
          (25 * gbps, 16 * gbps, math.inf, math.inf))
    lat = ((0, 3e-5, 1e-5, 1e-5), (3e-5, 0, 1.5e-5, 1.5e-5), (1e-5, 1.5e-5, 0, 0), (1e-5, 1.5e-5, 0, 0))
    overhead = (5e-6, 1e-5, 1e-6, 0.0)
    return PlacementProblem(tuple(names), TARGETS, tuple(cost), tuple(values), tuple(resident), capacity,
                            lat, bw, overhead, meta={"generator": "bench_solver", "seed": seed})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1000,5000,10000,40000",
                    help="comma-separated graph sizes (default: 1000,5000,10000,40000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds for each solve (default 60)")
    ap.add_argument("--milp", action="store_true", help="also time the MILP alone on each variant")
    ap.add_argument("--objective", choices=("latency", "throughput"), default="latency",
                    help="latency: solve(); throughput: solve_pipeline(), cost = the bottleneck")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",")]
    # Imported once per process by the first solve that needs an LP (0.5 s here): paid before
    # the clock starts so that it does not land on whichever variant happens to come first.
    import scipy.optimize  # noqa: F401
    print(f"{'layers':<8}{'capacity':<10}{'nodes':>7}{'seconds':>9}{'cost (s)':>13}{'lower bound':>13}"
          f"{'gap':>10}  method")
    for n in sizes:
        for alike in (False, True):
            for share in (None, 0.4):
                p = transformer_problem(n, args.seed, share, alike=alike)
                place = solve if args.objective == "latency" else solve_pipeline
                runs = [("solve", lambda: place(p, time_limit=args.time_limit))]
                if args.milp:
                    runs.append(("milp", lambda: place(p, time_limit=args.time_limit, large_graphs=False)))
                for label, run in runs:
                    t0 = time.perf_counter()
                    r = run()
                    wall = time.perf_counter() - t0
                    method = r.method + (" (proven optimal)" if r.optimal else "")
                    print(f"{'alike' if alike else 'differ':<8}{'gpu 40%' if share else 'free':<10}{p.n:>7}"
                          f"{wall:>9.2f}{r.cost:>13.7g}{r.lower_bound:>13.7g}{r.gap:>10.2e}  "
                          f"{method}{'' if label == 'solve' else '  [MILP alone]'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
