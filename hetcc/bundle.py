"""Bundles: a compiled model as a directory that runs without the model's source.

    bundle/
      manifest.json        format version, versions, signature, segments with files and sha256
      report.json          the plan, as `hetcc explain` shows it
      constants.safetensors  weights the model returns directly (only when there are any)
      state.safetensors    buffers the model updates in place (only when there are any)
      segments/<name>/     each segment's native artifact (ONNX, OpenVINO IR, .pt2)

Loading trusts nothing in the directory: paths must stay inside it, every file under segments/
must be listed in the manifest with its size and sha256, and nothing is unpickled (tensor specs
and output structure are JSON, constants are safetensors, torch segments are torch.export archives
that the torch backend checks before torch reads them). The format is documented in docs/bundle.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path, PurePosixPath

import torch
import torch.utils._pytree as pytree

from hetcc import records
from hetcc.backends.base import Artifact
from hetcc.backends.registry import get_backend, installed
from hetcc.calibration_batches import MAX_BATCHES
from hetcc.error_budget import METRICS
from hetcc.errors import BundleError, HetccError, TargetError, readable
from hetcc.explain.text import strings, tables
from hetcc.handover import input_locations_of, location_of, parse_output_device
from hetcc.plan import Plan, SegmentPlan
from hetcc.names import dtype_name
from hetcc.runtime import Runtime, Step, TensorSpec
from hetcc.structures import structure_problem
from hetcc.safe_files import exchange, read_json, rename_noreplace, umask
from hetcc.target import Target
from hetcc.verify import Tolerances, Verification, check_outputs, check_relative

log = logging.getLogger(__name__)

FORMAT = "hetcc-bundle"
FORMAT_VERSION = 2
"""The newest format this hetcc reads and writes. Version 2 adds state and input updates (a new
execution rule an older reader would get wrong), so only bundles that use them are written as 2;
every other bundle is still written as 1, which older hetcc reads."""
MANIFEST = "manifest.json"
REPORT = "report.json"
CONSTANTS = "constants.safetensors"
SEGMENTS = "segments"
LM_MANIFEST = "lm.json"
LM_PARTS = (LM_MANIFEST, "prefill", "decode", "extend", "verify")
"""A language model's bundle (hetcc/lm/bundle.py): lm.json and one bundle per phase."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def _dtype(name) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise BundleError(f"unknown dtype {name!r} in the manifest; the bundle is corrupt or needs a "
                          "newer torch")
    return dtype


