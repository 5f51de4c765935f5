"""`hetcc serve`: a bundle behind HTTP with Ray Serve, requests batched as they come
(hetcc/cluster/serve.py, docs/cluster.md)."""
from __future__ import annotations

import sys
import time

EPILOG = ("example:\n  hetcc serve mlp.bundle --port 8000 --max-batch 16\n"
          "  curl -s localhost:8000/health\n"
          "  curl -s -X POST localhost:8000/ -d '{\"inputs\": {\"x\": [[0.1, 0.2]]}}'\n\n"
          "POST JSON {\"inputs\": {name: values}} or an .npz body (Content-Type: application/x-npz);\n"
          "the answer comes back the same way. Ctrl-C stops the server. Needs pip install 'hetcc[ray]'.")


def add_arguments(p) -> None:
    p.add_argument("bundle", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="requests run together at most (default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--replicas", type=int, default=1, help="copies of the model serving in parallel")
    p.add_argument("--trust-engines", action="store_true",
                   help="load IREE modules and TensorRT/MIGraphX engines another process built")


def cmd_serve(args) -> int:
    from hetcc.cluster.serve import start

    url = start(args.bundle, host=args.host, port=args.port, max_batch=args.max_batch,
                batch_wait_ms=args.batch_wait_ms, trust_engines=args.trust_engines, replicas=args.replicas)
    print(f"serving {args.bundle} at {url} (GET {url}health); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
        return 0
