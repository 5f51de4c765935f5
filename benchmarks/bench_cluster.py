"""A two-stage plan pipelined across two Ray actors against one process, side by side in one run.

    python benchmarks/bench_cluster.py [--requests 60] [--rounds 5] [--width 1024 --depth 8 --batch 64]
                                       [--json out.json]

The model is two equal halves (a stack of Linear+ReLU each), the first pinned to ONNX Runtime and
the second to OpenVINO, so the plan has two balanced stages. A local Ray cluster of two nodes with
one CPU each stands in for two devices (each stage's runtime runs one thread). Measured, in
interleaved rounds (medians and the spread over rounds):

- throughput of ``--requests`` requests: one process calling the bundle in turn (its runtimes on one
  thread each, as in the actors, and on the default threads), against the actors pipelined, with
  one Ray task per stage and request or over a Ray compiled graph;
- the latency one request adds per hop (one request through the actors, alone, minus one process);
- each stage's time as the actors measured it against the cost model's prediction for its segment.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import hetcc

WIDTH, DEPTH, BATCH = 1024, 8, 64
"""Each half ~1 GFLOP a request: ~20 ms on one core here, well above Ray's per-hop cost (~2 ms)."""


class Halves(nn.Module):
    def __init__(self, width=WIDTH, depth=DEPTH):
        super().__init__()
        self.a = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])
        self.b = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])

    def forward(self, x):
        return self.b(self.a(x))


def _compile(model, x, threads: int | None):
    options = {} if threads is None else {"onnxruntime": {"threads": threads}, "openvino": {"threads": threads}}
    return hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "openvino:cpu"], tune="off",
                         pins={"a": "onnxruntime:cpu", "b": "openvino:cpu"}, backend_options=options)


def _spread(values):
    ordered = sorted(values)
    return statistics.median(values), ordered[0], ordered[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=WIDTH, help="features of each Linear")
    parser.add_argument("--depth", type=int, default=DEPTH, help="Linear+ReLU layers per half")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per request")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    import ray
    from ray.cluster_utils import Cluster

    from hetcc.cluster import distribute

    torch.manual_seed(0)
    model = Halves(args.width, args.depth).eval()
    x = torch.randn(args.batch, args.width)
    one_thread, default = _compile(model, x, 1), _compile(model, x, None)
    path = one_thread.save(Path(tempfile.mkdtemp()) / "halves.bundle")
    requests = [(torch.randn(args.batch, args.width),) for _ in range(args.requests)]
    # two units of each device: the plain and the compiled-graph actors are alive side by side
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"dev_a": 2}})
    nodes.add_node(num_cpus=1, resources={"dev_b": 2})
    ray.init(address=nodes.address, include_dashboard=False, logging_level="ERROR")
    figures = {"one process, 1 thread per runtime": [], "one process, default threads": [],
               "two actors, pipelined": [], "two actors, compiled graph": []}
    hop, stage_seconds = [], [[], []]
    try:
        places = {"onnxruntime:cpu": {"dev_a": 1}, "openvino:cpu": {"dev_b": 1}}
        # an actor belongs to one compiled graph: each way gets its own two actors
        with distribute(path, resources=places) as dm, distribute(path, resources=places, compiled_graph=True) as dg:
            dm.map(requests[:10])  # warm-up
            dg.map(requests[:10])
            for _ in range(args.rounds):
                start = time.perf_counter()
                dg.map(requests)
                figures["two actors, compiled graph"].append(args.requests / (time.perf_counter() - start))
                for name, cm in (("one process, 1 thread per runtime", one_thread),
                                 ("one process, default threads", default)):
                    start = time.perf_counter()
                    for r in requests:
                        cm(*r)
                    figures[name].append(args.requests / (time.perf_counter() - start))
                start = time.perf_counter()
                got = dm.map(requests)
                figures["two actors, pipelined"].append(args.requests / (time.perf_counter() - start))
                torch.testing.assert_close(got[-1], one_thread(*requests[-1]), rtol=1e-4, atol=1e-4)
                for spans in dm.trace[-args.requests:]:
                    for i, (a, b) in enumerate(spans):
                        stage_seconds[i].append(b - a)
                alone = []
                for r in requests[:10]:
                    t0 = time.perf_counter()
                    dm(*r)
                    t1 = time.perf_counter()
                    one_thread(*r)
                    alone.append((t1 - t0) - (time.perf_counter() - t1))
                hop.append(statistics.median(alone) / 2)
    finally:
        ray.shutdown()
        nodes.shutdown()
    base = statistics.median(figures["one process, default threads"])
    print(f"two halves of {args.depth} Linear({args.width})+ReLU, batch {args.batch}; {args.requests} requests x "
          f"{args.rounds} interleaved rounds; local Ray cluster of 2 one-CPU nodes on this machine; "
          "median [min-max]")
    table = {}
    for name, values in figures.items():
        med, low, high = _spread(values)
        table[name] = {"requests_per_s": med, "min": low, "max": high}
        print(f"  {name:<36} {med:8.1f} requests/s [{low:.1f}-{high:.1f}]  {med / base:5.2f}x")
    print(f"  latency added per hop (one request alone): {statistics.median(hop) * 1e3:.2f} ms")
    for i, seg in enumerate(one_thread.plan.segments):
        measured = statistics.median(stage_seconds[i])
        print(f"  stage {i} ({seg.target}): measured {measured * 1e3:.2f} ms, predicted "
              f"{seg.predicted_seconds * 1e3:.2f} ms")
        table[f"stage {i}"] = {"measured_ms": measured * 1e3, "predicted_ms": seg.predicted_seconds * 1e3}
    table["hop_ms"] = statistics.median(hop) * 1e3
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
