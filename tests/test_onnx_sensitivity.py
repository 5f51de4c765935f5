"""Leaving the quantized nodes that move a segment most in fp32 (backends/onnx_sensitivity.py): the
switched model measures what quantize_dynamic's file gives, the order and the fewest to leave out,
and compile() keeping one int8 segment within its limit instead of giving int8 up for its units."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import hetcc
from hetcc.backends import onnx_sensitivity as sensitivity
from hetcc.backends.onnx_quantize import reduced_range
from hetcc.error_budget import relative_error
from hetcc.errors import PlacementError
from test_precision import OutlierFirst  # six layers, the first reading a few huge inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _graph(path):
    """An fp32 ONNX model with each kind of node int8 quantizes: a lookup in a table of 2048 rows,
    a Gemm over its weight transposed (transB, as torch's exporter writes a Linear without a view),
    a Gemm over a stored-transposed weight, and a MatMul; one input column is large, so its product's
    activations round coarsely."""
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(0)
    weights = {"table": g.standard_normal((2048, 32)), "w1": g.standard_normal((64, 32)) / 6,
               "b1": g.standard_normal(64) / 10, "w2": g.standard_normal((64, 48)) / 8,
               "w3": g.standard_normal((48, 16)) / 7}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup", axis=0),
             helper.make_node("Add", ["rows", "x"], ["h"], name="mix"),
             helper.make_node("Gemm", ["h", "w1", "b1"], ["y1"], name="first", transB=1),
             helper.make_node("Relu", ["y1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2"], ["y2"], name="second"),
             helper.make_node("Relu", ["y2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="third")]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("ids", TensorProto.INT64, [24]),
                         helper.make_tensor_value_info("x", TensorProto.FLOAT, [24, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24, 16])],
        [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    x = g.standard_normal((24, 32)).astype(np.float32)
    x[:, 0] *= 60.0
    return model, {"ids": g.integers(0, 2048, 24), "x": x}


def _quantize(source, target, left_out=(), unsigned=False, tied=None):
    """``source`` quantized as backends/onnx_quantize.quantized does (7-bit signed weights where the
    CPU has no VNNI, the tables by rows, those ``tied`` to a head retied), ``left_out`` (Quantized
    nodes) in fp32."""
    from hetcc.backends.onnx_quantize import quantize_file
    from hetcc.backends.onnx_tables import quantizable_tables

    quantize_file(source, target, unsigned=unsigned, reduce_range=not unsigned and reduced_range(),
                  tables=quantizable_tables(onnx.load(str(source)), tied or {}), tied=tied,
                  left_out=left_out)
    return onnx.load(str(target))


def _product(name, weight):
    """A product to leave out by name (its size and module do not matter to quantize_file)."""
    return sensitivity.Quantized(name, weight, True, 0, name)


def _run(path_or_model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture
def seven_bits(cpu):
    """int8's weights in 7 bits whatever the CPU: ONNX Runtime's int8 kernels then never saturate
    (8-bit ones can without VNNI), so the quantized file computes exactly what the switched model
    simulates."""
    cpu(vnni=False)


def _lookup_into_product(g):  # the first product reads the looked-up rows themselves
    g.node[2].input[0] = "rows"
    g.node.remove(g.node[1])


def _two_unnamed_lookups(g):  # exporters may leave lookups unnamed; a table read twice is stored once
    from onnx import TensorProto, helper

    g.node[0].ClearField("name")
    g.node.append(helper.make_node("Gather", ["table", "ids"], ["rows_again"], axis=0))
    g.output.append(helper.make_tensor_value_info("rows_again", TensorProto.FLOAT, [24, 32]))


def _worst(got, want):
    return max(relative_error(torch.from_numpy(g), torch.from_numpy(w)) for g, w in zip(got, want))


@pytest.mark.parametrize("edit", [None, _lookup_into_product, _two_unnamed_lookups],
                         ids=["as-built", "lookup-into-product", "two-unnamed-lookups"])
@pytest.mark.parametrize("unsigned", [False, True], ids=["int8", "int8u"])
def test_the_switched_model_measures_what_the_quantized_file_gives(tmp_path, unsigned, edit, seven_bits):
    source, feeds = _graph(tmp_path / "fp32.onnx")
    if edit:
        source = _edited(tmp_path / "fp32.onnx", edit)
    want = _run(source, feeds)
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx", unsigned=unsigned)
    nodes = sensitivity.quantized_nodes(source, quantized, {})
    assert [(q.node, q.product, q.transposed) for q in nodes] == [
        ("table" if edit is _two_unnamed_lookups else "lookup", False, False), ("first", True, True),
        ("second", True, False), ("third", True, False)]
    session = sensitivity.sensitivity_session(sensitivity.switched_model(source, quantized, nodes, {}))

    def simulated(switches):
        return session.run(None, {**feeds, sensitivity.SWITCH: np.asarray(switches, np.float32)})

    for got, fp32 in zip(simulated([0, 0, 0, 0]), want):  # all off: the fp32 model exactly
        np.testing.assert_array_equal(got, fp32)
    for got, real in zip(simulated([1, 1, 1, 1]), _run(tmp_path / "all.onnx", feeds)):
        np.testing.assert_allclose(got, real, rtol=1e-4, atol=1e-4 * np.abs(real).max())
    for k, q in enumerate(nodes):  # each node left out, as quantize_file leaves it out
        real = _run(_quantize(tmp_path / "fp32.onnx", tmp_path / f"without{k}.onnx", [q], unsigned), feeds)
        switches = [0 if j == k else 1 for j in range(len(nodes))]
        assert _worst(simulated(switches), want) == pytest.approx(_worst(real, want), rel=1e-3)


def test_a_gemm_is_left_out_by_the_name_quantize_dynamic_gives_its_matmul(tmp_path, seven_bits):
    source, _ = _graph(tmp_path / "fp32.onnx")
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx")
    first = next(q for q in sensitivity.quantized_nodes(source, quantized, {}) if q.node == "first")
    assert first.stored == "w1_Transposed" and first.excluded == ["first", "first_MatMul"]
    assert next(q for q in sensitivity.quantized_nodes(source, quantized, {}) if q.node == "third").excluded == ["third"]
    kept = _quantize(tmp_path / "fp32.onnx", tmp_path / "kept.onnx", [first])
    stored = {t.name for t in kept.graph.initializer}
    assert "w1_Transposed_quantized" not in stored and "w2_quantized" in stored


def _edited(path, edit):
    model = onnx.load(str(path))
    edit(model.graph)
    onnx.save(model, str(path))
    return model


@pytest.mark.parametrize("edit, why", [
    (lambda g: g.node[4].ClearField("name"), "a product without a name"),
    (lambda g: setattr(g.node[6], "name", "second"), "two nodes of one name"),
], ids=["unnamed", "same-name"])
def test_what_the_switched_model_cannot_simulate_is_not_measured(tmp_path, seven_bits, edit, why):
    _graph(tmp_path / "fp32.onnx")
    source = _edited(tmp_path / "fp32.onnx", edit)
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx")
    assert sensitivity.quantized_nodes(source, quantized, {}) is None, why


def test_products_the_file_quantized_otherwise_and_subgraphs_are_not_measured(tmp_path, seven_bits):
    from onnx import TensorProto, helper

    _graph(tmp_path / "fp32.onnx")

    def another_reader(g):  # a second product reading the third's weight
        g.node.append(helper.make_node("MatMul", ["r2", "w3"], ["y_again"], name="again"))
        g.output.append(helper.make_tensor_value_info("y_again", TensorProto.FLOAT, [24, 16]))
    source = _edited(tmp_path / "fp32.onnx", another_reader)
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx", [_product("again", "w3")])
    # its weight is stored in int8 for "third", and "again", left out, reads it dequantized: not
    # the fp32 weight the switched model would give it, so nothing is measured, told or not
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == "w3" for n in quantized.graph.node)
    assert sensitivity.quantized_nodes(source, quantized, {}, excluded=["again"]) is None
    assert sensitivity.quantized_nodes(source, quantized, {}) is None
    # with both in int8 it is measured, the weight rounded once for both
    both = _quantize(tmp_path / "fp32.onnx", tmp_path / "both.onnx")
    assert [q.node for q in sensitivity.quantized_nodes(source, both, {})][-2:] == ["third", "again"]

    def nested(g):  # an If whose branches the switched model would not see into
        branch = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "branch", [],
                                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [24, 16])])
        g.node.append(helper.make_node("If", ["flag"], ["picked"], name="pick", then_branch=branch,
                                       else_branch=branch))
        g.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    assert sensitivity.quantized_nodes(_edited(tmp_path / "fp32.onnx", nested), both, {}) is None


def test_a_shared_weight_is_rounded_once_and_a_lookup_left_out_is_not_switched(tmp_path, seven_bits):
    from onnx import helper

    _graph(tmp_path / "fp32.onnx")

    def share(g):  # a fourth product reads the third's weight
        g.node.append(helper.make_node("MatMul", ["r2", "w3"], ["y_again"], name="again"))
        g.output.append(helper.make_tensor_value_info("y_again", onnx.TensorProto.FLOAT, [24, 16]))
    source = _edited(tmp_path / "fp32.onnx", share)
    table = next(q for q in sensitivity.quantized_nodes(source, _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx"),
                                                         {}) if not q.product)
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx", [table])
    nodes = sensitivity.quantized_nodes(source, quantized, {})
    assert [q.node for q in nodes] == ["first", "second", "third", "again"]  # the lookup stayed fp32
    switched = sensitivity.switched_model(source, quantized, nodes, {})
    added = [t for t in switched.graph.initializer if t.name.startswith(sensitivity.SWITCH) and len(t.dims)]
    assert sorted(tuple(t.dims) for t in added) == [(48, 16), (64, 32), (64, 48)]  # w3 once


def _nodes(*specs):
    return [sensitivity.Quantized(f"n{i}", f"w{i}", product, size, f"m{i}")
            for i, (product, size) in enumerate(specs)]


def test_nodes_are_left_out_by_squared_error_per_share_of_what_int8_buys():
    # a table and a product of one size and error: the table buys bytes alone, so it goes first
    assert sensitivity.order(_nodes((True, 100), (False, 100)), [0.01, 0.01]) == [1, 0]
    # a product twice as large with 1.5x the error: 2.25x the squared error for 2x the share
    assert sensitivity.order(_nodes((True, 100), (True, 200)), [0.01, 0.015]) == [1, 0]
    # with 1.3x the error (1.69x squared) for 2x the share, the smaller goes first
    assert sensitivity.order(_nodes((True, 100), (True, 200)), [0.01, 0.013]) == [0, 1]
    assert sensitivity.order(_nodes((True, 100), (True, 100)), [0.0, 0.001]) == [1, 0]


def _quadrature(alone):
    """A segment whose nodes' errors add as squares: its error with the switched-on nodes in int8."""
    return lambda switches: math.sqrt(sum(e * e for e, s in zip(alone, switches) if s))


def test_the_fewest_nodes_that_hold_the_limit_are_left_out():
    nodes = _nodes((True, 100), (True, 100), (True, 100), (True, 100), (False, 400))
    alone = [0.004, 0.001, 0.006, 0.002, 0.005]
    kept = sensitivity.leave_out(nodes, _quadrature(alone), limit=0.005)
    # the worst product first (0.006² per 0.375 of what int8 buys), then the table (0.005² per 0.5):
    # 0.0046 is within 0.98 x 0.005
    assert [q.node for q in kept.nodes] == ["n2", "n4"]
    assert kept.of == 5 and kept.error == pytest.approx(math.sqrt(0.004**2 + 0.001**2 + 0.002**2))
    assert kept.all_error == pytest.approx(math.sqrt(sum(e * e for e in alone)))
    assert kept.meta()["where"] == ["m2", "m4"]


def test_nothing_is_left_out_within_the_limit_or_past_half_the_products():
    nodes = _nodes((True, 100), (True, 100), (True, 100))
    alone = [0.004, 0.004, 0.004]
    assert sensitivity.leave_out(nodes, _quadrature(alone), limit=0.01) is None  # all in int8 holds it
    assert len(sensitivity.leave_out(nodes, _quadrature(alone), limit=0.006).nodes) == 1  # 0.0057
    # two of three products (two thirds of their weights, past MOST_KEPT) would give 0.004
    assert sensitivity.leave_out(nodes, _quadrature(alone), limit=0.005) is None
    # an error that only all of them together make (no node moves anything alone): none is left out
    said = []
    assert sensitivity.leave_out(nodes, lambda s: 0.02 if s.sum() == 3 else 0.0, limit=0.01, said=said) is None
    assert said and "moves nothing alone" in said[0]


def test_a_node_that_alone_breaks_the_outputs_is_left_out_first():
    nodes = _nodes((True, 100), (True, 100), (True, 100))
    alone = [0.001, math.inf, 0.002]
    kept = sensitivity.leave_out(nodes, lambda s: math.inf if s[1] else _quadrature(alone[:1] + [0] + alone[2:])(s),
                                 limit=0.01)
    assert [q.node for q in kept.nodes] == ["n1"]


def test_compile_keeps_the_segment_in_int8_with_its_worst_layer_in_fp32(tmp_path, seven_bits):
    torch.manual_seed(0)
    x = torch.randn(128, 256)
    x[:, :4] *= 400.0
    model = OutlierFirst(width=256).eval()
    loose = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy=0.5, tune="off")
    everything = loose.plan.segments[0].relative_error
    assert "kept_fp32" not in loose.artifacts[loose.plan.segments[0].name].meta  # within: nothing left out
    limit = everything / 2
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=limit,
                       tune="off", precisions=["int8"])
    (seg,) = cm.plan.segments  # one segment in int8, not a first part given up
    assert seg.target == "onnxruntime:cpu@int8" and seg.relative_error <= limit
    kept = cm.artifacts[seg.name].meta["kept_fp32"]
    assert kept["where"] == ["layers.0"] and kept["of"] == 6
    assert kept["all_int8_relative_error"] == pytest.approx(everything, rel=1e-3)
    assert not cm.plan.accuracy["dropped"]
    assert any(n.startswith(f"{seg.name} on onnxruntime:cpu@int8 keeps 1 of its 6 quantized nodes in fp32")
               and "(layers.0)" in n for n in cm.plan.notes), cm.plan.notes
    with torch.no_grad():
        want = model(x)
    assert relative_error(cm(x), want) <= limit
    loaded = hetcc.load(cm.save(tmp_path / "b"))  # verified against its limit on load, and says so
    assert loaded.artifacts[seg.name].meta["kept_fp32"]["where"] == ["layers.0"]
    torch.testing.assert_close(loaded(x), cm(x))


