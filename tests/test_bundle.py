"""Bundles: every example survives save and a load in a fresh process that cannot import the
model's source; every bad bundle is refused with a message that says where and what to do.

Compiling is the slow part, so every bundle is built once per run (shared between xdist workers
through a file lock) and the bad-bundle tests damage copies of them."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from filelock import FileLock
from torch import nn

import hetcc
from hetcc import bundle
from hetcc.errors import BundleError, InputError

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["openvino:cpu", "onnxruntime:cpu", "torch:cpu"]
EXAMPLES = ("mlp", "cnn", "encoder", "gpt", "mixed")
SPLIT = "gpt-split"
"""The gpt example pinned across all three runtimes: attention and its output projection on torch
(so the torch segment holds weights whatever the measured CPU makes of the rest), one MLP on each
of the other runtimes."""
SPLIT_PINS = {"scaled_dot_product_attention": "torch:cpu", "blocks.0.out": "torch:cpu",
              "blocks.0.mlp": "onnxruntime:cpu", "blocks.1.mlp": "openvino:cpu"}
UNIMPORTABLE = (*EXAMPLES, "examples", "test_bundle", "conftest")
"""Modules the loading process must not be able to import: the models' source lives in them."""


class Structured(nn.Module):
    """Nested inputs and outputs: a dict holding a tuple holding a list, an input passed straight
    through, a parameter returned as is (a bundle constant), and plain-number outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.randn(8))

    def forward(self, x, extra):
        h = self.lin(x) + extra["bias"]
        return {"h": h, "pair": (h.relu(), [x, h.sum(-1)]), "scale": self.scale, "n": 3, "r": 0.5}


def _cases():
    """name -> (model, compile inputs, run inputs, compile options)."""
    import importlib  # conftest puts examples/ on sys.path

    cases = {}
    for name in EXAMPLES:
        model, inputs = importlib.import_module(name).build()
        cases[name] = (model, inputs, inputs, {})
    import gpt
    import mlp

    model, inputs = gpt.build()
    cases[SPLIT] = (model, inputs, inputs, {"pins": SPLIT_PINS, "measure": False})
    model, inputs = mlp.build(batch=32)
    batch = torch.export.Dim("batch", min=1, max=64)
    cases["mlp-dynamic"] = (model, inputs, mlp.build(batch=5)[1], {"dynamic_shapes": ({0: batch},)})
    torch.manual_seed(0)
    inputs = (torch.randn(4, 8), {"bias": torch.randn(8)})
    cases["structured"] = (Structured().eval(), inputs, inputs, {})
    return cases


def _save_leaves(path: Path, tree) -> tuple[str, dict]:
    """Tensors of ``tree`` to an .npz; returns (treespec JSON, {leaf index: non-tensor leaf})."""
    leaves, spec = pytree.tree_flatten(tree)
    np.savez(path, **{f"leaf{i}": v.detach().numpy() for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)})
    return pytree.treespec_dumps(spec), {str(i): v for i, v in enumerate(leaves) if not isinstance(v, torch.Tensor)}


# Runs in a fresh interpreter, in a directory with no Python source, without PYTHONPATH.
LOAD_AND_RUN = r'''
import json, sys, traceback
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree

jobs = json.loads(Path("jobs.json").read_text())


def importable():
    found = []
    for module in jobs["unimportable"]:
        try:
            __import__(module)
            found.append(module)
        except ImportError:
            pass
    return found


report = {"importable_before": importable(), "cases": {}}
assert not report["importable_before"], report

import hetcc

for name, job in jobs["cases"].items():
    try:
        model = hetcc.load(job["bundle"])
        data = np.load(job["inputs"])
        leaves = [torch.from_numpy(data[f"leaf{i}"]) for i in range(len(data.files))]
        args = pytree.tree_unflatten(leaves, pytree.treespec_loads(job["in_spec"]))
        with torch.no_grad():
            out = model(*args)
        flat, spec = pytree.tree_flatten(out)
        np.savez(job["outputs"], **{f"leaf{i}": v.numpy() for i, v in enumerate(flat)
                                    if isinstance(v, torch.Tensor)})
        report["cases"][name] = {
            "structure": pytree.treespec_dumps(spec), "error": None,
            "scalars": {str(i): v for i, v in enumerate(flat) if not isinstance(v, torch.Tensor)},
            "types": [type(v).__name__ for v in flat]}
    except Exception:
        report["cases"][name] = {"error": traceback.format_exc()}
report["importable_after"] = importable()
report["imported"] = sorted(m for m in jobs["unimportable"] if m in sys.modules)
Path("report.json").write_text(json.dumps(report))
'''


def _dirname(name: str) -> str:
    """A bundle's directory: not a Python identifier, so the loading process, which runs in the
    folder that holds the bundles, cannot import it as a namespace package named like the model."""
    return f"{name}.bundle"


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)


def _build(root: Path) -> None:
    jobs = {"unimportable": list(UNIMPORTABLE), "cases": {}}
    expected = {}
    for name, (model, inputs, run_inputs, options) in _cases().items():
        compiled = hetcc.compile(model, inputs, targets=TARGETS, **options)
        compiled.save(root / _dirname(name))
        with torch.no_grad():
            eager = model(*run_inputs)
        in_spec, _ = _save_leaves(root / f"{name}.in.npz", run_inputs)
        eager_spec, eager_scalars = _save_leaves(root / f"{name}.eager.npz", eager)
        compiled_spec, _ = _save_leaves(root / f"{name}.compiled.npz", compiled(*run_inputs))
        expected[name] = {"structure": eager_spec, "compiled_structure": compiled_spec, "scalars": eager_scalars}
        jobs["cases"][name] = {"bundle": _dirname(name), "inputs": f"{name}.in.npz", "in_spec": in_spec,
                               "outputs": f"{name}.loaded.npz"}
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "expected.json").write_text(json.dumps(expected))
    done = _run_python(LOAD_AND_RUN, root)
    (root / "subprocess.log").write_text(f"rc={done.returncode}\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """Every case compiled, saved, and loaded and run in one fresh process; built once per run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    root = base / "hetcc-bundles"
    with FileLock(str(base / "hetcc-bundles.lock")):
        if not (root / "expected.json").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            _build(root)
    return root


