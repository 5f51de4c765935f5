"""How well each backend uses a device, per op class, and what it costs to call it.

``efficiency`` multiplies the device's measured GEMM FLOP/s and copy bandwidth (so a runtime whose
GEMM beats torch's shows above 1). Elementwise efficiency is counted against unfused traffic, so a
runtime that fuses elementwise chains shows well above 1 there. The defaults below were measured
with ``hetcc.measure.calibrate`` on the 2-core AMD EPYC CI machine (docs/cost_model.md), with
hetcc's own ~40 us of input checking taken out of the call overheads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackendProfile:
    backend: str
    efficiency: dict[str, float]
    """op class -> fraction of the device's peak FLOP/s (and bandwidth) this backend reaches;
    '<op class>:memory' -> its fraction of the bandwidth where that differs, '<op class>:<op>' ->
    the compute side of one ATen op where that differs (see ``eff``)."""
    per_node: float
    """Seconds of fixed cost per graph node (dispatch, kernel launch)."""
    call_overhead: float
    """Seconds to enter one segment (argument binding, session bookkeeping)."""
    handoff_bandwidth: float = float("inf")
    """Bytes/s when a tensor is handed to this backend from another CPU runtime (inf: zero-copy)."""
    fused_classes: tuple[str, ...] = field(default=())
    """Op classes this backend fuses into a neighbour, so they move no extra bytes."""
    per_view: float = 0.0
    """Seconds per view node (reshape, permute, slice): 0 where the runtime folds views into
    their neighbours, the dispatch of a no-op where it runs each as an op (torch eager)."""

    def eff(self, op_class: str, side: str = "compute", op: str | None = None) -> float:
        """Efficiency of ``op_class`` on the compute side (FLOP/s) or the ``'memory'`` side
        (bandwidth): '<op class>:memory' for the memory side, '<op class>:<op>' for the compute
        side of one ATen op (e.g. 'elementwise:gelu'), else the class's one number, else 'default'."""
        one = self.efficiency.get(op_class, self.efficiency.get("default", 0.5))
        if side == "memory":
            return self.efficiency.get(f"{op_class}:memory", one)
        return self.efficiency.get(f"{op_class}:{op}", one) if op else one


DEFAULT_PROFILES = {
    "torch": BackendProfile(
        "torch", {"matmul": 0.80, "conv": 0.95, "attention": 0.78, "elementwise": 0.59, "norm": 0.82,
                  "data": 2.2, "default": 0.59},
        per_node=4e-6, call_overhead=13e-6),
    "onnxruntime": BackendProfile(
        "onnxruntime", {"matmul": 1.04, "conv": 1.01, "attention": 0.85, "elementwise": 2.2,
                        "norm": 1.08, "data": 2.5, "default": 1.0},
        per_node=1.5e-6, call_overhead=24e-6),
    "openvino": BackendProfile(
        "openvino", {"matmul": 1.04, "conv": 0.76, "attention": 0.68, "elementwise": 0.63,
                     "norm": 0.67, "data": 0.73, "default": 0.63},
        per_node=1e-6, call_overhead=185e-6),
    # iree:cpu measured with calibrate_backend on the 2-core CI machine while it was shared (load 5-6):
    # the fast end of 3 runs per op class. Efficiencies (time against this CPU's peak, measured under
    # the same load) survive load better than times: ONNX Runtime measured beside it came within 6-20%
    # of its quiet profile above on matmul, elementwise and norm, but up to 2x off on conv, data and
    # attention, so treat those IREE cells as rough. per_node is not measured: IREE fuses elementwise
    # chains into its dispatches as ONNX Runtime does, so it gets ONNX Runtime's. call_overhead is
    # the measured 81 us call less hetcc's own ~10 us of checks (docs/iree.md).
    "iree": BackendProfile(
        "iree", {"matmul": 0.91, "conv": 0.44, "attention": 0.55, "elementwise": 1.08, "norm": 0.35,
                 "data": 0.86, "default": 1.08},
        per_node=1.5e-6, call_overhead=70e-6),
    # GPU profiles: NOT measured (no GPU has run hetcc yet; docs/gpu_backends.md). Efficiencies are
    # fractions of the registry's datasheet peaks, and node_seconds reads the fp32 peak (non-tensor
    # on NVIDIA, matrix on AMD): a large fp32 GEMM with TF32 off reaches roughly 70-80% of it under
    # cuBLAS and TensorRT; MIGraphX is given less until measured. TensorRT and MIGraphX fuse
    # elementwise chains into their producers (hence fused_classes) and launch one kernel per fused
    # layer; eager torch launches one kernel per node (~5-10 us of launch and dispatch). Call
    # overheads cover binding I/O, the launch and the stream sync; host<->GPU copies are charged
    # separately through the device's host link. Key "torch:cuda" is torch on a GPU; see
    # cost_model/target_devices.profile_name.
    "tensorrt": BackendProfile(
        "tensorrt", {"matmul": 0.75, "conv": 0.70, "attention": 0.60, "elementwise": 0.80,
                     "norm": 0.70, "data": 0.80, "default": 0.60},
        per_node=1e-6, call_overhead=40e-6, fused_classes=("elementwise",)),
    "migraphx": BackendProfile(
        "migraphx", {"matmul": 0.50, "conv": 0.50, "attention": 0.45, "elementwise": 0.70,
                     "norm": 0.60, "data": 0.70, "default": 0.50},
        per_node=2e-6, call_overhead=60e-6, fused_classes=("elementwise",)),
    "torch:cuda": BackendProfile(
        "torch:cuda", {"matmul": 0.75, "conv": 0.70, "attention": 0.60, "elementwise": 0.70,
                       "norm": 0.60, "data": 0.70, "default": 0.55},
        per_node=8e-6, call_overhead=20e-6),
    # ONNX Runtime's CUDA provider: cuBLAS/cuDNN kernels as torch's, with ORT's graph fusions
    # (fewer, larger kernels than eager torch); binding I/O per call costs more than torch's call.
    "onnxruntime:cuda": BackendProfile(
        "onnxruntime:cuda", {"matmul": 0.75, "conv": 0.70, "attention": 0.60, "elementwise": 0.75,
                             "norm": 0.65, "data": 0.70, "default": 0.55},
        per_node=4e-6, call_overhead=40e-6),
}

