"""backends/onnx_tied.py: a table tied to an output head, untied before quantize_dynamic and retied
after it, on hand-built ONNX files (tests/test_precision.py compiles a tied model end to end)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hetcc.backends.onnx_tied import retie
from hetcc.backends.onnx_tied import untie as untie_model

VOCAB, WIDTH = 1200, 16


def _model(path, extra=(), rows=VOCAB, opset=20):
    """ids -> Gather(table) -> MatMul(Transpose(table)): logits. ``extra``: "add" (an Add reads the
    table too), "output" (the table is a graph output too)."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((rows, WIDTH)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),  # unnamed, as exporters may
             helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0], name="flip"),
             helper.make_node("MatMul", ["rows", "table_t"], ["logits"], name="head")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)]
    if "add" in extra:
        nodes.append(helper.make_node("Add", ["table", "table"], ["doubled"], name="other"))
        outputs.append(helper.make_tensor_value_info("doubled", TensorProto.FLOAT, None))
    if "output" in extra:
        outputs.append(helper.make_tensor_value_info("table", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
                              outputs, [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return numpy_helper.to_array(table)


def untie(path):
    return untie_model(onnx.load(str(path)), path)


def _run(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def _quantize(source, target, exclude=()):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hetcc.backends.onnx_quantize import QUANTIZED_OPS, reduced_range

    # as onnx_quantize.quantize_file before it reties: 7-bit weights where the CPU has no VNNI, or
    # the int8 head saturates
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=reduced_range(), op_types_to_quantize=QUANTIZED_OPS,
                     nodes_to_exclude=list(exclude))


def _named(path) -> dict:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def test_untie_gives_the_head_a_transposed_copy_and_keeps_the_result(tmp_path):
    path = tmp_path / "m.onnx"
    table = _model(path)
    ids = np.array([[3, 1199, 0]], dtype=np.int64)
    before = _run(path, ids)
    assert untie(path) == {"table": "table_head"}
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["Gather", "MatMul"]
    np.testing.assert_array_equal(numpy_helper.to_array(_named(path)["table_head"]), table.T)
    np.testing.assert_array_equal(_run(path, ids), before)


@pytest.mark.parametrize("extra, rows, opset", [(("add",), VOCAB, 20), (("output",), VOCAB, 20), ((), 100, 20),
                                                ((), VOCAB, 12)],
                         ids=["read-otherwise", "an-output", "small", "opset-12"])
def test_untie_leaves_a_table_it_cannot_retie_alone(tmp_path, extra, rows, opset):
    path = tmp_path / "m.onnx"
    _model(path, extra, rows, opset)
    written = path.read_bytes()
    assert untie(path) == {} and path.read_bytes() == written


def test_retie_reads_the_int8_columns_exactly_as_dequantized_for_lookups_of_any_rank(tmp_path):
    path, quantized = tmp_path / "m.onnx", tmp_path / "q.onnx"
    table = _model(path)
    tied = untie(path)
    _quantize(path, quantized)
    assert retie(quantized, tied) == ["table"]
    names = _named(quantized)
    assert "table" not in names and names["table_head_quantized"].data_type == TensorProto.INT8
    q, scale, zero = (numpy_helper.to_array(names[f"table_head_{s}"]) for s in ("quantized", "scale", "zero_point"))
    rows = ((q.astype(np.float32) - zero.astype(np.float32)) * scale).T  # the table as quantize_dynamic stored it
    model = onnx.load(str(quantized))  # the lookup's result read out too
    model.graph.output.append(helper.make_tensor_value_info("rows", TensorProto.FLOAT, None))
    onnx.save(model, str(quantized))
    for ids in (np.array(5, dtype=np.int64), np.array([5, -1], dtype=np.int64),
                np.array([[0, 1199, 42]], dtype=np.int64), np.arange(24, dtype=np.int64).reshape(2, 3, 4) * 50):
        session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
        looked_up = session.run(["rows"], {"ids": ids})[0]
        np.testing.assert_array_equal(looked_up, rows[ids])
        got, want = session.run(["logits"], {"ids": ids})[0], table[ids] @ table.T
        assert got.shape == want.shape and np.linalg.norm(got - want) / np.linalg.norm(want) < 0.03


def test_a_head_left_in_fp32_gets_the_table_back_and_one_fp32_copy_stays(tmp_path):
    path, quantized = tmp_path / "m.onnx", tmp_path / "q.onnx"
    table = _model(path)
    tied = untie(path)
    _quantize(path, quantized, exclude=["head"])
    assert retie(quantized, tied) == []
    floats = [t for t in _named(quantized).values() if t.data_type == TensorProto.FLOAT and t.dims]
    assert [t.name for t in floats] == ["table"]
    ids = np.array([[7, 1000]], dtype=np.int64)
    np.testing.assert_allclose(_run(quantized, ids), table[ids] @ table.T, rtol=1e-5, atol=1e-5)