def _tensors(path, what: str) -> dict:
    """The tensors of a safetensors file from the bundle; a malformed one is a BundleError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, and others
        raise BundleError(f"{what} {path} is not a valid safetensors file ({type(exc).__name__}: "
                          f"{readable(exc)}); the bundle is corrupt: copy it again or recompile") from exc


# ---------------------------------------------------------------------------------------------
# save


def save(compiled, path, overwrite: bool = False) -> Path:
    """Write ``compiled`` to the directory ``path``; refuse a non-empty one unless ``overwrite``.

    The bundle is written to a hidden sibling directory and moved into place in one step, so a
    failed or killed save leaves the old bundle (or nothing) at the path, never a partial one, and
    there is no moment without a bundle there. ``overwrite`` replaces only a directory that holds
    a hetcc bundle and nothing else; what is at the path is checked again after it was moved
    aside, so something created there during the save is never deleted."""
    return write_atomically(path, overwrite, lambda staging: _write(compiled, staging))


def write_atomically(path, overwrite: bool, write) -> Path:
    """Call ``write(staging)`` on a fresh hidden sibling of ``path``, then move it into place as
    ``save`` describes (an LM bundle, hetcc/lm/bundle.py, is written the same way)."""
    path = Path(path)
    check_destination(path, overwrite)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 would keep the bundle from its users
        write(staging)
        _move_into_place(staging, path, overwrite)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first; only the empty folders we made
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise BundleError(f"could not write the bundle {path}: {exc}; nothing was written") from exc
        raise
    return path


def check_destination(path, overwrite: bool = False) -> None:
    """Raise BundleError unless ``save(..., path, overwrite)`` may write there: the CLI calls this
    before a compile that may take minutes."""
    path = Path(path)
    if path.is_symlink():
        raise BundleError(f"{path} is a symbolic link; refusing to write a bundle through it: give the "
                          "real directory")
    if not path.exists():
        return
    if not path.is_dir():
        raise BundleError(f"{path} exists and is not a directory; refusing to replace it, even with "
                          "overwrite=True: remove it yourself or choose another path")
    if not any(path.iterdir()):
        return
    if not overwrite:
        raise BundleError(f"{path} already exists and is not empty; choose another directory, or "
                          "pass overwrite=True (--force on the command line) to replace it")
    if (path / LM_MANIFEST).exists():
        _check_lm_destination(path)
        ours = set(LM_PARTS)
    else:
        try:
            manifest = _read_json(path)
        except BundleError as exc:
            raise BundleError(f"{path} is not a hetcc bundle ({exc}); refusing to overwrite it even with "
                              "overwrite=True: remove it yourself if you mean to") from exc
        ours = {MANIFEST, REPORT, CONSTANTS, SEGMENTS} | _listed_top_names(manifest)
    foreign = sorted(p.name for p in path.iterdir() if p.name not in ours)
    if foreign:
        raise BundleError(f"{path} holds a hetcc bundle but also {', '.join(foreign[:5])}, which are "
                          "not part of it; refusing to overwrite it even with overwrite=True: move "
                          "those out or choose another directory")


def _check_lm_destination(path: Path) -> None:
    """A language model's bundle may be replaced only when its lm.json says it is one and each
    phase folder is a bundle that may be replaced itself."""
    try:
        data = read_json(path / LM_MANIFEST, "the language model's manifest")
    except (BundleError, OSError) as exc:
        data = exc
    if not isinstance(data, dict) or data.get("format") != "hetcc-lm":
        raise BundleError(f"{path} holds an {LM_MANIFEST} that is not a hetcc language-model manifest; "
                          "refusing to overwrite it even with overwrite=True: remove it yourself if you "
                          "mean to")
    for part in LM_PARTS[1:]:
        if (path / part).exists() or (path / part).is_symlink():
            check_destination(path / part, overwrite=True)


def _listed_top_names(manifest: dict) -> set:
    names = set()
    entries = [manifest.get("constants"), manifest.get("state")]
    for seg in manifest.get("segments") or []:
        if isinstance(seg, dict) and isinstance(seg.get("files"), dict):
            entries += seg["files"].values()
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"]:
            names.add(PurePosixPath(entry["path"]).parts[0])
    return names


def _move_into_place(staging: Path, path: Path, overwrite: bool) -> None:
    try:
        rename_noreplace(staging, path)
        return
    except FileExistsError:
        pass  # an empty directory, or the old bundle when overwriting: swap, then check what left
    if exchange(staging, path):
        # the swap put what was at the path here: delete it only if it is what may be replaced,
        # and on anything else (an interrupt included) swap it back before save() cleans up
        try:
            check_destination(staging, overwrite)
        except BaseException as exc:
            exchange(staging, path)
            if isinstance(exc, BundleError):
                raise BundleError(f"{path} changed while the bundle was being saved ({exc}); nothing "
                                  "was replaced: save again") from None
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return
    # no atomic exchange here (docs/bundle.md): move the old bundle aside, then the new one in
    check_destination(path, overwrite)
    backup = path.parent / f".{path.name}-old-{uuid.uuid4().hex[:8]}"
    os.replace(path, backup)
    try:
        rename_noreplace(staging, path)
    except BaseException:
        os.replace(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _write(compiled, staging: Path) -> None:
    from hetcc import __version__

    runtime = compiled.runtime
    segments, versions = [], {}
    for step, seg_plan in zip(runtime.steps, compiled.plan.segments, strict=True):
        artifact = compiled.artifacts[step.name]
        verification = compiled.verifications.get(step.name, Verification())
        folder = staging / SEGMENTS / _path_name(step.name, "segment name")
        folder.mkdir(parents=True)
        files = {}
        for role, src in {**artifact.files, **verification.files()}.items():
            dst = folder / _path_name(Path(src).name, f"segment {step.name} file name")
            if dst.exists():
                raise BundleError(f"segment {step.name}: two of its files are both named {dst.name}; "
                                  "this is a bug in its backend, please report it")
            try:
                shutil.copy2(src, dst)
            except OSError as exc:
                raise BundleError(f"segment {step.name}: cannot copy its {role} file {src} ({exc}); "
                                  "compile the model again and save it while it is alive") from exc
            files[role] = _file_entry(staging, dst)
        try:
            versions.update(get_backend(Target.parse(step.target).backend).versions())
        except Exception as exc:  # versions are informative; a missing SDK must not stop a save
            log.warning("no versions for %s: %s", step.target, exc)
        segments.append({
            "name": step.name, "target": step.target,
            "inputs": list(step.inputs), "outputs": list(step.outputs),
            "files": files, "meta": artifact.meta | verification.meta(),
            "plan": {k: getattr(seg_plan, k) for k in (
                "predicted_seconds", "measured_seconds", "flops", "bytes_moved", "resident_bytes",
                "max_error")}
                    | {"intensity": seg_plan.intensity},
        })
    constants = {}
    if runtime.constants:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in runtime.constants.items()}, staging / CONSTANTS)
        constants = _file_entry(staging, staging / CONSTANTS) | {"names": sorted(runtime.constants)}
    stateful = _state_fields(runtime, staging)
    manifest = {
        "format": FORMAT, "format_version": 2 if stateful else 1, "hetcc_version": __version__,
        "runtimes": versions,
        "inputs": [_spec_json(s) for s in runtime.input_specs],
        "input_structure": _treespec_text(runtime.in_spec, "input_structure"),
        "outputs": list(runtime.outputs),
        "output_signature": [None if s is None else _spec_json(s) for s in runtime.output_specs],
        "output_structure": _treespec_text(runtime.out_spec, "output_structure"),
        "constant_outputs": {str(i): _json_constant(v, f"output {i}")
                             for i, v in runtime.const_outputs.items()},
        "constants": constants,
        "segments": segments,
    } | stateful
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    (staging / REPORT).write_text(json.dumps(compiled.plan.to_dict(), indent=1, default=str),
                                  encoding="utf-8")


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
"""A segment name or artifact file name that may become one folder or file name in a bundle."""


def _path_name(name, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BundleError(f"{what} {name!r} cannot be a file name in a bundle (letters, digits, _ . + - "
                          "only, at most 128, not starting with . or -); the bundle is corrupt or was "
                          "tampered with: do not use it, recompile")
    return name


def _file_entry(root: Path, file: Path) -> dict:
    return {"path": file.relative_to(root).as_posix(), "sha256": _sha256(file), "bytes": file.stat().st_size}


# ---------------------------------------------------------------------------------------------
# load


def _read_json(root: Path) -> dict:
    """The manifest as a dict with the right ``format``; its version is not checked here."""
    file = root / MANIFEST
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a bundle directory"
        raise BundleError(f"{root} {what}; give the directory that holds {MANIFEST}")
    try:
        manifest = read_json(file, "the manifest")
    except FileNotFoundError:
        if (root / LM_MANIFEST).exists():
            raise BundleError(f"{root} is a language model's bundle (its {LM_MANIFEST}), not a bundle of one "
                              f"model: generate with `hetcc generate {root}` or hetcc.load_lm, see its plans "
                              f"with `hetcc explain {root}`; each phase ({root / 'decode'}, ...) is a bundle "
                              "of its own") from None
        raise BundleError(f"{root} is not a hetcc bundle: no {MANIFEST} in it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a hetcc bundle manifest (no \"format\": \"{FORMAT}\" in it)")
    return manifest


def read_manifest(path) -> dict:
    """The manifest of the bundle at ``path``, checked to be a hetcc manifest this hetcc can read."""
    root = Path(path)
    manifest = _read_json(root)
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{root / MANIFEST} has an invalid format_version {version!r}; the bundle is "
                          "corrupt: copy it again or recompile")
    if version > FORMAT_VERSION:
        raise BundleError(f"{root} has bundle format version {version}, newer than this hetcc "
                          f"{_hetcc_version()} reads (up to {FORMAT_VERSION}; written by hetcc "
                          f"{manifest.get('hetcc_version', '?')}); upgrade hetcc (pip install -U hetcc)")
    return manifest


def _hetcc_version() -> str:
    from hetcc import __version__

    return __version__


def load(path, trust_engines: bool = False, output_device: str = "cpu", segments=None):
    """Load a bundle written by ``CompiledModel.save``; returns a CompiledModel.

    trust_engines: also load compiled native code (IREE ``.vmfb``, TensorRT ``.plan``, MIGraphX
    ``.mxr``) that another process built. Their runtimes execute them as native code, so this is for bundles you
    built or received over a channel you trust (docs/gpu_backends.md); the same as
    ``HETCC_TRUST_ENGINES=1`` for this one bundle.

    output_device: where calls return outputs: "cpu" (default), "cuda:N", or "keep" (as compile).

    segments: names of the segments to load (default all); the others stay unloaded and refuse to
    run (hetcc.cluster loads each stage's own in its process). Every file is checked either way."""
    from hetcc.compiler import CompiledModel

    root = Path(path)
    output_device = parse_output_device(output_device)
    manifest = read_manifest(root)
    try:
        compiled = _load(root, manifest, CompiledModel, trust_engines, segments)
        compiled.output_device = output_device
        return compiled
    except HetccError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BundleError(f"{root / MANIFEST} is missing a field or has a malformed one ({exc!r}); the "
                          "bundle is corrupt: copy it again or recompile") from exc


def _load(root: Path, manifest: dict, CompiledModel, trust_engines: bool = False, only=None):
    segs = _segments(manifest)
    specs = [_spec_from_json(i, "input") for i in manifest["inputs"]]
    in_spec = _treespec(manifest["input_structure"], "input_structure")
    out_spec = _treespec(manifest["output_structure"], "output_structure")
    outputs = list(manifest["outputs"])
    const_outputs = {int(k): v for k, v in (manifest.get("constant_outputs") or {}).items()}
    constant_entry = manifest.get("constants") or {}
    state_entry, input_updates = _state_manifest(manifest, len(specs))
    updates = [*(state_entry.get("updates") or {}).values(), *input_updates.values()]
    _check_wiring({s.name for s in specs} | set(state_entry.get("names", ())), segs, outputs,
                  const_outputs, out_spec, constant_entry.get("names"), updates)
    backends = _backends(segs, manifest, only)
    for seg in segs:  # every path first, before anything is read
        for entry in seg["files"].values():
            _relative(entry.get("path") if isinstance(entry, dict) else None, f"segment {seg['name']}",
                      root, under=SEGMENTS)
    _check_unlisted(root, segs)  # so every byte a backend reads is checked here:
    checked = [{role: str(_checked_file(root, entry, f"segment {seg['name']}", under=SEGMENTS))
                for role, entry in seg["files"].items()} for seg in segs]
    if trust_engines:  # only files whose checksums matched the manifest just above
        from hetcc.backends._common import remember_built

        for files in checked:
            for file in files.values():
                remember_built(file)
    constants = {}
    if constant_entry:
        constants = _tensors(_checked_file(root, constant_entry, "constants"), "constants file")
    state = _load_state(root, state_entry)
    steps, artifacts, verifications, seg_plans = [], {}, {}, []
    for seg, backend, all_files in zip(segs, backends, checked):
        name, target = seg["name"], Target.parse(seg["target"])
        verification, meta, files = Verification.from_manifest(seg["meta"], all_files)
        artifact = Artifact(str(target), files, meta)
        if only is not None and name not in only:
            from hetcc.compiler import NotHere

            run = NotHere(name, str(target), "not loaded in this process: another one runs it")
            steps.append(Step(name, str(target), run, tuple(seg["inputs"]), tuple(seg["outputs"])))
            artifacts[name], verifications[name] = artifact, verification
            seg_plans.append(_segment_plan(seg, str(target)))
            continue
        try:
            run = backend.load(artifact, target)
        except BundleError as exc:  # the backend's own safety checks: already says what to do
            raise BundleError(f"segment {name} ({target}): {exc}") from exc
        except Exception as exc:
            differ = _versions_that_differ(manifest, backend)
            advice = (f"the bundle was written with {differ}: install those versions, or recompile the "
                      "bundle on this machine" if differ else
                      "the file may be damaged or not supported by this runtime: recompile the bundle")
            raise BundleError(
                f"segment {name}: {target} could not load {', '.join(sorted(_seg_paths(seg)))} "
                f"({type(exc).__name__}: {readable(exc)}); {advice}") from exc
        if verification.verified is False:  # cross-compiled: first run on its device
            verification = _verify_on_load(name, str(target), run, verification)
        steps.append(Step(name, str(target), run, tuple(seg["inputs"]), tuple(seg["outputs"]),
                          location=location_of(run), input_locations=input_locations_of(run)))
        artifacts[name] = artifact
        verifications[name] = verification
        seg_plans.append(_segment_plan(seg, str(target)))
    runtime = Runtime(steps, specs, outputs, const_outputs, in_spec, out_spec, constants, state=state,
                      state_updates=state_entry.get("updates"), input_updates=input_updates)
    signature = manifest.get("output_signature")
    if isinstance(signature, list) and len(signature) == len(outputs):
        runtime.output_specs = [None if o is None else _spec_from_json(o, "output") for o in signature]
    return CompiledModel(runtime, _plan(root, seg_plans), artifacts, verifications=verifications)


def _verify_on_load(name: str, target: str, run, verification: Verification) -> Verification:
    """A segment compiled for a device that was not there (compile(cross_compile=True)) is checked
    against the PyTorch reference the first time it can run: here, at load."""
    check, path = verification.check, verification.check_file
    if not isinstance(check, dict) or not path:
        raise BundleError(f"segment {name} ({target}) was never verified and its check data is missing; "
                          "the bundle is incomplete: compile it again")
    data = _tensors(path, f"segment {name}'s check data")
    try:
        inputs = [data[f"in{i}"] for i in range(int(check["inputs"]))]
        want = [data[f"out{j}"] for j in range(len(check["outputs"]))]
        table = {_dtype(k): Tolerances.make(*v).for_dtype(torch.float32)
                 for k, v in check["tolerances"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, OSError, HetccError) as exc:
        raise BundleError(f"segment {name} ({target}): its check data is malformed ({exc!r}); the "
                          "bundle is corrupt: copy it again or recompile") from exc
    limit = check.get("relative_limit")  # a segment in a lower precision: the budget's limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                              or not 0 < limit < math.inf or not Target.parse(target).precision):
        raise BundleError(f"segment {name} ({target}): its check's relative_limit {limit!r} is not a "
                          "positive number for a target in a lower precision; the bundle is corrupt: copy "
                          "it again or recompile")
    try:
        if limit is None:
            error = check_outputs(name, check["outputs"], run(*inputs), want, Tolerances(table))
        else:
            error, relative = check_relative(name, check["outputs"], run(*inputs), want, float(limit))
            verification = replace(verification, relative_error=relative)
    except Exception as exc:  # a wrong result, or the runtime failing on its first real call
        raise BundleError(f"segment {name} was compiled for {target} on another machine and gives "
                          f"wrong results on this one: {exc}. Do not use this bundle here; compile the "
                          "model on this machine") from exc
    return replace(verification, verified=True, max_error=error)


def _spec_json(spec: TensorSpec) -> dict:
    return {"name": spec.name, "dtype": dtype_name(spec.dtype), "shape": list(spec.shape),
            "ranges": {sym: [lo, hi] for sym, lo, hi in spec.ranges}}


def _spec_from_json(entry: dict, what: str) -> TensorSpec:
    return TensorSpec(_str(entry["name"], f"{what} name"), tuple(_dim(d) for d in entry["shape"]),
                      _dtype(entry["dtype"]),
                      tuple((str(sym), int(lo), int(hi)) for sym, (lo, hi) in (entry.get("ranges") or {}).items()))


def _seg_paths(seg: dict) -> list[str]:
    return [entry["path"] for entry in seg["files"].values()]


def _str(value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"manifest {what} {value!r} is not a non-empty string; the bundle is corrupt")
    return value


def _dim(d):
    if isinstance(d, bool) or not isinstance(d, (int, str)):
        raise BundleError(f"manifest input dimension {d!r} is neither a size nor a symbol; the bundle is corrupt")
    return d


def _check_structure(node, field: str) -> None:
    """Refuse anything but tuples, lists, dicts, leaves and (in the output structure) records in a
    serialized treespec (hetcc.structures: torch's ``treespec_loads`` imports modules a structure
    names)."""
    why = structure_problem(node, records=field == "output_structure")
    if why:
        raise BundleError(f"manifest field {field} {why}; a bundle stores only tuples, lists, "
                          "dicts with plain keys and output records: the bundle is corrupt, was "
                          "tampered with, or needs a newer hetcc")


def _treespec_text(spec, field: str) -> str:
    what = field.split("_")[0] + "s"
    try:
        if field == "output_structure":
            spec = records.storable(spec, what)
        text = pytree.treespec_dumps(spec)
    except records.StructureError as exc:
        raise BundleError(str(exc)) from None
    except (NotImplementedError, TypeError) as exc:
        raise BundleError(f"the model's {what} are in a structure a bundle cannot store "
                          f"({readable(exc)}); use tuples, lists and dicts with str or int keys") from exc
    _check_structure(json.loads(text)[1], field)
    return text


def _treespec(text, field: str):
    try:
        protocol, tree = json.loads(text) if isinstance(text, str) else (None, None)
    except (ValueError, TypeError, RecursionError):
        raise BundleError(f"manifest field {field} is not a serialized treespec [1, {{...}}]; the "
                          "bundle is corrupt") from None
    if protocol != 1:
        raise BundleError(f"manifest field {field} uses treespec protocol {protocol!r}, which this "
                          "hetcc does not read (it reads 1); the bundle is corrupt or needs a newer hetcc")
    _check_structure(tree, field)
    try:
        return records.rebuilt(pytree.treespec_loads(text))
    except Exception as exc:
        raise BundleError(f"manifest field {field} is not a treespec this torch reads "
                          f"({type(exc).__name__}: {readable(exc)}); the bundle is corrupt") from exc


def _segments(manifest: dict) -> list[dict]:
    segs = manifest["segments"]
    if not isinstance(segs, list) or not segs:
        raise BundleError("manifest field segments is not a non-empty list; the bundle is corrupt")
    seen = set()
    for i, seg in enumerate(segs):
        if not isinstance(seg, dict):
            raise BundleError(f"manifest segment {i} is not an object; the bundle is corrupt")
        name = _path_name(_str(seg.get("name"), f"segment {i} name"), f"segment {i} name")
        where = f"segment {name}"
        if name in seen:
            raise BundleError(f"{where} appears twice in the manifest; the bundle is corrupt")
        seen.add(name)
        try:
            Target.parse(_str(seg.get("target"), f"{where} target"))
        except TargetError as exc:
            raise BundleError(f"{where}: {exc}; the bundle is corrupt or was written by a newer hetcc") from exc
        for key in ("inputs", "outputs"):
            if not isinstance(seg.get(key), list) or not all(isinstance(v, str) for v in seg[key]):
                raise BundleError(f"{where}: manifest field {key} is not a list of value names; the "
                                  "bundle is corrupt")
        if not isinstance(seg.get("files"), dict) or not isinstance(seg.get("meta", {}), dict):
            raise BundleError(f"{where}: manifest fields files/meta are not objects; the bundle is corrupt")
    return segs


def _check_wiring(start: set, segs, outputs, const_outputs, out_spec, constant_names,
                  updates=()) -> None:
    """Every value a segment, an output or a state/input update reads is an input, a state, a
    constant or made by a segment, so a bad manifest fails here and not at the first call.
    ``start``: the names readable before any segment runs (the inputs and the state)."""
    known = set(start)
    for seg in segs:
        missing = [n for n in seg["inputs"] if n not in known]
        if missing:
            raise BundleError(f"segment {seg['name']} reads {', '.join(missing)}, which no input or earlier "
                              "segment provides; the bundle is corrupt: recompile it")
        known.update(seg["outputs"])
    known.update(constant_names or [])
    for i, name in enumerate(outputs):
        if name is None and i not in const_outputs:
            raise BundleError(f"output {i} is neither a value nor a constant; the bundle is corrupt")
        if name is not None and name not in known:
            raise BundleError(f"output {i} is {name!r}, which no input, segment or constant provides; "
                              "the bundle is corrupt: recompile it")
    missing = sorted({name for name in updates if name not in known})
    if missing:
        raise BundleError(f"the manifest updates state or inputs with {', '.join(missing)}, which no "
                          "input, segment or constant provides; the bundle is corrupt: recompile it")
    if out_spec.num_leaves != len(outputs):
        raise BundleError(f"output_structure has {out_spec.num_leaves} leaves but outputs lists "
                          f"{len(outputs)}; the bundle is corrupt")


def _backends(segs, manifest, only=None) -> list:
    """The backend for each segment (None for one not loaded: ``only`` leaves it out); one error
    naming every segment that cannot run here."""
    out, problems = [], []
    for seg in segs:
        if only is not None and seg["name"] not in only:
            out.append(None)  # another process runs it: its runtime need not be here
            continue
        target = Target.parse(seg["target"])
        made_with = ", ".join(f"{k} {v}" for k, v in (manifest.get("runtimes") or {}).items()
                              if k == target.backend)
        if target.backend not in installed():
            problems.append(f"segment {seg['name']} needs the {target.backend!r} hetcc backend, which is "
                            f"not installed here (install the package that provides it)")
            out.append(None)
            continue
        try:
            backend = get_backend(target.backend)
        except Exception as exc:  # a broken plugin: say which segment needed it
            problems.append(f"segment {seg['name']} needs the {target.backend!r} backend, which failed "
                            f"to start: {type(exc).__name__}: {readable(exc)}")
            out.append(None)
            continue
        if target.device not in backend.devices:
            why = f"backend {target.backend!r} drives {', '.join(backend.devices)}, not {target.device!r}"
        elif not backend.is_available(target):
            why = backend.why_unavailable(target) or "the backend says it is unavailable"
        else:
            out.append(backend)
            continue
        problems.append(f"segment {seg['name']} needs {target}, which cannot run here: {why}"
                        + (f" (the bundle was written with {made_with})" if made_with else ""))
        out.append(None)
    if problems:
        raise BundleError("; ".join(problems) + ". Install the missing runtime and load the bundle "
                          "again, or recompile the model for targets this machine has")
    return out


def _versions_that_differ(manifest, backend) -> str:
    try:
        here = backend.versions()
    except Exception:
        return ""
    then = manifest.get("runtimes") or {}
    return ", ".join(f"{k} {then[k]} (here {here[k]})" for k in here if k in then and then[k] != here[k])


def _relative(rel, where: str, root: Path, under: str | None = None) -> Path:
    """A manifest path, refused unless it is relative, POSIX, without '..', and inside ``under``."""
    bad = None
    if not isinstance(rel, str) or not rel:
        bad = "is not a non-empty string"
    else:
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel) or ".." in parts:
            bad = "points outside the bundle"
        elif under and parts[0] != under:
            bad = f"is not under {under}/"
    if bad:
        raise BundleError(f"{where}: file path {rel!r} in the manifest {bad} ({root}); the bundle is "
                          "corrupt or was tampered with: do not use it, recompile")
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root.resolve()):  # a symbolic link out of the bundle
        raise BundleError(f"{where}: file {rel} resolves to {candidate}, outside the bundle {root}; the "
                          "bundle was tampered with: do not use it, recompile")
    return candidate


