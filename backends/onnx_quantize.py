"""Quantizing an exported ONNX file with ONNX Runtime's own quantizer, for the backends that take
ONNX: onnxruntime:cpu's int8 (dynamic) and int8s (static, calibrated), and tensorrt:cuda's int8s
(static and symmetric, which TensorRT builds as explicit quantization). Each returns the export
with its model file replaced by the quantized one."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from hetcc.backends._common import lowering_error, py_str, quiet, quiet_logger, to_numpy

log = logging.getLogger("hetcc")

QUANTIZED_OPS = ["MatMul"]
"""What quantize_dynamic quantizes: matrix products (it first rewrites a Gemm as MatMul and Add, so
the exporter's Gemm for a Linear is one too). Embedding tables are stored in uint8 by rows here
instead (backends/onnx_tables.py: with quantize_dynamic's one scale per table, bert's word table
alone moved its outputs 0.61 %, by rows 0.38 %); a lookup dequantizes the rows it reads: memory and
file bytes, not time. A table tied to an output head is stored once, as the head's int8 weight,
whose columns its lookups read (backends/onnx_tied.py). Not Conv: its dynamic ConvInteger ran a ResNet-18 3.7x slower than fp32
here (63 against 17 ms, benchmarks/bench_precision.py's ort-int8, which quantizes everything;
docs/benchmarks.md); static int8 (int8s) is what runs convolutions in int8."""


def quantize_file(source: Path, target: Path, *, unsigned: bool = False, reduce_range: bool = False,
                  external: bool = False, tables=(), tied=None, left_out=()) -> None:
    """Write ``source`` (an fp32 ONNX file) quantized for dynamic int8 to ``target``: its matrix
    products by ONNX Runtime's own ``quantize_dynamic`` (per output channel; signed weights, or with
    ``unsigned`` uint8 with a zero point per channel; ``reduce_range``: in 7 bits), the head copies
    of ``tied`` tables retied to their lookups (backends/onnx_tied.py), and ``tables`` stored by
    rows (backends/onnx_tables.py). ``left_out``: nodes (onnx_sensitivity.Quantized) left in fp32,
    products by name, tables whole. ``external``: the weights are apart from the file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hetcc.backends.onnx_tables import store_by_rows
    from hetcc.backends.onnx_tied import retie

    products = [name for q in left_out if q.product for name in q.excluded]
    kept = {q.weight for q in left_out if not q.product}
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                     per_channel=True, reduce_range=reduce_range, op_types_to_quantize=QUANTIZED_OPS,
                     nodes_to_exclude=products, use_external_data_format=external)
    if tied:
        retie(target, tied)
    store_by_rows(target, [t for t in tables if t not in kept])


