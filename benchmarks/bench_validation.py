"""How far a plan chosen to hold an accuracy budget on the example inputs holds it on other inputs,
without and with validation batches (compile(validation=...), hetcc/validation.py).

Per model (examples/hf_models.py, random weights): ``--validation`` batches and ``--held-out``
other inputs, each like the example inputs (hf_models.like: float inputs drawn anew from a normal
distribution; integer inputs that vary, token ids, drawn anew between the example's smallest and
largest value; constant ones, a mask of ones or a decoder's start token, kept), with different
seeds. hetcc
compiles the model twice at ``--budget`` (targets as benchmarks/bench_precision.py's, tuning on):
on the example inputs alone, and with the validation batches. Each plan's relative error against
fp32 eager on the held-out inputs (the worst output; none of them was seen by either compile), how
many of them break the budget, its compile time, and both plans timed interleaved
(hetcc.measure.bench.measure): medians and the paired ratio.

    python benchmarks/bench_validation.py [--models t5,bert,vit] [--budget 0.01] [--validation 8]
                                          [--held-out 16] [--rounds 20]

Not a test: run it by hand; docs/precision.md cites a run.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import hf_models  # noqa: E402
import hetcc  # noqa: E402
from hetcc.error_budget import relative_error  # noqa: E402
from hetcc.measure.bench import machine_info, measure, paired_ratios  # noqa: E402

TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]


def plan_of(cm) -> str:
    """The plan in a few words: each segment's target, and the nodes it keeps in fp32."""
    parts = []
    for s in cm.plan.segments:
        kept = (cm.artifacts[s.name].meta or {}).get("kept_fp32") or {}
        parts.append(f"`{s.target}`" + (f" ({len(kept['nodes'])} of {kept['of']} in fp32)" if kept else ""))
    return " + ".join(parts)


def errors(cm, model, batches) -> list[float]:
    out = []
    for x in batches:
        with torch.no_grad():
            want = model(*x)
        out.append(float(relative_error(cm(*x), want)))
    return out


def run_model(name: str, budget: float, validation: int, held_out: int, rounds: int) -> list[str]:
    model, inputs = hf_models.build(name)
    inputs = tuple(inputs)
    checks, held = hf_models.like(inputs, validation, 1), hf_models.like(inputs, held_out, 2)
    rows, fns = [], {}
    for label, given in (("example inputs alone", None), (f"with {validation} validation batches", checks)):
        started = time.perf_counter()
        cm = hetcc.compile(model, inputs, targets=TARGETS, accuracy=budget, validation=given)
        seconds = time.perf_counter() - started
        got = errors(cm, model, held)
        accuracy = cm.plan.accuracy
        seen = f"{accuracy['measured'] * 100:.2f} %" + (
            f", validation {accuracy['measured_validation'] * 100:.2f} %" if given else "")
        rows.append([name, label, plan_of(cm), seen,
                     f"{min(got) * 100:.2f} / {statistics.median(got) * 100:.2f} / {max(got) * 100:.2f} %",
                     f"{sum(e > budget for e in got)} of {len(got)}", f"{seconds:.0f} s"])
        fns[label] = cm
    times = measure(fns, inputs, runs=rounds)
    first, second = list(fns)
    medians = {k: statistics.median(times[k].calls) * 1e3 for k in fns}
    ratio = statistics.median(paired_ratios(times[second], times[first]))
    rows[0].append(f"{medians[first]:.2f} ms")
    rows[1].append(f"{medians[second]:.2f} ms ({ratio:.2f}x the time)")
    return ["| " + " | ".join(r) + " |" for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="t5,bert,vit")
    parser.add_argument("--budget", type=float, default=0.01)
    parser.add_argument("--validation", type=int, default=8, metavar="N")
    parser.add_argument("--held-out", type=int, default=16, metavar="K")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    info = machine_info()
    print(f"{info['cpu']}, {info['cores']} cores; budget rel_error <= {args.budget}, {args.validation} validation batches, "
          f"{args.held_out} held-out inputs\n")
    print("| model | compiled on | plan | measured at compile | held-out error min / median / max | "
          "held-out beyond the budget | compile | median call |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for line in run_model(name, args.budget, args.validation, args.held_out, args.rounds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