def _tied_graph(path):
    """An fp32 ONNX model whose table (2048 rows) is read by lookups and, transposed, by the output
    head, as torch's exporter writes GPT-2's."""
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(1)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup", axis=0),
             helper.make_node("MatMul", ["rows", "mix"], ["h"], name="mixing"),
             helper.make_node("Transpose", ["table"], ["flipped"], name="flip", perm=[1, 0]),
             helper.make_node("MatMul", ["h", "flipped"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [16, 2048])],
        [numpy_helper.from_array(g.standard_normal((2048, 32)).astype(np.float32), "table"),
         numpy_helper.from_array((g.standard_normal((32, 32)) / 5).astype(np.float32), "mix")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return {"ids": g.integers(0, 2048, 16)}


def test_a_measurement_that_fails_leaves_the_segment_as_quantized(tmp_path, seven_bits, monkeypatch, caplog):
    def broken(*args):
        raise MemoryError("no room for the switched model")

    monkeypatch.setattr(sensitivity, "switched_model", broken)
    torch.manual_seed(0)
    x = torch.randn(128, 256)
    x[:, :4] *= 400.0
    model = OutlierFirst(width=256).eval()
    with caplog.at_level("INFO", logger="hetcc"):
        cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=0.002,
                           tune="off", precisions=["int8"])
    assert all("kept_fp32" not in a.meta for a in cm.artifacts.values())
    assert "could not be measured (MemoryError: no room for the switched model)" in caplog.text
    assert cm.plan.accuracy["measured"] <= 0.002  # the placement gave int8 up where it had to