GENERIC = BackendProfile("generic", {"default": 0.5}, per_node=5e-6, call_overhead=50e-6)


def profile_for(backend: str, overrides: dict | None = None,
                calibration: CalibratedProfile | None = None) -> BackendProfile:
    """``overrides`` (compile(profiles=...)) first, then a calibrated profile (see ``calibrated()``),
    then the defaults above."""
    if overrides and backend in overrides:
        return overrides[backend]
    if calibration is not None and backend in calibration.backends:
        return calibration.backends[backend]
    return DEFAULT_PROFILES.get(backend, GENERIC)


# ---- calibrated profiles (written by `hetcc calibrate`, docs/cost_model.md "Calibration") ----

PROFILE_FORMAT, PROFILE_VERSION = "hetcc-profile", 1
_FIELDS = ("efficiency", "per_node", "call_overhead", "handoff_bandwidth", "fused_classes", "per_view")
_loaded: dict = {}  # (path, mtime_ns, size) -> CalibratedProfile


@dataclass(frozen=True)
class CalibratedProfile:
    path: str
    key: str
    device: object
    """The DeviceSpec measured with the profile; replaces this_cpu() for CPU targets."""
    backends: dict[str, BackendProfile]


def profile_path(key: str | None = None):
    """Where `hetcc calibrate` writes this machine's profile by default."""
    import hashlib

    from hetcc.cost_model.devices import _cache_dir, _cpu_key

    key = key or _cpu_key()
    return _cache_dir() / f"profile-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def profile_to_json(key: str, device, backends: dict[str, BackendProfile], timings: dict,
                    extra: dict | None = None) -> dict:
    import datetime
    from dataclasses import asdict

    def finite(value):  # JSON has no inf: write null ("unlimited", "zero-copy")
        return None if isinstance(value, float) and value == float("inf") else value

    spec = {k: finite(v) for k, v in asdict(device).items()}
    return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "key": key,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": spec,
            "backends": {name: {f: finite(getattr(p, f)) if f != "fused_classes" else list(p.fused_classes)
                                for f in _FIELDS} for name, p in backends.items()},
            "timings": timings, **(extra or {})}


def read_document(path, what: str, format_name: str, bad) -> dict:
    """The JSON object in ``path`` whose field 'format' is ``format_name``: the start of reading a
    calibration profile or a corrections file. ``bad(problem)`` makes the error for a bad file; one
    that cannot be read says so with ``what`` and the path."""
    import json
    from pathlib import Path

    from hetcc.errors import HetccError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise HetccError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise bad(f"field 'format' must be {format_name!r}")
    return data