def _checked_file(root: Path, entry, where: str, under: str | None = None) -> Path:
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: a file entry in the manifest is not an object; the bundle is corrupt")
    rel = entry.get("path")
    path = _relative(rel, where, root, under)
    if (root / rel).is_symlink():
        raise BundleError(f"{where}: file {rel} in {root} is a symbolic link; bundles hold plain files "
                          "only: the bundle was tampered with, do not use it, recompile")
    if not path.is_file():
        raise BundleError(f"{where}: file {rel} is missing from {root}; copy the whole bundle directory "
                          "again, or recompile")
    expected, size = entry.get("sha256"), entry.get("bytes")
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise BundleError(f"{where}: file {rel} has no valid sha256 in the manifest; the bundle is corrupt")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"{where}: file {rel} has no valid byte count in the manifest ({size!r}); the "
                          "bundle is corrupt")
    actual = path.stat().st_size
    if actual != size:
        raise BundleError(f"{where}: file {rel} is {actual} bytes, the manifest says {size} (truncated or "
                          "modified); copy the bundle again or recompile")
    if _sha256(path) != expected:
        raise BundleError(f"{where}: file {rel} does not match its sha256 in the manifest (corrupt or "
                          "modified); copy the bundle again or recompile")
    return path


def _check_unlisted(root: Path, segs) -> None:
    """Backends may read files next to the listed ones (OpenVINO finds model.bin beside model.xml,
    ONNX names its external data inside the .onnx), so nothing under segments/ may go unchecked."""
    listed = {PurePosixPath(e["path"]) for seg in segs for e in seg["files"].values()
              if isinstance(e, dict) and isinstance(e.get("path"), str)}
    base = root / SEGMENTS
    if base.is_symlink():
        raise BundleError(f"{base} is a symbolic link; the bundle was tampered with: do not use it, recompile")
    for folder, dirs, files in os.walk(base):
        for name in dirs + files:
            path = Path(folder) / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if path.is_symlink():
                raise BundleError(f"{rel} in {root} is a symbolic link; bundles hold plain files only: "
                                  "the bundle was tampered with, do not use it, recompile")
            if name in files and rel not in listed:
                raise BundleError(f"{rel} in {root} is not listed in the manifest, so it cannot be checked; "
                                  "remove it, or copy the bundle again")