def quantized(exported, segment, workdir: Path, reduce_range: bool = False, unsigned: bool = False):
    """The exported model with its weights in int8 (``quantize_file``: ONNX Runtime's own
    ``quantize_dynamic`` for the matrix products, per output channel, activations quantized per
    call; embedding tables in uint8 by rows), in place of the fp32 file; a table tied to an output
    head once, in int8 (backends/onnx_tied.py). ``reduce_range``: weights in 7 bits, for a CPU
    without VNNI (``reduced_range``); ``unsigned``: weights in uint8 with a zero point per channel
    (int8u), which keeps 8 bits there at some speed.

    Where the segment has an accuracy limit (``segment.accuracy_limit``, compile(accuracy=...)) and
    all in int8 misses it, the nodes whose rounding moves it most stay fp32, as few as hold the limit
    on the example inputs and on each of its validation batches (``segment.validation``, where the
    user gave some), by the worst of them (backends/onnx_sensitivity.py); the result's
    ``meta["kept_fp32"]`` names them."""
    from hetcc.backends.onnx_tables import quantizable_tables
    from hetcc.backends.onnx_tied import untie

    import onnx

    source = Path(exported.files["model"])
    model = onnx.load(str(source), load_external_data=False)  # with its weights unless they are apart
    tied = {} if exported.external_data else untie(model, source)
    tables = quantizable_tables(model, tied)
    limit = getattr(segment, "accuracy_limit", None)
    left_out: dict = {}
    said: list[str] = []  # logged after quantizing, whose quiet_logger would swallow it
    fitting = _fitting(model, exported, segment, said)

    def quantize(source, target, nodes=()):
        quantize_file(source, target, unsigned=unsigned, reduce_range=reduce_range,
                      external=exported.external_data, tables=tables, tied=tied, left_out=nodes)
        if fitting:
            _fit(target, model, tied, fitting, reduce_range, unsigned, said)

    def run(source, target):
        quantize(source, target)
        if limit is not None and not exported.external_data:
            left_out.update(_left_out(model, source, target, tied, quantize, exported, segment, limit, said))
    try:
        result = _replaced(exported, segment, workdir, run, "quantize_dynamic",
                           f"weight_type=QuantType.{'QUInt8' if unsigned else 'QInt8'}, per_channel=True, "
                           f"reduce_range={reduce_range}, op_types_to_quantize={QUANTIZED_OPS!r})",
                           then=f", then the tables {tables!r} in uint8 by rows (backends/onnx_tables.py)"
                           if tables else "")
    finally:
        for line in said:
            log.info("%s: %s", segment.name, line)
    meta = {**({"kept_fp32": left_out} if left_out else {}),
            **({"fitted_rounding": dict(fitting["meta"])} if fitting.get("meta") else {})}
    return replace(result, meta={**result.meta, **meta}) if meta else result


def _fitting(model, exported, segment, said: list) -> dict:
    """Where the segment has calibration batches (compile(calibration=...); never its example inputs),
    the second moments of its matrix products' inputs on them, from which ``_fit`` rounds their int8
    weights (backends/onnx_rounding.py); {} without (rounded to nearest), or where they cannot be
    measured (said why)."""
    from hetcc.backends import onnx_rounding

    batches = tuple(getattr(segment, "calibration", None) or ())
    if not batches:
        return {}
    if exported.external_data:
        said.append("int8 weights rounded to nearest: fitting them to the calibration batches reads "
                    "every activation, which a model with its weights apart from the file (over 2 GiB) "
                    "is not measured for here")
        return {}
    weights = {t.name for t in model.graph.initializer}
    products = [n.input[0] for n in model.graph.node
                if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights]
    if not products:  # nothing quantize_dynamic quantizes: nothing to fit
        return {}
    try:
        moments = onnx_rounding.second_moments(model, products, exported.input_names, batches)
    except Exception as exc:  # noqa: BLE001 - a fit that cannot be measured leaves rounding to nearest
        said.append(f"int8 weights rounded to nearest: the calibration batches could not be run "
                    f"({type(exc).__name__}: {exc})")
        return {}
    return {"moments": moments, "batches": len(batches)}


def _fit(target: Path, model, tied: dict, fitting: dict, reduce_range: bool, unsigned: bool,
         said: list) -> None:
    """Round the int8 weights of the file at ``target`` again to fit ``fitting``'s batches
    (backends/onnx_rounding.py); a fit that fails leaves the file as quantize_dynamic wrote it."""
    from hetcc.backends import onnx_rounding

    try:
        done, of = onnx_rounding.fit(target, model, tied, fitting["moments"], reduce_range=reduce_range,
                                     unsigned=unsigned)
    except Exception as exc:  # noqa: BLE001 - rounding to nearest is what the file already holds
        line = f"int8 weights rounded to nearest: fitting them failed ({type(exc).__name__}: {exc})"
        if line not in said:  # each quantizing again (nodes left in fp32) fails alike
            said.append(line)
        fitting.pop("meta", None)
        return
    if not of:  # every product left in fp32: no int8 weight to fit
        fitting.pop("meta", None)
        return
    if fitting.get("meta") is None:  # said once; quantizing again (nodes left in fp32) refits
        said.append(onnx_rounding.rounding_note(done, of, fitting["batches"]))
    fitting["meta"] = {"method": "gptq", "weights": done, "of": of, "batches": fitting["batches"]}


