"""The MLIR stage against the importer it replaced, and each of its dialects through iree-compile.

For each example, the segments hetcc gives IREE (hetcc.compile with targets=["iree:cpu"], each
segment's program as the backend hands it to the stage) go through every path below, interleaved
(each round runs the paths in a new random order, so machine drift hits them alike):

  vendored        IREE's copy of the FX importer (iree.compiler.extras.fx_importer), what hetcc
                  used before the stage; then iree-compile --iree-input-type=torch
  torch-mlir      torch-mlir's FX importer with its own weight conversion (no hooks)
  stage:DIALECT   backends/mlir_import.py in each dialect it has; then iree-compile with the input
                  type backends/iree_compile.py gives that dialect (stage:torch is what hetcc runs)

Reported per path: the median import and iree-compile seconds, and the largest difference of the
compiled module's outputs from the program's own, or why the path failed. The first round's
result decides failure; later rounds only time.

--ops instead lowers small single-op programs (OPS) to every dialect of the stage, compiles each
with iree-compile for iree:cpu and runs it: a cell says ok, "stage" (torch-mlir could not lower it
to that dialect), "iree-compile" (IREE could not compile what the stage wrote), or "wrong". Not a
test: run it by hand; docs/iree.md has both tables.

    python benchmarks/bench_mlir_import.py [--examples mlp,cnn,encoder] [--rounds 3] [--markdown out.md]
    python benchmarks/bench_mlir_import.py --ops [--markdown out.md]
"""
from __future__ import annotations

import argparse
import importlib
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import hetcc  # noqa: E402
from hetcc.backends import iree_compile as ic  # noqa: E402
from hetcc.backends import iree_runtime as irt  # noqa: E402
from hetcc.backends import mlir_import  # noqa: E402
from hetcc.target import Target  # noqa: E402

EXAMPLES = ["mlp", "cnn", "encoder", "gpt", "mixed"]


def _ops() -> dict:
    """name -> (function or module, example inputs, dynamic batch?)."""
    from torch import nn

    F = nn.functional
    x48, img = torch.randn(4, 8), torch.randn(1, 2, 8, 8)
    return {
        "index_put": (lambda x, i, v: x.index_put((i,), v), (torch.randn(8, 4), torch.tensor([1, 5]), torch.randn(2, 4))),
        "scatter_add": (lambda x, i, s: x.scatter_add(0, i, s),
                        (torch.zeros(4, 3), torch.tensor([[0, 1, 2], [3, 0, 1]]), torch.randn(2, 3))),
        "sort": (lambda x: torch.sort(x, -1)[0], (x48,)),
        "topk": (lambda x: torch.topk(x, 3)[0], (x48,)),
        "cumsum": (lambda x: x.cumsum(1), (x48,)),
        "sdpa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), tuple(torch.randn(1, 2, 8, 4) for _ in range(3))),
        "max_pool2d": (lambda x: F.max_pool2d(x, 2), (img,)),
        "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 1), (img,)),
        "interpolate_nearest": (lambda x: F.interpolate(x, scale_factor=2), (torch.randn(1, 2, 4, 4),)),
        "interpolate_bilinear": (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), (torch.randn(1, 2, 4, 4),)),
        "where": (lambda x: torch.where(x > 0, x, x * 0.1), (x48,)),
        "argmax": (lambda x: x.argmax(-1), (x48,)),
        "float64": (lambda x: (x.double() * 2).float(), (x48,)),
        "floor_divide": (lambda x: x // 3, (torch.randint(0, 100, (4, 8)),)),
        "layer_norm": (lambda x: F.layer_norm(x, (8,)), (x48,)),
        "fmod_scalar": (lambda x: torch.fmod(x, 0.7), (x48,)),
        "embedding_bag": (nn.EmbeddingBag(10, 4, mode="mean"), (torch.randint(0, 10, (2, 3)),)),
        "gather": (lambda x, i: x.gather(1, i), (x48, torch.randint(0, 8, (4, 3)))),
        "conv_transpose2d": (nn.ConvTranspose2d(2, 3, 3), (torch.randn(1, 2, 5, 5),)),
        "linear, dynamic batch": (nn.Linear(4, 4), (torch.randn(3, 4),)),
    }


def op_survey(workdir: Path) -> dict[str, dict[str, str]]:
    """op -> dialect -> what happened (see the module's docstring)."""
    from torch import nn

    class OneOp(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, *xs):
            return self.fn(*xs)

    spec = ic.target_spec(Target.parse("iree:cpu"))
    out = {}
    for name, (fn, args) in _ops().items():
        model = (fn if isinstance(fn, nn.Module) else OneOp(fn)).eval()
        dynamic = ({0: torch.export.Dim("batch", min=2, max=64)},) if "dynamic" in name else None
        exported = torch.export.export(model, args, dynamic_shapes=dynamic).run_decompositions()
        with torch.no_grad():
            want = model(*args)
        want = list(want) if isinstance(want, (tuple, list)) else [want]
        out[name] = {}
        for dialect in mlir_import.DIALECTS:
            mlir, vmfb = workdir / f"{dialect}.mlirbc", workdir / f"{dialect}.vmfb"
            try:
                mlir_import.import_program(exported, mlir, dialect)
            except mlir_import.MlirImportError:
                out[name][dialect] = "stage"
                continue
            try:
                ic.run_compiler(ic.command_line(mlir, vmfb, spec, dialect=dialect))
            except ic.CompileFailed:
                out[name][dialect] = "iree-compile"
                continue
            run = irt.load_module(str(vmfb), spec.driver, "this CPU", "bench").configure(
                len(args), [str(w.dtype).removeprefix("torch.") for w in want])
            got = run(*args)
            close = all(torch.allclose(g.double(), w.double(), rtol=1e-4, atol=1e-4) for g, w in zip(got, want))
            out[name][dialect] = "ok" if close else "wrong"
    return out


