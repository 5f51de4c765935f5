"""Torch segments load by an allow-list and never run code from the archive (issue 12).

Every hostile archive is built here from a real benign one (torch.export.save of a tiny model, or
a hetcc bundle's own segment.pt2) by rewriting the zip with Python's zipfile. Each is refused
with a BundleError that says what is wrong, and its side effect (a marker file, a file outside
the bundle read or overwritten, a module imported) never happens. ``test_the_probe_is_real``
runs the same archives through plain torch.export.load to show each one is a real attack there.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import json
import pickle
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hetcc
from hetcc.backends import torch_archive as ta
from hetcc.backends import torch_backend as tb
from hetcc.backends.base import Artifact
from hetcc.capture import decomposition_table
from hetcc.errors import BundleError
from hetcc.target import Target

CPU = Target.parse("torch:cpu")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("shift", torch.linspace(-1, 1, 3))

    def forward(self, x):
        return (self.lin(x) + self.shift).relu()


def _inputs():
    return (torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8 - 0.3,)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def benign(model, tmp_path_factory) -> Path:
    """A .pt2 of a core-ATen program, as torch.export.save writes it."""
    path = tmp_path_factory.mktemp("benign") / "segment.pt2"
    program = torch.export.export(model, _inputs()).run_decompositions(decomposition_table())
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def saved_bundle(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "tiny.bundle"
    hetcc.compile(model, _inputs(), targets=["torch:cpu"], measure=False).save(path)
    return path


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """Where an attack would leave its traces: a marker file, a secret outside the bundle, a file
    to overwrite, and modules on sys.path that write the marker when imported."""
    (tmp_path / "secret.txt").write_text("the secret outside the bundle")
    (tmp_path / "victim.txt").write_text("do not overwrite me")
    folder = tmp_path / "modules"
    folder.mkdir()
    for name in ("hetcc_probe_enum", "hetcc_probe_factory"):
        (folder / f"{name}.py").write_text(
            f"import enum, pathlib\npathlib.Path({str(tmp_path / 'marker')!r}).write_text('imported')\n"
            "class Thing(enum.Enum):\n    A = 1\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    return tmp_path


def _untouched(probe: Path) -> None:
    assert not (probe / "marker").exists(), "the archive ran code (the marker file was written)"
    assert (probe / "victim.txt").read_text() == "do not overwrite me", "a file outside was overwritten"
    assert not {"hetcc_probe_enum", "hetcc_probe_factory"} & set(sys.modules), "a module was imported"


class _WriteMarker:
    """Unpickling this writes a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


# ---------------------------------------------------------------------------------------------
# rewriting archives


def _entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write(path: Path, entries, compression=zipfile.ZIP_STORED) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": that is the point of one attack
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in entries:
                archive.writestr(name, data)


def _root(entries) -> str:
    return entries[0][0].split("/", 1)[0]


def _edit_json(src: Path, dst: Path, suffix: str, edit) -> None:
    """Rewrite the JSON entry ending in ``suffix``: ``edit(doc)`` changes it in place."""
    out = []
    for name, data in _entries(src):
        if name.endswith(suffix):
            doc = json.loads(data)
            edit(doc)
            data = json.dumps(doc).encode()
        out.append((name, data))
    _write(dst, out)


def _model(doc) -> tuple[dict, dict]:
    gm = doc["graph_module"]
    return gm["graph"], gm["signature"]


def _user_input(doc) -> str:
    return next(s["user_input"]["arg"]["as_tensor"]["name"] for s in _model(doc)[1]["input_specs"]
                if "user_input" in s)


def _output_from(doc, nodes, name, meta) -> None:
    """Append ``nodes`` to the graph and make value ``name`` its only output."""
    graph, signature = _model(doc)
    graph["nodes"] += nodes
    graph["tensor_values"][name] = meta
    graph["outputs"] = [{"as_tensor": {"name": name}}]
    signature["output_specs"] = [{"user_output": {"arg": {"as_tensor": {"name": name}}}}]


