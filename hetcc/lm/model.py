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

import numbers
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hetcc.errors import InputError
from hetcc.handover import CPU
from hetcc.lm import reuse as prefix_reuse
from hetcc.lm import speculative
from hetcc.lm.graphs import (
    DecodeGraph,
    ExtendGraph,
    PrefillGraph,
    check_model,
    layer_count,
    text_config,
)
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
    """The token in a short prompt's padding and in the rows that fill a batch."""
    chunk: int = 0
    """Tokens the extend graph takes after a stored prefix (0: compiled without prefix reuse)."""
    speculate: int = 0
    """Draft tokens the verify graph checks per call (0: compiled without speculative decoding)."""

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
    draft_proposed: int = 0
    draft_accepted: int = 0
    """Speculative decoding: tokens the draft proposed, and how many of them the target kept."""
    step_seconds: list[float] = field(repr=False, default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0

    @property
    def tokens_per_s(self) -> float:
        made = sum(len(t) for t in self.tokens)
        return made / self.seconds if self.seconds > 0 else 0.0


class CompiledLM:
    def __init__(self, prefill, decode, shape: Shape, extend=None, verify=None,
                 prefix_bytes: int = PREFIX_BYTES):
        self.prefill, self.decode, self.shape = prefill, decode, shape
        self.extend, self.verify = extend, verify
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
        if self.verify is not None:
            parts += [f"verify ({s.speculate} draft tokens per call):", self.verify.plan.summary()]
        return "\n".join(parts)

    def _cache_bytes(self) -> int:
        dtype = self.shape.torch_dtype
        return sum(torch.Size(c).numel() for c in self.shape.cache) * torch.empty((), dtype=dtype).element_size()

    def generate(self, prompts, max_new_tokens: int | None = None, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop=None, reuse: bool = True, draft: CompiledLM | None = None) -> Generation:
        """Generate after each prompt (a list of token ids, a list of such lists, or a 2D LongTensor
        without padding). Greedy unless ``temperature`` > 0; ``stop``: token ids that end a sequence
        (default: the ones compiled in; ``()`` for none). Prompts beyond the compiled batch run in
        further batches, each with its own prefill. ``reuse``: start a batch from stored prefixes
        when every prompt in it has one (compiled with ``prefix_chunk``; hetcc/lm/reuse.py).
        ``draft``: a small CompiledLM with the same vocabulary that proposes tokens this model checks
        (compiled with ``speculate``; greedy, batch 1; hetcc/lm/speculative.py)."""
        sampling = Sampling(temperature, top_k, top_p, seed)
        rows = _prompts(prompts, self.shape)
        limit = self.shape.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self.shape.max_new_tokens:
            raise InputError(f"max_new_tokens must be 1 to {self.shape.max_new_tokens} (what this model "
                             f"was compiled for), got {max_new_tokens!r}; compile with a larger "
                             "max_new_tokens for longer outputs")
        stops = set(self.shape.stop if stop is None else _token_ids(stop, "stop", self.shape.vocab))
        generator = sampling.generator()
        start = time.perf_counter()
        out = Generation(tokens=[], finished=[], ttft_s=0.0, tpot_s=0.0, handover_s=0.0, handover_bytes=0,
                         seconds=0.0)
        if draft is not None:
            speculative.check(self, draft, sampling)
            _prompts(rows, draft.shape)  # each prompt must fit the draft too
            for i, row in enumerate(rows):
                made = speculative.generate_one(self, draft, row, limit, stops, out, i == 0)
                out.tokens.append(made)
                out.finished.append("stop" if made[-1] in stops else "length")
        else:
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
            logits, cache = prefix_reuse.start(self.extend, self.prefixes, rows, found, self.shape, self.cache_device, out)
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
               prefix_bytes: int = PREFIX_BYTES, speculate: int | None = None, **options) -> CompiledLM:
    """Compile a transformers causal LM for generation: the prefill graph (``batch`` prompts of up
    to ``prompt_len`` tokens) on ``prefill_targets`` and the decode graph (one token against a cache
    of ``prompt_len + max_new_tokens`` slots) on ``decode_targets``; both default to ``targets``.
    ``options`` go to hetcc.compile for both phases (tune, rtol, memory_limits, ...); ``seed``
    draws the example prompts the phases are verified on.

    ``prefix_chunk``: also compile the extend graph (up to that many prompt tokens after a stored
    prefix, on the decode targets, where the cache is) and keep each sequence run, up to
    ``prefix_bytes`` of keys and values, so that a prompt sharing a prefix with an earlier one
    skips recomputing it. ``speculate``: also compile the verify graph, which checks that many
    draft tokens per call (``generate(..., draft=...)``). See docs/generation.md."""
    for name, value in (("prompt_len", prompt_len), ("max_new_tokens", max_new_tokens), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a whole number, 1 or more, got {value!r}")
    if prefix_chunk is not None and (not isinstance(prefix_chunk, int) or isinstance(prefix_chunk, bool)
                                     or not 1 <= prefix_chunk < prompt_len):
        raise InputError(f"prefix_chunk must be a whole number of tokens from 1 to prompt_len - 1 "
                         f"({prompt_len - 1}), got {prefix_chunk!r}")
    if speculate is not None and (not isinstance(speculate, int) or isinstance(speculate, bool)
                                  or not 1 <= speculate < prompt_len):
        raise InputError(f"speculate must be a whole number of draft tokens from 1 to prompt_len - 1 "
                         f"({prompt_len - 1}), got {speculate!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"seed must be a whole number, got {seed!r}")
    taken = sorted(set(options) & {"objective", "output_device", "example_kwargs", "dynamic_shapes",
                                   "resident_inputs"})
    if taken:
        raise InputError(f"compile_lm sets {', '.join(taken)} itself for each phase (use prefill_objective "
                         "and decode_objective for the objectives); drop it from the options")
    if options.get("calibration") is not None:
        # each phase takes other inputs (a prompt; one token and the cache), so one list of batches
        # cannot serve both
        raise InputError("compile_lm does not take calibration batches: its phases take different "
                         "inputs; static int8 (int8s) is for hetcc.compile; leave calibration out")
    if options.get("validation") is not None:
        raise InputError("compile_lm does not take validation batches: its phases take different inputs "
                         "(a prompt; one token and the cache). Its budget is checked on each phase's "
                         "example inputs, drawn with seed=; compile the phases with hetcc.compile to "
                         "validate each, or leave validation out")
    check_model(model, prompt_len + max_new_tokens)
    from hetcc.compiler import compile as compile_model

    model = model.eval()
    layers = layer_count(model)
    shape, examples = example_inputs(model, layers, batch, prompt_len, max_new_tokens, stop, seed, prefix_chunk,
                                speculate)
    workdir = options.pop("workdir", None)
    decode_targets = decode_targets or targets
    graphs = [("prefill", PrefillGraph(model, layers), examples[0], prefill_targets or targets, prefill_objective),
              ("decode", DecodeGraph(model), examples[1], decode_targets, decode_objective)]
    if prefix_chunk:
        # extend is prefill's work (a prompt's rest), on decode's targets: they hold the cache
        graphs.append(("extend", ExtendGraph(model), examples[2], decode_targets, prefill_objective))
    if speculate:
        graphs.append(("verify", ExtendGraph(model, all_logits=True), examples[3], decode_targets,
                       decode_objective))
    phases = {}
    for phase, graph, inputs, phase_targets, objective in graphs:
        where = None if workdir is None else Path(workdir) / phase
        # the graphs that read the cache leave their outputs where they are made, next to it, and
        # hold the cache (kv_0, kv_1, ...: torch.export's names for *kv) against their memory
        keep = {} if phase == "prefill" else {"output_device": "keep", "resident_inputs": ("kv_",)}
        phases[phase] = compile_model(graph, inputs, phase_targets, objective=objective, workdir=where,
                                      **keep, **options)
    return CompiledLM(phases["prefill"], phases["decode"], shape, phases.get("extend"), phases.get("verify"),
                      prefix_bytes)


def example_inputs(model, layers, batch, prompt_len, max_new_tokens, stop, seed, chunk=None, speculate=None):
    """The shape, and realistic example inputs for the graphs: prompts of different lengths, and
    the decode step's cache filled from an eager prefill of them (verification then compares the
    runtimes on the values they will see). The extend and verify graphs': the prompts' last
    ``chunk`` (``speculate + 1``) tokens after the cache of the ones before."""
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
                  tuple(stops), int(pad), chunk or 0, speculate or 0)
    cache = KVCache(list(cache_shapes), dtype, CPU)
    cache.hand_over(prefilled[1:], mask)
    token = prefilled[0].argmax(-1)[:, None]
    decode_inputs = (token, cache.position.clone(), *(t.clone() for t in cache.inputs()))
    chunks = [_chunk_inputs(ids, mask, cache, width) if width else None
              for width in (chunk, speculate and speculate + 1)]
    return shape, ((ids, mask), decode_inputs, *chunks)


def _chunk_inputs(ids, mask, cache: KVCache, width: int) -> tuple:
    """Inputs of a chunk graph: the prompts' last ``width`` tokens after the cache of the others."""
    head = ids.shape[1] - width
    valid = cache.valid.clone()
    valid[:, head:] = 0  # the chunk's slots are what the graph computes
    position = (mask.cumsum(-1) - 1).clamp(min=0)[:, head:]
    return (ids[:, head:].clone(), mask[:, head:].clone(), position, valid, *(t.clone() for t in cache.tensors))


def _vocab(model) -> int:
    vocab = getattr(text_config(model), "vocab_size", None)
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
    if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and any(isinstance(p, str) for p in prompts)):
        raise InputError("prompts are token ids, not text: hetcc reads no tokenizer; encode the text with "
                         "the model's tokenizer first (tokenizer(text).input_ids)")
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() not in (1, 2) or prompts.dtype not in (torch.long, torch.int32):
            raise InputError("prompts as a tensor must be token ids, 1D [length] or 2D [batch, length] "
                             f"(int64 or int32); got {prompts.dim()}D {prompts.dtype}")
        prompts = prompts.tolist()
    if isinstance(prompts, (list, tuple)) and prompts and all(_is_id(t) for t in prompts):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError("prompts must be a list of token ids, a list of such lists, or a tensor of "
                         f"token ids; got {type(prompts).__name__ if prompts else 'nothing'}")
    rows = []
    for i, row in enumerate(prompts):
        if isinstance(row, torch.Tensor) and row.dim() == 1:
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or not row:
            raise InputError(f"prompt {i} is {'empty' if isinstance(row, (list, tuple)) else type(row).__name__}"
                             "; each prompt is a non-empty list of token ids")
        row = [int(t) if _is_id(t) else t for t in row]
        _token_ids(row, f"prompt {i}'s", shape.vocab)
        if len(row) > shape.prompt_len:
            raise InputError(f"prompt {i} has {len(row)} tokens; this model was compiled for prompts of "
                             f"at most {shape.prompt_len}: shorten it or compile with a larger prompt_len")
        rows.append(row)
    return rows


def _is_id(value) -> bool:
    """A token id as Python, numpy or a 0-d tensor gives it (not a bool)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _cache_device(decode) -> str:
    """Where the decode graph's segments read the cache (the location of most readers; the host
    when no segment reads it, which a model whose cache is unused would do)."""
    runtime = decode.runtime
    names = {spec.name for spec in runtime.input_specs[3:]}
    readers = [step.location for step in runtime.steps if names & set(step.inputs)]
    return max(set(readers), key=readers.count) if readers else CPU


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"
