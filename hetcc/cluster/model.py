"""A bundle run with its stages in Ray actors, requests pipelined (docs/cluster.md).

    import ray, hetcc.cluster
    ray.init(address="auto")                      # or nothing: a local Ray is started
    with hetcc.cluster.distribute("model.bundle", resources={"openvino:cpu": {"node_a": 1}}) as dm:
        y = dm(x)                                 # one request, through every stage
        ys = dm.map([(x1,), (x2,), (x3,)])        # pipelined: stage 1 runs x2 while stage 2 runs x1

Each stage (hetcc/cluster/stages.py) is one actor that loads the bundle from its path and keeps its
own steps; an actor runs one call at a time, so consecutive requests overlap across stages and the
busiest stage bounds throughput, as the planner's throughput objective assumes. Values cross
between actors through Ray's object store.
"""
from __future__ import annotations

import time
from pathlib import Path

from hetcc.cluster.stages import Stage, cut
from hetcc.errors import HetccError, InputError

SPANS = "__hetcc_stage_spans__"
"""Key of the (start, end) times the stages add to what they hand on."""
IN_FLIGHT = 8
"""Requests a compiled graph holds in flight at once (each stage can work on one while the others
wait in its channel)."""
WAIT_SECONDS = 600.0
"""How long a call waits for its result before it is reported as stuck (never forever)."""


class ClusterError(HetccError):
    """A stage's actor died or did not answer; the request did not complete."""


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("running on Ray needs Ray: pip install 'hetcc[ray]' (or pip install ray)") from None
    return ray


def ensure_ray():
    """The Ray the caller started (ray.init), or a local one."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="ERROR")
    return ray


class _Stage:
    """The actor's body: one stage of one bundle (made a Ray actor class in ``_actor_class``)."""

    def __init__(self, path: str, steps: tuple, forward: tuple, trust_engines: bool):
        import hetcc

        # only this stage's segments: a CPU node need not have the GPU another stage runs on
        runtime = hetcc.load(path, trust_engines=trust_engines, segments=set(steps)).runtime
        mine = set(steps)
        self._runtime = runtime
        self._steps = [s for s in runtime.steps if s.name in mine]
        self._forward = forward

    def run(self, env: dict) -> dict:
        from hetcc.handover import move, tensor_location

        started = time.time()
        env = dict(env)
        spans = env.pop(SPANS, [])
        for step in self._steps:
            args = [env[n] if n in env else self._runtime.constants[n] for n in step.inputs]
            places = step.input_locations or (step.location,) * len(args)  # TensorRT: shapes on the host
            args = [x if tensor_location(x) == where else move(x, where) for x, where in zip(args, places)]
            env.update(zip(step.outputs, self._runtime.run_step(step, args)))
            for name in step.frees:
                env.pop(name, None)
        # what leaves the actor is on the host: another process cannot take this one's GPU tensor
        out = {n: move(env[n], "cpu") for n in self._forward if n in env}
        out[SPANS] = [*spans, (started, time.time())]
        return out

    def ready(self) -> tuple[str, int]:
        """The Ray node and the process this stage runs in, once it has loaded its steps."""
        import os

        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()


_ACTOR = None


def _actor_class():
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = _ray().remote(_Stage)
    return _ACTOR