def _bytes_meta(n: int) -> dict:
    return {"dtype": 1, "sizes": [{"as_int": n}], "requires_grad": False,  # 1: uint8
            "device": {"type": "cpu", "index": None}, "strides": [{"as_int": 1}],
            "storage_offset": {"as_int": 0}, "layout": 7}


def _node(target, name, *inputs) -> dict:
    return {"target": target, "name": name, "metadata": {}, "is_hop_single_tensor_return": None,
            "inputs": [{"name": n, "arg": a, "kind": k} for n, a, k in inputs],
            "outputs": [{"as_tensor": {"name": name}}]}


def _from_file(path: Path, shared: bool, name: str) -> dict:
    size = path.stat().st_size
    return _node("torch.ops.aten.from_file.default", name, ("filename", {"as_string": str(path)}, 1),
                 ("shared", {"as_bool": shared}, 1), ("size", {"as_int": size}, 1),
                 ("dtype", {"as_scalar_type": 1}, 2))


# ---------------------------------------------------------------------------------------------
# the attacks: name -> (build(src, dst, probe), what the refusal says, what raw torch needs to fall for it)


def _duplicate_entry(src, dst, probe):
    """A weights config flagged use_pickle placed where torch's C++ reader finds it, and the benign
    copy where Python's zipfile finds it (the last one): each reader sees a different archive."""
    entries = _entries(src)
    root = _root(entries)
    config_name = f"{root}/data/weights/model_weights_config.json"
    config = json.loads(dict(entries)[config_name])
    meta = next(iter(config["config"].values()))
    meta.update(use_pickle=True, path_name="weight_99")
    evil = (config_name, json.dumps(config).encode())
    entries.append((f"{root}/data/weights/weight_99", pickle.dumps(_WriteMarker(probe / "marker"))))
    for i in range(entries.index((config_name, dict(entries)[config_name])) + 1):
        _write(dst, entries[:i] + [evil] + entries[i:])
        reader = torch._C.PyTorchFileReader(str(dst))
        if json.loads(reader.get_record("data/weights/model_weights_config.json")) == config:
            return  # torch reads the evil copy, zipfile the benign one
    pytest.fail("found no order in which torch's reader and zipfile read different copies")


def _guards_code(src, dst, probe):
    code = f"__import__('pathlib').Path({str(probe / 'marker')!r}).write_text('guard ran') > 0"
    _edit_json(src, dst, "models/model.json", lambda doc: doc.__setitem__("guards_code", [code]))


def _code_in_a_name(src, dst, probe):
    """torch pastes value names into the Python source it generates for the graph."""
    evil = f"x=__import__('pathlib').Path({str(probe / 'marker')!r}).write_text('name ran')"

    def edit(doc):
        text = json.dumps(doc).replace(f'"{_user_input(doc)}"', json.dumps(evil))
        doc.clear()
        doc.update(json.loads(text))
    _edit_json(src, dst, "models/model.json", edit)


def _code_in_a_shape(src, dst, probe):
    """torch passes shape expressions to sympy.sympify, which evaluates them as Python."""
    evil = f"__import__('pathlib').Path({str(probe / 'marker')!r}).write_text('sympy ran') and Integer(2)"

    def edit(doc):
        meta = _model(doc)[0]["tensor_values"][_user_input(doc)]
        meta["sizes"][0] = {"as_expr": {"expr_str": evil, "hint": {"as_int": 2}}}
    _edit_json(src, dst, "models/model.json", edit)


def _read_a_file(src, dst, probe):
    secret = probe / "secret.txt"
    _edit_json(src, dst, "models/model.json", lambda doc: _output_from(
        doc, [_from_file(secret, False, "leak")], "leak", _bytes_meta(secret.stat().st_size)))


