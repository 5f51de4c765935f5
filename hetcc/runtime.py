"""The stitched program: runs segments in order, hands tensors between runtimes, frees
intermediates as soon as no later segment needs them, and rebuilds the model's output structure.

A model that updates buffers in place has *state*: values the runtime holds between calls, feeds to
the segments that read them, and replaces by the values the segments compute for them. Calls of a
stateful model take a lock, so concurrent calls run one after another, each seeing the state the
previous one left; calls of a stateless model take none.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from hetcc.errors import HetccError, InputError, InternalError, SegmentError
from hetcc.names import dtype_name
from hetcc.handover import CPU, KEEP, move, parse_output_device, tensor_location


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    """Sizes, with a symbol name (str) for each dimension that may vary at run time."""
    dtype: torch.dtype
    ranges: tuple = ()
    """(symbol, min, max) for the dynamic dimensions."""

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {dtype_name(self.dtype)}[{dims}]"


@dataclass
class Step:
    name: str
    target: str
    run: object
    """Callable(*tensors) -> tuple of tensors."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    frees: tuple[str, ...] = ()
    """Values no later step or output needs once this step has run."""
    location: str = CPU
    """Where the step takes its inputs and leaves its outputs ("cpu", "cuda:0"; hetcc.handover)."""
    input_locations: tuple = ()
    """Per input, where the step reads it, where that differs from ``location`` for some (a
    TensorRT shape tensor is read on the host); () when every input is read at ``location``."""


