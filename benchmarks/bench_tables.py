"""Embedding tables in ONNX Runtime's dynamic int8: one scale for the whole table (quantize_dynamic's
own, on its Gather) against one scale and zero point per row (hetcc's, backends/onnx_tables.py).

Per model: the whole model exported with ``torch.onnx.export(dynamo=True)``; its large tables (the
ones hetcc quantizes: ``quantizable_tables``) quantized alone each way, then with the matrix
products in int8 as hetcc's onnxruntime:cpu@int8 quantizes them (7-bit weights on a CPU without
VNNI). For each: the worst relative L2 error of the float outputs against the fp32 export on the
example inputs, and the file's size. The two whole-int8 files are measured interleaved
(hetcc.measure.bench.measure): by rows' time over one scale's in each round, median and p10-p90,
since a lookup by rows dequantizes with its own rows' scales (a Gather more, on the rows read).

Models: ``table`` (examples/tables.py) and those of examples/hf_models.py with a table of 1024 rows
or more that is not tied to the output head (bert, t5, llama_prefill, llama_decode; gpt2's is tied,
and stored as its head's copy, by columns, either way).

    python benchmarks/bench_tables.py [--models table,bert,t5,llama_decode] [--rounds 30]

Not a test: run it by hand. The run is in docs/precision.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "examples"))

import bench_int8_range as int8_range  # noqa: E402
import bench_precision as precision  # noqa: E402
import hf_models  # noqa: E402
from hetcc.backends.onnx_quantize import quantize_file, reduced_range  # noqa: E402
from hetcc.backends.onnx_tables import quantizable_tables, store_by_rows  # noqa: E402
from hetcc.cost_model.devices import cpu_model  # noqa: E402
from hetcc.error_budget import relative_error  # noqa: E402
from hetcc.measure.bench import measure, paired_ratios, stats  # noqa: E402


def _one_scale(source: Path, target: Path, tables: list[str], products: bool) -> None:
    """quantize_dynamic's own: the Gathers of ``tables``, one scale each (the other lookups, in
    small tables, left out as hetcc leaves them); ``products``: the matrix products too, as hetcc
    quantizes them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    # "" would exclude every unnamed node: an unnamed small table's lookup is quantized here
    others = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] not in tables and n.name]
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=reduced_range(), op_types_to_quantize=["MatMul", "Gather"] if products else ["Gather"],
                     nodes_to_exclude=others)


def _by_rows(source: Path, target: Path, tables: list[str], products: bool) -> None:
    if products:
        quantize_file(source, target, reduce_range=reduced_range(), tables=tables)
    else:
        import onnx

        onnx.save(onnx.load(str(source)), str(target))  # the weights inside: the export's file is not touched
        store_by_rows(target, tables)


def run_model(name: str, rounds: int) -> list[str]:
    import onnx

    model, inputs = int8_range.build(name)
    inputs = tuple(inputs)
    workdir = Path(tempfile.mkdtemp(prefix=f"tables-{name}-"))
    source = precision._exported(model, inputs, workdir / "model.onnx")
    tables = quantizable_tables(onnx.load(str(source)))
    if not tables:
        return [f"| {name} | none of 1024 rows or more, read only by lookups | | | | |"]
    fns, sizes = {"fp32": precision._ort_session(source, spinning=False)[0]}, {}
    for products in (False, True):
        for label, write in (("one scale", lambda s, t: _one_scale(s, t, tables, products)),
                             ("by rows", lambda s, t: _by_rows(s, t, tables, products))):
            key = (label, products)
            target = workdir / f"{label.replace(' ', '_')}_{int(products)}.onnx"
            write(source, target)
            fns[key] = precision._ort_session(target, spinning=False)[0]
            sizes[key] = sum(p.stat().st_size for p in workdir.iterdir() if p.name.startswith(target.name))
    want = [torch.from_numpy(y) for y in fns["fp32"](*inputs)]

    def error(key):
        got = [torch.from_numpy(y) for y in fns[key](*inputs)]
        return max(relative_error(g, w) for g, w in zip(got, want) if w.is_floating_point())
    times = measure({k: fns[k] for k in (("one scale", True), ("by rows", True))}, inputs, runs=rounds)
    ratio = stats(paired_ratios(times[("by rows", True)], times[("one scale", True)]))
    fp32_mb = sum(p.stat().st_size for p in workdir.iterdir() if p.name.startswith(source.name)) / 1e6
    return [f"| {name} | {len(tables)} | {error(('one scale', False)) * 100:.2f} % / {error(('by rows', False)) * 100:.2f} % | "
            f"{error(('one scale', True)) * 100:.2f} % / {error(('by rows', True)) * 100:.2f} % | "
            f"{fp32_mb:.1f} / {sizes[('one scale', True)] / 1e6:.1f} / {sizes[('by rows', True)] / 1e6:.1f} | "
            f"{ratio['median_s']:.2f}x [{ratio['p10_s']:.2f}-{ratio['p90_s']:.2f}] |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="table,bert,t5,llama_decode")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    models = precision.native.chosen(parser, args.models, ["table", *hf_models.MODELS])
    rows = [f"Machine: {cpu_model()} ({platform.machine()}), 7-bit product weights: {reduced_range()}; "
            f"{args.rounds} rounds.", "",
            "| model | tables | error, tables alone: one scale / by rows | error, all int8: one scale / by rows | "
            "file MB: fp32 / one scale / by rows | by rows' time over one scale's, per round [p10-p90] |",
            "|---|---|---|---|---|---|"]
    for name in models:
        rows += run_model(name, args.rounds)
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
