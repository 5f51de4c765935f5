"""Record outputs (namedtuples here; transformers ModelOutputs in test_hf_bundles.py) through a
bundle, containers a bundle cannot store said right after capture, and hostile record nodes."""
from __future__ import annotations

import collections
import dataclasses
import json
import sys

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import hetcc
from hetcc import records
from hetcc.errors import BundleError

Pair = collections.namedtuple("Pair", "scores hidden")


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        return Pair(h.softmax(-1), {"raw": h, "both": [h, x]})


@dataclasses.dataclass
class Result:
    value: torch.Tensor


pytree.register_dataclass(Result)


class Dataclassed(nn.Module):
    def forward(self, x):
        return Result(x * 2)


def test_a_namedtuple_output_survives_a_bundle(tmp_path):
    x = torch.randn(2, 4)
    model = Named().eval()
    compiled = hetcc.compile(model, (x,), targets=["onnxruntime:cpu", "torch:cpu"], measure=False)
    assert isinstance(compiled(x), Pair)
    loaded = hetcc.load(compiled.save(tmp_path / "b"))
    got, want = loaded(x), model(x)
    assert type(got).__name__ == "Pair" and got._fields == ("scores", "hidden")
    scores, hidden = got  # unpacks as the original does
    torch.testing.assert_close(scores, want.scores)
    torch.testing.assert_close(hidden["both"][1], x)
    assert type(loaded(x)) is type(got), "each call returns the same namedtuple class"


def test_an_output_a_bundle_cannot_store_is_said_at_compile_not_only_at_save(tmp_path):
    x = torch.randn(2, 4)
    compiled = hetcc.compile(Dataclassed(), (x,), targets=["torch:cpu"], measure=False)
    torch.testing.assert_close(compiled(x).value, x * 2)  # it runs
    assert any("Result" in note and "cm.save() will refuse it" in note for note in compiled.plan.notes)
    with pytest.raises(BundleError, match=r"test_records.Result, which a bundle cannot store") as info:
        compiled.save(tmp_path / "b")
    assert "corrupt" not in str(info.value)
    assert not (tmp_path / "b").exists()


def _record_node(context: dict, children: int = 1) -> dict:
    leaf = {"type": None, "context": None, "children_spec": []}
    return {"type": records.RECORD, "context": json.dumps(context), "children_spec": [leaf] * children}


GOOD = {"kind": "mapping", "class": "transformers.modeling_outputs.BaseModelOutput", "keys": ["last_hidden_state"]}


@pytest.mark.parametrize("change, why", [
    ({"kind": "set"}, "kind is not one of"),
    ({"class": "os.system; rm -rf"}, "not a dotted Python name"),
    ({"class": "a" * 600}, "not a dotted Python name"),
    ({"keys": ["__class__ x"]}, "distinct field names"),
    ({"keys": ["a", "a"]}, "distinct field names"),
    ({"keys": ["a", "b"]}, "keys number 2 for 1 fields"),
])
def test_a_hostile_record_node_is_refused(change, why):
    from hetcc.structures import structure_problem

    assert structure_problem(_record_node(GOOD), records=True) is None
    problem = structure_problem(_record_node({**GOOD, **change}), records=True)
    assert problem is not None and why in problem
    # records are allowed only where asked for (a bundle's outputs), never in a torch archive
    assert "container of type 'hetcc.Record'" in structure_problem(_record_node(GOOD))


def test_a_record_naming_a_module_not_imported_comes_back_as_a_record_without_importing_it():
    name = "hetcc_never_imported_module.Output"
    spec = pytree.TreeSpec(records.Record, ("mapping", name, ("a", "b")),
                           [pytree.tree_flatten(0)[1]] * 2)
    loaded = records.rebuilt(pytree.treespec_loads(pytree.treespec_dumps(spec)))
    assert "hetcc_never_imported_module" not in sys.modules
    out = pytree.tree_unflatten([torch.ones(1), torch.zeros(1)], loaded)
    assert isinstance(out, records.Record) and out.record_type == name
    assert out.a is out["a"] is out[0] and list(out) == ["a", "b"]
    with pytest.raises(AttributeError, match="has no field 'c'; it has a, b"):
        out.c


def test_a_record_naming_an_imported_class_that_is_no_model_output_stays_a_record():
    """A bundle naming e.g. subprocess.Popen gets a Record, never a call to that class."""
    import subprocess  # noqa: F401 - imported, so only the ModelOutput check refuses it

    spec = pytree.TreeSpec(records.Record, ("mapping", "subprocess.Popen", ("args",)),
                           [pytree.tree_flatten(0)[1]])
    out = pytree.tree_unflatten([torch.ones(1)], records.rebuilt(spec))
    assert isinstance(out, records.Record)


def test_a_bundle_with_a_tampered_record_is_refused(tmp_path):
    x = torch.randn(2, 4)
    compiled = hetcc.compile(Named().eval(), (x,), targets=["torch:cpu"], measure=False)
    path = compiled.save(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    protocol, tree = json.loads(manifest["output_structure"])
    assert tree["type"] == records.RECORD
    context = json.loads(tree["context"])
    tree["context"] = json.dumps({**context, "keys": ["scores"]})
    manifest["output_structure"] = json.dumps([protocol, tree])
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="record whose keys number 1 for 2 fields"):
        hetcc.load(path)


def test_a_record_name_runs_no_module_code_not_even_a_lazy_getattr(monkeypatch):
    """A module's __getattr__ (PEP 562: how torch and transformers import submodules lazily) is
    code; naming an attribute it would make must not run it."""
    import types

    called = []
    lazy = types.ModuleType("hetcc_lazy_module")
    lazy.__getattr__ = lambda name: called.append(name) or records.Record
    monkeypatch.setitem(sys.modules, "hetcc_lazy_module", lazy)
    spec = pytree.TreeSpec(records.Record, ("mapping", "hetcc_lazy_module.Anything", ("a",)),
                           [pytree.tree_flatten(0)[1]])
    out = pytree.tree_unflatten([torch.ones(1)], records.rebuilt(spec))
    assert called == [] and isinstance(out, records.Record)


class MaxOf(nn.Module):
    def forward(self, x):
        return x.max(dim=1)  # a torch.return_types.max: (values, indices)


def test_loaded_records_save_again_under_their_own_names_and_return_types_are_records(tmp_path):
    x = torch.randn(2, 4)
    first = hetcc.compile(Named().eval(), (x,), targets=["torch:cpu"], measure=False)
    again = hetcc.load(hetcc.load(first.save(tmp_path / "a")).save(tmp_path / "b"))
    assert type(again(x)).__name__ == "Pair"
    tree = json.loads(json.loads((tmp_path / "b" / "manifest.json").read_text())["output_structure"])[1]
    assert json.loads(tree["context"])["class"] == "test_records.Pair"

    spec = pytree.TreeSpec(records.Record, ("mapping", "hetcc_never_imported_module.Output", ("a",)),
                           [pytree.tree_flatten(0)[1]])
    assert records.storable(spec).context == spec.context  # a loaded Record saves as it came

    maxed = hetcc.compile(MaxOf(), (x,), targets=["torch:cpu"], measure=False)
    assert not maxed.plan.notes
    values, indices = hetcc.load(maxed.save(tmp_path / "m"))(x)
    torch.testing.assert_close(values, x.max(dim=1).values)
    assert torch.equal(indices, x.max(dim=1).indices)