def _outliers():
    torch.manual_seed(0)
    x = torch.randn(128, 256)
    x[:, :4] *= 400.0
    return OutlierFirst(width=256).eval(), x


def test_a_set_the_file_misses_is_followed_by_a_larger_one(tmp_path, seven_bits, monkeypatch, caplog):
    model, x = _outliers()
    real, asked = sensitivity.leave_out, []

    def first_too_few(nodes, run, limit, said=None):
        asked.append(limit)
        if len(asked) == 1:  # a set the file will miss: none left out, as if within the limit
            everything = run(np.ones(len(nodes), np.float32))
            return sensitivity.Kept((), len(nodes), everything, everything)
        return real(nodes, run, limit, said)

    monkeypatch.setattr(sensitivity, "leave_out", first_too_few)
    with caplog.at_level("INFO", logger="hetcc"):
        # all in int8 moves it 2.3 %, the first layer in fp32 about 1 %
        cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy=0.012, tune="off")
    (seg,) = cm.plan.segments
    assert len(asked) == 2 and asked[1] < asked[0]  # stricter after the file missed
    assert "trying a stricter set" in caplog.text
    assert cm.artifacts[seg.name].meta["kept_fp32"]["where"] == ["layers.0"] and seg.relative_error <= 0.012


def test_after_three_sets_the_file_misses_the_segment_is_all_int8_again(tmp_path, seven_bits, monkeypatch, caplog):
    model, x = _outliers()
    tried = []

    def useless(nodes, run, limit, said=None):  # each time another last layer: never the first
        tried.append(nodes[-1 - len(tried)].node)
        return sensitivity.Kept((nodes[-len(tried)],), len(nodes), limit / 2, 1.0)

    monkeypatch.setattr(sensitivity, "leave_out", useless)
    with caplog.at_level("INFO", logger="hetcc"):
        cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy=0.002, tune="off")
    assert len(tried) == 3 and caplog.text.count("trying a stricter set") == 3
    assert all("kept_fp32" not in a.meta for a in cm.artifacts.values())
    # the file was quantized all in int8 again, so the segment missed and int8 was given up by ends
    assert any("was not kept for" in n for n in cm.plan.notes), cm.plan.notes


