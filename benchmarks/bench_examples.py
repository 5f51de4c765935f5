"""Side-by-side latency of each example: hetcc's plan against each single runtime, in one run.

Variants are measured interleaved (several calls per turn, in a new random order each round, with a
short pause between turns so one runtime's spinning thread pool does not tax the next) so that
machine drift hits every variant alike; we report per-call medians, the spread (p10-p90 of turns),
and the ratio of hetcc to the best single runtime. The measuring core is
hetcc.measure.bench.measure, which `hetcc bench` uses too. Not a test: run it by hand.

    python benchmarks/bench_examples.py [--rounds 30] [--examples mlp,cnn] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import hetcc  # noqa: E402
from hetcc.backends.registry import usable_targets  # noqa: E402
from hetcc.measure.bench import measure as measure_interleaved  # noqa: E402
from hetcc.timing import quantile  # noqa: E402

EXAMPLES = ["mlp", "cnn", "encoder", "gpt", "mixed"]
HETCC_TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]


def variants_for(model, inputs, with_inductor: bool, compile_options: dict):
    """name -> (callable, compile seconds). Single runtimes first, hetcc's plan last."""
    out = {}
    out["torch eager"] = (model, 0.0)
    if with_inductor:
        start = time.perf_counter()
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(*inputs)  # compile happens on the first call
        out["torch.compile"] = (compiled, time.perf_counter() - start)
    here = usable_targets()
    for target, label in (("onnxruntime:cpu", "ONNX Runtime"), ("openvino:cpu", "OpenVINO")):
        if target in here:
            start = time.perf_counter()
            out[label] = (hetcc.compile(model, inputs, targets=[target], **compile_options),
                          time.perf_counter() - start)
    start = time.perf_counter()
    plan = hetcc.compile(model, inputs, targets=[t for t in HETCC_TARGETS if t in here], **compile_options)
    out["hetcc"] = (plan, time.perf_counter() - start)
    return out


def measure(variants: dict, inputs, rounds: int, calls: int, seed: int = 0) -> dict[str, list[float]]:
    """name -> seconds per call of each turn (one per round), measured interleaved."""
    samples = measure_interleaved({name: fn for name, (fn, _) in variants.items()}, inputs, warmup=3,
                                  runs=rounds, calls=calls, seed=seed)
    return {name: s.turns for name, s in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import importlib

    rows = []
    for name in args.examples.split(","):
        module = importlib.import_module(name)
        model, inputs = module.build()
        variants = variants_for(model, inputs, not args.no_inductor, getattr(module, "COMPILE_OPTIONS", {}))
        samples = measure(variants, inputs, args.rounds, args.calls)
        med = {k: statistics.median(v) for k, v in samples.items()}
        singles = {k: v for k, v in med.items() if k != "hetcc"}
        best = min(singles, key=singles.get)
        plan = variants["hetcc"][0].plan
        rows.append({
            "example": name, "medians": med, "spread": {k: (quantile(v, 0.1), quantile(v, 0.9)) for k, v in samples.items()},
            "best": best, "ratio": med["hetcc"] / singles[best],
            "plan": " + ".join(f"{s.target}({len(s.nodes)})" for s in plan.segments),
            "compile_s": {k: c for k, (_, c) in variants.items()},
        })
        print(f"{name}: best single {best} {singles[best] * 1e3:.3f} ms, hetcc {med['hetcc'] * 1e3:.3f} ms, "
              f"ratio {rows[-1]['ratio']:.3f}, plan {rows[-1]['plan']}", flush=True)
    table = render(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def render(rows) -> str:
    names = list(rows[0]["medians"])
    head = "| example | " + " | ".join(f"{n} ms" for n in names) + " | best single | hetcc / best | hetcc plan |"
    lines = [f"Machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}, hetcc {hetcc.__version__}. Median per call; p10–p90 of turns in brackets.",
             "", head, "|" + "---|" * (len(names) + 4)]
    for r in rows:
        cells = [f"{r['medians'][n] * 1e3:.3f} [{r['spread'][n][0] * 1e3:.2f}–{r['spread'][n][1] * 1e3:.2f}]"
                 for n in names]
        lines.append(f"| {r['example']} | " + " | ".join(cells) + f" | {r['best']} | {r['ratio']:.3f} | {r['plan']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