class DistributedModel:
    def __init__(self, path, resources: dict | None = None, split_after=None, trust_engines: bool = False,
                 wait_seconds: float = WAIT_SECONDS, compiled_graph: bool = False):
        import hetcc

        self.path = str(Path(path).resolve())
        self.wait_seconds = wait_seconds
        # every file checked once here; no segment loaded: the driver needs none of the devices
        local = hetcc.load(self.path, trust_engines=trust_engines, segments=())
        runtime = local.runtime
        if runtime.state() or runtime.input_updates:
            raise InputError(f"{path} updates state or its inputs in place; a stateful model runs in "
                             "one process (hetcc.load), not across actors")
        self._runtime = runtime
        self.stages: list[Stage] = cut(runtime.steps, runtime.outputs, split_after)
        ray = ensure_ray()
        actor = _actor_class()
        options = [_options(stage, resources or {}) for stage in self.stages]
        _check_resources(ray.cluster_resources(), options)
        self._actors = []
        try:
            for stage, option in zip(self.stages, options):
                self._actors.append(actor.options(**option).remote(self.path, stage.steps, stage.forward,
                                                                  trust_engines))
            where = self._get([a.ready.remote() for a in self._actors], "starting the stages")
            self.nodes = [node for node, _ in where]
            """Per stage, the id of the Ray node its actor runs on."""
            self.pids = [pid for _, pid in where]
            """Per stage, its actor's process id (on its node)."""
            self._graph = _compiled_graph(self._actors) if compiled_graph else None
        except BaseException:
            self.close()
            raise
        self.trace: list[list[tuple[float, float]]] = []
        """Per finished request, each stage's (start, end) wall-clock time (time.time on its node)."""

    # ---- calls -------------------------------------------------------------------------------

    def submit(self, *args, **kwargs):
        """Start one request; returns a Ray ObjectRef of the last stage's values (``result``)."""
        if not self._actors:
            raise ClusterError("this DistributedModel is closed")
        flat = self._runtime.flatten_inputs(args, kwargs)
        ref = dict(zip(self._runtime.input_names, flat))
        if self._graph is not None:
            try:
                return self._graph.execute(ref)
            except _ray().exceptions.RayError as exc:
                raise ClusterError(f"the compiled graph took no more requests ({_first_line(exc)}); collect "
                                   "the results of those in flight first (at most "
                                   f"{IN_FLIGHT}), or distribute the bundle again") from None
        for actor in self._actors:
            ref = actor.run.remote(ref)
        return ref

    def result(self, ref):
        return self._finish([self._get([ref], "a request")[0]])[0]

    def __call__(self, *args, **kwargs):
        return self.result(self.submit(*args, **kwargs))

    def map(self, requests) -> list:
        """Every request (a tuple of positional inputs each) submitted before any is awaited, so they
        pipeline through the stages; results in order."""
        if self._graph is None:
            refs = [self.submit(*r) for r in requests]
            return self._finish(self._get(refs, f"{len(refs)} requests"))
        # a compiled graph holds a bounded number of requests in flight: collect as they finish
        done, flying = [], []
        for r in requests:
            if len(flying) == IN_FLIGHT:
                done += self._get([flying.pop(0)], "a request")
            flying.append(self.submit(*r))
        return self._finish(done + self._get(flying, f"{len(flying)} requests"))

    def _finish(self, envs) -> list:
        out = []
        for env in envs:
            self.trace.append(env.pop(SPANS, []))
            out.append(self._runtime.assemble(env))
        return out

    def _get(self, refs, what: str):
        ray = _ray()
        try:
            return ray.get(refs, timeout=self.wait_seconds)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"{what} did not finish within {self.wait_seconds:.0f} s; a stage is stuck or "
                               "its node is gone (ray status shows the cluster)") from None
        except ray.exceptions.RayActorError as exc:
            raise ClusterError(f"a stage's actor died during {what}: {_cause(exc)}; the request did not "
                               "complete") from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, HetccError):
                raise cause from None
            raise ClusterError(f"a stage failed running {what}: {_first_line(cause)}") from None
        except ray.exceptions.RayError as exc:  # a compiled graph's channel to a dead actor, ...
            raise ClusterError(f"the stages could not finish {what} ({_first_line(exc)}); the request did "
                               "not complete: distribute the bundle again") from None

    def close(self) -> None:
        """Stop the stages' actors (their processes end); the Ray cluster itself stays."""
        ray = _ray()
        graph, self._graph = getattr(self, "_graph", None), None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:  # noqa: BLE001 - a graph whose actor died tears down as far as it can
                pass
        for actor in getattr(self, "_actors", []):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor already gone is what closing wants
                pass
        self._actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def distribute(path, resources: dict | None = None, split_after=None, trust_engines: bool = False,
               wait_seconds: float = WAIT_SECONDS, compiled_graph: bool = False) -> DistributedModel:
    """Run the bundle at ``path`` with one Ray actor per stage. ``resources``: {target: Ray
    resources} for the stages holding that target (e.g. {"torch:cuda:0": {"num_gpus": 1},
    "openvino:cpu": {"host_b": 1}}); by default a GPU target asks for one GPU and others for one
    CPU. ``split_after``: step names to cut stages after, instead of one stage per run of a target.
    The bundle's path must be readable on every node. ``compiled_graph``: hand values between the
    stages over Ray's compiled-graph channels (shared memory on one node) instead of one actor
    task per stage and request: lower cost per hop, at most IN_FLIGHT requests in flight."""
    return DistributedModel(path, resources, split_after, trust_engines, wait_seconds, compiled_graph)