def test_a_head_tied_to_its_table_is_switched_with_its_lookups(tmp_path, seven_bits):
    from hetcc.backends.onnx_tied import untie

    feeds = _tied_graph(tmp_path / "fp32.onnx")
    (want,) = _run(tmp_path / "fp32.onnx", feeds)
    source = onnx.load(str(tmp_path / "fp32.onnx"))
    tied = untie(source, tmp_path / "fp32.onnx")  # the head gets its own transposed copy
    assert tied == {"table": "table_head"}
    # the tied table is not stored by rows: retie points its lookups at the head's copy
    quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx", tied=tied)
    nodes = sensitivity.quantized_nodes(source, quantized, tied)
    assert [q.node for q in nodes] == ["mixing", "head"]
    session = sensitivity.sensitivity_session(sensitivity.switched_model(source, quantized, nodes, tied))

    def error(got):
        return relative_error(torch.from_numpy(got), torch.from_numpy(want))

    def simulated(switches):
        return session.run(None, {**feeds, sensitivity.SWITCH: np.asarray(switches, np.float32)})[0]

    # the lookups read the head's int8 rows: with the head on, they round too, as in the retied file
    assert error(simulated([1, 1])) == pytest.approx(error(_run(tmp_path / "all.onnx", feeds)[0]), rel=1e-3)
    assert error(simulated([0, 1])) > error(simulated([0, 0])) + 1e-3
    # the head left out: retie gives the lookups the fp32 table back, and the switch does the same
    _quantize(tmp_path / "fp32.onnx", tmp_path / "nohead.onnx", [nodes[1]], tied=tied)
    assert error(simulated([1, 0])) == pytest.approx(error(_run(tmp_path / "nohead.onnx", feeds)[0]), rel=1e-3)
    tables = [t for t in onnx.load(str(tmp_path / "nohead.onnx")).graph.initializer if t.name.startswith("table")]
    assert [t.name for t in tables] == ["table"]  # one fp32 table, its copy dropped