def _overwrite_a_file(src, dst, probe):
    victim = probe / "victim.txt"
    fill = _node("torch.ops.aten.fill_.Scalar", "filled", ("self", {"as_tensor": {"name": "mapped"}}, 1),
                 ("value", {"as_int": 65}, 1))
    meta = _bytes_meta(victim.stat().st_size)

    def edit(doc):
        doc["verifiers"] = ["TRAINING"]  # the ATEN verifier refuses fill_; the training one lets it be
        _model(doc)[0]["tensor_values"]["mapped"] = meta
        _output_from(doc, [_from_file(victim, True, "mapped"), fill], "filled", meta)
    _edit_json(src, dst, "models/model.json", edit)


def _fill_in_place(src, dst, probe):
    """An in-place op on its own (no file involved): still not a pure op."""
    def edit(doc):
        graph, _ = _model(doc)
        out = graph["outputs"][0]["as_tensor"]["name"]
        fill = _node("torch.ops.aten.fill_.Scalar", "filled", ("self", {"as_tensor": {"name": out}}, 1),
                     ("value", {"as_int": 0}, 1))
        _output_from(doc, [fill], "filled", graph["tensor_values"][out])
    _edit_json(src, dst, "models/model.json", edit)


def _spec_naming_a_module(kind):
    leaf = {"type": None, "context": None, "children_spec": []}
    if kind == "enum":
        tree = {"type": "builtins.dict", "children_spec": [leaf], "context": json.dumps(
            [{"__enum__": True, "fqn": "hetcc_probe_enum:Thing", "name": "A"}])}
    else:
        tree = {"type": "collections.defaultdict", "children_spec": [leaf], "context":
                {"default_factory_module": "hetcc_probe_factory", "default_factory_name": "Thing",
                 "dict_context": ["a"]}}

    def build(src, dst, probe):
        def edit(doc):
            doc["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = json.dumps([1, tree])
        _edit_json(src, dst, "models/model.json", edit)
    return build


def _opaque_constant(src, dst, probe):
    """A constant stored as an opaque object: torch.export.load pickle.loads it."""
    entries = _entries(src)
    root = _root(entries)
    config = {"config": {"evil": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}}}
    entries = [(n, json.dumps(config).encode() if n.endswith("_constants_config.json") else d)
               for n, d in entries]
    _write(dst, entries + [(f"{root}/data/constants/opaque_obj_0", pickle.dumps(_WriteMarker(probe / "marker")))])


def _legacy_weights(src, dst, probe):
    entries = _entries(src)
    payload = pickle.dumps(_WriteMarker(probe / "marker"))
    _write(dst, entries + [(f"{_root(entries)}/data/weights/model.pt", payload)])


def _extra_entry(name, data=b"print('hello')"):
    def build(src, dst, probe):
        entries = _entries(src)
        _write(dst, entries + [(f"{_root(entries)}/{name}", data)])
    return build


def _zip_bomb(src, dst, probe):
    """64 MiB of zeros deflated to a few kB, under a name torch.export.save does write."""
    entries = _entries(src)
    bomb = (f"{_root(entries)}/extra/bomb", bytes(64 << 20))
    _write(dst, entries + [bomb], compression=zipfile.ZIP_DEFLATED)


def _target(target):
    def build(src, dst, probe):
        def edit(doc):
            _model(doc)[0]["nodes"][-1]["target"] = target
        _edit_json(src, dst, "models/model.json", edit)
    return build


def _nested_graph(src, dst, probe):
    def edit(doc):
        graph, _ = _model(doc)
        body = copy.deepcopy(graph)
        graph["nodes"][-1]["inputs"][0]["arg"] = {"as_graph": {"name": "body", "graph": body}}
    _edit_json(src, dst, "models/model.json", edit)


def _buffer_mutation(src, dst, probe):
    def edit(doc):
        graph, signature = _model(doc)
        out = graph["outputs"][0]["as_tensor"]["name"]
        signature["output_specs"].insert(0, {"buffer_mutation": {"arg": {"name": out}, "buffer_name": "shift"}})
    _edit_json(src, dst, "models/model.json", edit)