def render_ops(table: dict[str, dict[str, str]]) -> str:
    lines = ["| op | " + " | ".join(mlir_import.DIALECTS) + " |", "|---" * (len(mlir_import.DIALECTS) + 1) + "|"]
    for name, cells in table.items():
        lines.append(f"| {name} | " + " | ".join(cells[d] for d in mlir_import.DIALECTS) + " |")
    return "\n".join(lines)


def segment_programs(name: str) -> list:
    """The ExportedPrograms the iree backend gives the stage when it compiles example ``name``."""
    model, inputs = importlib.import_module(name).build()
    seen = []
    real = mlir_import.import_program

    def record(exported, path, dialect="torch"):
        seen.append(exported)
        return real(exported, path, dialect)

    mlir_import.import_program = record
    try:
        hetcc.compile(model, inputs, targets=["iree:cpu"], measure=False)
    finally:
        mlir_import.import_program = real
    return seen


def _vendored(exported, path):
    from iree.compiler import ir
    from iree.compiler.extras.fx_importer import FxImporter

    importer = FxImporter(context=ir.Context())
    importer.import_program(exported, func_name="main")
    with open(path, "wb") as f:
        importer.module.operation.write_bytecode(f)


def _torch_mlir_plain(exported, path):
    from torch_mlir.extras.fx_importer import FxImporter

    importer = FxImporter(context=mlir_import._context())
    importer.import_program(exported, func_name="main")
    with open(path, "wb") as f:
        importer.module.operation.write_bytecode(f)


def paths() -> dict:
    """name -> (import function, stage dialect that names iree-compile's input type)."""
    out = {"vendored": (_vendored, "torch"), "torch-mlir": (_torch_mlir_plain, "torch")}
    for dialect in mlir_import.DIALECTS:
        out[f"stage:{dialect}"] = (lambda ep, p, d=dialect: mlir_import.import_program(ep, p, d), dialect)
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(exported, how, dialect, workdir: Path) -> tuple[float, float, float, float]:
    """(import seconds, compile seconds, compile CPU seconds, max abs error of the outputs);
    raises on a failure. CPU seconds (iree-compile's user + system time) move less than the clock
    when other work shares the machine."""
    mlir, vmfb = workdir / "m.mlirbc", workdir / "m.vmfb"
    start = time.perf_counter()
    how(exported, mlir)
    imported = time.perf_counter() - start
    spec = ic.target_spec(Target.parse("iree:cpu"))
    start, cpu = time.perf_counter(), _children_cpu()
    ic.run_compiler(ic.command_line(mlir, vmfb, spec, dialect=dialect))
    compiled, compiled_cpu = time.perf_counter() - start, _children_cpu() - cpu
    args = exported.example_inputs[0]
    with torch.no_grad():
        want = exported.module()(*args)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    run = irt.load_module(str(vmfb), spec.driver, "this CPU", "bench").configure(
        len(args), [str(w.dtype).removeprefix("torch.") for w in want])
    got = run(*args)
    error = max(float((g.double() - w.double()).abs().max()) for g, w in zip(got, want))
    return imported, compiled, compiled_cpu, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("--ops", action="store_true", help="the single-op survey instead of the examples")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.ops:
        with tempfile.TemporaryDirectory() as tmp:
            table = render_ops(op_survey(Path(tmp)))
        print(table)
        if args.markdown:
            Path(args.markdown).write_text(table + "\n")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.examples.split(","):
            programs = segment_programs(name)
            timings = {p: ([], [], []) for p in paths()}
            errors, failed = {}, {}
            rng = random.Random(0)
            for round_ in range(args.rounds):
                order = list(paths().items())
                rng.shuffle(order)
                for path, (how, dialect) in order:
                    if path in failed:
                        continue
                    totals = [0.0, 0.0, 0.0]
                    try:
                        for i, exported in enumerate(programs):
                            work = Path(tmp) / f"{name}-{path}-{i}"
                            work.mkdir(exist_ok=True)
                            *seconds, error = run_once(exported, how, dialect, work)
                            totals = [t + x for t, x in zip(totals, seconds)]
                            errors[path] = max(errors.get(path, 0.0), error)
                    except Exception as exc:  # reported in the table: a path that fails is a finding
                        failed[path] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                        continue
                    for series, total in zip(timings[path], totals):
                        series.append(total)
            rows.append((name, len(programs), timings, errors, failed))
            print(f"{name}: done", file=sys.stderr, flush=True)
    table = render(rows, args.rounds)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def render(rows, rounds: int) -> str:
    import importlib.metadata

    lines = [f"torch {torch.__version__}, torch-mlir {mlir_import.versions().get('torch-mlir', '?')}, "
             f"iree-base-compiler {importlib.metadata.version('iree-base-compiler')}, "
             f"{rounds} rounds, medians in seconds (import + iree-compile, all of an example's IREE segments).",
             "", "| example | path | import s | iree-compile s | iree-compile CPU s | import + compile s | max error |",
             "|---|---|---|---|---|---|---|"]
    for name, count, timings, errors, failed in rows:
        for path, series in timings.items():
            label = f"{name} ({count} segment{'s' if count != 1 else ''})"
            if path in failed:
                lines.append(f"| {label} | {path} | | | | | fails: {failed[path]} |")
                continue
            i, c, cpu = (statistics.median(x) for x in series)
            lines.append(f"| {label} | {path} | {i:.3f} | {c:.2f} | {cpu:.2f} | {i + c:.2f} | {errors[path]:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
