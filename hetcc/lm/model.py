"""A causal language model compiled as two phases, and the loop that generates with it.

    lm = hetcc.compile_lm(model, prompt_len=64, max_new_tokens=32,
                          prefill_targets=["openvino:cpu"], decode_targets=["onnxruntime:cpu"])
    out = lm.generate([[1, 15, 27], [1, 99]])
    out.tokens, out.ttft_s, out.tpot_s

Each phase is a ``CompiledModel`` (hetcc.compile) with its own targets and objective: prefill is
timed for time to first token, decode for time per output token. The KV cache lives where the
decode graph reads it (hetcc/lm/kv.py) and crosses from prefill once per batch (the hand-over).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hetcc.errors import InputError
from hetcc.handover import CPU
from hetcc.lm import reuse as prefix_reuse
from hetcc.lm.graphs import DecodeGraph, ExtendGraph, PrefillGraph, check_model
from hetcc.lm.kv import KVCache
from hetcc.lm.prefix import PrefixStore
from hetcc.lm.sampling import Sampling, choose

PREFIX_BYTES = 256 * 2**20
"""Keys and values kept for prefix reuse, by default."""


@dataclass(frozen=True)
class Shape:
    """What both graphs were compiled for; everything the loop needs besides the two models."""
    batch: int
    prompt_len: int
    max_new_tokens: int
    vocab: int
    cache: tuple[tuple[int, ...], ...]
    """Each cached tensor's [batch, kv_heads, slots, head_dim], k_0, v_0, k_1, ..."""
    dtype: str
    stop: tuple[int, ...]
    """Token ids that end a sequence (the model's generation_config.eos_token_id by default)."""
    pad: int
    """Written after a sequence has stopped, and into the padding of a short prompt."""
    chunk: int = 0
    """Tokens the extend graph takes after a stored prefix (0: compiled without prefix reuse)."""

    @property
    def slots(self) -> int:
        return self.prompt_len + self.max_new_tokens

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class Generation:
    """What ``CompiledLM.generate`` returns."""
    tokens: list[list[int]]
    """The new tokens of each prompt, its stop token included (as transformers' generate)."""
    finished: list[str]
    """Per prompt: "stop" (a stop token came) or "length" (max_new_tokens reached)."""
    ttft_s: float
    """Time to first token: prefill, hand-over and the first choice (the first batch's, when the
    prompts took more than one)."""
    tpot_s: float
    """Median time per output token after the first (one decode step and its choice)."""
    handover_s: float
    handover_bytes: int
    """Keys and values copied from prefill into the decode cache (all batches)."""
    seconds: float
    prefix_hits: int = 0
    """Prompts started from a stored prefix instead of a prefill."""
    reused_tokens: int = 0
    """Prompt tokens those prompts did not recompute."""
    step_seconds: list[float] = field(repr=False, default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        made = sum(len(t) for t in self.tokens)
        return made / self.seconds if self.seconds > 0 else 0.0


class CompiledLM:
    def __init__(self, prefill, decode, shape: Shape, extend=None, prefix_bytes: int = PREFIX_BYTES):
        self.prefill, self.decode, self.shape, self.extend = prefill, decode, shape, extend
        self.cache_device = _cache_device(decode)
        self.prefixes = PrefixStore(prefix_bytes) if extend is not None else None
        """Sequences already run, for prefix reuse (None when compiled without it)."""

    def summary(self) -> str:
        """Both phases' plans, one after the other."""
        s = self.shape
        head = (f"causal LM: batch {s.batch}, prompt {s.prompt_len} tokens, up to {s.max_new_tokens} "
                f"new, {s.dtype}; KV cache {_mb(self._cache_bytes())} on {self.cache_device}")
        parts = [head, "prefill (time to first token):", self.prefill.plan.summary(),
                 "decode (time per output token):", self.decode.plan.summary()]
        if self.extend is not None:
            parts += [f"extend ({s.chunk} prompt tokens after a stored prefix):", self.extend.plan.summary()]
        return "\n".join(parts)

    def _cache_bytes(self) -> int:
        dtype = self.shape.torch_dtype
        return sum(torch.Size(c).numel() for c in self.shape.cache) * torch.empty((), dtype=dtype).element_size()

    def generate(self, prompts, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop=None, reuse: bool = True) -> Generation:
        """Generate after each prompt (a list of token ids, a list of such lists, or a 2D LongTensor
        without padding). Greedy unless ``temperature`` > 0; ``stop``: token ids that end a sequence
        (default: the ones compiled in; ``()`` for none). Prompts beyond the compiled batch run in
        further batches, each with its own prefill. ``reuse``: start a batch from stored prefixes
        when every prompt in it has one (compiled with ``prefix_chunk``; hetcc/lm/reuse.py)."""
        sampling = Sampling(temperature, top_k, top_p, seed)
        rows = _prompts(prompts, self.shape)
        limit = self.shape.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(limit, int) or not 1 <= limit <= self.shape.max_new_tokens:
            raise InputError(f"max_new_tokens must be 1 to {self.shape.max_new_tokens} (what this model "
                             f"was compiled for), got {max_new_tokens!r}; compile with a larger "
                             "max_new_tokens for longer outputs")
        stops = set(self.shape.stop if stop is None else _token_ids(stop, "stop", self.shape.vocab))
        generator = sampling.generator(self.cache_device)
        start = time.perf_counter()
        out = Generation([], [], 0.0, 0.0, 0.0, 0, 0.0)
        for first in range(0, len(rows), self.shape.batch):
            self._batch(rows[first:first + self.shape.batch], limit, sampling, generator, stops, out,
                        first == 0, reuse)
        out.seconds = time.perf_counter() - start
        out.tpot_s = statistics.median(out.step_seconds) if out.step_seconds else 0.0
        return out

    def _batch(self, rows, limit, sampling, generator, stops, out: Generation, first: bool,
               reuse: bool) -> None:
        start = time.perf_counter()
        found = None
        if reuse and self.prefixes is not None:
            found = prefix_reuse.find(self.prefixes, rows, self.shape.prompt_len, self.shape.chunk)
        if found is None:
            logits, cache = self._prefill(rows, out)
        else:
            logits, cache = prefix_reuse.start(self.extend, rows, found, self.shape, self.cache_device, out)
        token = choose(logits, sampling, generator)
        if first:
            out.ttft_s = time.perf_counter() - start
        made = [[] for _ in rows]
        done = [False] * len(rows)
        for step in range(limit):
            for i in range(len(rows)):
                if not done[i]:
                    t = int(token[i])
                    made[i].append(t)
                    done[i] = t in stops or len(made[i]) == limit
            if all(done) or step == limit - 1:
                break
            tick = time.perf_counter()
            token = token.to(cache.valid.device)
            stepped = self.decode(token[:, None], cache.position, *cache.inputs())
            cache.append(stepped[1:])
            token = choose(stepped[0], sampling, generator)
            out.step_seconds.append(time.perf_counter() - tick)
        out.tokens += made
        out.finished += ["stop" if m and m[-1] in stops else "length" for m in made]
        if self.prefixes is not None:
            prefix_reuse.remember(self.prefixes, rows, made, cache)

    def _prefill(self, rows, out: Generation):
        """The prompts, left-padded, through the prefill graph; the hand-over into a new cache."""
        s = self.shape
        ids = torch.full((s.batch, s.prompt_len), s.pad, dtype=torch.long)
        mask = torch.zeros(s.batch, s.prompt_len, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, s.prompt_len - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, s.prompt_len - len(row):] = 1
        mask[len(rows):, -1] = 1  # rows that fill the batch: one real token, never read back
        prefilled = self.prefill(ids, mask)
        cache = KVCache([tuple(c) for c in s.cache], s.torch_dtype, self.cache_device)
        seconds, copied = cache.hand_over(prefilled[1:], mask)
        out.handover_s += seconds
        out.handover_bytes += copied
        return prefilled[0], cache

    def save(self, path, overwrite: bool = False) -> Path:
        """Write both phases and the shape to the directory ``path`` (hetcc/lm/bundle.py)."""
        from hetcc.lm.bundle import save

        return save(self, path, overwrite)


def compile_lm(model, prompt_len: int, max_new_tokens: int, batch: int = 1,
               targets=("torch:cpu",), *, prefill_targets=None, decode_targets=None,
               prefill_objective: str = "latency", decode_objective: str = "latency",
               stop=None, seed: int = 0, prefix_chunk: int | None = None,
               prefix_bytes: int = PREFIX_BYTES, **options) -> CompiledLM:
    """Compile a transformers causal LM for generation: the prefill graph (``batch`` prompts of up
    to ``prompt_len`` tokens) on ``prefill_targets`` and the decode graph (one token against a cache
    of ``prompt_len + max_new_tokens`` slots) on ``decode_targets``; both default to ``targets``.
    ``options`` go to hetcc.compile for both phases (tune, rtol, memory_limits, ...); ``seed``
    draws the example prompts the phases are verified on.

    ``prefix_chunk``: also compile the extend graph (up to that many prompt tokens after a stored
    prefix, on the decode targets, where the cache is) and keep each sequence run, up to
    ``prefix_bytes`` of keys and values, so that a prompt sharing a prefix with an earlier one
    skips recomputing it. See docs/generation.md."""
    for name, value in (("prompt_len", prompt_len), ("max_new_tokens", max_new_tokens), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a whole number, 1 or more, got {value!r}")
    if prefix_chunk is not None and (not isinstance(prefix_chunk, int) or isinstance(prefix_chunk, bool)
                                     or not 1 <= prefix_chunk < prompt_len):
        raise InputError(f"prefix_chunk must be a whole number of tokens from 1 to prompt_len - 1 "
                         f"({prompt_len - 1}), got {prefix_chunk!r}")
    check_model(model, prompt_len + max_new_tokens)
    from hetcc.compiler import compile as compile_model

    model = model.eval()
    layers = _layers(model)
    shape, examples = _examples(model, layers, batch, prompt_len, max_new_tokens, stop, seed, prefix_chunk)
    workdir = options.pop("workdir", None)
    decode_targets = decode_targets or targets
    graphs = [("prefill", PrefillGraph(model, layers), examples[0], prefill_targets or targets, prefill_objective),
              ("decode", DecodeGraph(model), examples[1], decode_targets, decode_objective)]
    if prefix_chunk:
        graphs.append(("extend", ExtendGraph(model), examples[2], decode_targets, prefill_objective))
    phases = {}
    for phase, graph, inputs, targets_, objective in graphs:
        where = None if workdir is None else Path(workdir) / phase
        keep = {} if phase == "prefill" else {"output_device": "keep"}
        phases[phase] = compile_model(graph, inputs, targets_, objective=objective, workdir=where,
                                      **(keep | options))
    return CompiledLM(phases["prefill"], phases["decode"], shape, phases.get("extend"), prefix_bytes)


def _layers(model) -> int:
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(text, name, None), int):
            return getattr(text, name)
    raise InputError(f"{type(model).__name__}'s config names no layer count (num_hidden_layers); "
                     "hetcc.compile_lm cannot size its cache")


def _examples(model, layers, batch, prompt_len, max_new_tokens, stop, seed, chunk=None):
    """The shape, and realistic example inputs for the graphs: prompts of different lengths, and
    the decode step's cache filled from an eager prefill of them (verification then compares the
    runtimes on the values they will see). The extend graph's: the prompts' last ``chunk`` tokens
    after the cache of the ones before."""
    vocab = _vocab(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
    mask = torch.ones(batch, prompt_len, dtype=torch.long)
    for i in range(batch):
        mask[i, : (i * prompt_len) // (2 * batch)] = 0
    with torch.no_grad():
        prefilled = PrefillGraph(model, layers)(ids, mask)
    slots = prompt_len + max_new_tokens
    cache_shapes = tuple((*t.shape[:2], slots, t.shape[3]) for t in prefilled[1:])
    dtype = prefilled[1].dtype
    config = model.generation_config
    stops = _token_ids(config.eos_token_id if stop is None else stop, "stop", vocab)
    pad = config.pad_token_id if isinstance(config.pad_token_id, int) else (stops[0] if stops else 0)
    shape = Shape(batch, prompt_len, max_new_tokens, vocab, cache_shapes, str(dtype).removeprefix("torch."),
                  tuple(stops), int(pad), chunk or 0)
    cache = KVCache(list(cache_shapes), dtype, CPU)
    cache.hand_over(prefilled[1:], mask)
    token = prefilled[0].argmax(-1)[:, None]
    decode_inputs = (token, cache.position.clone(), *(t.clone() for t in cache.inputs()))
    if not chunk:
        return shape, ((ids, mask), decode_inputs)
    head = prompt_len - chunk
    cache.valid[:, head:] = 0  # the chunk's slots are what the extend graph computes
    position = (mask.cumsum(-1) - 1).clamp(min=0)[:, head:]
    extend_inputs = (ids[:, head:].clone(), mask[:, head:].clone(), position.clone(),
                     *(t.clone() for t in cache.inputs()))
    return shape, ((ids, mask), decode_inputs, extend_inputs)


def _vocab(model) -> int:
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None)
    if not isinstance(vocab, int):
        raise InputError(f"{type(model).__name__}'s config has no vocab_size; hetcc.compile_lm needs it")
    return vocab


def _token_ids(value, what: str, vocab: int) -> tuple[int, ...]:
    if value is None:
        return ()
    values = [value] if isinstance(value, int) else list(value)
    bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < vocab]
    if bad:
        raise InputError(f"{what} token ids must be whole numbers in 0..{vocab - 1} (the vocabulary), "
                         f"got {bad[:5]}")
    return tuple(values)


def _prompts(prompts, shape: Shape) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2 or prompts.dtype not in (torch.long, torch.int32):
            raise InputError("prompts as a tensor must be 2D token ids [batch, length] (int64 or int32); "
                             f"got {prompts.dim()}D {prompts.dtype}")
        prompts = prompts.tolist()
    elif isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts):
        prompts = [list(prompts)]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError("prompts must be a list of token ids, a list of such lists, or a 2D tensor of "
                         "token ids; got nothing to generate from")
    rows = []
    for i, row in enumerate(prompts):
        if not isinstance(row, (list, tuple)) or not row:
            raise InputError(f"prompt {i} is empty or not a list of token ids")
        _token_ids(row, f"prompt {i}'s", shape.vocab)
        if len(row) > shape.prompt_len:
            raise InputError(f"prompt {i} has {len(row)} tokens; this model was compiled for prompts of "
                             f"at most {shape.prompt_len}: shorten it or compile with a larger prompt_len")
        rows.append(list(row))
    return rows


def _cache_device(decode) -> str:
    """Where the decode graph's segments read the cache (the location of most readers; the host
    when no segment reads it, which a model whose cache is unused would do)."""
    runtime = decode.runtime
    names = {spec.name for spec in runtime.input_specs[3:]}
    readers = [step.location for step in runtime.steps if names & set(step.inputs)]
    return max(set(readers), key=readers.count) if readers else CPU


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