def test_nodes_left_in_fp32_are_priced_and_must_fit_the_memory(tmp_path, seven_bits):
    model, x = _outliers()
    # all in int8 it moves 2.3 %, with the first layer in fp32 about 1 %
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy=0.012, tune="off")
    (seg,) = cm.plan.segments
    kept = cm.artifacts[seg.name].meta["kept_fp32"]
    assert kept["where"] == ["layers.0"]
    assert kept["added_bytes"] == pytest.approx(3 * 256 * 256, rel=0.05)  # its weight in 4 bytes, not 1
    assert seg.resident_bytes == pytest.approx(seg.artifact_bytes, rel=0.1)  # priced as it runs
    # and its time: that layer's product in fp32, one of six, so more than all in int8 and less
    # than all in fp32
    priced = {precision: hetcc.compile(model, (x,), targets=[target], accuracy=budget, tune="off").plan.segments[0]
              for precision, target, budget in (("int8", "onnxruntime:cpu@int8", 0.5), ("fp32", "onnxruntime:cpu", None))}
    assert priced["fp32"].target == "onnxruntime:cpu"
    assert priced["int8"].predicted_seconds < seg.predicted_seconds < priced["fp32"].predicted_seconds
    assert any(n.startswith(f"{seg.name} on onnxruntime:cpu@int8 keeps 1 of its 6") and "ms to its predicted time" in n
               for n in cm.plan.notes), cm.plan.notes
    # a memory that holds the segment all in int8, but not with that layer in fp32
    room = int(seg.resident_bytes - kept["added_bytes"] / 2)
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=0.012,
                       tune="off", memory_limits={"onnxruntime:cpu@int8": room})
    in_int8 = [s for s in cm.plan.segments if s.target == "onnxruntime:cpu@int8"]
    assert in_int8 and sum(s.resident_bytes for s in in_int8) <= room
    assert any("was not kept for" in n and "quantized node in fp32" in n and "past its memory" in n
               for n in cm.plan.notes), cm.plan.notes
    assert cm.plan.accuracy["measured"] <= 0.012
    with torch.no_grad():
        assert relative_error(cm(x), model(x)) <= 0.012
    # the same memory for int8 and fp32 alike (a limit on the runtime, which its int8 shares): only
    # all in int8 fits, which misses the budget, and the error says both
    with pytest.raises(PlacementError) as caught:
        hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8", "onnxruntime:cpu"], accuracy=0.012,
                      tune="off", memory_limits={"onnxruntime:cpu": room})
    message = str(caught.value)
    assert "capacity exceeded" in message and "past its memory" in message
    assert "loosen the budget (accuracy=), raise the memory limits" in message