class Runtime:
    def __init__(self, steps: list[Step], input_specs: list[TensorSpec], outputs: list,
                 const_outputs: dict, in_spec, out_spec, constants: dict[str, torch.Tensor],
                 state: dict[str, torch.Tensor] | None = None,
                 state_updates: dict[str, str] | None = None,
                 input_updates: dict[int, str] | None = None, output_device: str = CPU):
        self.steps = steps
        self.input_specs = input_specs
        self.outputs = outputs
        self.const_outputs = const_outputs
        self.in_spec = in_spec
        self.out_spec = out_spec
        self.constants = constants
        """Weights returned directly as outputs (a model may return a parameter), or that a buffer
        is set to."""
        self.output_specs: list = [None] * len(outputs)
        """Per flattened output: its TensorSpec where known (None for constants)."""
        self.state_updates = dict(state_updates or {})
        """State name -> the value that replaces it after each call."""
        self.input_updates = dict(input_updates or {})
        """Flattened input index -> the value copied into the caller's tensor after each call."""
        missing = set(self.state_updates) ^ set(state or {})
        if missing:
            raise InternalError(f"state {sorted(missing)} has no initial value or no update")
        self._initial = dict(state or {})
        self._state = dict(self._initial)
        self._lock = threading.Lock() if self._state else None
        self.output_device = output_device
        self._on_host = all(step.location == CPU for step in steps)
        """Every step runs on the host: with host inputs and outputs, the loop needs no location
        bookkeeping (the common case)."""
        self._move = move
        keep = {o for o in outputs if o is not None}
        keep.update(self.state_updates.values(), self.input_updates.values())
        last_use: dict[str, int] = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                last_use[name] = i
        for i, step in enumerate(steps):
            step.frees = tuple(n for n, last in last_use.items() if last == i and n not in keep)
        self._signature = "(" + ", ".join(s.describe() for s in input_specs) + ")"
        self._fixed = [s.shape if all(isinstance(d, int) for d in s.shape) else None for s in input_specs]
        self._input_names = tuple(s.name for s in input_specs)
        made = {*self._input_names, *(state or {}), *(o for step in steps for o in step.outputs)}
        unknown = [name for name in outputs if name is not None and name not in made and name not in constants]
        if unknown:
            raise InternalError(f"outputs {unknown} are made by no step and are no constant")
        self._output_plan = [(name, const_outputs[i] if name is None else constants.get(name))
                             for i, name in enumerate(outputs)]
        # The common call, model(t1, t2, ...) -> tensor or tuple, skips pytree (~30 us a call).
        n = len(input_specs)
        self._positional = in_spec == pytree.tree_flatten(((0,) * n, {}))[1]
        self._single_output = out_spec == pytree.tree_flatten(0)[1]
        names = keyword_names(in_spec)
        flat_keywords = names and in_spec == pytree.tree_flatten(((), dict.fromkeys(names, 0)))[1]
        self._keywords = names if flat_keywords and len(names) == n else None
        """The keyword names, when the model takes exactly one tensor per keyword and nothing else."""

    @contextlib.contextmanager
    def watch_copies(self):
        """``with runtime.watch_copies() as copies:`` records each copy the runtime makes between
        host and GPU inside the block as (location, shape, bytes): what a plan's cuts really cost
        per call (benchmarks, the GPU checks, tests)."""
        made, real = [], self._move

        def recorded(x, location):
            made.append((location, tuple(x.shape), x.numel() * x.element_size()))
            return real(x, location)
        self._move = recorded
        try:
            yield made
        finally:
            self._move = real

    @property
    def output_device(self) -> str:
        """Where outputs are returned: "cpu" (default), "cuda:N", or "keep" (where made)."""
        return self._output_device

    @output_device.setter
    def output_device(self, value) -> None:
        self._output_device = parse_output_device(value)

    def signature(self) -> str:
        return self._signature

    def flatten_inputs(self, args, kwargs) -> list[torch.Tensor]:
        if self._positional and not kwargs and len(args) == len(self.input_specs):
            self._check_all(args)
            return list(args)
        if self._keywords and not args and len(kwargs) == len(self._keywords):
            try:  # the common keyword call (a tokenizer's output) skips pytree too
                flat = [kwargs[n] for n in self._keywords]
            except KeyError:
                flat = None
            if flat is not None:
                self._check_all(flat)
                return flat
        flat, spec = pytree.tree_flatten((tuple(args), ordered_kwargs(self.in_spec, kwargs, self._signature)))
        if spec != self.in_spec:
            n_given = len([x for x in flat if isinstance(x, torch.Tensor)])
            raise InputError(
                f"inputs do not match the compiled signature {self.signature()}: got {n_given} "
                f"tensor(s) in a different structure. Call the model the way it was compiled.")
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        if len(tensors) != len(self.input_specs):  # a non-tensor where a tensor belongs
            raise InputError(f"inputs do not match the compiled signature {self.signature()}: got "
                             f"{len(tensors)} tensor(s) for {len(self.input_specs)} tensor inputs")
        self._check_all(tensors)
        return tensors

    def _check_all(self, values) -> None:
        # a CPU tensor of the fixed dtype and shape passes in one comparison each (this is on every
        # call); anything else, or a spec with dynamic dims, gets check_input's full account
        for value, spec, fixed in zip(values, self.input_specs, self._fixed):
            if fixed is None or type(value) is not torch.Tensor or not value.is_cpu \
                    or value.dtype is not spec.dtype or value.shape != fixed:
                check_input(value, spec, self._signature)

    def __call__(self, *args, **kwargs):
        return self._run(self.flatten_inputs(args, kwargs), None)

    def timed_call(self, *args, **kwargs):
        """Like ``__call__``, and also how long each step took: ``(outputs, {step name: seconds})``.
        For benchmarks (``hetcc bench``). A step's time is the wall time of its call, so it includes
        handing the tensors over to that step's runtime, and of the copies the runtime makes into
        it (host <-> GPU); the end-to-end time minus the steps' sum is hetcc's own input checking,
        bookkeeping and the copies of outputs to ``output_device``."""
        seconds: dict[str, float] = {}
        return self._run(self.flatten_inputs(args, kwargs), seconds), seconds

    def call_flat(self, flat, seconds: dict | None = None):
        """Call with the inputs already flat (in ``input_specs`` order), whatever structure the model
        takes them in (keywords, nested): for hetcc's own timing loops. ``seconds``: filled with
        each step's time, as ``timed_call`` does."""
        flat = list(flat)
        if len(flat) != len(self.input_specs):
            raise InputError(f"expected {len(self.input_specs)} flat inputs {self._signature}, got {len(flat)}")
        self._check_all(flat)
        return self._run(flat, seconds)

    def flat_outputs(self, flat) -> list:
        """The model's outputs of one call on flat inputs, flat, in output order, wherever the
        segments left them (for checks that compare values); the state stays as it was."""
        flat = list(flat)
        self._check_all(flat)
        _, env = self._execute(flat, None, self.state() or None)
        return self._outputs_of(env)

    def timed_flat(self, *flat):
        """``call_flat`` that also returns each step's time, as ``timed_call`` does."""
        seconds: dict[str, float] = {}
        return self.call_flat(flat, seconds), seconds

    def state(self) -> dict[str, torch.Tensor]:
        """The current state (name -> tensor), as the next call will read it."""
        if self._lock is None:
            return {}
        with self._lock:
            return dict(self._state)

    def reset_state(self) -> None:
        """Return the state to what it was when the model was compiled or loaded."""
        if self._lock is not None:
            with self._lock:
                self._state = dict(self._initial)

    def _run(self, flat, seconds: dict | None):
        if self._lock is None:
            out, env = self._execute(flat, seconds, None)
        else:
            with self._lock:
                out, env = self._execute(flat, seconds, self._state)
                reachable = _storages(flat, out)
                self._state = {name: self._new_state(name, env, reachable) for name in self._state}
        if self.input_updates:
            self._update_inputs(flat, env)
        return out

    def _value(self, name: str, env: dict):
        return env[name] if name in env else self.constants[name]

    def _new_state(self, name: str, env: dict, reachable: set) -> torch.Tensor:
        value = self._value(self.state_updates[name], env)
        # a new state the caller can also reach (an input, an output, or a view of either: a
        # runtime may return a view of the new state) is copied, so that changing that tensor
        # later does not change the model's state
        if value.untyped_storage().data_ptr() in reachable:
            return value.clone()
        return value

    def _update_inputs(self, flat, env) -> None:
        """As eager's in-place ops would have: the caller's tensors get their new values. All new
        values are read before any is written, since one may be another input's old value."""
        new = [(flat[i], self._value(src, env)) for i, src in self.input_updates.items()]
        new = [(dst, src.clone() if any(src is x for x in flat) else src) for dst, src in new]
        with torch.no_grad():
            for dst, src in new:
                dst.copy_(src)

    def _execute(self, flat, seconds: dict | None, state: dict | None):
        # the plain loop when nothing leaves the host; any copy (a step on a GPU, a caller's GPU
        # input, outputs asked on a GPU) goes through the one loop that tracks locations
        if self._on_host and self._output_device in (CPU, KEEP) and all(x.is_cpu for x in flat):
            return self._execute_on_host(flat, seconds, state)
        return self._execute_located(flat, seconds, state)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The flat inputs' value names, in ``input_specs`` order."""
        return self._input_names

    def run_step(self, step: Step, args):
        """One step on its inputs (at its location), a vendor's error told as the step's: for
        running this runtime's steps elsewhere (hetcc/cluster, one stage per process)."""
        return self._call(step, args, None)

    def assemble(self, env: dict):
        """The model's outputs, in its own structure, from the values ``env`` holds (constants and
        non-tensor outputs filled in)."""
        return self._structure(self._outputs_of(env))

    def _outputs_of(self, env: dict) -> list:
        """The flat outputs, from the values ``env`` holds (constants and non-tensor outputs
        filled in), where the steps left them."""
        return [env[name] if name in env else fixed for name, fixed in self._output_plan]

    def _call(self, step, args, seconds):
        try:
            if seconds is None:
                return step.run(*args)
            start = time.perf_counter()
            outs = step.run(*args)
            seconds[step.name] = time.perf_counter() - start
            return outs
        except HetccError as exc:
            if not getattr(exc, "segment", ""):  # which segment raised it, for a caller that acts on it
                exc.segment = step.name
            raise
        except Exception as exc:  # the vendor runtime's own error: say which segment and target
            raise SegmentError.at_call(step.name, step.target, exc) from exc

    def _execute_on_host(self, flat, seconds, state):
        env: dict[str, torch.Tensor] = dict(zip(self._input_names, flat))
        if state:
            env.update(state)
        for step in self.steps:
            outs = self._call(step, [env[n] for n in step.inputs], seconds)
            env.update(zip(step.outputs, outs))
            for name in step.frees:
                env.pop(name, None)
        # outputs: from the environment, else a constant (a weight returned as is, or a non-tensor)
        return self._structure(self._outputs_of(env)), env

    def _execute_located(self, flat, seconds, state):
        """The loop for plans with a step off the host: each value is tagged with where it lives,
        and a step whose location differs gets a copy, made once per (value, location) and
        dropped with the value."""
        env: dict[str, torch.Tensor] = dict(zip(self._input_names, flat))
        where = {n: tensor_location(x) for n, x in env.items()}
        if state:
            env.update(state)
            where.update((n, tensor_location(x)) for n, x in state.items())
        copies: dict[str, dict[str, torch.Tensor]] = {}

        def at(name, location, value):
            if where.get(name, CPU) == location:
                return value
            held = copies.setdefault(name, {})
            if location not in held:
                held[location] = self._move(value, location)
            return held[location]

        for step in self.steps:
            loc = step.location
            reads = step.input_locations or (loc,) * len(step.inputs)
            start = time.perf_counter()
            outs = self._call(step, [at(n, r, env[n]) for n, r in zip(step.inputs, reads, strict=True)], None)
            if seconds is not None:  # the copies into the step count as the step's, as its hand-over does
                seconds[step.name] = time.perf_counter() - start
            env.update(zip(step.outputs, outs))
            where.update(dict.fromkeys(step.outputs, loc))
            for name in step.frees:
                env.pop(name, None)
                copies.pop(name, None)
        flat_out = []
        for name, fixed in self._output_plan:
            value = env[name] if name in env else fixed
            if isinstance(value, torch.Tensor) and self._output_device != KEEP:
                if name not in where:  # a constant: it lives where it was loaded
                    where[name] = tensor_location(value)
                value = at(name, self._output_device, value)
            flat_out.append(value)
        return self._structure(flat_out), env

    def _structure(self, flat_out):
        if self._single_output:
            return flat_out[0]
        return pytree.tree_unflatten(flat_out, self.out_spec)


