"""The `hetcc` command: compile, run, explain, bench, targets, calibrate, plan, conformance.

Conventions: results go to stdout (`--json` makes them machine-readable), logs and progress go to
stderr. Exit 0 on success, 1 on a user error (a one-line `hetcc: error: ...`, no traceback unless
--debug), 2 on bad usage, 3 when `bench --compare` finds a regression, 4 when `conformance`
finds a failure, 5 when `--strict` or `--max-fallback` finds too much of the model falling back to
torch:cpu (a user error, but one CI tells apart from a bad command), 130 on Ctrl-C. Heavy imports
(torch, runtimes) happen inside commands so that `hetcc --help` answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from hetcc import __version__
from hetcc.cli import bench as cli_bench
from hetcc.cli import calibrate as cli_calibrate
from hetcc.cli import conformance as cli_conformance
from hetcc.cli import generate as cli_generate
from hetcc.cli import plan as cli_plan
from hetcc.cli import serve as cli_serve
from hetcc.cli.inputs import (
    DYNAMIC_MAX,
    CliError,
    accuracy_value,
    add_fallback_flags,
    backend_option,
    batch_dynamic_shapes,
    batch_range,
    dynamic_dim,
    dynamic_shapes_for,
    fallback_options,
    precision_list,
    scope_target,
    target_bytes,
    tolerance,
    tune_value,
)
from hetcc.errors import FallbackError, HetccError, plain
from hetcc.model_files import load_batches, load_model, read_npz, to_array

EXIT_FALLBACK = 5
"""Exit status when --strict or --max-fallback refuses the compile (1 stays any other user error)."""
CPU_TARGETS = "openvino:cpu,onnxruntime:cpu,torch:cpu"
UNTESTED = "tensorrt:cuda, migraphx:rocm, onnxruntime:cuda, torch:cuda and iree's GPU targets"
"""Targets whose vendor calls have never run on real hardware (each backend's ``untested``; the
help text names them without importing the backends, so `hetcc --help` stays fast)."""
EPILOGS = {
    None: "example:\n  hetcc compile examples/mlp.py:build -o mlp.bundle --targets " + CPU_TARGETS
          + "\n  hetcc run mlp.bundle --inputs inputs.npz -o outputs.npz\n\n"
          "run `hetcc COMMAND --help` for each command's options",
    "compile": "examples:\n  hetcc compile examples/mlp.py:build -o mlp.bundle --targets " + CPU_TARGETS
               + "\n  hetcc compile model.pt2 -o out --targets onnxruntime:cpu,torch:cpu "
                 "--dynamic-batch=2:64 --pin head=torch:cpu\n"
               + "  hetcc compile model.pt2 -o out --targets onnxruntime:cpu --strict    # exit 5 on fallback\n\n"
               "MODEL is path/to/file.py:function, where the function returns (model, example_inputs)\n"
               "or (model, example_inputs, options) with options extra hetcc.compile keyword arguments;\n"
               "the function defaults to `build`. A .pt2 file is a torch.export.save archive.",
    "run": "example:\n  python -c \"import numpy as np; np.savez('in.npz', x=np.random.randn(32, 256)"
           ".astype('float32'))\"\n  hetcc run mlp.bundle --inputs in.npz -o out.npz\n\n"
           "Input keys are the bundle's input names (see `hetcc explain`), or arr_0, arr_1, ...\n"
           "Outputs are written as out0, out1, ... in flattened output order.",
    "explain": "example:\n  hetcc explain mlp.bundle\n  hetcc explain mlp.bundle --json | jq '.segments[].target'\n"
               "  hetcc explain mlp.bundle --png plan.png --html plan.html",
    "bench": cli_bench.EPILOG,
    "targets": "example:\n  hetcc targets\n  hetcc targets --json | jq '.usable'",
    "calibrate": cli_calibrate.EPILOG,
    "plan": cli_plan.EPILOG,
    "conformance": cli_conformance.EPILOG,
    "compile-lm": cli_generate.COMPILE_EPILOG,
    "generate": cli_generate.GENERATE_EPILOG,
    "plan-lm": cli_generate.PLAN_EPILOG,
    "serve": cli_serve.EPILOG,
}


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version exit 0, bad usage exits 2
        return exc.code if isinstance(exc.code, int) else 2
    with _logging_to_stderr(args.debug), warnings.catch_warnings():
        if not args.debug:  # third-party deprecation chatter is not the user's business
            warnings.simplefilter("ignore")
        try:
            return args.handler(args) or 0
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `hetcc explain --json | head`: the reader left; not an error
            _silence_stdout()
            return 141
        except FallbackError as exc:
            _fail(exc, args.debug)
            return EXIT_FALLBACK
        except (HetccError, OSError) as exc:
            return _fail(exc, args.debug)
        except Exception as exc:  # noqa: BLE001 - a bug still gets one line, and the traceback on --debug
            return _fail(exc, args.debug, internal=True)


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command; SUPPRESS keeps the subcommand's default from
    # overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and hetcc's debug log")
    parser = argparse.ArgumentParser(
        prog="hetcc", description="Split a PyTorch model across runtimes and write a deployable bundle.",
        epilog=EPILOGS[None], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hetcc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and hetcc's debug log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help):
        p = sub.add_parser(name, parents=[common], help=help, description=help, epilog=EPILOGS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        p.set_defaults(handler=handler)
        return p

    p = command("compile", cmd_compile, "compile a model and save it as a bundle directory")
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:function, or a .pt2 exported program")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--targets", required=True,
                   help=f"ordered, comma-separated, e.g. {CPU_TARGETS}; `hetcc targets` lists them "
                        f"({UNTESTED} are untested on hardware)")
    p.add_argument("--objective", help="what to minimise (default: latency)")
    p.add_argument("--rtol", type=tolerance, help="verification tolerance (default: per dtype)")
    p.add_argument("--atol", type=tolerance, help="verification tolerance (default: per dtype)")
    p.add_argument("--nan", choices=("report", "require"),
                   help="a runtime that turns NaN into numbers where torch keeps NaN: report it in the "
                        "plan (default) or require NaN to propagate (that part falls back)")
    p.add_argument("--accuracy", type=accuracy_value, metavar="BUDGET",
                   help="let segments run in lower precisions (int8, bf16...) while the outputs stay within "
                        "this budget of fp32 PyTorch on the example inputs (and --validation batches): a "
                        "relative error (0.01), or rel_error=0.01, cosine=0.999, top1=0.99 (docs/precision.md)")
    p.add_argument("--precisions", type=precision_list, metavar="P[,P]",
                   help="with --accuracy, the lower precisions to choose among (default: every one the "
                        "targets offer; `hetcc targets` lists them), e.g. int8w,bf16")
    p.add_argument("--calibration", metavar="FILE.py:FUNCTION",
                   help="with --accuracy, input batches (a function returning a list of them, each like "
                        "the example inputs) from which static int8 (onnxruntime:cpu@int8s, openvino:cpu@int8s) fixes its "
                        "activation scales and to which ONNX Runtime's int8 weights are rounded (never the "
                        "example inputs, which the budget is checked on); without it int8s is not offered")
    p.add_argument("--validation", metavar="FILE.py:FUNCTION",
                   help="with --accuracy, input batches (a function returning a list of them, each like the "
                        "example inputs) on which the budget must hold too, not only on the example inputs")
    add_fallback_flags(p)
    p.add_argument("--pin", action="append", type=scope_target, default=[], metavar="SCOPE=TARGET",
                   help="force a submodule or node onto a target (repeatable)")
    p.add_argument("--exclude", action="append", type=scope_target, default=[],
                   metavar="SCOPE=TARGET[,TARGET]", help="keep a submodule or node off targets (repeatable)")
    p.add_argument("--dynamic-batch", nargs="?", const=(1, 4096), type=batch_range, metavar="MIN:MAX",
                   help="let dim 0 of every input vary at run time (default range 1:4096; the example "
                        "batch must be >= 2). Write --dynamic-batch=MIN:MAX or put it after MODEL")
    p.add_argument("--dynamic", action="append", type=dynamic_dim, default=[],
                   metavar="NAME[:MIN:MAX]=INPUT.AXIS[,...]",
                   help="let a dimension vary at run time, e.g. seq:1:512=input_ids.1,attention_mask.1 "
                        "(INPUT: an input's name or position; the axes listed share one size; "
                        f"default range 1:{DYNAMIC_MAX}; repeatable)")
    p.add_argument("--memory-limit", action="append", type=target_bytes, default=[],
                   metavar="TARGET=BYTES", help="cap the weights a target may hold, e.g. openvino:cpu=2GiB")
    p.add_argument("--option", action="append", type=backend_option, default=[], metavar="BACKEND.KEY=VALUE",
                   help="a backend option, e.g. onnxruntime.threads=4, openvino.precision=bf16, "
                        "torch.compile=true (torch:cuda only); `hetcc targets` lists each backend's "
                        "options (repeatable)")
    p.add_argument("--cross-compile", action="store_true",
                   help="keep segments for devices this machine lacks (e.g. iree:rocm:gfx942); they are "
                        "verified when the bundle is loaded where the device is")
    p.add_argument("--tune", type=tune_value, metavar="auto|off|SECONDS",
                   help="time the candidate plans (each target alone, and the cost model's plan) and "
                        "keep the fastest: auto (default: at most ~30 s, candidates predicted over 2x "
                        "slower skipped), off (trust the cost model), or a budget in seconds")
    p.add_argument("--learn", action="store_true",
                   help="write what tuning measured to the cost model's corrections file, so later "
                        "compiles choose the same way without timing (docs/cost_model.md)")
    p.add_argument("--no-measure", action="store_true", help="the older spelling of --tune off")
    p.add_argument("--inputs", metavar="NPZ", help="example inputs (needed for a .pt2 without them)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in DIR")

    p = command("run", cmd_run, "run a bundle on inputs from an .npz file")
    p.add_argument("bundle", metavar="DIR")
    p.add_argument("--inputs", required=True, metavar="NPZ", help="input arrays (.npz)")
    p.add_argument("-o", "--output", metavar="NPZ", help="write the outputs here (.npz)")
    p.add_argument("--trust-engines", action="store_true",
                   help="load IREE modules and TensorRT/MIGraphX engines another process built (native "
                        "code: only for bundles you built or got over a channel you trust)")

    p = command("explain", cmd_explain, "show a bundle's plan: what runs where, and why")
    p.add_argument("bundle", metavar="DIR")
    p.add_argument("--png", metavar="FILE", help="also draw the rooflines and capacities (needs matplotlib)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")

    p = command("bench", cmd_bench, "measure a model or bundle: hetcc's plan, each target alone, and a "
                "reference, interleaved; optionally gate against a baseline")
    cli_bench.add_arguments(p)

    command("targets", cmd_targets, "list backends, their options, devices, and the targets usable here "
            "(and which have never run on hardware)")
    cli_calibrate.add_arguments(command("calibrate", cli_calibrate.cmd_calibrate, "measure this CPU and "
                                        "each CPU runtime; write the profile compile then uses"))
    cli_plan.add_arguments(command("plan", cli_plan.cmd_plan, "place a model across devices that need "
                                   "not be present and predict latency, throughput and cost (no lowering)"))
    cli_conformance.add_arguments(command("conformance", cli_conformance.cmd_conformance,
                                          "run the same op and model cases on each target here and "
                                          "report native coverage and errors"))
    cli_generate.add_compile_arguments(command("compile-lm", cli_generate.cmd_compile_lm, "compile a "
                                               "transformers causal LM as a prefill and a decode phase"))
    cli_generate.add_generate_arguments(command("generate", cli_generate.cmd_generate, "generate tokens "
                                                "from a language-model bundle (hetcc compile-lm)"))
    cli_serve.add_arguments(command("serve", cli_serve.cmd_serve, "serve a bundle over HTTP with Ray Serve, "
                                    "requests batched as they come"))
    cli_generate.add_plan_arguments(command("plan-lm", cli_generate.cmd_plan_lm, "predict a causal LM's "
                                            "prefill and decode on devices that need not be present"))
    return parser


# ---- compile ----

def cmd_compile(args) -> int:
    import hetcc
    from hetcc.backends.registry import resolve
    from hetcc.bundle import check_destination
    from hetcc.target import parse_targets

    started = time.perf_counter()
    targets = parse_targets(args.targets)
    for target in targets:  # unknown or unusable targets fail before the slow part
        resolve(target)
    check_destination(args.output, args.force)  # refuse now, not after a compile of minutes
    model, inputs, options = load_model(args.model, args.inputs)
    options = _compile_options(args, model, inputs, options)
    program = getattr(model, "hetcc_program", None)
    if program is not None and "dynamic_shapes" not in options and args.inputs is None:
        model = program  # a .pt2 keeps the dynamic dims it was exported with
    # Anything a runtime or exporter prints goes to stderr: stdout is for our result (and --json).
    with _Stages(live=not args.json) as stages, contextlib.redirect_stdout(sys.stderr):
        compiled = hetcc.compile(model, inputs, [str(t) for t in targets], progress=stages, **options)
        stages("save", f"bundle to {args.output}")
        path = compiled.save(args.output, overwrite=args.force)
    if args.json:
        _print_json({"bundle": str(path), "signature": compiled.signature, "plan": compiled.plan.to_dict(),
                     "seconds": time.perf_counter() - started})
    else:
        print(compiled.plan.summary())
        print(f"inputs {compiled.signature}")
        print(f"bundle written to {path} in {time.perf_counter() - started:.1f}s; run it with: "
              f"hetcc run {path} --inputs inputs.npz -o outputs.npz")
    return 0


def _compile_options(args, model, inputs, options: dict) -> dict:
    """The model file's options, overridden (dicts: merged) by what was given on the command line."""
    from hetcc.compiler import compile as compile_fn

    allowed = {n for n, p in inspect.signature(compile_fn).parameters.items()
               if p.kind is p.KEYWORD_ONLY and n != "progress"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CliError(f"the model's options name {unknown}, which hetcc.compile does not take; "
                       f"it takes {sorted(allowed)}")
    if args.no_measure and args.tune not in (None, "off"):
        raise CliError("--no-measure is --tune off; give one of them")
    tune = "off" if args.no_measure else args.tune
    if tune is not None:
        options.pop("measure", None)  # the model file's older spelling yields to the command line
    given = {"objective": args.objective, "rtol": args.rtol, "atol": args.atol, "nan": args.nan,
             "tune": tune, "learn": True if args.learn else None,
             "cross_compile": True if args.cross_compile else None, "accuracy": args.accuracy,
             "precisions": args.precisions,
             "calibration": load_batches(args.calibration) if args.calibration else None,
             "validation": load_batches(args.validation, "--validation") if args.validation else None}
    options.update({k: v for k, v in given.items() if v is not None})
    options.update(fallback_options(args))
    excluded: dict[str, list] = {}
    for scope, targets in args.exclude:
        excluded.setdefault(scope, []).extend(t for t in targets.split(",") if t)
    for key, value in (("pins", dict(args.pin)), ("exclude", excluded),
                       ("memory_limits", dict(args.memory_limit))):
        if value:
            options[key] = {**(options.get(key) or {}), **value}
    for backend, key, value in args.option:
        per_backend = options.setdefault("backend_options", {})
        per_backend[backend] = {**(per_backend.get(backend) or {}), key: value}
    if args.dynamic:
        dims = list(args.dynamic)
        if args.dynamic_batch:
            dims.append(("batch", *args.dynamic_batch, [(str(i), 0) for i in range(len(inputs))]))
        options["dynamic_shapes"] = dynamic_shapes_for(model, inputs, dims, {"batch": "--dynamic-batch"}
                                                       if args.dynamic_batch else None)
    elif args.dynamic_batch:
        options["dynamic_shapes"] = batch_dynamic_shapes(inputs, *args.dynamic_batch)
    return options


class _Stages:
    """Draws compile()'s progress callback on stderr: a spinner on a terminal, with a line per
    finished stage and its time; plain lines otherwise (CI logs, pipes, --json)."""

    def __init__(self, live: bool):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live = live and self.console.is_terminal
        self.current = None
        self.status = None

    def __enter__(self):
        if self.live:
            self.status = self.console.status("starting")
            self.status.start()
        return self

    def __call__(self, stage: str, detail: str = "") -> None:
        from rich.markup import escape

        self._finish()
        self.current = (stage, detail, time.perf_counter())
        if self.live:
            self.status.update(f"[bold]{escape(stage)}[/] {escape(detail)}")
        else:
            print(f"hetcc: {stage}: {detail}", file=sys.stderr, flush=True)

    def _finish(self) -> None:
        from rich.markup import escape

        if self.live and self.current:
            stage, detail, t0 = self.current
            self.console.print(f"[green]✓[/] [bold]{escape(stage)}[/] {escape(detail)} "
                               f"[dim]{time.perf_counter() - t0:.1f}s[/]")
        self.current = None

    def __exit__(self, kind, *_):
        if kind is None:
            self._finish()
        if self.status:
            self.status.stop()


# ---- run ----

def cmd_run(args) -> int:
    import numpy as np
    import torch
    import torch.utils._pytree as pytree

    import hetcc
    from hetcc.bundle import read_manifest

    manifest = read_manifest(args.bundle)
    compiled = hetcc.load(args.bundle, trust_engines=args.trust_engines)  # checks the whole manifest, so its fields can be trusted below
    specs = manifest["inputs"]
    tensors = read_npz(args.inputs, [s["name"] for s in specs], _signature(specs))
    for i, spec in enumerate(specs):  # numpy has no bfloat16: accept floats for a bfloat16 input
        if spec["dtype"] == "bfloat16" and tensors[i].is_floating_point():
            tensors[i] = tensors[i].to(torch.bfloat16)
    with torch.no_grad():
        # flat, as the .npz holds them, whatever structure the model takes (keywords, a dict, ...)
        result = compiled.runtime.call_flat(tensors)
    arrays = {f"out{i}": to_array(v) for i, v in enumerate(pytree.tree_leaves(result))}
    written = None
    if args.output:
        written = args.output if args.output.endswith(".npz") else args.output + ".npz"
        np.savez(written, **arrays)
    from hetcc.module_paths import leaf_names

    # the model's own names (last_hidden_state, [0]) where the structure gives them
    names = leaf_names(compiled.runtime.out_spec)
    values = manifest["outputs"]
    rows = [{"key": k, "name": names[i] if len(names) == len(arrays) else None,
             "value": values[i] if len(values) == len(arrays) else None,
             "dtype": str(a.dtype), "shape": list(a.shape)} for i, (k, a) in enumerate(arrays.items())]
    if args.json:
        _print_json({"outputs": rows, "written": written})
        return 0
    for row in rows:
        print(f"{row['key']}: {row['dtype']}[{', '.join(map(str, row['shape']))}]"
              + (f"  ({row['name']})" if row["name"] else ""))
    print(f"outputs written to {written}" if written else "outputs not saved (pass -o outputs.npz)")
    return 0


def _signature(specs: list) -> str:
    return "(" + ", ".join(f"{s.get('name')}: {s.get('dtype')}[{', '.join(map(str, s.get('shape', [])))}]"
                           for s in specs) + ")"


# ---- explain ----

def cmd_explain(args) -> int:
    from hetcc.bundle import LM_MANIFEST, LM_PARTS, MANIFEST

    root = Path(args.bundle)
    if (root / LM_MANIFEST).exists() and not (root / MANIFEST).exists():
        # a language model's bundle: each phase is a bundle, explained in turn
        if args.png or args.html:
            raise CliError(f"{root} is a language model's bundle of several phases; draw one phase: "
                           f"hetcc explain {root / 'decode'} --png plan.png")
        phases = [p for p in LM_PARTS[1:] if (root / p).is_dir()]
        if not phases:
            raise CliError(f"{root} has a {LM_MANIFEST} but none of its phase bundles (prefill, decode); "
                           "it is damaged: recompile")
        if args.json:
            _print_json({p: _explain_report(root / p)[1] for p in phases})
            return 0
        for phase in phases:
            print(f"{phase} ({PHASE_ROLES[phase]}):")
            _explain_text(root / phase)
        return 0
    manifest, report = _explain_report(root)
    title = root.resolve().name
    if args.png:
        from hetcc.explain.plot import write_png

        logging.getLogger("hetcc").info("wrote %s", write_png(report, args.png, title=title))
    if args.html:
        from hetcc.explain.html import write_html

        logging.getLogger("hetcc").info("wrote %s", write_html(report, args.html, title=title))
    if args.json:
        _print_json(report)
        return 0
    _explain_text(root, manifest, report)
    return 0


PHASE_ROLES = {"prefill": "time to first token", "decode": "time per output token",
               "extend": "a prompt's rest after a stored prefix", "verify": "checks a draft's tokens"}


def _explain_report(root: Path) -> tuple[dict, dict]:
    from hetcc.bundle import read_manifest
    from hetcc.cli.render import printable

    # reads JSON only: no runtime is imported or needed. A stranger's report may hold terminal
    # escape codes: they are shown as text, never sent to the terminal
    manifest = printable(read_manifest(root))
    return manifest, printable(_read_report(root, manifest))


def _explain_text(root: Path, manifest: dict | None = None, report: dict | None = None) -> None:
    from hetcc.cli.render import plan_footer, plan_table
    from hetcc.explain.text import why_lines

    if manifest is None:
        manifest, report = _explain_report(root)
    console = _stdout_console()
    console.print(plan_table(report))
    for line in why_lines(report):
        console.print(line, markup=False)
    for line in plan_footer(report, _signature(manifest.get("inputs", [])), manifest.get("runtimes", {})):
        console.print(line, markup=False, soft_wrap=True)  # a reason stays one line: its command copies whole


def _read_report(root: Path, manifest: dict) -> dict:
    """report.json; if it is missing, the per-segment numbers the manifest keeps."""
    from hetcc.bundle import REPORT
    from hetcc.safe_files import read_json

    why = "it is not a plan report"
    try:
        report = read_json(root / REPORT, "the report")
        if isinstance(report, dict) and isinstance(report.get("segments"), list):
            report["segments"] = [s for s in report["segments"] if isinstance(s, dict)]
            return report
    except FileNotFoundError:
        why = "it is missing"
    except (OSError, HetccError) as exc:
        why = str(exc)
    logging.getLogger("hetcc").warning("%s is unreadable (%s); showing the manifest's numbers",
                                       root / REPORT, why)
    segments = [{"name": s.get("name"), "target": s.get("target"), **s.get("plan", {})}
                for s in manifest.get("segments", [])]
    return {"segments": segments, "notes": [f"{REPORT} missing: node lists and reasons unknown"]}


# ---- bench (hetcc/cli/bench.py) ----

def cmd_bench(args) -> int:
    return cli_bench.cmd_bench(args)


# ---- targets ----

def cmd_targets(args) -> int:
    from hetcc.cli.render import targets_info, targets_tables

    info = targets_info()
    if args.json:
        _print_json(info)
        return 0
    console = _stdout_console()
    for heading, table in targets_tables(info):
        console.print(heading, style="bold")
        console.print(table)
    return 0


# ---- plumbing ----

def _print_json(data) -> None:
    print(json.dumps(data, indent=1, default=str))


def _stdout_console():
    from rich.console import Console

    console = Console(highlight=False)
    # Off a terminal rich assumes 80 columns; a wide plan table would wrap into mush in a log.
    return console if console.is_terminal else Console(highlight=False, width=160)


def _silence_stdout() -> None:
    # Python would complain again when it flushes stdout at exit; point it at /dev/null instead.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _fail(exc: BaseException, debug: bool, internal: bool = False) -> int:
    if debug:
        traceback.print_exception(exc)
    # one line, and no terminal escape codes from a vendor's message
    text = "; ".join(line for line in map(plain, str(exc).splitlines()) if line) or type(exc).__name__
    if internal:
        text = (f"internal error (a bug in hetcc: run again with --debug for the traceback and "
                f"report it): {type(exc).__name__}: {text}")
    print(f"hetcc: error: {text}", file=sys.stderr)
    return 1


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time: rich's live display swaps it to keep log lines
    above the spinner, and pytest swaps it to capture."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)


@contextlib.contextmanager
def _logging_to_stderr(debug: bool):
    """Log to stderr for one command, and put logging back as it was (tests call main in-process)."""
    root, ours = logging.getLogger(), logging.getLogger("hetcc")
    saved = root.level, ours.level
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries stay at warnings even with --debug
    ours.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


if __name__ == "__main__":
    sys.exit(main())
