"""Bundles: a compiled model as a directory that runs without the model's source.

    bundle/
      manifest.json        format version, versions, signature, segments with files and sha256
      report.json          the plan, as `hetcc explain` shows it
      segments/<name>/     each segment's native artifact (ONNX, OpenVINO IR, .pt2)

Loading trusts nothing in the directory: paths must stay inside it, every file's sha256 must match
the manifest, and nothing is unpickled (tensor specs and output structure are JSON; torch segments
are torch.export archives). The format is documented in docs/bundle.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from hetcc.backends.base import Artifact
from hetcc.backends.registry import installed, resolve
from hetcc.errors import BundleError, HetccError, TargetError
from hetcc.plan import Plan, SegmentPlan
from hetcc.runtime import Runtime, Step, TensorSpec, dtype_name
from hetcc.target import Target

log = logging.getLogger(__name__)

FORMAT = "hetcc-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_constant(value, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise BundleError(f"{where} is a constant of type {type(value).__name__}, which a bundle cannot "
                      "store; return tensors or plain numbers from the model")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise BundleError(f"unknown dtype {name!r} in the manifest")
    return dtype


def save(compiled, path, overwrite: bool = False) -> Path:
    """Write ``compiled`` to the directory ``path``; refuse a non-empty one unless ``overwrite``."""
    from hetcc import __version__

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise BundleError(f"{path} already exists and is not empty; choose another directory, or "
                              "pass overwrite=True (--force on the command line) to replace it")
        if not (path / MANIFEST).exists():
            raise BundleError(f"{path} is not a hetcc bundle (no {MANIFEST}); refusing to overwrite it "
                              "even with overwrite=True: remove it yourself if you mean to")
    runtime = compiled._runtime
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        segments, versions = [], {}
        for step, seg_plan in zip(runtime.steps, compiled.plan.segments):
            artifact = compiled.artifacts[step.name]
            folder = staging / "segments" / step.name
            folder.mkdir(parents=True)
            files = {}
            for role, src in artifact.files.items():
                dst = folder / Path(src).name
                shutil.copy2(src, dst)
                rel = dst.relative_to(staging).as_posix()
                files[role] = {"path": rel, "sha256": _sha256(dst), "bytes": dst.stat().st_size}
            backend = resolve(Target.parse(step.target))
            versions.update(backend.versions())
            segments.append({
                "name": step.name, "target": step.target,
                "inputs": list(step.inputs), "outputs": list(step.outputs),
                "files": files, "meta": artifact.meta,
                "plan": {k: getattr(seg_plan, k) for k in (
                    "predicted_seconds", "flops", "bytes_moved", "resident_bytes", "max_error")}
                        | {"intensity": seg_plan.intensity},
            })
        constants = {}
        if runtime.constants:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in runtime.constants.items()}, staging / "constants.safetensors")
            constants = {"path": "constants.safetensors", "sha256": _sha256(staging / "constants.safetensors"),
                         "names": sorted(runtime.constants)}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "hetcc_version": __version__,
            "runtimes": versions,
            "inputs": [{"name": s.name, "dtype": dtype_name(s.dtype),
                        "shape": list(s.shape), "ranges": {sym: [lo, hi] for sym, lo, hi in s.ranges}}
                       for s in runtime.input_specs],
            "input_structure": pytree.treespec_dumps(runtime.in_spec),
            "outputs": list(runtime.outputs),
            "output_structure": pytree.treespec_dumps(runtime.out_spec),
            "constant_outputs": {str(i): _json_constant(v, f"output {i}")
                                 for i, v in runtime.const_outputs.items()},
            "constants": constants,
            "segments": segments,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (staging / REPORT).write_text(json.dumps(compiled.plan.to_dict(), indent=1, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _inside(root: Path, rel: str, segment: str) -> Path:
    candidate = (root / rel).resolve()
    if rel.startswith(("/", "\\")) or not candidate.is_relative_to(root.resolve()):
        raise BundleError(f"segment {segment}: file path {rel!r} in the manifest points outside the "
                          f"bundle {root}; the bundle is corrupt or was tampered with")
    return candidate


def _checked_file(root: Path, entry: dict, segment: str) -> Path:
    path = _inside(root, entry["path"], segment)
    if not path.is_file():
        raise BundleError(f"segment {segment}: file {entry['path']} is missing from {root}; copy the "
                          "whole bundle directory, or compile it again")
    if _sha256(path) != entry["sha256"]:
        raise BundleError(f"segment {segment}: file {entry['path']} does not match its sha256 in the "
                          "manifest (corrupt, truncated or modified); copy the bundle again or recompile")
    return path


def read_manifest(path) -> dict:
    root = Path(path)
    file = root / MANIFEST
    if not file.is_file():
        raise BundleError(f"{root} is not a hetcc bundle: no {MANIFEST} in it")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file} is not valid JSON ({exc}); the bundle is corrupt") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a hetcc bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{root} has bundle format {version}, newer than this hetcc reads "
                          f"({FORMAT_VERSION}); upgrade hetcc (pip install -U hetcc)")
    return manifest


def load(path):
    """Load a bundle written by ``CompiledModel.save``; returns a CompiledModel."""
    from hetcc.compiler import CompiledModel

    root = Path(path)
    manifest = read_manifest(root)
    try:
        return _load(root, manifest, CompiledModel)
    except HetccError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} is missing or has a malformed field ({exc!r}); the "
                          "bundle is corrupt") from exc


def _load(root: Path, manifest: dict, CompiledModel):
    steps, artifacts, seg_plans = [], {}, []
    for seg in manifest["segments"]:
        name, target = seg["name"], Target.parse(seg["target"])
        if target.backend not in installed():
            raise BundleError(f"segment {name} needs the {target.backend!r} runtime, which is not "
                              f"installed here; install it (e.g. pip install {target.backend}) and load again")
        try:
            backend = resolve(target)
        except TargetError as exc:
            raise BundleError(f"segment {name} needs {target}, which cannot run here: {exc}") from exc
        files = {role: str(_checked_file(root, entry, name)) for role, entry in seg["files"].items()}
        artifact = Artifact(str(target), files, dict(seg["meta"]))
        try:
            run = backend.load(artifact, target)
        except Exception as exc:
            raise BundleError(f"segment {name}: {target} could not load {sorted(files.values())[0]}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        steps.append(Step(name, str(target), run, tuple(seg["inputs"]), tuple(seg["outputs"])))
        artifacts[name] = artifact
        p = seg.get("plan", {})
        seg_plans.append(SegmentPlan(name=name, target=str(target), nodes=(), inputs=tuple(seg["inputs"]),
                                     outputs=tuple(seg["outputs"]), flops=p.get("flops", 0.0),
                                     bytes_moved=p.get("bytes_moved", 0), resident_bytes=p.get("resident_bytes", 0),
                                     predicted_seconds=p.get("predicted_seconds", 0.0),
                                     max_error=p.get("max_error")))
    specs = [TensorSpec(i["name"], tuple(i["shape"]), _dtype(i["dtype"]),
                        tuple((sym, lo, hi) for sym, (lo, hi) in i.get("ranges", {}).items()))
             for i in manifest["inputs"]]
    constants = {}
    if manifest.get("constants"):
        from safetensors.torch import load_file

        entry = manifest["constants"]
        constants = load_file(str(_checked_file(root, entry, "constants")))
    runtime = Runtime(steps, specs, list(manifest["outputs"]),
                      {int(k): v for k, v in manifest.get("constant_outputs", {}).items()},
                      pytree.treespec_loads(manifest["input_structure"]),
                      pytree.treespec_loads(manifest["output_structure"]), constants)
    report = _read_report(root)
    plan = _plan_from_report(report, seg_plans)
    return CompiledModel(runtime, plan, artifacts)


def _read_report(root: Path) -> dict:
    try:
        return json.loads((root / REPORT).read_text())
    except (OSError, ValueError):
        log.warning("%s is missing or unreadable; the loaded plan has the manifest's numbers only", root / REPORT)
        return {}


def _plan_from_report(report: dict, seg_plans) -> Plan:
    by_name = {s["name"]: s for s in report.get("segments", []) if isinstance(s, dict)}
    segments = []
    for sp in seg_plans:
        r = by_name.get(sp.name, {})
        segments.append(SegmentPlan(
            name=sp.name, target=sp.target, nodes=tuple(r.get("nodes", ())), inputs=sp.inputs,
            outputs=sp.outputs, flops=sp.flops, bytes_moved=sp.bytes_moved,
            resident_bytes=sp.resident_bytes, predicted_seconds=sp.predicted_seconds,
            ops=dict(r.get("ops", {})), fell_back=dict(r.get("fell_back", {})),
            max_error=sp.max_error, lower_seconds=r.get("lower_seconds")))
    return Plan(targets=tuple(report.get("targets", [s.target for s in segments])), segments=tuple(segments),
                objective=report.get("objective", "latency"),
                predicted_seconds=report.get("predicted_seconds", sum(s.predicted_seconds for s in segments)),
                lower_bound=report.get("lower_bound", 0.0), optimal=report.get("optimal", False),
                solver=report.get("solver", "?"), solve_seconds=report.get("solve_seconds", 0.0),
                attempts=report.get("attempts", 1), notes=tuple(report.get("notes", ())))
