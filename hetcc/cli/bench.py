"""`hetcc bench`: measure a model (hetcc's plan, each target alone, torch eager) or a bundle (its
plan, against the torch yardstick), render the results, and run the regression gate. Kept apart
from cli/app.py; nothing heavy is imported until the command runs."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from hetcc.cli.inputs import CliError, add_fallback_flags, fallback_options, tune_value

EXIT_REGRESSED = 3
"""Exit status when the regression gate fails (1 stays a user error, 2 bad usage)."""
EPILOG = """examples:
  hetcc bench examples/mlp.py:build --budget 10
  hetcc bench examples/mlp.py:build --batch-sizes 1,8,32 --json > results.json
  hetcc bench mlp.bundle --runs 50
  hetcc bench examples/mlp.py:build --budget 5 --compare benchmarks/baseline.json --max-regression 1.25
  hetcc bench examples/mlp.py:build --budget 20 --compare benchmarks/baseline.json --update-baseline

A MODEL is measured as hetcc's plan over --targets, each target alone, and torch eager (the
reference); a bundle DIR as its plan beside a fixed torch yardstick workload. Each variant is also
given as a ratio to the reference measured in the same run; --compare checks those ratios against
a baseline file. --strict / --max-fallback bound the fallback to torch:cpu of every compile: the
plan's failing exits 5; a target alone that falls back too much is left out, with a note.
Exit status: 0 ok, 1 user error, 2 bad usage, 3 the regression gate failed, 5 the plan fell back."""


def batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,8,32, got {text!r}")
    return sizes


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="DIR|MODEL", help="a bundle directory, or path/to/file.py:function or .pt2")
    p.add_argument("--targets",
                   help="for a MODEL: ordered, comma-separated (default: the CPU targets usable here)")
    p.add_argument("--warmup", type=positive(int), default=5, metavar="N", help="warm-up calls per variant (5)")
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument("--runs", type=positive(int), metavar="N", help="rounds to measure (default 30)")
    how_long.add_argument("--budget", type=positive(float), metavar="SECONDS",
                          help="measure rounds until this many seconds have passed (at least 5 rounds)")
    add_fallback_flags(p)
    p.add_argument("--batch-sizes", type=batch_sizes, metavar="B1,B2,...",
                   help="measure at these batch sizes (compiles with a dynamic batch dim 0)")
    p.add_argument("--reference", choices=("eager", "none"), default="eager",
                   help="torch eager for a MODEL, the torch yardstick for a bundle (default), or none")
    p.add_argument("--inputs", metavar="NPZ", help="inputs to measure on (default: the MODEL's examples)")
    p.add_argument("--tune", type=tune_value, metavar="auto|off|SECONDS",
                   help="for a MODEL: how hetcc's plan is chosen (hetcc compile --tune; default auto)")
    p.add_argument("--name", help="the model's name in results and baselines (default: file:function "
                                   "or the bundle directory's name)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the results JSON here")
    p.add_argument("--compare", metavar="BASELINE", help="regression gate: compare with this baseline file")
    p.add_argument("--max-regression", type=float, default=1.25, metavar="FACTOR",
                   help="fail when a variant's ratio to the reference grew more than this (default 1.25)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="with --compare: measure again up to N times when the gate fails or the machine "
                        "looks busy, and judge on the quietest attempt (default 2)")
    p.add_argument("--update-baseline", action="store_true",
                   help="write this run's ratios into the --compare file (merging; never done otherwise)")


def cmd_bench(args) -> int:
    from hetcc.measure import bench_gate
    from hetcc.measure.bench_run import EAGER, YARDSTICK, prepare_bundle, prepare_model

    if args.update_baseline and not args.compare:
        raise CliError("--update-baseline writes the file named by --compare BASELINE; give both")
    if args.compare and args.reference == "none":
        raise CliError("the regression gate compares ratios to the reference; drop --reference none")
    baseline = None
    if args.compare:  # a bad baseline fails now, not after minutes of measuring
        exists = Path(args.compare).exists()
        baseline = bench_gate.load(args.compare) if exists or not args.update_baseline else bench_gate.empty()

    def say(text):
        print(f"hetcc: {text}", file=sys.stderr, flush=True)

    with contextlib.redirect_stdout(sys.stderr):  # runtimes' chatter must not mix into --json
        if Path(args.model).is_dir():
            if args.targets or args.tune is not None:
                raise CliError("a bundle's plan is fixed when it is compiled; --targets and --tune are for a MODEL")
            if fallback_options(args):
                raise CliError("a bundle is already compiled, so nothing can fall back; --strict and "
                               "--max-fallback are for a MODEL")
            prepared = prepare_bundle(args.model, name=args.name, inputs=_bundle_inputs(args),
                                      batch_sizes=args.batch_sizes, progress=say,
                                      reference=YARDSTICK if args.reference == "eager" else "none")
        else:
            from hetcc.model_files import load_model

            model, inputs, options = load_model(args.model, args.inputs)
            options.update(fallback_options(args))
            if args.tune is not None:
                options = {**{k: v for k, v in options.items() if k != "measure"}, "tune": args.tune}
            prepared = prepare_model(model, inputs, _targets(args.targets), name=args.name or _name(args.model),
                                     compile_options=options, batch_sizes=args.batch_sizes, progress=say,
                                     reference=EAGER if args.reference == "eager" else "none")

        def measure(seed=0):
            return prepared.run(warmup=args.warmup, runs=args.runs, budget=args.budget, seed=seed, progress=say)

        if baseline is None:
            results = measure()
        else:
            results = bench_gate.run_gate(measure, baseline, args.max_regression, retries=args.retries,
                                          record=args.update_baseline, say=say)
    failed = bool(results.get("gate", {}).get("failed")) and not args.update_baseline
    if args.update_baseline:
        bench_gate.save(args.compare, bench_gate.merge(baseline, results))
        results["baseline_updated"] = args.compare
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(results, indent=1, default=str))
        for line in _gate_lines(results):  # CI logs still say what regressed
            print(f"hetcc: {line}", file=sys.stderr)
    else:
        _render(results)
    return EXIT_REGRESSED if failed else 0


def _targets(text: str | None) -> list[str]:
    from hetcc.backends.registry import resolve, usable_targets
    from hetcc.target import parse_targets

    if text is None:
        here = usable_targets()
        return [t for t in ("openvino:cpu", "onnxruntime:cpu", "torch:cpu") if t in here]
    targets = parse_targets(text)
    for target in targets:  # unknown or unusable targets fail before the slow part
        resolve(target)
    return [str(t) for t in targets]


def _name(spec: str) -> str:
    """mlp.py:build for examples/mlp.py:build (and for examples/mlp.py); model.pt2 for a .pt2."""
    if spec.endswith(".pt2"):
        return Path(spec).name
    path, _, func = ("", "", "") if spec.endswith(".py") else spec.rpartition(":")
    return f"{Path(path or spec).name}:{func or 'build'}"


def _bundle_inputs(args):
    if not args.inputs:
        return None
    from hetcc.bundle import read_manifest
    from hetcc.model_files import read_npz

    return tuple(read_npz(args.inputs, [s["name"] for s in read_manifest(args.model)["inputs"]], None))


def _gate_lines(results: dict) -> list[str]:
    from hetcc.measure import bench_gate

    gate = results.get("gate")
    if not gate:
        return []
    quiet = {bench_gate.MISSING} if results.get("baseline_updated") else set()
    lines = [r["message"] for r in gate["rows"] if r["status"] not in quiet]
    lines += gate["notes"] + [bench_gate.verdict(gate)]
    if results.get("baseline_updated"):
        lines.append(f"baseline {results['baseline_updated']} updated with this run's ratios")
    return lines


def _render(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console = console if console.is_terminal else Console(highlight=False, width=160)
    m = results["machine"]
    ref = results["reference"]
    console.print(f"{results['model']} ({results['source']}) on {m['machine_class']} ({m['cpu']}, "
                  f"{m['cores']} cores, {m['torch_threads']} torch threads); "
                  + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), markup=False)
    table = Table(caption=f"latency per call; spread = {results['settings']['spread']}; x ref = median / "
                          f"{ref or 'no reference'} median in the same rounds (its p10-p90 over rounds); "
                          "x ref fast = p10 / reference p10, what the gate compares")
    for head in ("variant", "batch", "median ms", "p10-p90 ms", "p95 ms", "items/s", "x ref",
                 "x ref p10-p90", "x ref fast", "plan"):
        table.add_column(head, justify="left" if head in ("variant", "plan") else "right", overflow="fold")
    for r in results["results"]:
        lat = r["latency"]
        table.add_row(r["label"], str(r["batch"] or "-"), f"{lat['median_s'] * 1e3:.3f}",
                      f"{lat['p10_s'] * 1e3:.3f}-{lat['p90_s'] * 1e3:.3f}", f"{lat['p95_s'] * 1e3:.3f}",
                      f"{r['throughput_per_s']:.0f}" if r["throughput_per_s"] else "-",
                      f"{r['ratio']:.3f}" if r["ratio"] is not None else "-",
                      "{:.2f}-{:.2f}".format(*r["ratio_spread"]) if r["ratio_spread"] else "-",
                      f"{r['ratio_fast']:.3f}" if r["ratio_fast"] is not None else "-", r["plan"] or "")
    console.print(table)
    segments = Table(title="the plan, per segment (a segment's time includes the hand-over into it)")
    for head in ("batch", "segment", "target", "median ms", "share"):
        segments.add_column(head, justify="left" if head in ("segment", "target") else "right")
    for r in results["results"]:
        if r["variant"] == "plan" and r["segments"]:
            for s in r["segments"]:
                segments.add_row(str(r["batch"] or "-"), s["name"], s["target"], f"{s['median_s'] * 1e3:.3f}",
                                 f"{s['share']:.0%}")
            share = r["overhead_s"] / r["latency"]["median_s"]
            segments.add_row(str(r["batch"] or "-"), "hetcc runtime", "(input checks, hand-offs, outputs to the caller)",
                             f"{r['overhead_s'] * 1e3:.3f}", f"{share:.0%}")
    if segments.row_count:
        console.print(segments)
    for note in results["notes"]:
        console.print(f"note: {note}", markup=False)
    for line in _gate_lines(results):
        console.print(line, markup=False)