TRIES = 3
"""How many sets of nodes left in fp32 to quantize and check before giving up: a set the switched
model says holds the limit may miss it by its own rounding, and the next set is stricter."""


def _left_out(model, source: Path, target: Path, tied: dict, quantize, exported, segment, limit: float,
              said: list) -> dict:
    """Where the quantized file at ``target`` misses ``limit`` on the segment's example inputs, the
    fewest nodes to leave in fp32 that hold it (backends/onnx_sensitivity.py), with the file at
    ``target`` quantized again without them; their ``Kept.meta()``, or {} (the file as it was: all
    in int8 held the limit, or nothing left out does, or the switched model cannot be built here).
    ``model`` is ``source`` loaded (tables untied); ``quantize(source, target, left_out)`` quantizes."""
    from hetcc.backends import onnx_sensitivity as sensitivity
    from hetcc.backends.onnx_tied import PROTOBUF_LIMIT

    import onnx

    # the example inputs, and each validation batch (compile(validation=...)): the worst counts
    checks = [(segment.example_inputs, [segment.reference_value(name) for name in segment.output_names]),
              *((inputs, list(want)) for inputs, want in getattr(segment, "validation", ()))]
    feeds = [({name: to_numpy(x) for name, x in zip(exported.input_names, inputs) if name}, want)
             for inputs, want in checks]

    def measured(session, extra=None):
        return max(sensitivity.worst_error(session.run(exported.output_names, {**feed, **(extra or {})}), want)
                   for feed, want in feeds)

    tried = False
    try:
        everything = measured(sensitivity.sensitivity_session(target))
        if everything <= limit:
            return {}
        all_int8_bytes = target.stat().st_size
        quantized = onnx.load(str(target))
        nodes = sensitivity.quantized_nodes(model, quantized, tied)
        if not nodes:
            said.append("all in int8 missed the accuracy limit; which nodes to leave in fp32 was not "
                        "measured: the switched model cannot tell what this file computes")
            return {}
        # one rounding per weight, and per table tied to a head (its lookups read the head's rows)
        heads = set(tied.values())
        rounding = sum(4 * q.size * (2 if q.weight in heads else 1) for q in {q.weight: q for q in nodes}.values())
        if model.ByteSize() + rounding > PROTOBUF_LIMIT - (64 << 20):
            said.append("all in int8 missed the accuracy limit; which nodes to leave in fp32 was not "
                        "measured: the switched model would pass protobuf's 2 GiB")
            return {}
        session = sensitivity.sensitivity_session(sensitivity.switched_model(model, quantized, nodes, tied))
        del quantized
        runs: dict[bytes, float] = {}

        def run(switches):  # each set measured once, over the tries
            key = switches.tobytes()
            if key not in runs:
                runs[key] = measured(session, {sensitivity.SWITCH: switches})
            return runs[key]
        wanted, before = limit, None
        for _ in range(TRIES):
            found = sensitivity.leave_out(nodes, run, wanted, said)
            if found is None or found.nodes == before:
                break
            tried, before = True, found.nodes
            quantize(source, target, found.nodes)
            error = measured(sensitivity.sensitivity_session(target))
            if error <= limit:
                said.append(f"{len(found.nodes)} of {found.of} quantized nodes left in fp32: relative error "
                            f"{everything:.3g} all in int8, {error:.3g} now")
                return {**found.meta(), "relative_error": error, "all_int8_relative_error": everything,
                        "added_bytes": target.stat().st_size - all_int8_bytes,
                        **({"validation_batches": len(feeds) - 1} if len(feeds) > 1 else {})}
            said.append(f"{len(found.nodes)} nodes left in fp32 measured {found.error:.3g}, but the file "
                        f"{error:.3g}; trying a stricter set")
            # the file moved error / found.error times what the switched model said: aim that much
            # lower (below what this set measured, so the next set is larger)
            wanted = 0.95 * limit * found.error / error
    except Exception as exc:  # noqa: BLE001 - a measurement that fails leaves int8 as it was
        said.append(f"which nodes to leave in fp32 could not be measured ({type(exc).__name__}: {exc}); "
                    "the segment stays all in int8")
    if tried:  # the last set missed, or failed half way: all in int8 again
        quantize(source, target)
    return {}