def _compiled_graph(actors):
    from ray.dag import InputNode

    with InputNode() as request:
        node = request
        for actor in actors:
            node = actor.run.bind(node)
    return node.experimental_compile(_max_inflight_executions=IN_FLIGHT)


def _options(stage: Stage, resources: dict) -> dict:
    from hetcc.target import Target

    asked: dict = {}
    gpus = {(t.device, t.index) for t in map(Target.parse, stage.targets) if t.device != "cpu"}
    for target in stage.targets:
        wanted = resources.get(target)
        if wanted is None:
            wanted = {"num_gpus": len(gpus)} if Target.parse(target).device != "cpu" else {"num_cpus": 1}
        if not isinstance(wanted, dict):
            raise InputError(f"resources[{target!r}] must be a dict of Ray resources, e.g. {{'num_gpus': 1}}")
        for key, value in wanted.items():
            asked[key] = max(asked.get(key, 0), value)
    options = {k: asked.pop(k) for k in ("num_cpus", "num_gpus") if k in asked}
    options.setdefault("num_cpus", 0 if asked else 1)
    if asked:
        options["resources"] = asked
    if gpus:
        # the stage's targets name the node's own GPU indices (torch:cuda:1): Ray must not renumber
        # the GPUs the actor sees, as it does by setting CUDA_VISIBLE_DEVICES
        options["runtime_env"] = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    return options


def _check_resources(cluster: dict, options: list[dict]) -> None:
    """A stage asking for a resource no node of the cluster has would wait forever: refuse it now.
    (One a busy node has waits until the node frees it, up to wait_seconds.)"""
    have = ", ".join(f"{k}={v:g}" for k, v in sorted(cluster.items()) if not k.startswith("node:")
                     and not k.startswith("memory") and k != "object_store_memory")
    total: dict = {}
    for i, option in enumerate(options):
        wanted = {**option.get("resources", {}), "CPU": option.get("num_cpus", 0), "GPU": option.get("num_gpus", 0)}
        short = {k: v for k, v in wanted.items() if v and cluster.get(k, 0) < v}
        if short:
            raise InputError(f"stage {i} asks for {short}, which this Ray cluster does not have (it has "
                             f"{have}); give resources= for its targets, or start nodes that have them")
        for k, v in wanted.items():
            total[k] = total.get(k, 0) + v
    short = {k: v for k, v in total.items() if v and cluster.get(k, 0) < v}
    if short:
        raise InputError(f"the {len(options)} stages together ask for {short}, more than this Ray cluster "
                         f"has ({have}); give resources= that fit, or cut fewer stages (split_after=)")


def _cause(exc) -> str:
    """The reason in a Ray actor error: the hetcc error that killed the actor's constructor (its
    last line names it), else the first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if ln.startswith("hetcc.errors.")]
    return named[-1].removeprefix("hetcc.errors.") if named else (lines[0] if lines else type(exc).__name__)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
