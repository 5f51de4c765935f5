"""Device specs. This machine's CPU is measured once and cached; other devices come from the
registry (cost_model/registry.py, a source per number; docs/devices.md)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    peak_flops: dict[str, float]
    """dtype ('fp32', 'bf16', ...) -> FLOP/s achievable by a large GEMM."""
    mem_bandwidth: float
    """Bytes/s for a large streaming copy (read + write counted)."""
    mem_capacity: float
    """Bytes of memory usable for resident weights."""
    host_link_bandwidth: float = float("inf")
    """Bytes/s between this device and host memory; inf for the host itself."""
    host_link_latency: float = 0.0
    source: str = ""
    """Where the numbers come from (a datasheet, or 'measured on ...')."""
    extra: dict = field(default_factory=dict)
    host_link: str | None = None
    """Name of the link to the host, e.g. 'PCIe 5.0 x16'; None for the host itself."""
    peer_link: str | None = None
    """Name of the device-to-device link (NVLink, Infinity Fabric, ...); None where there is none."""
    peer_link_bandwidth: float | None = None
    """Bytes/s per direction from this device to its peers over ``peer_link`` (aggregate over
    all its links); None without a peer link."""
    price_per_hour: float | None = None
    """USD per device-hour (a public on-demand list price); None where no public price exists."""
    sources: dict[str, str] = field(default_factory=dict)
    """Per-number provenance: 'peak_flops.<dtype>', 'mem_bandwidth', 'mem_capacity',
    'host_link_bandwidth', 'peer_link_bandwidth', 'price_per_hour' -> where it comes from."""

    def flops_for(self, dtype: str) -> float:
        return self.peak_flops.get(dtype) or self.peak_flops["fp32"]

    @property
    def ridge_point(self) -> float:
        """FLOPs per byte where this device turns from bandwidth- to compute-bound (fp32)."""
        return self.peak_flops["fp32"] / self.mem_bandwidth


def _cache_dir() -> Path:
    root = os.environ.get("HETCC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hetcc")
    return Path(root)


def cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo ("model name", "flags"); None where
    there is no such file (not Linux) or no such line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """This CPU's model name as Linux gives it, else what the platform module says."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_key() -> str:
    import torch

    return f"{cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str] | None:
    """The instruction-set flags of this x86 CPU as Linux lists them (/proc/cpuinfo: ``avx2``,
    ``avx512_vnni``, ``amx_int8``...); None on another OS or architecture, where they are unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    flags = cpuinfo("flags")
    return None if flags is None else frozenset(flags.split())


def int8_dot_products() -> bool:
    """Whether this CPU has VNNI's int8 dot products (AVX-VNNI, AVX512-VNNI), which sum u8 x s8
    products into int32 directly. Without them the x86 runtimes' int8 kernels add pairs of products
    in int16 (AVX2's vpmaddubsw), which saturates for large weights and activations, and OpenVINO
    does not quantize activations at all. True where the flags are unknown (not x86 Linux)."""
    flags = cpu_flags()
    return flags is None or bool(flags & {"avx_vnni", "avx512_vnni"})


def _mem_total() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16e9


def measure_cpu(seconds: float = 0.3) -> DeviceSpec:
    """Measure this CPU: fp32 GEMM FLOP/s and streaming bandwidth, through torch."""
    import torch

    n = 1024  # large enough that the GEMM, not the call, dominates
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
    flops = 2.0 * n**3 * reps / (time.perf_counter() - start)
    src = torch.ones(64 * 2**20 // 4)  # 64 MiB: past the last-level cache of a server CPU
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        reps += 1
    bandwidth = 2.0 * src.numel() * 4 * reps / (time.perf_counter() - start)
    return DeviceSpec(
        name="cpu", peak_flops={"fp32": flops}, mem_bandwidth=bandwidth,
        mem_capacity=_mem_total() * 0.8, source=f"measured on {_cpu_key()}",
    )


def measure_best(seconds: float = 0.3, samples: int = 3) -> DeviceSpec:
    """This CPU's spec, the best of ``samples`` measurements of FLOP/s and of bandwidth: a busy
    neighbour only lowers them (a spec cached on a busy machine was seen 3x too low)."""
    runs = [measure_cpu(seconds) for _ in range(max(1, samples))]
    best = max(runs, key=lambda s: s.peak_flops["fp32"])
    return replace(best, mem_bandwidth=max(s.mem_bandwidth for s in runs),
                   extra={**best.extra, "samples": len(runs),
                          "fp32_flops_samples": [s.peak_flops["fp32"] for s in runs],
                          "mem_bandwidth_samples": [s.mem_bandwidth for s in runs]})


def this_cpu(refresh: bool = False) -> DeviceSpec:
    """This machine's CPU spec, measured once and cached under ~/.cache/hetcc (HETCC_CACHE_DIR)."""
    key = _cpu_key()
    # one file per key, so two environments on one machine (say torch 2.11 and 2.13) do not keep
    # re-measuring over each other's cache
    path = _cache_dir() / f"cpu_spec-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    if not refresh and path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                return DeviceSpec(**data["spec"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable CPU spec cache %s: %s", path, exc)
    spec = measure_best(seconds=0.2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "spec": asdict(spec)}, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not cache the CPU spec at %s: %s", path, exc)
    return spec