def _segment_plan(seg: dict, target: str) -> SegmentPlan:
    p = seg.get("plan") if isinstance(seg.get("plan"), dict) else {}

    def num(key, default):
        value = p.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    return SegmentPlan(name=seg["name"], target=target, nodes=(), inputs=tuple(seg["inputs"]),
                       outputs=tuple(seg["outputs"]), flops=num("flops", 0.0),
                       bytes_moved=num("bytes_moved", 0), resident_bytes=num("resident_bytes", 0),
                       predicted_seconds=num("predicted_seconds", 0.0), max_error=num("max_error", None),
                       measured_seconds=num("measured_seconds", None))


def _plan(root: Path, seg_plans) -> Plan:
    """The plan from report.json where it is readable, else from the manifest's numbers alone; the
    report is informative, so a bad one is a warning, not a failure."""
    try:
        report = read_json(root / REPORT, "the report")
        if not isinstance(report, dict):
            raise TypeError("it is not a JSON object")
        return _plan_from_report(report, seg_plans)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, BundleError) as exc:
        log.warning("%s is missing or unreadable (%s); the loaded plan has the manifest's numbers only",
                    root / REPORT, readable(exc))
        return _plan_from_report({}, seg_plans)


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
            max_error=sp.max_error, lower_seconds=r.get("lower_seconds"),
            measured_seconds=sp.measured_seconds,
            # fields newer than some bundles: absent (or malformed) ones keep their defaults
            modules=tuple(strings(r.get("modules"))),
            runner_up=r.get("runner_up") if isinstance(r.get("runner_up"), str) else None,
            runner_up_seconds=_number(r.get("runner_up_seconds")),
            runner_up_why=r.get("runner_up_why") if isinstance(r.get("runner_up_why"), str) else "",
            precision=r.get("precision") if isinstance(r.get("precision"), str) else None,
            relative_error=_number(r.get("relative_error")), artifact_bytes=_number(r.get("artifact_bytes")),
            precision_bytes_moved=_number(r.get("precision_bytes_moved"))))
    names, producers = tables(report)  # newer than some bundles: absent ones stay empty
    targets = tuple(report.get("targets", ()))
    if not all(s.target in targets for s in segments):  # targets_used() indexes into this
        targets = tuple(dict.fromkeys(list(targets) + [s.target for s in segments]))
    return Plan(targets=targets, segments=tuple(segments),
                objective=report.get("objective", "latency"),
                predicted_seconds=report.get("predicted_seconds", sum(s.predicted_seconds for s in segments)),
                lower_bound=report.get("lower_bound", 0.0), optimal=report.get("optimal", False),
                solver=report.get("solver", "?"), solve_seconds=report.get("solve_seconds", 0.0),
                attempts=report.get("attempts", 1), notes=tuple(report.get("notes", ())),
                output_names=names, producers=producers,
                candidates=_candidates(report.get("candidates")), accuracy=_accuracy(report.get("accuracy")))


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _accuracy(value) -> dict | None:
    """Plan.accuracy from the report: optional, and only its well-formed fields."""
    if not isinstance(value, dict) or value.get("metric") not in METRICS or _number(value.get("bound")) is None:
        return None
    dropped = [d for d in value.get("dropped") or () if isinstance(d, dict)] \
        if isinstance(value.get("dropped"), list) else []
    # batch counts (a bundle from before 2026-12-03 counts the example inputs among the calibration
    # batches, one more than the user gave)
    counts = {k: value.get(k) for k, low, high in (("calibration_batches", 1, 1 + MAX_BATCHES),
                                                   ("fitted_batches", 1, MAX_BATCHES),
                                                   ("validation_batches", 1, MAX_BATCHES))
              if _whole(value.get(k), low, high)}
    if "validation_batches" in counts:
        counts["measured_validation"] = _number(value.get("measured_validation"))
    return {"metric": value["metric"], "bound": value["bound"], "measured": _number(value.get("measured")),
            "dropped": dropped, **counts}