@pytest.fixture(scope="session")
def loaded_report(shared) -> dict:
    report = shared / "report.json"
    assert report.exists(), (shared / "subprocess.log").read_text()[-4000:]
    return json.loads(report.read_text())


@pytest.fixture
def copy_of(shared, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(shared / _dirname(name), tmp_path / _dirname(name)))
    return copy


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _segment_on(manifest: dict, backend: str) -> dict:
    return next(s for s in manifest["segments"] if s["target"].startswith(backend + ":"))


def _rehash(path: Path, entry: dict) -> None:
    data = (path / entry["path"]).read_bytes()
    entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)


def _leaves(npz: Path) -> list[torch.Tensor]:
    data = np.load(npz)
    return [torch.from_numpy(data[k]) for k in sorted(data.files, key=lambda k: int(k[4:]))]


def _assert_same(got, want, rtol, atol, what):
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape, w.shape)
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# round trips


ROUND_TRIPS = (*EXAMPLES, SPLIT, "mlp-dynamic", "structured")


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_in_a_process_without_the_model_source(name, shared, loaded_report):
    assert loaded_report["importable_before"] == [] and loaded_report["importable_after"] == []
    assert loaded_report["imported"] == []
    result = loaded_report["cases"][name]
    assert result["error"] is None, result["error"]
    expected = json.loads((shared / "expected.json").read_text())[name]
    assert result["structure"] == expected["structure"] == expected["compiled_structure"]
    assert result["scalars"] == expected["scalars"]
    loaded = _leaves(shared / f"{name}.loaded.npz")
    # The same runtimes on the same machine: the bundle runs exactly as the compiled model did.
    _assert_same(loaded, _leaves(shared / f"{name}.compiled.npz"), 0, 0, f"{name}: loaded vs compiled")
    _assert_same(loaded, _leaves(shared / f"{name}.eager.npz"), 1e-4, 1e-4, f"{name}: loaded vs eager")


