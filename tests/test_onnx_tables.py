"""backends/onnx_tables.py: embedding tables stored in uint8 by rows, on hand-built ONNX files
(tests/test_precision.py compiles a model with tables end to end)."""
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hetcc.backends.onnx_tables import by_rows, dequantized, quantizable_tables, store_by_rows

VOCAB, WIDTH = 1500, 24


def _table(rows=VOCAB, width=WIDTH):
    """Rows whose sizes differ by 1000x, as a trained table's frequent and rare tokens do, one row
    all zeros (a padding entry) and one all positive."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((rows, width)) * np.logspace(-3, 0, rows)[:, None]
    table[0] = 0.0
    table[1] = np.abs(table[1]) + 0.5
    return table.astype(np.float32)


def _model(path, external=False):
    """Two lookups in one table (one unnamed, as exporters may leave them), each a graph output."""
    table = numpy_helper.from_array(_table(), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
             helper.make_node("Gather", ["table", "more_ids"], ["more_rows"], name="again", axis=0)]
    graph = helper.make_graph(
        nodes, "tables", [helper.make_tensor_value_info("ids", TensorProto.INT64, None),
                          helper.make_tensor_value_info("more_ids", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("more_rows", TensorProto.FLOAT, None)], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{path.name}.data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return numpy_helper.to_array(table)


def test_each_row_rounds_by_its_own_range():
    table = _table()
    quantized, scale, zero = by_rows(table)
    assert quantized.dtype == zero.dtype == np.uint8 and scale.shape == (VOCAB,)
    back = dequantized(quantized, scale, zero)
    # within half a step of its own row's range, which is 1000x smaller for the first rows than
    # one scale for the whole table would give
    assert np.all(np.abs(back - table) <= scale[:, None] * 0.5 + 1e-7)
    whole = (table.max() - table.min()) / 255
    assert scale[2] < whole / 500
    assert np.array_equal(back[0], table[0]) and scale[0] == 1.0  # zeros stay zero
    assert np.all(back[table == 0] == 0)


def test_only_large_tables_that_nothing_but_lookups_read_are_stored_by_rows():
    def model(opset=17, **tables):
        inits = [numpy_helper.from_array(np.zeros(dims, np.float32), name) for name, (dims, _) in tables.items()]
        nodes = [n for _, (_, made) in tables.items() for n in made]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m = model(vocab=((2048, 8), [helper.make_node("Gather", ["vocab", "ids"], ["a"])]),
              small=((16, 8), [helper.make_node("Gather", ["small", "ids"], ["b"])]),
              other=((2048, 8), [helper.make_node("Gather", ["other", "ids"], ["c"]),
                                 helper.make_node("Add", ["other", "other"], ["d"])]),
              columns=((2048, 8), [helper.make_node("Gather", ["columns", "ids"], ["e"], axis=1)]),
              cube=((2048, 8, 2), [helper.make_node("Gather", ["cube", "ids"], ["f"])]),
              tied=((2048, 8), [helper.make_node("Gather", ["tied", "ids"], ["g"])]),
              unread=((2048, 8), []))
    assert quantizable_tables(m, tied={"tied": "tied_head"}) == ["vocab"]
    m.graph.output.append(helper.make_tensor_value_info("vocab", TensorProto.FLOAT, None))  # read outside too
    assert quantizable_tables(m) == ["tied"]
    # before opset 14 (Reshape without allowzero), and in a graph with subgraphs (a reader inside
    # one would lose its table), none
    lookup = [helper.make_node("Gather", ["vocab", "ids"], ["a"])]
    assert quantizable_tables(model(opset=13, vocab=((2048, 8), lookup))) == []
    branch = helper.make_graph([helper.make_node("Gather", ["vocab", "ids"], ["inner"])], "branch", [],
                               [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
    nested = model(vocab=((2048, 8), lookup))
    nested.graph.node.append(helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch))
    assert quantizable_tables(nested) == []


@pytest.mark.parametrize("external", [False, True], ids=["inside", "external-data"])
def test_lookups_read_the_stored_rows_exactly_for_ids_of_any_rank(tmp_path, external):
    path = tmp_path / "m.onnx"
    table = _model(path, external)
    assert store_by_rows(path, ["table"]) == ["table"]
    model = onnx.load(str(path))
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert "table" not in stored and stored["table_quantized"].dtype == np.uint8
    rows = dequantized(stored["table_quantized"], stored["table_scale"], stored["table_zero_point"])
    assert np.array_equal(rows, dequantized(*by_rows(table)))
    if external:  # apart again, in one file: the old one replaced, not appended to
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
        assert (tmp_path / "m.onnx.data").stat().st_size < table.nbytes / 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for ids in (np.array(5), np.array([5, -1]), np.array([[0, VOCAB - 1, 42]]),
                np.arange(24).reshape(2, 3, 4) * 50, np.zeros((2, 0), dtype=np.int64)):  # and no tokens
        other = np.asarray((VOCAB - 1 - ids) % VOCAB)
        got, more = session.run(None, {"ids": ids.astype(np.int64), "more_ids": other.astype(np.int64)})
        np.testing.assert_array_equal(got, rows[ids])
        np.testing.assert_array_equal(more, rows[other])


def test_a_table_with_entries_that_are_not_finite_stays_fp32(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    table = _model(path).copy()
    table[7, 3] = np.inf
    model = onnx.load(str(path))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(table, "table"))
    onnx.save(model, str(path))
    with caplog.at_level(logging.INFO, logger="hetcc"):
        assert store_by_rows(path, ["table"]) == []
    assert "the table table stays fp32: it holds entries that are not finite" in caplog.text
    # a range past float32's largest number is still one scale per row, not an overflow
    huge = np.array([[-3e38, 3e38, 1.0]], dtype=np.float32)
    back = dequantized(*by_rows(huge))
    assert np.isfinite(back).all() and np.allclose(back, huge, rtol=0.01, atol=3e38 / 255)


def test_a_table_whose_int8_names_are_taken_stays_fp32(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    _model(path)
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "table_scale"))
    onnx.save(model, str(path))
    written = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="hetcc"):
        assert store_by_rows(path, ["table"]) == []
    assert path.read_bytes() == written
    assert "the table table stays fp32: its int8 names are taken" in caplog.text


def test_a_segment_whose_weights_are_apart_gets_its_tables_by_rows_too(tmp_path, monkeypatch, cpu):
    import torch

    import hetcc
    from hetcc.backends import onnxruntime_backend
    from hetcc.error_budget import relative_error
    from tables import build  # examples/tables.py: a 2048-row table, 16 positions, a Linear

    monkeypatch.setattr(onnxruntime_backend, "_EMBED_LIMIT", 0)  # as if the weights were > 2 GB
    cpu(vnni=False)  # 7-bit weights, which no CPU's int8 kernels saturate
    model, inputs = build()
    cm = hetcc.compile(model, inputs, targets=["onnxruntime:cpu@int8"], accuracy=0.05, tune="off")
    artifact = cm.artifacts[cm.plan.segments[0].name]
    assert artifact.target == "onnxruntime:cpu@int8"
    assert artifact.meta["external_data"] and "weights" in artifact.files
    stored = {t.name: t for t in onnx.load(artifact.files["model"]).graph.initializer}
    assert stored["p_vocab_weight_quantized"].data_type == TensorProto.UINT8
    assert list(stored["p_vocab_weight_scale"].dims) == [2048]
    with torch.no_grad():
        want = model(*inputs)
    assert relative_error(hetcc.load(cm.save(tmp_path / "b"))(*inputs), want) < 0.05