def test_a_segment_dearer_for_its_nodes_in_fp32_runs_where_it_costs_less(seven_bits):
    from hetcc.cost_model.devices import DeviceSpec

    def device(**peaks):
        return DeviceSpec(name="cpu", peak_flops=peaks, mem_bandwidth=20e9, mem_capacity=8e9)

    model, x = _outliers()
    # int8's arithmetic fast and its fp32 slow: all in int8 the cheapest, but with its first layer
    # in fp32 (which 1.2 % needs) dearer than the other forms of the runtime
    targets = ["onnxruntime:cpu@int8", "onnxruntime:cpu"]
    fast = {"onnxruntime:cpu@int8": device(fp32=10e9, int8=1000e9), "onnxruntime:cpu": device(fp32=100e9)}
    cm = hetcc.compile(model, (x,), targets=targets, accuracy=0.012, tune="off", devices=fast)
    # (compile offers @int8u beside @int8 with onnxruntime:cpu listed under a budget): it holds the
    # limit with the same layer in fp32, and its int8 arithmetic is priced at the fp32 peak here,
    # so that layer adds little
    (seg,) = cm.plan.segments
    assert seg.target == "onnxruntime:cpu@int8u"
    assert cm.artifacts[seg.name].meta.get("kept_fp32", {}).get("where") == ["layers.0"]
    swapped = [n for n in cm.plan.notes if n.startswith("seg0 on onnxruntime:cpu@int8 held its accuracy limit only "
                                                        "with 1 quantized node in fp32")]
    assert len(swapped) == 1, cm.plan.notes
    assert "on onnxruntime:cpu@int8u its units verify within the limit and the plan costs" in swapped[0]
    added, saved = (float(v) for v in re.findall(r"([0-9.]+) ms", swapped[0]))
    assert added > saved > 0
    # the target it replaced is its runner-up, with why
    assert seg.runner_up == "onnxruntime:cpu@int8" and "only with 1 quantized node in fp32" in seg.runner_up_why
    assert seg.runner_up_seconds > seg.predicted_seconds
    assert not cm.plan.optimal  # the solver's optimum priced int8 as all in int8
    assert cm.plan.accuracy["measured"] <= 0.012
    with torch.no_grad():
        assert relative_error(cm(x), model(x)) <= 0.012
    # the other forms slower still: int8 with its layer in fp32 stays
    slow = {**fast, "onnxruntime:cpu": device(fp32=5e9)}
    cm = hetcc.compile(model, (x,), targets=targets, accuracy=0.012, tune="off", devices=slow)
    (seg,) = cm.plan.segments
    assert seg.target == "onnxruntime:cpu@int8" and cm.artifacts[seg.name].meta["kept_fp32"]["where"] == ["layers.0"]
    assert not any("held its accuracy limit only" in n for n in cm.plan.notes)
    # its runner-up is compared with what the plan says the segment costs, its node in fp32 included
    here = re.search(r"vs ([0-9.]+) ms here", seg.runner_up_why)
    assert here and float(here.group(1)) == pytest.approx(seg.predicted_seconds * 1e3, abs=1e-3), seg.runner_up_why
    # in between: @int8u all in int8 priced below int8 with its node in fp32, so it is tried, and
    # with its own node in fp32 it costs more; the runner-up line says that, not the price all in int8
    between = {**fast, "onnxruntime:cpu": device(fp32=40e9)}
    cm = hetcc.compile(model, (x,), targets=targets, accuracy=0.012, tune="off", devices=between)
    (seg,) = cm.plan.segments
    assert seg.target == "onnxruntime:cpu@int8" and seg.runner_up == "onnxruntime:cpu@int8u"
    assert seg.runner_up_why.startswith("tried in its place: with its own nodes in fp32 it costs"), seg.runner_up_why
    assert seg.runner_up_seconds > seg.predicted_seconds