def _shape_expression(expr):
    """A shape expression sympy accepts as a size but would take forever (or all memory) to
    evaluate: hetcc.load must refuse it at once rather than hang (found by the probe)."""
    def build(src, dst, probe):
        def edit(doc):
            meta = _model(doc)[0]["tensor_values"][_user_input(doc)]
            meta["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}
        _edit_json(src, dst, "models/model.json", edit)
    return build


ATTACKS = {
    "duplicate-entry": (_duplicate_entry, "two entries named", "load"),
    "guards-code": (_guards_code, "guards_code holds", "call"),
    "code-in-a-value-name": (_code_in_a_name, "not a plain identifier", "load"),
    "code-in-a-shape-expression": (_code_in_a_shape, "not a sympy expression", "load"),
    "from-file-read": (_read_a_file, "from_file.default, which hetcc refuses: it reads a file", "read"),
    "from-file-overwrite": (_overwrite_a_file, "from_file.default, which hetcc refuses", "write"),
    "fill-in-place": (_fill_in_place, "fill_.Scalar, which is not in hetcc's vetted set", None),
    "tree-spec-enum-import": (_spec_naming_a_module("enum"), "keys are not a list of 1 plain values", "load"),
    "tree-spec-defaultdict-import": (_spec_naming_a_module("factory"), "container of type 'collections.defaultdict'",
                                     "load"),
    "opaque-object-constant": (_opaque_constant, "a custom or opaque object, which torch would unpickle", "load"),
    "legacy-weights-pickle": (_legacy_weights, "data/weights/model.pt', which torch.export.save does not write",
                              "load"),
    "unknown-entry": (_extra_entry("code.py"), "code.py', which torch.export.save does not write", None),
    "aoti-library": (_extra_entry("data/aotinductor/model/model.so", b"\x7fELF"), "does not write", None),
    "zip-bomb": (_zip_bomb, "is compressed or encrypted", None),
    "target-outside-aten": (_target("torch.os.system"), "'torch.os.system', which is not an op", None),
    "higher-order-op": (_target("torch.ops.higher_order.cond"), "not an op in hetcc's vetted set", None),
    "nested-graph": (_nested_graph, "nested graph", None),
    # kernels that trust their arguments: with indices the bundle picks, max-pool's backward writes
    # out of bounds (SIGSEGV) and the Cholesky helper corrupts the heap (hostile-bundle probe)
    "backward-op": (_target("torch.ops.aten.max_pool2d_with_indices_backward.default"),
                    "max_pool2d_with_indices_backward.default, which is not in hetcc's vetted set", None),
    "unchecked-kernel": (_target("torch.ops.aten._cholesky_solve_helper.default"),
                         "_cholesky_solve_helper.default, which is not in hetcc's vetted set", None),
    "huge-power": (_shape_expression("Pow(Integer(10), Integer(100000000))"),
                   "raises to a power that is not a small integer", None),
    "power-of-a-power": (_shape_expression("Pow(Pow(Symbol('s0', integer=True), Integer(60)), Integer(60))"),
                         "has a power of a power", None),
    "huge-float": (_shape_expression("Float('1e99999999')"), "holds the string '1e99999999'", None),
    "unmodelled-output": (_buffer_mutation, "program output of kind buffer_mutation", None),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_archive_is_refused(attack, benign, probe):
    build, says, _ = ATTACKS[attack]
    hostile = probe / "segment.pt2"
    build(benign, hostile, probe)
    with pytest.raises(BundleError) as err:
        ta.load_program(hostile)
    message = str(err.value)
    assert says in message and str(hostile) in message and "recompile" in message, message
    _untouched(probe)


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_segment_in_a_bundle_is_refused(attack, saved_bundle, probe, monkeypatch):
    """The same archives swapped into a saved bundle, with the manifest's sha256 and size fixed so
    that hetcc.load reaches the torch backend; torch.export.load never sees them."""
    build, says, _ = ATTACKS[attack]
    root = probe / "tiny.bundle"
    shutil.copytree(saved_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    seg = manifest["segments"][0]
    entry = seg["files"]["program"]
    original = probe / "original.pt2"
    shutil.copy(root / entry["path"], original)
    build(original, root / entry["path"], probe)
    original.unlink()
    data = (root / entry["path"]).read_bytes()
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (root / "manifest.json").write_text(json.dumps(manifest))
    seen = []
    real = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: seen.append(a) or real(*a, **k))
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']} (torch:cpu)" in message and says in message and entry["path"] in message
    assert seen == [], "torch.export.load saw a hostile archive"
    _untouched(probe)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("attack", [name for name, (_, _, how) in ATTACKS.items() if how])
def test_the_probe_is_real(attack, benign, probe):
    """Plain torch.export.load (and the program's own ep.module()) falls for each attack above, so
    the refusals are not vacuous. If a newer torch closes one of these holes, this says which."""
    build, _, how = ATTACKS[attack]
    hostile = probe / "segment.pt2"
    build(benign, hostile, probe)
    (x,) = _inputs()
    try:
        program = torch.export.load(str(hostile))
        if how in ("call", "read", "write"):
            out = program.module()(x)
    except Exception:  # several attacks break the program after their payload ran
        out = None
    if how == "read":
        assert bytes(out.tolist()) == (probe / "secret.txt").read_bytes(), "torch did not read the file"
    elif how == "write":
        assert (probe / "victim.txt").read_text() == "A" * len("do not overwrite me"), "torch wrote nothing"
    else:
        assert (probe / "marker").exists(), f"torch {torch.__version__} no longer falls for {attack}"


def test_sample_inputs_are_never_unpickled(benign, probe):
    """Sample inputs that the safe unpickler rejects make torch retry with weights_only=False; hetcc
    gives torch empty sample inputs instead, so the archive loads and nothing is unpickled."""
    payload = pickle.dumps(_WriteMarker(probe / "marker"))
    entries = [(n, payload if "/data/sample_inputs/" in n else d) for n, d in _entries(benign)]
    hostile = probe / "segment.pt2"
    _write(hostile, entries)
    program = ta.load_program(hostile)
    assert program.example_inputs is None
    _untouched(probe)


def test_size_guards_pass_and_never_reach_torch(benign, probe):
    """Guards torch itself writes (sizes compared) pass the check, and torch gets none of them."""
    guard = "L['x'].size()[0] == L['x'].size()[0] and 2*L['x'].size()[1] <= 64"
    hostile = probe / "segment.pt2"
    _edit_json(benign, hostile, "models/model.json", lambda doc: doc.__setitem__("guards_code", [guard]))
    program = ta.load_program(hostile)
    assert program._guards_code == []


def test_benign_archive_runs_through_the_direct_call(model, benign, monkeypatch):
    monkeypatch.setattr(torch.export.ExportedProgram, "module", _no_module)
    run = tb.TorchBackend().load(Artifact("torch:cpu", {"program": str(benign)}, {"input_names": ["x"]}), CPU)
    torch.testing.assert_close(run(*_inputs())[0], model(*_inputs()))


def test_user_inputs_before_weights_still_run_directly(model, benign, probe, monkeypatch):
    """torch's verifier accepts the user input ahead of the weights; the direct call places each
    argument by the signature instead of falling back to ep.module()."""
    def edit(doc):
        graph, signature = _model(doc)
        for key, holder in (("inputs", graph), ("input_specs", signature)):
            holder[key] = holder[key][-1:] + holder[key][:-1]
    reordered = probe / "segment.pt2"
    _edit_json(benign, reordered, "models/model.json", edit)
    monkeypatch.setattr(torch.export.ExportedProgram, "module", _no_module)
    program = ta.load_program(reordered)
    assert program.graph_signature.input_specs[0].kind.name == "USER_INPUT"
    run = tb.TorchBackend().load(Artifact("torch:cpu", {"program": str(reordered)}, {"input_names": ["x"]}), CPU)
    torch.testing.assert_close(run(*_inputs())[0], model(*_inputs()))


def test_input_count_must_match_the_manifest(benign):
    with pytest.raises(BundleError, match="takes 1 inputs but the manifest lists 2"):
        tb.TorchBackend().load(Artifact("torch:cpu", {"program": str(benign)}, {"input_names": ["x", "y"]}), CPU)


def test_cuda_compiles_the_direct_call_not_ep_module(model, benign, monkeypatch):
    """torch:cuda with compile: torch.compile gets the same direct call (checked here without a GPU:
    the device checks and the move are stubbed, and torch.compile only records what it gets)."""
    compiled = []
    monkeypatch.setattr(torch.export.ExportedProgram, "module", _no_module)
    monkeypatch.setattr(tb, "cuda_problem", lambda target: None)
    monkeypatch.setattr(tb, "move_program", lambda program, device: program)
    monkeypatch.setattr(torch, "compile", lambda fn, mode: compiled.append((fn, mode)) or fn)
    meta = {"input_names": ["x"], "compile": "default"}
    run = tb.TorchBackend().load(Artifact("torch:cuda", {"program": str(benign)}, meta), Target.parse("torch:cuda"))
    assert isinstance(run, tb.CudaExecutable) and run._lock is not None
    ((fn, mode),) = compiled
    assert mode == "default" and fn is run.module
    torch.testing.assert_close(fn(*_inputs())[0], model(*_inputs()))


def test_the_direct_call_can_be_traced_by_dynamo(benign):
    call = tb._direct_call(ta.load_program(benign))
    traced = torch.compile(call, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(*_inputs())[0], call(*_inputs())[0])


def _no_module(self, *args, **kwargs):
    raise AssertionError("ep.module() was called: it would run the archive's guards_code")


# ---------------------------------------------------------------------------------------------
# the vetted op set


@pytest.mark.parametrize("op", [torch.ops.aten.add.Tensor, torch.ops.aten.view.default,
                                torch.ops.aten.sym_size.int, torch.ops.aten._local_scalar_dense.default,
                                torch.ops.aten.scaled_dot_product_attention.default, torch.sym_max])
def test_pure_ops_are_vetted(op):
    assert ta.vetted(op)


@pytest.mark.parametrize("op", [torch.ops.aten.from_file.default, torch.ops.aten.fill_.Scalar,
                                torch.ops.aten.resize_.default, torch.ops.aten.atan2.out,
                                torch.ops.aten._native_batch_norm_legit.default, torch.ops.aten.empty.memory_format,
                                torch.ops.aten.copy_.default, torch.ops.aten._print.default, print, eval,
                                torch.load, torch.ops.higher_order.cond])
def test_impure_ops_are_not(op):
    assert not ta.vetted(op)


@pytest.mark.parametrize("op", [torch.ops.aten.max.default, torch.ops.aten.linalg_vector_norm.default,
                                torch.ops.aten.sort.stable, torch.ops.aten.rand_like.default,
                                torch.ops.aten.special_erfcx.default, torch.ops.aten._assert_tensor_metadata.default])
def test_pure_ops_beyond_core_are_vetted(op):
    assert ta.vetted(op)


@pytest.mark.parametrize("op", [torch.ops.aten._index_put_impl.default, torch.ops.aten._copy_from.default,
                                torch.ops.aten.set.source_Tensor, torch.ops.aten.resize.default,
                                torch.ops.aten._reshape_alias_copy.default, torch.ops.aten.empty_permuted.default,
                                torch.ops.aten.sort.values_stable, torch.ops.aten.max.unary_out])
def test_unlisted_or_out_forms_beyond_core_are_not(op):
    assert not ta.vetted(op)


def test_every_listed_op_exists_in_this_torch():
    assert all(hasattr(torch.ops.aten, name) for name in ta._NON_CORE)


def test_every_extra_round_trips_through_torchs_deserializer():
    """The names checked in the JSON are the ones torch's deserializer resolves to these ops."""
    from torch._export.serde.serialize import GraphModuleDeserializer

    deserializer = GraphModuleDeserializer()
    for op in ta.EXTRA_OPS:
        assert deserializer.deserialize_operator(ta.serialized_name(op)) is op, op
    assert not set(ta.EXTRA_OPS) & set(ta.DENIED_OPS)


# ---------------------------------------------------------------------------------------------
# nothing legitimate is refused: every example and conformance case, saved and loaded on torch:cpu


def _cases():
    from hetcc.measure.conformance import all_cases

    return {case.name: case for case in all_cases()}


def _decode_with_a_growing_cache():
    """A decoder step whose KV-cache length is dynamic: its segment carries guards_code."""
    from hetcc.measure.conformance import Built

    decoders = importlib.import_module("decoders")
    core = decoders.DecoderConfig.gqa().build()
    ids = torch.randint(0, 512, (2, 6))
    _, cache = core.prefill(ids)
    context = torch.export.Dim("context", min=2, max=64)
    return Built(core.decode, (ids[:, -1:], cache), dynamic_shapes=(None, tuple({2: context} for _ in cache)))


class _BeyondCore(nn.Module):
    """Ops torch.export's default decompositions leave outside core ATen (x.max(), F.normalize,
    a stable sort, ...) and the metadata assertion export adds beside tensor.to(dtype)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x, mask):
        h = F.normalize(self.lin(x), dim=-1) * mask.to(torch.float32)
        up = F.interpolate(h[:, None, :, None], scale_factor=2.0, mode="bilinear", align_corners=True)
        var, mean = torch.var_mean(h, dim=-1)
        return (h.max(), h.sort(dim=-1, stable=True).values, h.cumprod(-1), up,
                h.repeat_interleave(2, dim=0), var + mean, h.erfinv().nan_to_num())


def _beyond_core():
    from hetcc.measure.conformance import Built

    return Built(_BeyondCore().eval(), (torch.randn(4, 8), torch.rand(4, 8) > 0.3))


SPECIAL = {"decode-dynamic-cache": _decode_with_a_growing_cache, "beyond-core-aten": _beyond_core}
ROUND_TRIP = [*_cases(), *SPECIAL]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_on_torch_cpu(name, tmp_path):
    from hetcc.measure.conformance import compare_outputs

    torch.manual_seed(0)
    built = SPECIAL[name]() if name in SPECIAL else _cases()[name].build()
    compiled = hetcc.compile(built.model, built.inputs, targets=["torch:cpu"], measure=False,
                             dynamic_shapes=built.dynamic_shapes)
    assert {s.target for s in compiled.plan.segments} == {"torch:cpu"}
    compiled.save(tmp_path / "b")
    loaded = hetcc.load(tmp_path / "b")
    for inputs in (built.inputs, *built.more_inputs):
        with torch.no_grad():
            want = built.model(*inputs)
        error, problem, _ = compare_outputs(loaded(*inputs), want)
        assert problem is None, f"{name}: {problem}"
    if name == "decode-dynamic-cache":
        with zipfile.ZipFile(next((tmp_path / "b").glob("segments/*/segment.pt2"))) as archive:
            doc = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("model.json"))))
        assert doc["guards_code"], "this case is here for its guards: the segment has none any more"


def test_a_model_with_an_op_outside_the_vetted_set_is_a_clear_error(monkeypatch):
    """torch:cpu verifies through the same loader a bundle uses, so an op hetcc has not vetted
    stops compile with a user error that names it, not an 'internal error'."""
    import hetcc
    from hetcc.backends import torch_archive
    from hetcc.errors import InternalError, LoweringError

    denied = {**torch_archive.DENIED_OPS, torch.ops.aten.tanh.default: "denied for this test"} \
        if isinstance(torch_archive.DENIED_OPS, dict) else \
        set(torch_archive.DENIED_OPS) | {torch.ops.aten.tanh.default}
    monkeypatch.setattr(torch_archive, "DENIED_OPS", denied)
    with pytest.raises(LoweringError, match="aten.tanh.*vetted") as info:
        hetcc.compile(torch.nn.Tanh(), (torch.randn(2, 3),), targets=["torch:cpu"], measure=False)
    assert not isinstance(info.value, InternalError) and "please report the op" in str(info.value)