def keyword_names(in_spec) -> list | None:
    """The keyword inputs' names in the order the program takes them; None when it takes none."""
    if in_spec.type is not tuple or in_spec.num_children != 2 or in_spec.child(1).type is not dict:
        return None
    return list(in_spec.child(1).context) or None


def ordered_kwargs(in_spec, kwargs: dict, signature: str = "") -> dict:
    """``kwargs`` in the program's order (a caller may name them in any order), or an InputError
    naming the keywords that are missing or unexpected."""
    names = keyword_names(in_spec) or []
    if list(kwargs) == names:
        return dict(kwargs)
    missing = [n for n in names if n not in kwargs]
    extra = [n for n in kwargs if n not in names]
    if missing or extra:
        said = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unexpected {', '.join(extra)}" if extra else "") if part)
        takes = (f"call it as model({', '.join(n + '=...' for n in names)})" if names
                 else "it takes no keyword inputs")
        tail = f"; signature {signature}" if signature else ""
        raise InputError(f"keyword inputs do not match the compiled model ({said}): {takes}{tail}")
    return {n: kwargs[n] for n in names}


def _storages(*trees) -> set:
    """The memory (storage addresses) of every tensor in ``trees``: what the caller holds."""
    return {x.untyped_storage().data_ptr() for x in pytree.tree_leaves(trees) if isinstance(x, torch.Tensor)}