def reduced_range() -> bool:
    """Whether int8 weights should take 7 bits here, as ONNX Runtime advises for a CPU without VNNI:
    its x86 int8 kernels then add pairs of uint8 x int8 products in int16 (AVX2's vpmaddubsw),
    which saturates where both are large (two products of 255 x 127 pass 32767). On an AVX2-only
    EPYC here 8-bit weights moved examples/tables.py's output by 20 %, 7-bit ones by 1.1 %, at the
    same speed (bert 1.42x and 1.46x fp32; benchmarks/bench_int8_range.py, docs/precision.md)."""
    from hetcc.cost_model.devices import int8_dot_products

    return not int8_dot_products()


STATIC_OPS = ["Conv", "MatMul", "Gemm"]
"""What static int8 quantizes: ONNX Runtime fuses the QDQ pairs around these into int8 kernels
(QLinearConv, QLinearMatMul / MatMulInteger); the elementwise ops between them stay fp32, which keeps
the error at what the products add."""


def quantized_static(exported, segment, workdir: Path, symmetric: bool = False, reduce_range: bool = False):
    """The exported model with its convolutions and matrix products in int8 and the activation
    scales fixed from ``segment.calibration`` (ONNX Runtime's own ``quantize_static``, QDQ format,
    weights per output channel, min-max ranges), in place of the fp32 file. Activations are uint8
    with a zero point, or with ``symmetric`` int8 centred on zero and biases left in float: what
    TensorRT takes (it quantizes symmetrically only, and dequantizes int8, not int32).
    ``reduce_range``: weights in 7 bits, for a CPU without VNNI (``reduced_range``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    activation = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if symmetric else {}

    def run(source, target):
        reader = calibration_reader(segment.calibration, exported.input_names)
        quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, weight_type=QuantType.QInt8, activation_type=activation,
                        op_types_to_quantize=STATIC_OPS, use_external_data_format=exported.external_data,
                        extra_options=extra)
    return _replaced(exported, segment, workdir, run, "quantize_static",
                     f"<the segment's {len(segment.calibration)} calibration batches, not saved>, "
                     f"quant_format=QuantFormat.QDQ, per_channel=True, reduce_range={reduce_range}, "
                     "weight_type=QuantType.QInt8, "
                     f"activation_type=QuantType.{activation.name}, op_types_to_quantize={STATIC_OPS!r}, "
                     f"extra_options={extra!r}")


def calibration_reader(batches, names):
    """ONNX Runtime's CalibrationDataReader over ``batches`` (tuples of tensors, in the order of
    the model's inputs ``names``; a None name, an input the exporter dropped, is skipped)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.left = iter(batches)

        def get_next(self):
            batch = next(self.left, None)
            return None if batch is None else {n: to_numpy(x) for n, x in zip(names, batch) if n is not None}

    return Batches()


def _replaced(exported, segment, workdir: Path, run, what: str, settings: str, then: str = ""):
    """``exported`` with its model file replaced by ``run(source, target)``'s quantized one: the
    ONNX Runtime call ``what`` with ``settings``, and what ``run`` does ``then``, as a failure
    names the step."""
    source = Path(exported.files["model"])
    target = source.with_name("model_int8.onnx")
    try:
        with quiet(), quiet_logger():  # it logs advice on the root logger for every tensor
            run(source, target)
    except Exception as exc:
        raise lowering_error(segment, "onnxruntime", exc, workdir, step=(
            f"onnxruntime.quantization.{what}({py_str(str(source))}, {py_str(str(target))}, {settings}){then}")) from exc
    for old in [source, *(p for p in Path(workdir).iterdir() if p.name.startswith(source.name + "."))]:
        old.unlink(missing_ok=True)  # the fp32 weights are not part of the artifact
    files = {"model": str(target)}
    data = [p for p in Path(workdir).iterdir() if p.name.startswith(target.name) and p != target]
    if data:
        files["weights"] = str(data[0])
    return replace(exported, files=files, external_data=bool(data))