def test_split_bundle_has_segments_on_every_runtime(shared):
    manifest = _manifest(shared / _dirname(SPLIT))
    backends = {s["target"].split(":")[0] for s in manifest["segments"]}
    assert backends == {"torch", "onnxruntime", "openvino"}, [s["target"] for s in manifest["segments"]]
    assert {"torch", "onnxruntime", "openvino"} <= set(manifest["runtimes"])


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_manifest_describes_every_file(name, shared):
    root = shared / _dirname(name)
    manifest = bundle.read_manifest(root)
    assert manifest["format"] == "hetcc-bundle" and manifest["format_version"] == 1  # no state: readable by older hetcc
    listed = set()
    for seg in manifest["segments"]:
        assert seg["files"], seg["name"]
        for entry in seg["files"].values():
            assert entry["path"].startswith(f"segments/{seg['name']}/")
            data = (root / entry["path"]).read_bytes()
            assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
            listed.add(entry["path"])
        assert set(seg["meta"]["input_names"]) <= set(seg["inputs"]) | {None}
    on_disk = {p.relative_to(root).as_posix() for p in (root / "segments").rglob("*") if p.is_file()}
    assert on_disk == listed
    report = json.loads((root / "report.json").read_text())
    assert [s["name"] for s in report["segments"]] == [s["name"] for s in manifest["segments"]]
    assert not [p.name for p in root.parent.iterdir() if p.name.startswith(f".{_dirname(name)}-")]  # no staging left


def test_loaded_plan_keeps_the_report(shared):
    compiled = hetcc.load(shared / _dirname(SPLIT))
    report = json.loads((shared / _dirname(SPLIT) / "report.json").read_text())
    assert [len(s.nodes) for s in compiled.plan.segments] == [len(s["nodes"]) for s in report["segments"]]
    assert "torch:cpu" in compiled.plan.summary() and "openvino:cpu" in repr(compiled)


def test_dynamic_batch_survives(shared, loaded_report):
    spec = _manifest(shared / _dirname("mlp-dynamic"))["inputs"][0]
    symbol = spec["shape"][0]
    assert isinstance(symbol, str) and spec["shape"][1:] == [256]
    assert spec["ranges"][symbol] == [1, 64]
    assert _leaves(shared / "mlp-dynamic.loaded.npz")[0].shape == (5, 64)  # compiled at batch 32
    compiled = hetcc.load(shared / _dirname("mlp-dynamic"))
    assert compiled(torch.randn(17, 256)).shape == (17, 64)
    with pytest.raises(InputError, match="outside the compiled range"):
        compiled(torch.randn(65, 256))


def test_output_structure_and_constants_survive(shared, loaded_report):
    result = loaded_report["cases"]["structured"]
    assert result["types"] == ["Tensor"] * 5 + ["int", "float"]
    manifest = _manifest(shared / _dirname("structured"))
    assert manifest["constant_outputs"] == {"5": 3, "6": 0.5}
    assert manifest["constants"]["path"] == "constants.safetensors"
    assert manifest["outputs"][2] == manifest["inputs"][0]["name"]  # x is returned as it came in
    tree = json.loads(manifest["output_structure"])
    assert tree[0] == 1 and tree[1]["type"] == "builtins.dict"
    assert json.loads(tree[1]["context"]) == ["h", "pair", "scale", "n", "r"]
    compiled = hetcc.load(shared / _dirname("structured"))
    out = compiled(torch.randn(4, 8), {"bias": torch.randn(8)})
    assert isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert isinstance(out["scale"], torch.Tensor) and out["scale"].shape == (8,)
    assert (out["n"], out["r"]) == (3, 0.5)


# ---------------------------------------------------------------------------------------------
# bad bundles: each refused with a BundleError that says where and what to do