def check_input(value, spec: TensorSpec, signature: str) -> None:
    where = f"input {spec.name!r}"
    if not isinstance(value, torch.Tensor):
        raise InputError(f"{where} must be a torch.Tensor, got {type(value).__name__}; signature {signature}")
    if value.device.type not in ("cpu", "cuda"):
        raise InputError(f"{where} is on {value.device}, but this program takes CPU or CUDA tensors; "
                         f"move it with .cpu(); signature {signature}")
    if value.dtype != spec.dtype:
        raise InputError(f"{where} has dtype {dtype_name(value.dtype)}, expected "
                         f"{dtype_name(spec.dtype)}; signature {signature}")
    if value.dim() != len(spec.shape):
        raise InputError(f"{where} has {value.dim()} dimensions {tuple(value.shape)}, expected "
                         f"{len(spec.shape)}; signature {signature}")
    ranges = {sym: (lo, hi) for sym, lo, hi in spec.ranges}
    for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
        if isinstance(want, str):
            lo, hi = ranges.get(want, (0, 2**63))
            if not lo <= got <= hi:
                raise InputError(f"{where} dimension {axis} is {got}, outside the compiled range "
                                 f"{want} in [{lo}, {hi}]; signature {signature}")
        elif got != want:
            raise InputError(f"{where} dimension {axis} is {got}, expected {want} (compiled as a "
                             f"fixed size; pass dynamic_shapes to compile to vary it); "
                             f"signature {signature}")