def _whole(value, low: int, high: int) -> bool:
    """Whether ``value`` (read from a report) is an integer, not a bool, from ``low`` to ``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _candidates(value) -> tuple[dict, ...]:
    """Plan.candidates from the report: optional (bundles from before tuning have none)."""
    return tuple(c for c in value if isinstance(c, dict)) if isinstance(value, list) else ()


# ---------------------------------------------------------------------------------------------
# state: buffers the model updates (docs/bundle.md, "State (buffers the model updates)")

STATE = "state.safetensors"


def _state_fields(runtime, staging: Path) -> dict:
    """The manifest fields of a model with state or updated inputs; none for any other model, so
    its manifest is what it was before these fields existed. The state saved is the current one,
    so a loaded bundle continues from where the saved model was."""
    fields = {}
    state = runtime.state()
    if state:
        from safetensors.torch import save_file

        # copies: safetensors refuses tensors that share memory, and two states may be one tensor
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, staging / STATE)
        fields["state"] = _file_entry(staging, staging / STATE) | {
            "names": sorted(state), "updates": dict(sorted(runtime.state_updates.items()))}
    if runtime.input_updates:
        fields["input_updates"] = {str(i): v for i, v in sorted(runtime.input_updates.items())}
    return fields


def _state_manifest(manifest: dict, n_inputs: int) -> tuple[dict, dict[int, str]]:
    """The ``state`` entry ({} without one) and the input updates, with their types checked."""
    entry = manifest.get("state") or {}
    if not isinstance(entry, dict):
        raise BundleError("manifest field state is not an object; the bundle is corrupt")
    if entry:
        names, updates = entry.get("names"), entry.get("updates")
        if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise BundleError("manifest field state.names is not a list of distinct value names; the "
                              "bundle is corrupt")
        if (not isinstance(updates, dict) or set(updates) != set(names)
                or not all(isinstance(v, str) for v in updates.values())):
            raise BundleError("manifest field state.updates does not name one new value for each "
                              "state in state.names; the bundle is corrupt")
    raw = manifest.get("input_updates") or {}
    if not isinstance(raw, dict):
        raise BundleError("manifest field input_updates is not an object; the bundle is corrupt")
    inputs = {}
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < n_inputs and isinstance(value, str)):
            raise BundleError(f"manifest field input_updates has {key!r}: {value!r}, which is not an "
                              f"input index below {n_inputs} and a value name; the bundle is corrupt")
        inputs[int(key)] = value
    return entry, inputs


def _load_state(root: Path, entry: dict) -> dict:
    """The saved state, read from its checked file (its wiring was checked with the rest)."""
    if not entry:
        return {}
    state = _tensors(_checked_file(root, entry, "state"), "state file")
    if set(state) != set(entry["names"]):
        raise BundleError(f"{STATE} holds {sorted(state)} but the manifest's state.names are "
                          f"{sorted(entry['names'])}; the bundle is corrupt: copy it again or recompile")
    return state