def test_corrupt_file(copy_of):
    root = copy_of(SPLIT)
    seg = _segment_on(_manifest(root), "onnxruntime")
    file = root / seg["files"]["model"]["path"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0x55
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']}" in message and seg["files"]["model"]["path"] in message
    assert "sha256" in message and "copy the bundle again or recompile" in message


def test_truncated_file(copy_of):
    root = copy_of(SPLIT)
    seg = _segment_on(_manifest(root), "openvino")
    file = root / seg["files"]["weights"]["path"]
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']}" in message and seg["files"]["weights"]["path"] in message
    assert "is 1000 bytes" in message and "truncated" in message and "recompile" in message


def test_missing_file(copy_of):
    root = copy_of(SPLIT)
    seg = _segment_on(_manifest(root), "torch")
    (root / seg["files"]["program"]["path"]).unlink()
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']}" in message and seg["files"]["program"]["path"] in message
    assert "missing" in message and "copy the whole bundle directory" in message


def test_artifact_the_runtime_cannot_read(copy_of):
    """Checksums match (the file was replaced and the manifest updated), but ONNX Runtime cannot
    parse it: the error names the segment, the file, the runtime, and the versions that differ."""
    root = copy_of(SPLIT)  # pinned: it has an ONNX Runtime segment whatever tuning measures
    manifest = _manifest(root)
    seg = next(s for s in manifest["segments"] if s["target"] == "onnxruntime:cpu")
    (root / seg["files"]["model"]["path"]).write_bytes(b"not an onnx model")
    _rehash(root, seg["files"]["model"])
    manifest["runtimes"]["onnxruntime"] = "0.0.1"
    _write_manifest(root, manifest)
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']}: onnxruntime:cpu could not load {seg['files']['model']['path']}" in message
    assert "onnxruntime 0.0.1 (here " in message and "recompile the bundle" in message


def test_unlisted_file_is_refused(copy_of):
    root = copy_of("mlp")
    seg = _manifest(root)["segments"][0]
    (root / "segments" / seg["name"] / "model.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match=rf"segments/{seg['name']}/model.onnx.data .* not listed in the manifest"):
        hetcc.load(root)


def test_newer_format_version(copy_of):
    root = copy_of("mlp")
    manifest = _manifest(root)
    manifest["format_version"] = bundle.FORMAT_VERSION + 1
    _write_manifest(root, manifest)
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"format version {bundle.FORMAT_VERSION + 1}" in message and "upgrade hetcc" in message
    assert str(root) in message


def test_missing_runtime_names_the_segment(shared):
    code = (
        "import sys, json\n"
        "sys.modules['onnxruntime'] = None  # as if it were not installed\n"
        "import hetcc\n"
        "from hetcc.errors import BundleError\n"
        "try:\n"
        f"    hetcc.load({str(shared / _dirname(SPLIT))!r})\n"
        "    print(json.dumps({'error': None}))\n"
        "except BundleError as exc:\n"
        "    print(json.dumps({'error': str(exc)}))\n"
    )
    done = _run_python(code, shared)
    assert done.returncode == 0, done.stderr[-3000:]
    message = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert message, "the bundle loaded without onnxruntime"
    ort_segments = [s["name"] for s in _manifest(shared / _dirname(SPLIT))["segments"] if s["target"] == "onnxruntime:cpu"]
    for name in ort_segments:
        assert f"segment {name} needs onnxruntime:cpu" in message
    assert "pip install onnxruntime" in message and "load the bundle again" in message
    assert "needs openvino" not in message and "needs torch" not in message  # only what is missing


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "segments/../../outside.onnx",
                                  "segments\\..\\..\\outside.onnx"])
def test_path_outside_the_bundle(copy_of, path):
    root = copy_of("mlp")
    manifest = _manifest(root)
    seg = manifest["segments"][0]
    seg["files"]["model"]["path"] = path
    _write_manifest(root, manifest)
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert f"segment {seg['name']}" in message and repr(path) in message
    assert "points outside the bundle" in message and "recompile" in message


