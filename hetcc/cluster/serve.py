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
        except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise several kinds for a bad body
            raise InputError(f"the body is not a readable .npz ({type(exc).__name__}: {exc}); send "
                             "numpy.savez output") from None
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(f"the .npz lacks input(s) {missing}; it has {sorted(arrays)}; the bundle takes "
                             f"{runtime.signature()}")
        values = []
        for n in names:
            try:
                values.append(torch.from_numpy(arrays[n].copy()))
            except TypeError:
                raise InputError(f"input {n!r} in the .npz is a {arrays[n].dtype} array, not numbers; the "
                                 f"bundle takes {runtime.signature()}") from None
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
    """Requests can be concatenated into one call: every input's first dimension is one and the same
    dynamic size, the rest fixed, and every tensor output's first dimension is that size too (so
    each request's rows can be split back). The rows must not depend on each other, as a batch's
    do not in a model compiled for a dynamic batch."""
    specs = runtime.input_specs
    if not specs or not all(s.shape and isinstance(s.shape[0], str) for s in specs):
        return False
    batch = specs[0].shape[0]
    if any(s.shape[0] != batch or any(isinstance(d, str) for d in s.shape[1:]) for s in specs):
        return False
    outs = [o for name, o in zip(runtime.outputs, runtime.output_specs) if name is not None]
    return all(o is not None and o.shape and o.shape[0] == batch for o in outs)


def run_batch(runtime, requests: list[list[torch.Tensor]]) -> list[list]:
    """Each request's flat outputs: one call for the batch where the bundle allows, else one each."""
    from torch.utils._pytree import tree_leaves as flat_outputs

    if len(requests) > 1 and batchable(runtime):
        sizes = [r[0].shape[0] for r in requests]
        batch = runtime.input_specs[0].shape[0]
        high = min((hi for s in runtime.input_specs for sym, _, hi in s.ranges if sym == batch), default=None)
        if high is None or sum(sizes) <= high:
            joined = [torch.cat(parts) for parts in zip(*requests)]
            outs = flat_outputs(runtime.call_flat(joined))
            # a constant output (not a tensor made from the rows) is the same for every request
            split = [o.split(sizes) if isinstance(o, torch.Tensor) else [o] * len(sizes) for o in outs]
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
    import hetcc
    from hetcc.cluster.model import ensure_ray

    # the replica loads the bundle the same way: what fails there fails here first, with its reason
    runtime = hetcc.load(path, trust_engines=options.get("trust_engines", False)).runtime
    if runtime.state() or runtime.input_updates:
        raise InputError(f"{path} updates state or its inputs in place; serving it from replicas (and "
                         "batching its requests) would split or merge that state: run it with hetcc.load")
    app = application(path, **options)
    ensure_ray()
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name="hetcc", route_prefix="/")
    except Exception as exc:
        serve.shutdown()
        raise InputError(f"Ray Serve could not start the bundle: {str(exc).strip().splitlines()[0]}") from exc
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
                if request.url.path.rstrip("/") == "/health":
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
