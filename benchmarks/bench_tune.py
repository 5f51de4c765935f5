"""Compile-time tuning side by side: the plan tune="auto" keeps against the cost model's alone, what
tuning costs at compile time, and whether learnt corrections make the cost model choose alone.

Per model (examples/hf_models.py, size "bench": random weights, nothing downloaded), in one process,
in this order:

  off      hetcc.compile(model, inputs, targets, tune="off") with no corrections: the cost model's plan
  prior    tune="off" with the corrections learnt on the models before this one (skipped for the first)
  auto     tune="auto" (the default), learn=True: candidates timed, the fastest kept, and what was
           measured folded into the corrections
  learnt   tune="off" again, with the corrections learnt so far (this model's included)

Corrections go to a temporary file ($HETCC_CORRECTIONS), never to the user's. Then the four compiled
models are measured interleaved with hetcc.measure.bench.measure (one call per turn, 50 ms idle
before each: longer than ONNX Runtime's spinning after a call; a new random order each round) and
each gets its median and p10-p90 per call.

    python benchmarks/bench_tune.py [--models bert,vit] [--rounds 30] [--json out.json]
                                    [--targets onnxruntime:cpu,openvino:cpu,torch:cpu]

Not a test: run it by hand; docs/cost_model.md ("Tuning") has a run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import hetcc  # noqa: E402
from hetcc.measure.bench import machine_info, measure  # noqa: E402
from hetcc.timing import quantile  # noqa: E402

import hf_models  # noqa: E402

TARGETS = "onnxruntime:cpu,openvino:cpu,torch:cpu"
PAUSE = 0.1  # hetcc.timing.PAUSE: ONNX Runtime's idle threads spin 45-80 ms after a call here


def compile_one(model, inputs, targets, corrections: Path, **options):
    os.environ["HETCC_CORRECTIONS"] = str(corrections)
    started = time.perf_counter()
    compiled = hetcc.compile(model, inputs, targets, **options)
    return compiled, time.perf_counter() - started


def run_model(name: str, targets: list[str], rounds: int, scratch: Path) -> dict:
    model, inputs = hf_models.build(name, "bench")
    load_before = os.getloadavg()[0]
    shared, empty = scratch / "corrections.json", scratch / "none.json"
    built = {"off": compile_one(model, inputs, targets, empty, tune="off")}
    if shared.exists():
        built["prior"] = compile_one(model, inputs, targets, shared, tune="off")
    built["auto"] = compile_one(model, inputs, targets, shared, tune="auto", learn=True)
    built["learnt"] = compile_one(model, inputs, targets, shared, tune="off")
    # 50 ms idle before each call: an ONNX Runtime plan alone keeps its threads spinning for
    # 10-30 ms after a call, which would tax whichever plan is measured next (docs/cost_model.md)
    samples = measure({m: c for m, (c, _) in built.items()}, inputs, warmup=3, runs=rounds, calls=1,
                      pause=PAUSE)
    out = {"model": name, "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)], "modes": {}}
    for mode, (compiled, seconds) in built.items():
        calls = samples[mode].calls
        out["modes"][mode] = {
            "plan": " + ".join(f"{s.target}({len(s.nodes)})" for s in compiled.plan.segments),
            "compile_s": round(seconds, 1),
            "median_ms": round(quantile(calls, 0.5) * 1e3, 2), "p10_ms": round(quantile(calls, 0.1) * 1e3, 2),
            "p90_ms": round(quantile(calls, 0.9) * 1e3, 2),
            "notes": [n for n in compiled.plan.notes if any(w in n for w in ("tuning", "corrections", "learn"))],
            "candidates": list(compiled.plan.candidates)}
    out["corrections"] = json.loads(shared.read_text()) if shared.exists() else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert,vit")
    p.add_argument("--targets", default=TARGETS)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    targets = args.targets.split(",")
    results = {"machine": machine_info(), "targets": targets, "rounds": args.rounds,
               "date": time.strftime("%Y-%m-%d %H:%M"), "models": []}
    with tempfile.TemporaryDirectory(prefix="hetcc-bench-tune-") as tmp:
        for name in args.models.split(","):
            with contextlib.redirect_stdout(sys.stderr):
                results["models"].append(run_model(name, targets, args.rounds, Path(tmp)))
            print_model(results["models"][-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


def print_model(result: dict) -> None:
    print(f"\n{result['model']} (1-minute load average {result['load_average'][0]} before, "
          f"{result['load_average'][1]} after)")
    print(f"{'mode':8} {'plan':52} {'compile s':>9} {'median ms':>10} {'p10-p90 ms':>14}")
    for mode, m in result["modes"].items():
        print(f"{mode:8} {m['plan']:52} {m['compile_s']:9.1f} {m['median_ms']:10.2f} "
              f"{m['p10_ms']:6.2f}-{m['p90_ms']:<7.2f}")
    auto = result["modes"]["auto"]
    for note in auto["notes"]:
        print(f"  auto: {note}")
    for c in auto["candidates"]:
        pred = c["predicted_seconds"] * 1e3 if c["predicted_seconds"] else float("nan")
        meas = c["measured_seconds"] * 1e3 if c["measured_seconds"] else float("nan")
        print(f"  {'kept' if c['chosen'] else '    '} {c['name']:24} predicted {pred:7.2f} ms  "
              f"measured {meas:7.2f} ms  {c['note']}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
