"""A compiled language model on disk: ``lm.json`` (the shape both phases were compiled for) beside
two ordinary hetcc bundles, ``prefill/`` and ``decode/`` (docs/bundle.md, docs/generation.md).

Loading reads lm.json as data only, checks every field, and checks it against what the two phase
bundles say their inputs are, so a bundle whose parts do not belong together is refused before it
generates anything.
"""
from __future__ import annotations

import json
from pathlib import Path

from hetcc.bundle import LM_MANIFEST, write_atomically
from hetcc.bundle import load as load_bundle
from hetcc.bundle import save as save_bundle
from hetcc.errors import BundleError
from hetcc.safe_files import read_json

FORMAT = "hetcc-lm"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16", "bfloat16")


def save(lm, path, overwrite: bool = False) -> Path:
    def write(staging: Path) -> None:
        save_bundle(lm.prefill, staging / "prefill")
        save_bundle(lm.decode, staging / "decode")
        for name in ("extend", "verify"):
            if getattr(lm, name) is not None:
                save_bundle(getattr(lm, name), staging / name)
        s = lm.shape
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "batch": s.batch,
                "prompt_len": s.prompt_len, "max_new_tokens": s.max_new_tokens, "vocab": s.vocab,
                "cache": [list(c) for c in s.cache], "dtype": s.dtype, "stop": list(s.stop), "pad": s.pad, "chunk": s.chunk,
                "speculate": s.speculate}
        (staging / LM_MANIFEST).write_text(json.dumps(data, indent=1) + "\n")

    return write_atomically(path, overwrite, write)


def load(path, trust_engines: bool = False):
    """The CompiledLM saved at ``path``."""
    from hetcc.lm.model import CompiledLM, Shape

    root = Path(path)
    file = root / LM_MANIFEST
    try:
        data = read_json(file, "the language model's manifest")
    except FileNotFoundError:
        raise BundleError(f"{root} is not a hetcc language-model bundle: no {LM_MANIFEST} in it (a bundle "
                          "of one model loads with hetcc.load or `hetcc run`)") from None
    except OSError as exc:
        raise BundleError(f"cannot read {file}: {exc.strerror or exc}; the bundle is corrupt: copy it "
                          "again or recompile") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{file} is not a hetcc language-model manifest (no \"format\": \"{FORMAT}\")")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{file} has format_version {data.get('format_version')!r}; this hetcc reads "
                          f"{FORMAT_VERSION}: recompile the model with this hetcc")
    counts = {k: _count(data, k, file) for k in ("batch", "prompt_len", "max_new_tokens", "vocab")}
    cache = data.get("cache")
    if (not isinstance(cache, list) or not cache or len(cache) % 2
            or not all(isinstance(c, list) and len(c) == 4 and all(_is_count(d) for d in c) for c in cache)):
        raise BundleError(f"{file}: \"cache\" must be a non-empty, even-length list of 4 sizes each; the "
                          "bundle is corrupt: recompile")
    if data.get("dtype") not in DTYPES:
        raise BundleError(f"{file}: \"dtype\" must be one of {', '.join(DTYPES)}, got {data.get('dtype')!r}")
    stop, pad = data.get("stop"), data.get("pad")
    vocab = counts["vocab"]
    if (not isinstance(stop, list) or not all(_is_index(t, vocab) for t in stop) or not _is_index(pad, vocab)):
        raise BundleError(f"{file}: \"stop\" and \"pad\" must be token ids below the vocabulary size {vocab}")
    chunk, speculate = (_width(data, key, counts["prompt_len"], file) for key in ("chunk", "speculate"))
    shape = Shape(counts["batch"], counts["prompt_len"], counts["max_new_tokens"], vocab,
                  tuple(tuple(c) for c in cache), data["dtype"], tuple(stop), pad, chunk, speculate)
    prefill = _phase(root, "prefill", trust_engines, "cpu")
    decode = _phase(root, "decode", trust_engines)
    extend = _phase(root, "extend", trust_engines) if chunk else None
    verify = _phase(root, "verify", trust_engines) if speculate else None
    _check_parts(root, shape, prefill, decode)
    _check_chunk(root, shape, "extend", extend, chunk)
    _check_chunk(root, shape, "verify", verify, speculate + 1)
    return CompiledLM(prefill, decode, shape, extend, verify)


def _phase(root: Path, name: str, trust_engines: bool, output_device: str = "keep"):
    """One phase's bundle; the graphs that read the cache keep their outputs where they make them."""
    try:
        return load_bundle(root / name, trust_engines=trust_engines, output_device=output_device)
    except BundleError as exc:
        raise BundleError(f"{root}: its {name} phase cannot be loaded: {exc}") from exc


def _width(data: dict, key: str, prompt_len: int, file) -> int:
    """``chunk`` or ``speculate``: 0 (that graph was not compiled) or below the prompt length."""
    value = data.get(key, 0)
    if not (_is_int(value) and 0 <= value < prompt_len):
        raise BundleError(f"{file}: \"{key}\" must be 0 or a whole number below prompt_len "
                          f"({prompt_len}), got {value!r}")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_index(value, vocab: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab


def _count(data: dict, key: str, file) -> int:
    if not _is_count(data.get(key)):
        raise BundleError(f"{file}: \"{key}\" must be a whole number, 1 or more, got {data.get(key)!r}")
    return data[key]


def _check_chunk(root: Path, shape, name: str, graph, width: int) -> None:
    """A chunk graph's inputs are the ones lm.json describes."""
    if graph is None:
        return
    b = shape.batch
    want = [(b, width)] * 3 + [(b, shape.prompt_len + shape.max_new_tokens), *map(tuple, shape.cache)]
    got = [tuple(s.shape) for s in graph.runtime.input_specs]
    if got != want:
        raise BundleError(f"{root}: the {name} bundle's inputs {got} are not the {want} that "
                          f"{LM_MANIFEST} describes; the bundle is corrupt: recompile")


def _check_parts(root: Path, shape, prefill, decode) -> None:
    """The phases' inputs are the ones lm.json describes."""
    slots = shape.prompt_len + shape.max_new_tokens
    want_prefill = [(shape.batch, shape.prompt_len)] * 2
    want_decode = [(shape.batch, 1), (shape.batch, 1), (shape.batch, slots), *shape.cache]
    dtypes = {s.dtype for s in decode.runtime.input_specs[3:]}
    if dtypes != {shape.torch_dtype}:
        raise BundleError(f"{root}: {LM_MANIFEST} says the cache is {shape.dtype} but the decode bundle takes "
                          f"{sorted(str(d).removeprefix('torch.') for d in dtypes)}; the bundle is corrupt: "
                          "recompile")
    got_prefill = [tuple(s.shape) for s in prefill.runtime.input_specs]
    got_decode = [tuple(s.shape) for s in decode.runtime.input_specs]
    bad_cache = [c for c in shape.cache if c[0] != shape.batch or c[2] != slots]
    if got_prefill != want_prefill or got_decode != [tuple(w) for w in want_decode] or bad_cache:
        raise BundleError(f"{root}: the prefill and decode bundles do not match {LM_MANIFEST} (inputs "
                          f"{got_prefill} and {got_decode}, where it describes {want_prefill} and "
                          f"{[tuple(w) for w in want_decode]}); the bundle was assembled from different "
                          "compiles or is corrupt: recompile")
