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
        if lm.extend is not None:
            save_bundle(lm.extend, staging / "extend")
        s = lm.shape
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "batch": s.batch,
                "prompt_len": s.prompt_len, "max_new_tokens": s.max_new_tokens, "vocab": s.vocab,
                "cache": [list(c) for c in s.cache], "dtype": s.dtype, "stop": list(s.stop), "pad": s.pad, "chunk": s.chunk}
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
    chunk = data.get("chunk", 0)
    if not (chunk == 0 or _is_count(chunk) and chunk < counts["prompt_len"]):
        raise BundleError(f"{file}: \"chunk\" must be 0 (no prefix reuse) or a whole number below "
                          f"prompt_len, got {chunk!r}")
    shape = Shape(counts["batch"], counts["prompt_len"], counts["max_new_tokens"], vocab,
                  tuple(tuple(c) for c in cache), data["dtype"], tuple(stop), pad, chunk)
    prefill = load_bundle(root / "prefill", trust_engines=trust_engines)
    decode = load_bundle(root / "decode", trust_engines=trust_engines, output_device="keep")
    extend = load_bundle(root / "extend", trust_engines=trust_engines, output_device="keep") if chunk else None
    _check_parts(root, shape, prefill, decode, extend)
    return CompiledLM(prefill, decode, shape, extend)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_index(value, vocab: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab


def _count(data: dict, key: str, file) -> int:
    if not _is_count(data.get(key)):
        raise BundleError(f"{file}: \"{key}\" must be a whole number, 1 or more, got {data.get(key)!r}")
    return data[key]


def _check_parts(root: Path, shape, prefill, decode, extend) -> None:
    """The phases' inputs are the ones lm.json describes."""
    if extend is not None:
        b, c = shape.batch, shape.chunk
        want = [(b, c), (b, c), (b, c), (b, shape.prompt_len + shape.max_new_tokens), *shape.cache]
        got = [tuple(s.shape) for s in extend.runtime.input_specs]
        if got != [tuple(w) for w in want]:
            raise BundleError(f"{root}: the extend bundle's inputs {got} are not the {want} that "
                              f"{LM_MANIFEST} describes; the bundle is corrupt: recompile")
    slots = shape.prompt_len + shape.max_new_tokens
    want_prefill = [(shape.batch, shape.prompt_len)] * 2
    want_decode = [(shape.batch, 1), (shape.batch, 1), (shape.batch, slots), *shape.cache]
    got_prefill = [tuple(s.shape) for s in prefill.runtime.input_specs]
    got_decode = [tuple(s.shape) for s in decode.runtime.input_specs]
    bad_cache = [c for c in shape.cache if c[0] != shape.batch or c[2] != slots]
    if got_prefill != want_prefill or got_decode != [tuple(w) for w in want_decode] or bad_cache:
        raise BundleError(f"{root}: the prefill and decode bundles do not match {LM_MANIFEST} (inputs "
                          f"{got_prefill} and {got_decode}, where it describes {want_prefill} and "
                          f"{[tuple(w) for w in want_decode]}); the bundle was assembled from different "
                          "compiles or is corrupt: recompile")
