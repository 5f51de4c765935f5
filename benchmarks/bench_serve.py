"""Serving throughput with and without batching, side by side in one run.

    python benchmarks/bench_serve.py [--clients 8] [--requests 40] [--rounds 3]

One bundle (an MLP of 4 Linear(4096)+ReLU, dynamic batch, one row per request) served by
``hetcc serve``'s application twice on this machine: with ``max_batch=1`` (one call per request)
and ``max_batch=16`` (requests that arrive together run as one call). ``--clients`` threads each
send ``--requests`` JSON requests; requests/s over rounds (median [min-max]), interleaved.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
from torch import nn

import hetcc

WIDTH = 4096
"""256 MB of fp32 weights: one row per request is bound by reading them, which a batch shares."""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, clients: int, requests: int) -> float:
    body = json.dumps({"inputs": [torch.randn(1, WIDTH).tolist()]}).encode()
    failed = []

    def client():
        for _ in range(requests):
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as answer:
                    answer.read()
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                failed.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return clients * requests / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from hetcc.cluster.serve import application

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    cm = hetcc.compile(model, (torch.randn(4, WIDTH),), targets=["onnxruntime:cpu"], tune="off",
                       dynamic_shapes=({0: batch},))
    path = cm.save(Path(tempfile.mkdtemp()) / "mlp.bundle")
    ray.init(include_dashboard=False, logging_level="ERROR")
    port = _port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    figures = {1: [], 16: []}
    try:
        for size in figures:
            serve.run(application(path, max_batch=size, batch_wait_ms=2), name=f"b{size}", route_prefix=f"/b{size}")
        for size in figures:  # warm-up
            _load(f"http://127.0.0.1:{port}/b{size}", 2, 5)
        for _ in range(args.rounds):
            for size in figures:
                figures[size].append(_load(f"http://127.0.0.1:{port}/b{size}", args.clients, args.requests))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"MLP 4 x Linear({WIDTH}), one row per request, {args.clients} clients x {args.requests} requests, "
          f"{args.rounds} interleaved rounds on this machine; requests/s, median [min-max]")
    base = statistics.median(figures[1])
    for size, values in figures.items():
        med = statistics.median(values)
        print(f"  max_batch {size:<3} {med:8.1f} [{min(values):.1f}-{max(values):.1f}]  {med / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
