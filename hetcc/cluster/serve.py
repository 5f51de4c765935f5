"""A bundle behind HTTP with Ray Serve, requests batched as they come: ``hetcc serve BUNDLE``
(docs/cluster.md, "Serving").

    POST /        a request: JSON {"inputs": {name: nested list}} (or a list, in input order), or
                  an .npz body (Content-Type: application/x-npz) with one array per input name;
                  the answer is JSON {"outputs": {name: nested list}} or an .npz, as it came
    GET  /health  {"status": "ok", "signature": ...}

Requests that arrive together (up to ``max_batch``, waiting at most ``batch_wait_ms`` for more) run
as one call when the bundle was compiled with a dynamic batch dimension on every input (they are
concatenated along it and the outputs split back), else one after another. A request that does not
match the bundle's signature gets a 400 with what is wrong; it never reaches the runtimes.
"""
from __future__ import annotations

import io
import json

import torch

from hetcc.errors import HetccError, InputError

NPZ = "application/x-npz"


def decode(body: bytes, content_type: str, runtime) -> list[torch.Tensor]:
    """One request's inputs, in the bundle's input order, each checked against its spec."""
    from hetcc.runtime import check_input

    specs = runtime.input_specs
    names = [s.name for s in specs]
    if content_type.split(";")[0].strip() == NPZ:
        import numpy as np

        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"the body is not a readable .npz ({exc}); send numpy.savez output") from None
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(f"the .npz lacks input(s) {missing}; it has {sorted(arrays)}; the bundle takes "
                             f"{runtime.signature()}")
        values = [torch.from_numpy(arrays[n].copy()) for n in names]
    else:
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"the body is not JSON ({exc}); send {{\"inputs\": {{name: values}}}} or an "
                             f".npz with Content-Type {NPZ}") from None
        given = data.get("inputs") if isinstance(data, dict) else None
        if isinstance(given, dict):
            missing = [n for n in names if n not in given]
            if missing:
                raise InputError(f"inputs lacks {missing}; the bundle takes {runtime.signature()}")
            given = [given[n] for n in names]
        if not isinstance(given, list) or len(given) != len(names):
            raise InputError(f"send {{\"inputs\": {{name: values}}}} with the inputs {names} (or a list of "
                             f"{len(names)}); the bundle takes {runtime.signature()}")
        values = []
        for spec, value in zip(specs, given):
            try:
                values.append(torch.tensor(value, dtype=spec.dtype))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"input {spec.name!r} is not a {str(spec.dtype).removeprefix('torch.')} "
                                 f"array ({exc}); the bundle takes {runtime.signature()}") from None
    for value, spec in zip(values, specs):
        check_input(value, spec, runtime.signature())
    return values


def encode(outputs: list[torch.Tensor], names: list[str], npz: bool) -> bytes:
    keys = names if len(names) == len(outputs) else [f"out{i}" for i in range(len(outputs))]
    if npz:
        import numpy as np

        buffer = io.BytesIO()
        np.savez(buffer, **{k: _array(v) for k, v in zip(keys, outputs)})
        return buffer.getvalue()
    return json.dumps({"outputs": {k: _array(v).tolist() for k, v in zip(keys, outputs)}}).encode()


def _array(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    import numpy as np

    return np.asarray(value)


def batchable(runtime) -> bool:
    """Every input has a dynamic first dimension: requests can be concatenated along it."""
    return bool(runtime.input_specs) and all(
        s.shape and isinstance(s.shape[0], str) for s in runtime.input_specs)


def run_batch(runtime, requests: list[list[torch.Tensor]]) -> list[list]:
    """Each request's flat outputs: one call for the batch where the bundle allows, else one each."""
    import torch.utils._pytree as pytree

    def flat_outputs(result):
        return pytree.tree_leaves(result)

    sizes = [r[0].shape[0] for r in requests]
    high = min((hi for s in runtime.input_specs for sym, lo, hi in s.ranges if sym == s.shape[0]),
               default=None)
    if len(requests) > 1 and batchable(runtime) and (high is None or sum(sizes) <= high):
        joined = [torch.cat(parts) for parts in zip(*requests)]
        outs = flat_outputs(runtime.call_flat(joined))
        split = [o.split(sizes) if isinstance(o, torch.Tensor) and o.dim() and o.shape[0] == sum(sizes)
                 else [o] * len(sizes) for o in outs]
        return [[parts[i] for parts in split] for i in range(len(requests))]
    return [flat_outputs(runtime.call_flat(r)) for r in requests]


def application(path, max_batch: int = 8, batch_wait_ms: float = 5.0, trust_engines: bool = False,
                replicas: int = 1):
    """The Ray Serve application serving the bundle at ``path`` (``serve.run`` it)."""
    if not isinstance(max_batch, int) or max_batch < 1 or not batch_wait_ms >= 0:
        raise InputError(f"max_batch must be 1 or more and batch_wait_ms 0 or more, got {max_batch!r} and "
                         f"{batch_wait_ms!r}")
    try:
        from ray import serve
    except ImportError:
        raise InputError("serving needs Ray Serve: pip install 'hetcc[ray]' (ray[serve])") from None
    from pathlib import Path

    # a replica takes in enough requests at once to fill a batch (Ray Serve's default is 5)
    return _deployment(serve).options(num_replicas=replicas, max_ongoing_requests=max(2 * max_batch, 5)).bind(
        str(Path(path).resolve()), max_batch, batch_wait_ms / 1e3, trust_engines)


def start(path, host: str = "127.0.0.1", port: int = 8000, **options) -> str:
    """Serve the bundle at ``path`` on ``host:port`` (starting a local Ray unless one is up);
    returns the URL. ``options`` as for ``application``. ``ray.serve.shutdown()`` stops it."""
    import ray
    from ray import serve

    from hetcc.bundle import read_manifest

    read_manifest(path)  # a path that is no bundle fails here, not in a replica
    app = application(path, **options)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name="hetcc", route_prefix="/")
    return f"http://{host}:{port}/"


def _deployment(serve):
    from starlette.responses import JSONResponse, Response

    @serve.deployment
    class BundleServer:
        def __init__(self, path: str, max_batch: int, wait_s: float, trust_engines: bool):
            import hetcc
            from hetcc.module_paths import leaf_names

            self.runtime = hetcc.load(path, trust_engines=trust_engines).runtime
            self.names = leaf_names(self.runtime.out_spec)
            self.answer.set_max_batch_size(max_batch)
            self.answer.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def answer(self, requests: list) -> list:
            import asyncio

            return await asyncio.to_thread(run_batch, self.runtime, requests)

        async def __call__(self, request):
            if request.method == "GET":
                if request.url.path.rstrip("/").endswith("health"):
                    return JSONResponse({"status": "ok", "signature": self.runtime.signature()})
                return JSONResponse({"error": "POST the inputs to /, or GET /health"}, status_code=404)
            kind = request.headers.get("content-type", "application/json")
            try:
                flat = decode(await request.body(), kind, self.runtime)
            except HetccError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            try:
                outputs = await self.answer(flat)
            except HetccError as exc:
                return JSONResponse({"error": str(exc)}, status_code=500)
            npz = kind.split(";")[0].strip() == NPZ
            return Response(encode(outputs, self.names, npz), media_type=NPZ if npz else "application/json")

    return BundleServer
