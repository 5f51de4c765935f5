"""`hetcc compile-lm` (a causal LM as a prefill and a decode bundle), `hetcc generate` (tokens from
such a bundle) and `hetcc plan-lm` (both phases predicted on devices that need not be here).
Token ids in and out: hetcc reads no tokenizer, so a stranger's bundle cannot make it load one."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from hetcc.cli.inputs import tune_value
from hetcc.model_files import load_model

COMPILE_EPILOG = (
    "example:\n  hetcc compile-lm examples/llm.py:build -o llama.lm --prompt-len 64 --max-new-tokens 32 \\\n"
    "      --prefill-targets openvino:cpu --decode-targets onnxruntime:cpu\n"
    "  hetcc generate llama.lm --prompt '1 15 27 300' --prompt '1 99'\n\n"
    "MODEL is path/to/file.py:function; the function returns (model, example inputs) as for\n"
    "`hetcc compile`, the model a transformers causal LM (the inputs are not used; options it returns\n"
    "go to each phase's compile). docs/generation.md.")
GENERATE_EPILOG = (
    "example:\n  hetcc generate llama.lm --prompt '1 15 27 300' --max-new-tokens 16\n"
    "  hetcc generate llama.lm --prompt '1 15 27' --temperature 0.8 --top-p 0.9 --seed 7 --json\n\n"
    "A prompt is token ids separated by spaces or commas. Greedy unless --temperature is above 0.")


def add_compile_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:function returning (a transformers causal LM, example inputs)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--prompt-len", type=int, required=True, help="longest prompt, in tokens")
    p.add_argument("--max-new-tokens", type=int, required=True, help="most tokens generated per prompt")
    p.add_argument("--batch", type=int, default=1, help="prompts per prefill and decode call (default 1)")
    p.add_argument("--targets", default="torch:cpu", help="targets of both phases (default torch:cpu)")
    p.add_argument("--prefill-targets", help="targets of the prefill phase (default: --targets)")
    p.add_argument("--decode-targets", help="targets of the decode phase (default: --targets)")
    p.add_argument("--tune", type=tune_value, default="auto", help="as for `hetcc compile`")
    p.add_argument("--prefix-chunk", type=int, help="also compile prefix reuse: up to this many prompt "
                   "tokens after a stored prefix (docs/generation.md)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing bundle at DIR")


def add_generate_arguments(p) -> None:
    p.add_argument("bundle", metavar="DIR", help="a bundle written by `hetcc compile-lm` or CompiledLM.save")
    p.add_argument("--prompt", action="append", required=True, type=_token_list,
                   help="token ids of one prompt (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, help="at most this many (default: what was compiled)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="seed of the sampling draws")
    p.add_argument("--stop", type=_token_list, help="token ids that end a sequence (default: the model's "
                   "end-of-sequence tokens); '' for none")
    p.add_argument("--trust-engines", action="store_true",
                   help="load IREE modules and TensorRT/MIGraphX engines another process built")


PLAN_EPILOG = (
    "example:\n  hetcc plan-lm examples/llm.py:build --prefill-devices h100-sxm --decode-devices l4 \\\n"
    "      --prompt-len 512 --max-new-tokens 256 --batch 8 --dtype bf16\n\n"
    "A prediction from the cost model (nothing is lowered): prefill placed for time to first token, decode\n"
    "for time per output token with its KV cache resident, and the cache's hand-over between them.")


def add_plan_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:function returning (a transformers causal LM, example inputs)")
    p.add_argument("--prefill-devices", required=True, help="registry device names for prefill, e.g. h100-sxm")
    p.add_argument("--decode-devices", required=True, help="registry device names for decode, e.g. l4")
    p.add_argument("--prompt-len", type=int, required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device-file", action="append", default=[], metavar="FILE",
                   help="YAML/JSON devices file whose devices become known (repeatable)")


def cmd_plan_lm(args) -> int:
    from hetcc.lm.predict import predict_lm

    model, _inputs, _options = load_model(args.model)
    with contextlib.redirect_stdout(sys.stderr):
        result = predict_lm(model, args.prompt_len, args.max_new_tokens, args.prefill_devices.split(","),
                            args.decode_devices.split(","), batch=args.batch, dtype=args.dtype,
                            device_files=tuple(args.device_file))
    if args.json:
        print(json.dumps({"prefill": result.prefill.to_dict(), "decode": result.decode.to_dict(),
                          "kv_bytes": result.kv_bytes, "handover_ms": result.handover_seconds * 1e3,
                          "ttft_ms": result.ttft * 1e3, "tpot_ms": result.tpot * 1e3}, indent=1, default=str))
    else:
        print(result.summary())
    return 0


def _token_list(text: str) -> list[int]:
    parts = text.replace(",", " ").split()
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"token ids must be whole numbers separated by spaces or commas, got {text!r}") from None


def cmd_compile_lm(args) -> int:
    import hetcc
    from hetcc.bundle import check_destination
    from hetcc.target import parse_targets

    started = time.perf_counter()
    check_destination(args.output, args.force)
    model, _inputs, options = load_model(args.model)
    targets = [str(t) for t in parse_targets(args.targets)]
    with contextlib.redirect_stdout(sys.stderr):
        lm = hetcc.compile_lm(
            model, args.prompt_len, args.max_new_tokens, args.batch, targets,
            prefill_targets=_targets(args.prefill_targets), decode_targets=_targets(args.decode_targets),
            **(options | {"tune": args.tune}), prefix_chunk=args.prefix_chunk)
        path = lm.save(args.output, overwrite=args.force)
    if args.json:
        print(json.dumps({"bundle": str(path), "prefill": lm.prefill.plan.to_dict(),
                          "decode": lm.decode.plan.to_dict(), "seconds": time.perf_counter() - started},
                         indent=1, default=str))
    else:
        print(lm.summary())
        print(f"bundle written to {path} in {time.perf_counter() - started:.1f}s; generate with: "
              f"hetcc generate {path} --prompt '1 2 3'")
    return 0


def _targets(text):
    from hetcc.target import parse_targets

    return None if text is None else [str(t) for t in parse_targets(text)]


def cmd_generate(args) -> int:
    import torch

    import hetcc

    lm = hetcc.load_lm(args.bundle, trust_engines=args.trust_engines)
    with torch.no_grad():
        out = lm.generate(args.prompt, args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop)
    timing = {"ttft_ms": out.ttft_s * 1e3, "tpot_ms": out.tpot_s * 1e3, "tokens_per_s": out.tokens_per_s,
              "handover_ms": out.handover_s * 1e3, "handover_bytes": out.handover_bytes}
    if args.json:
        print(json.dumps({"tokens": out.tokens, "finished": out.finished, **timing}, indent=1))
        return 0
    for i, (tokens, why) in enumerate(zip(out.tokens, out.finished)):
        print(f"[{i}] {' '.join(map(str, tokens))}  ({why})")
    print(f"time to first token {timing['ttft_ms']:.2f} ms, {timing['tpot_ms']:.2f} ms per output token, "
          f"{timing['tokens_per_s']:.0f} tokens/s; KV hand-over {timing['handover_ms']:.2f} ms "
          f"({out.handover_bytes / 1e6:.2f} MB)")
    return 0