def test_symbolic_link_out_of_the_bundle(copy_of, tmp_path):
    root = copy_of(SPLIT)  # pinned: it has an ONNX Runtime segment whatever tuning measures
    seg = next(s for s in _manifest(root)["segments"] if s["target"] == "onnxruntime:cpu")
    entry = seg["files"]["model"]
    outside = tmp_path / "outside.onnx"
    shutil.copy(root / entry["path"], outside)  # same bytes: the sha256 still matches
    (root / entry["path"]).unlink()
    (root / entry["path"]).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"segment {seg['name']}: file {entry['path']} resolves to .* "
                                          r"outside the bundle"):
        hetcc.load(root)


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"name": "my-extension", "manifest_version": 3}), "is not a hetcc bundle manifest"),
    (json.dumps(["hetcc-bundle", 1]), "is not a hetcc bundle manifest"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
])
def test_manifest_that_is_not_a_hetcc_manifest(copy_of, text, says):
    root = copy_of("mlp")
    (root / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BundleError, match=says) as err:
        hetcc.load(root)
    assert str(root / "manifest.json") in str(err.value)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="is not a hetcc bundle: no manifest.json"):
        hetcc.load(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        hetcc.load(tmp_path / "nowhere")


@pytest.mark.parametrize("damage, says", [
    (lambda m: m["segments"][0].update(files="model.onnx"), "files/meta are not objects"),
    (lambda m: m["segments"][0]["inputs"].append("nothing_makes_this"), "reads nothing_makes_this"),
    (lambda m: m.update(outputs=["nothing_makes_this"]), "output 0 is 'nothing_makes_this'"),
    (lambda m: m["segments"][0].update(target="warp:drive"), "segment seg0"),
    (lambda m: m["inputs"][0].update(dtype="load"), "unknown dtype 'load'"),
    (lambda m: m.pop("segments"), "missing a field"),
    (lambda m: m["segments"][0]["files"]["model"].update(sha256="abc"), "no valid sha256"),
])
def test_malformed_manifest_fields(copy_of, damage, says):
    root = copy_of("mlp")
    manifest = _manifest(root)
    damage(manifest)
    _write_manifest(root, manifest)
    with pytest.raises(BundleError, match=says):
        hetcc.load(root)


def test_structure_that_would_import_a_module(copy_of, tmp_path, monkeypatch):
    """torch's treespec_loads imports whatever module an enum key or a defaultdict names."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "hetcc_probe_module.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(probe))
    root = copy_of("mlp")
    manifest = _manifest(root)
    leaf = {"type": None, "context": None, "children_spec": []}
    enum_key = [{"__enum__": True, "fqn": "hetcc_probe_module:Thing", "name": "A"}]
    factory = {"default_factory_module": "hetcc_probe_module", "default_factory_name": "Thing",
               "dict_context": ["a"]}
    for kind, context in [("builtins.dict", enum_key), ("collections.defaultdict", factory)]:
        tree = {"type": kind, "context": json.dumps(context), "children_spec": [leaf]}
        manifest["output_structure"] = json.dumps([1, tree])
        _write_manifest(root, manifest)
        with pytest.raises(BundleError, match="output_structure"):
            hetcc.load(root)
    assert not (tmp_path / "imported").exists()
    assert "hetcc_probe_module" not in sys.modules


class _Payload:
    """Unpickling this makes a directory: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _rewrite_archive(path: Path, edit) -> None:
    """Rewrite the zip at ``path``: ``edit(name, data)`` returns new data, or None to drop the entry;
    ``edit(None, None)`` returns extra {name: data} to add."""
    with zipfile.ZipFile(path) as old:
        entries = [(info.filename, old.read(info.filename)) for info in old.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as new:
        for name, data in entries:
            data = edit(name, data)
            if data is not None:
                new.writestr(name, data)
        for name, data in (edit(None, None) or {}).items():
            new.writestr(name, data)


def _tampered_torch_bundle(root: Path, edit):
    """``root`` with its torch segment's archive rewritten and the manifest's sha256 and size
    updated to match, so only the archive check can catch it."""
    manifest = _manifest(root)
    entry = _segment_on(manifest, "torch")["files"]["program"]
    _rewrite_archive(root / entry["path"], edit)
    _rehash(root, entry)
    _write_manifest(root, manifest)
    return root, _segment_on(manifest, "torch")["name"]


def test_pickled_weight_in_a_torch_segment(copy_of, tmp_path, monkeypatch):
    """A weight flagged use_pickle, with a payload in its place: torch.export.load would unpickle it."""
    marker = tmp_path / "unpickled"
    root = copy_of(SPLIT)
    archive = root / _segment_on(_manifest(root), "torch")["files"]["program"]["path"]
    with zipfile.ZipFile(archive) as z:
        config_name = next(n for n in z.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(z.read(config_name))
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    weight_name = config_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
    replacements = {config_name: json.dumps(config).encode(), weight_name: pickle.dumps(_Payload(marker))}
    root, seg = _tampered_torch_bundle(root, lambda name, data: replacements.get(name, data) if name else {})

    calls = []
    real = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(BundleError) as err:
        hetcc.load(root)
    message = str(err.value)
    assert not marker.exists(), "torch unpickled the tampered weight"
    assert calls == [], "torch.export.load saw the archive before the pickle check refused it"
    assert f"segment {seg}" in message and fqn in message and "pickled" in message
    assert "recompile" in message


def _legacy_weights(marker):
    payload = pickle.dumps(_Payload(marker))

    def edit(name, data):
        if name is None:  # torch.export.load prefers a legacy weights file over the weights config
            return {"segment/data/weights/model.pt": payload}
        return data
    return edit


def _pre_2_8_archive(marker):
    payload = pickle.dumps(_Payload(marker))
    from torch._export.serde.schema import SCHEMA_VERSION

    model_json = {}

    def edit(name, data):
        if name is None:  # top-level files of the torch 2.7 format, read when the PT2 part fails
            return {"version": ".".join(map(str, SCHEMA_VERSION)),
                    "serialized_exported_program.json": model_json["data"],
                    "serialized_state_dict.pt": payload, "serialized_constants.pt": b"",
                    "serialized_example_inputs.pt": b""}
        if name.endswith("models/model.json"):
            model_json["data"] = data
        if "/data/sample_inputs/" in name:
            return None  # a missing sample-inputs file makes the PT2 reader fail over to the old one
        return data
    return edit


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("attack", [_legacy_weights, _pre_2_8_archive], ids=["legacy-weights", "pre-2.8-format"])
def test_other_pickles_in_a_torch_segment(copy_of, tmp_path, monkeypatch, attack):
    marker = tmp_path / "unpickled"
    root, _ = _tampered_torch_bundle(copy_of(SPLIT), attack(marker))
    try:
        hetcc.load(root)
    except BundleError:
        pass
    assert not marker.exists(), "torch unpickled an object from the archive"


# ---------------------------------------------------------------------------------------------
# saving


@pytest.fixture(scope="module")
def small(shared):
    """A compiled model to save again: the mlp bundle, loaded."""
    return hetcc.load(shared / _dirname("mlp"))


def test_non_empty_directory_needs_overwrite(small, shared, tmp_path):
    target = Path(shutil.copytree(shared / _dirname("cnn"), tmp_path / "out"))
    before = (target / "manifest.json").read_text()
    with pytest.raises(BundleError, match="already exists and is not empty.*overwrite=True"):
        small.save(target)
    assert (target / "manifest.json").read_text() == before
    assert small.save(target, overwrite=True) == target
    assert _manifest(target)["inputs"] == _manifest(shared / _dirname("mlp"))["inputs"]
    assert _manifest(target)["segments"] == _manifest(shared / _dirname("mlp"))["segments"]
    x = torch.randn(32, 256)
    assert torch.equal(hetcc.load(target)(x), small(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup left


def test_empty_directory_is_fine(small, tmp_path):
    (tmp_path / "out").mkdir()
    small.save(tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.parametrize("kind", ["user-files", "foreign-manifest", "bundle-with-extra-file", "plain-file",
                                  "bad-json-manifest"])
def test_what_is_not_a_bundle_is_never_deleted(small, shared, tmp_path, kind):
    target = tmp_path / "out"
    if kind == "plain-file":
        target.write_text("precious")
    elif kind == "bundle-with-extra-file":
        shutil.copytree(shared / _dirname("mlp"), target)
        (target / "notes.txt").write_text("precious")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("precious")
        if kind == "foreign-manifest":
            (target / "manifest.json").write_text(json.dumps({"name": "web-extension", "version": "1"}))
        elif kind == "bad-json-manifest":
            (target / "manifest.json").write_text("{")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(BundleError, match="refusing to (overwrite|replace) it.*even with overwrite=True"):
        small.save(target, overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    precious = target if kind == "plain-file" else target / "notes.txt"
    assert precious.read_text() == "precious"


def _failing_copy(monkeypatch):
    real, calls = shutil.copy2, []

    def copy(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) > 1 or Path(src).suffix == ".onnx":
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(bundle.shutil, "copy2", copy)


def test_failed_save_leaves_nothing_behind(small, tmp_path, monkeypatch):
    _failing_copy(monkeypatch)
    with pytest.raises(BundleError, match="No space left on device") as err:
        small.save(tmp_path / "new" / "deeper" / "out")
    assert "seg0" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it made


def test_failed_overwrite_keeps_the_old_bundle(small, shared, tmp_path, monkeypatch):
    target = Path(shutil.copytree(shared / _dirname("cnn"), tmp_path / "out"))
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    _failing_copy(monkeypatch)
    with pytest.raises(BundleError):
        small.save(target, overwrite=True)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unstorable_output_fails_cleanly(small, tmp_path):
    small.runtime.const_outputs[0] = object()
    try:
        with pytest.raises(BundleError, match="output 0 is a constant of type object"):
            small.save(tmp_path / "out")
    finally:
        del small.runtime.const_outputs[0]
    assert list(tmp_path.iterdir()) == []


def test_check_destination_matches_save(shared, tmp_path):
    bundle.check_destination(tmp_path / "new")
    with pytest.raises(BundleError, match="overwrite=True"):
        bundle.check_destination(shared / _dirname("mlp"))
    bundle.check_destination(shared / _dirname("mlp"), overwrite=True)


def test_manifest_carries_the_output_signature_and_measured_times(tmp_path):
    import mlp

    model, (x,) = mlp.build(batch=4)
    batch = torch.export.Dim("batch", min=1, max=64)
    compiled = hetcc.compile(model, (x,), targets=["onnxruntime:cpu"], dynamic_shapes=({0: batch},))
    compiled.save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (out,) = manifest["output_signature"]
    assert out["dtype"] == "float32" and out["shape"] == ["batch", 64] and out["ranges"] == {"batch": [1, 64]}
    (seg,) = manifest["segments"]
    assert seg["plan"]["measured_seconds"] > 0
    loaded = hetcc.load(tmp_path / "b")
    assert loaded.runtime.output_specs[0].shape == ("batch", 64)
    assert loaded.plan.segments[0].measured_seconds == seg["plan"]["measured_seconds"]
    # what verification found is a record beside the backend's artifact, in the manifest's meta
    # under the keys bundles have always had
    checked = compiled.verifications["seg0"]
    assert checked.verified is None and checked.measured_seconds == seg["plan"]["measured_seconds"]
    assert seg["meta"]["max_error"] == checked.max_error == seg["plan"]["max_error"]
    assert seg["meta"]["measured_seconds"] == checked.measured_seconds
    assert not {"max_error", "measured_seconds"} & set(compiled.artifacts["seg0"].meta)
    assert loaded.verifications["seg0"] == checked
    again = json.loads((loaded.save(tmp_path / "again") / "manifest.json").read_text())
    assert again["segments"][0]["meta"] == seg["meta"]


def test_trust_engines_trusts_only_the_files_the_manifest_vouches_for(copy_of):
    from hetcc.backends import _common

    root = copy_of("mlp")
    files = sorted(p for p in (root / "segments").rglob("*") if p.is_file())
    digests = {_common._digest(p) for p in files}
    before = set(_common._built_here)
    hetcc.load(root)
    assert set(_common._built_here) == before  # loading alone trusts nothing
    tampered = files[0]
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    with pytest.raises(hetcc.errors.BundleError, match="modified"):
        hetcc.load(root, trust_engines=True)
    assert _common._digest(tampered) not in _common._built_here
    tampered.write_bytes(tampered.read_bytes()[:-1])
    hetcc.load(root, trust_engines=True)
    assert digests <= _common._built_here
