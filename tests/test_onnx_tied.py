"""backends/onnx_tied.py: a table tied to an output head, untied before quantize_dynamic and retied
after it, on hand-built ONNX files (tests/test_precision.py compiles a tied model end to end)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hetcc.backends.onnx_tied import retie, untie

VOCAB, WIDTH = 1200, 16


def _model(path, table_readers=("Gather", "Transpose"), rows=VOCAB):
    """ids -> Gather(table) -> MatMul(Transpose(table)): logits; optionally an Add reading the
    table too (it is then not only lookups and a head)."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((rows, WIDTH)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),  # unnamed, as exporters may
             helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0], name="flip"),
             helper.make_node("MatMul", ["rows", "table_t"], ["logits"], name="head")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)]
    if "Add" in table_readers:
        nodes.append(helper.make_node("Add", ["table", "table"], ["doubled"], name="other"))
        outputs.append(helper.make_tensor_value_info("doubled", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
                              outputs, [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return numpy_helper.to_array(table)


def _run(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_untie_gives_the_head_a_transposed_copy_and_keeps_the_result(tmp_path):
    path = tmp_path / "m.onnx"
    table = _model(path)
    ids = np.array([[3, 1199, 0]], dtype=np.int64)
    before = _run(path, ids)
    assert untie(path) == {"table": "table_head"}
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["Gather", "MatMul"]
    copy = next(t for t in model.graph.initializer if t.name == "table_head")
    np.testing.assert_array_equal(numpy_helper.to_array(copy), table.T)
    np.testing.assert_array_equal(_run(path, ids), before)


@pytest.mark.parametrize("readers, rows", [(("Gather", "Transpose", "Add"), VOCAB), (("Gather", "Transpose"), 100)])
def test_untie_leaves_tables_read_otherwise_or_too_small(tmp_path, readers, rows):
    path = tmp_path / "m.onnx"
    _model(path, readers, rows)
    written = path.read_bytes()
    assert untie(path) == {} and path.read_bytes() == written


def test_retie_reads_the_int8_columns_for_lookups_of_any_rank(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, quantized = tmp_path / "m.onnx", tmp_path / "q.onnx"
    table = _model(path)
    tied = untie(path)
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])
    assert retie(quantized, tied) == ["table"]
    names = {t.name: t for t in onnx.load(str(quantized)).graph.initializer}
    assert "table" not in names and names["table_head_quantized"].data_type == TensorProto.INT8
    for ids in (np.array([5, 7], dtype=np.int64), np.array([[0, 1199, 42]], dtype=np.int64),
                np.arange(24, dtype=np.int64).reshape(2, 3, 4) * 50):
        got = _run(quantized, ids)
        want = table[ids] @ table.T
        assert got.shape == want.shape
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.03


def test_retie_keeps_the_fp32_table_where_the_head_was_not_quantized_per_column(tmp_path):
    path = tmp_path / "m.onnx"
    _model(path)
    tied = untie(path)  # and no quantize_dynamic: the head has no int8 copy to read
    written = path.read_bytes()
    assert retie(path, tied) == [] and path.read_bytes() == written