def test_only_targets_that_keep_the_segments_as_they_are_are_tried():
    from hetcc import kept_fp32
    from hetcc.passes.segments import form_segments
    from test_solver import chain, make

    # a chain of three units on three targets, the middle one on the second: moving it to the first
    # would make one segment of three, which is not the plan the lowerings verified (free links)
    p = make(((1.0, 9.0, 9.0), (5.0, 5.0, 2.0), (1.0, 9.0, 9.0)), chain(3), latency=0.0, bandwidth=math.inf)
    specs = form_segments(p, (0, 1, 0))
    middle = next(s for s in specs if s.target == 1)
    allowed = [[True] * 3] * 3
    options = kept_fp32.cheaper_targets(p, (0, 1, 0), middle, specs, allowed, than=8.0)
    assert [(cost, t) for cost, t, _ in options] == [(4.0, 2)]  # z; x would merge the three
    assert options[0][2] == (0, 2, 0)
    # nothing below what it costs now, or not allowed on every unit: nothing to try
    assert kept_fp32.cheaper_targets(p, (0, 1, 0), middle, specs, allowed, than=4.0) == []
    assert kept_fp32.cheaper_targets(p, (0, 1, 0), middle, specs, [[True, True, False]] * 3, than=8.0) == []


def test_a_weight_a_product_shares_with_a_lookup_is_not_measured(tmp_path, seven_bits):
    from onnx import TensorProto, helper, numpy_helper

    g = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="product"),
             helper.make_node("Gather", ["w", "ids"], ["rows"], name="lookup", axis=0)]
    for rows in (1024, 64):  # taller than wide, and square (whose scales could pass for a table's)
        graph = helper.make_graph(
            nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, rows]),
                              helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64]),
             helper.make_tensor_value_info("rows", TensorProto.FLOAT, [3, 64])],
            [numpy_helper.from_array((g.standard_normal((rows, 64)) / 30).astype(np.float32), "w")])
        source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(source, str(tmp_path / "fp32.onnx"))
        quantized = _quantize(tmp_path / "fp32.onnx", tmp_path / "all.onnx")  # not a table: a product reads it
        # the lookup reads the product's int8 weight, dequantized by columns: not a rounding the
        # switched model makes, so nothing is measured
        assert any(n.op_type == "DequantizeLinear" and n.output[0] == "w" for n in quantized.graph.node)
        assert sensitivity.quantized_nodes(source, quantized, {}) is None