def read_profile(path) -> CalibratedProfile:
    """Read and check a profile file; every problem is a HetccError naming the file and field."""
    from pathlib import Path

    from hetcc.cost_model.devices import DeviceSpec

    from hetcc.errors import HetccError

    path = Path(path)

    def bad(what: str) -> HetccError:
        return HetccError(f"calibration profile {path}: {what}; re-run `hetcc calibrate` "
                          f"(or delete the file to use the default profiles)")

    data = read_document(path, "calibration profile", PROFILE_FORMAT, bad)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad("field 'version' must be a positive integer")
    if version > PROFILE_VERSION:
        raise bad(f"version {version} is newer than this hetcc reads ({PROFILE_VERSION}); upgrade hetcc")
    if not isinstance(data.get("key"), str):
        raise bad("field 'key' must be a string")

    def number(value, where, positive=False, none_is=None):
        if value is None and none_is is not None:
            return none_is
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                or (positive and value == 0) or math.isnan(value):
            raise bad(f"field '{where}' must be a {'positive' if positive else 'non-negative'} number, "
                      f"got {value!r}")
        return float(value)

    spec = data.get("device")
    if not isinstance(spec, dict):
        raise bad("field 'device' must be an object")
    flops = spec.get("peak_flops")
    if not isinstance(flops, dict) or "fp32" not in flops:
        raise bad("field 'device.peak_flops' must be an object with 'fp32'")
    spec = dict(spec, peak_flops={k: number(v, f"device.peak_flops.{k}", True) for k, v in flops.items()},
                mem_bandwidth=number(spec.get("mem_bandwidth"), "device.mem_bandwidth", True),
                mem_capacity=number(spec.get("mem_capacity"), "device.mem_capacity", True),
                host_link_bandwidth=number(spec.get("host_link_bandwidth"), "device.host_link_bandwidth",
                                           True, none_is=float("inf")))
    try:
        device = DeviceSpec(**spec)
    except TypeError as exc:
        raise bad(f"field 'device': {exc}") from None
    backends = data.get("backends")
    if not isinstance(backends, dict) or not backends:
        raise bad("field 'backends' must be a non-empty object")
    out = {}
    for name, b in backends.items():
        where = f"backends.{name}"
        if not isinstance(b, dict) or not isinstance(b.get("efficiency"), dict):
            raise bad(f"field '{where}.efficiency' must be an object")
        eff = {k: number(v, f"{where}.efficiency.{k}", True) for k, v in b["efficiency"].items()}
        fused = b.get("fused_classes") or []
        if not isinstance(fused, list) or not all(isinstance(c, str) for c in fused):
            raise bad(f"field '{where}.fused_classes' must be a list of op class names")
        out[name] = BackendProfile(
            name, eff, per_node=number(b.get("per_node"), f"{where}.per_node"),
            call_overhead=number(b.get("call_overhead"), f"{where}.call_overhead"),
            handoff_bandwidth=number(b.get("handoff_bandwidth"), f"{where}.handoff_bandwidth", True,
                                     none_is=float("inf")),
            fused_classes=tuple(fused),
            per_view=number(b.get("per_view", 0.0), f"{where}.per_view"))  # absent before per_view existed
    return CalibratedProfile(str(path), data["key"], device, out)


def calibrated() -> CalibratedProfile | None:
    """The profile to use instead of the defaults: $HETCC_PROFILE if set, else this machine's
    `hetcc calibrate` output in the cache dir if it exists, else None (the defaults apply)."""
    import logging
    import os
    from pathlib import Path

    from hetcc.errors import HetccError

    explicit = os.environ.get("HETCC_PROFILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HetccError(f"HETCC_PROFILE={explicit}: no such file; unset it or run "
                             f"`hetcc calibrate -o {explicit}`")
    else:
        path = profile_path()
        if not path.is_file():
            return None
    stat = path.stat()
    cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if cache_key not in _loaded:
        _loaded.clear()
        _loaded[cache_key] = read_profile(path)
    profile = _loaded[cache_key]
    log = logging.getLogger("hetcc")
    log.info("cost model: using the calibrated profile %s", path)
    if explicit:
        from hetcc.cost_model.devices import _cpu_key

        if profile.key != _cpu_key():
            log.warning("HETCC_PROFILE %s was measured on %s, not on this machine (%s)",
                        path, profile.key, _cpu_key())
    return profile