def test_the_share_of_a_module_left_in_fp32_is_priced_in_fp32_and_breakdown_agrees(seven_bits):
    from types import SimpleNamespace

    from hetcc import kept_fp32
    from hetcc.cost_model.devices import DeviceSpec
    from hetcc.cost_model.profiles import DEFAULT_PROFILES
    from hetcc.cost_model.roofline import node_seconds
    from hetcc.measure import accuracy
    from hetcc.passes.facts import NodeFacts

    # one of a module's two products left in fp32 (which one is not known): half of each, priced
    # in fp32; a product of another module and a node that is no product keep the precision
    product = NodeFacts("mm", "aten.mm.default", "matmul", flops=2e9, bytes_read=4_000_000, bytes_written=4096,
                        resident_bytes=4_000_000, weight_bytes=4_000_000)
    facts = {"mm": product, "mm_1": product, "mm_2": product,
             "add": NodeFacts("add", "aten.add.Tensor", "elementwise", flops=1e3, bytes_read=8192,
                              bytes_written=4096, resident_bytes=0)}
    paths = {"mm": "block", "mm_1": "block", "mm_2": "other", "add": "block"}
    artifact = SimpleNamespace(meta={"kept_fp32": {"fp32_products": {"block": 1},
                                                   "products_in_module": {"block": 2, "other": 1}}})
    shares = kept_fp32.fp32_shares(artifact, list(facts), facts, paths, "int8")
    assert shares == {"mm": 0.5, "mm_1": 0.5}
    device = DeviceSpec(name="cpu", peak_flops={"fp32": 100e9}, mem_bandwidth=20e9, mem_capacity=8e9)
    info = SimpleNamespace(device=device, profile=DEFAULT_PROFILES["onnxruntime"], dtype="fp32",
                           precision="int8", arithmetic=None)
    fp32, int8 = (node_seconds(product, device, info.profile, "fp32", p) for p in (None, "int8"))
    assert fp32 > int8 and kept_fp32.added_seconds(shares, facts, info) == pytest.approx(fp32 - int8)

    # a compiled plan's prediction includes it, and the predicted-against-measured breakdown agrees
    model, x = _outliers()
    profiles, devices = {"onnxruntime": DEFAULT_PROFILES["onnxruntime"]}, {"onnxruntime:cpu@int8": device}
    cm = hetcc.compile(model, (x,), targets=["onnxruntime:cpu@int8"], accuracy=0.012, tune="off",
                       profiles=profiles, devices=devices)
    (seg,) = cm.plan.segments
    assert cm.artifacts[seg.name].meta["kept_fp32"]["fp32_products"] == {"layers.0": 1}
    parts = accuracy.breakdown(cm, profiles, devices)
    assert parts[seg.name]["nodes_seconds"] == pytest.approx(seg.predicted_seconds, rel=1e-9)
