"""Corrections the compile-time tuner learnt: per runtime, measured time over predicted time.

`compile(tune=..., learn=True)` (`hetcc compile --learn`) times candidate plans, and for each runtime
it timed divides the segments' measured time by the time the cost model predicted for them. The
factor is kept in a corrections file beside the calibration, never in it: a calibrated profile is
the user's (or `hetcc calibrate`'s) measurement, and learning must not rewrite it. Later compiles
scale that runtime's whole predicted time by the factor (``scaled``), so they choose as the
measurement would have, without measuring.

Where the file is (``corrections_path``): $HETCC_CORRECTIONS if set; else beside $HETCC_PROFILE
(``profile.json`` -> ``profile.corrections.json``); else in the cache dir beside the profile
`hetcc calibrate` writes, one per machine key. A factor is relative to the profile it was learnt
against, so the file names that profile (``base``); once the profile changes (a new calibration),
the corrections are ignored with a warning until learnt again or deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from hetcc.cost_model.profiles import BackendProfile, read_document

log = logging.getLogger("hetcc")

FORMAT, VERSION = "hetcc-corrections", 1
BUILT_IN = "built-in profiles"
MAX_WEIGHT = 8
"""A factor is the geometric mean of what each learning run found, over at most this many runs:
past that, older runs fade, so a factor can still follow a machine or runtime that changed."""
LIMITS = (0.1, 10.0)
"""A measured/predicted ratio outside this is a broken measurement (a stall), not a correction."""


@dataclass(frozen=True)
class Corrections:
    path: str
    base: str
    """The profile the factors are relative to: ``BUILT_IN`` or 'sha256:<hex>' of the profile file."""
    factors: dict[str, float]
    """``key(target)`` ('onnxruntime', 'torch', 'iree:rocm', ...) -> factor."""
    runs: dict[str, int]
    """Profile name -> how many learning runs the factor averages."""


def key(target, arithmetic: str | None = None) -> str:
    """What a factor is kept under: the profile's name for a CPU target ('onnxruntime'), the
    profile's name and the device otherwise ('iree:rocm', 'tensorrt:cuda'): one backend's
    runtimes on a CPU and on a GPU are misjudged differently; a lower precision adds it
    ('onnxruntime@int8'), and the arithmetic its backend says it computes in here where that is not
    the precision's own ('openvino@int8w/fp32': OpenVINO's int8 weights on a CPU without VNNI)."""
    from hetcc.cost_model.target_devices import profile_name
    from hetcc.target import Target

    target = Target.parse(target)
    name = profile_name(target)
    name = name if target.device == "cpu" or ":" in name else f"{name}:{target.device}"
    # a lower precision is misjudged on its own (its speed-ups are assumptions): 'openvino@int8w'.
    # A factor corrects one price: learnt against int8's assumed rate, it must not scale fp32's
    if not target.precision:
        return name
    return f"{name}@{target.precision}" + (f"/{arithmetic}" if arithmetic else "")


def corrections_path() -> Path:
    explicit = os.environ.get("HETCC_CORRECTIONS")
    if explicit:
        return Path(explicit)
    profile = os.environ.get("HETCC_PROFILE")
    if profile:
        path = Path(profile)
        return path.with_name(path.stem + ".corrections.json")
    from hetcc.cost_model.profiles import profile_path

    path = profile_path()
    return path.with_name(path.name.replace("profile-", "corrections-", 1))


def base_of(calibration) -> str:
    """Which profile predictions come from now (``profiles.calibrated()``'s answer)."""
    if calibration is None:
        return BUILT_IN
    digest = hashlib.sha256(Path(calibration.path).read_bytes()).hexdigest()[:16]
    return f"sha256:{digest}"


def read_corrections(path) -> Corrections:
    """Read and check a corrections file; a problem is a HetccError naming the file and field."""
    from hetcc.errors import HetccError

    path = Path(path)

    def bad(what: str) -> HetccError:
        return HetccError(f"corrections file {path}: {what}; delete it (compile learns it again with "
                          "learn=True / --learn)")

    data = read_document(path, "corrections file", FORMAT, bad)
    if data.get("version") != VERSION:
        raise bad(f"field 'version' must be {VERSION} (this hetcc reads only that)")
    if not isinstance(data.get("base"), str):
        raise bad("field 'base' must be a string")
    runtimes = data.get("runtimes")
    if not isinstance(runtimes, dict):
        raise bad("field 'runtimes' must be an object")
    factors, runs = {}, {}
    for name, entry in runtimes.items():
        factor = entry.get("factor") if isinstance(entry, dict) else None
        count = entry.get("runs", 1) if isinstance(entry, dict) else None
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not math.isfinite(factor) \
                or not LIMITS[0] <= factor <= LIMITS[1]:
            raise bad(f"field 'runtimes.{name}.factor' must be a number in {LIMITS}, got {factor!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise bad(f"field 'runtimes.{name}.runs' must be a positive integer, got {count!r}")
        factors[name], runs[name] = float(factor), count
    return Corrections(str(path), data["base"], factors, runs)


def current(calibration) -> Corrections | None:
    """The corrections that apply to predictions from ``calibration``: None where there is no
    file, or (with a warning) where it was learnt against another profile."""
    path = corrections_path()
    if not path.is_file():
        return None
    found = read_corrections(path)
    base = base_of(calibration)
    if found.base != base:
        log.warning("cost model: ignoring the corrections in %s: they were learnt against %s, and "
                    "predictions now come from %s; learn again (compile with learn=True) or delete "
                    "the file", path, found.base, base if calibration is None else calibration.path)
        return None
    return found


def scaled(profile: BackendProfile, factor: float) -> BackendProfile:
    """``profile`` with every time it predicts multiplied by ``factor``: node times (efficiencies
    divided, per-node and per-view costs multiplied) and its call overhead."""
    eff = {k: v / factor for k, v in profile.efficiency.items()}
    eff.setdefault("default", profile.eff("default") / factor)  # eff() falls back to 'default'
    return replace(profile, efficiency=eff, per_node=profile.per_node * factor,
                   per_view=profile.per_view * factor, call_overhead=profile.call_overhead * factor)


def learn(measured: dict[str, tuple[float, float]], calibration) -> tuple[Path, dict[str, float]]:
    """Fold one run's ``{profile name: (measured seconds, predicted seconds)}`` into the corrections
    file (created if missing) and return its path and the factors now in it. Predictions were made
    with the corrections in force, so a run's ratio multiplies the factor it was made with."""
    from hetcc.errors import HetccError

    path = corrections_path()
    base = base_of(calibration)
    old = read_corrections(path) if path.is_file() else None
    if old is not None and old.base != base:
        log.warning("cost model: %s was learnt against %s; starting it afresh for %s", path, old.base, base)
        old = None  # relative to another profile: those factors mean nothing now
    factors = dict(old.factors) if old else {}
    runs = dict(old.runs) if old else {}
    for name, (got, predicted) in sorted(measured.items()):
        if not (got > 0 and predicted > 0):
            continue
        ratio = got / predicted
        if not LIMITS[0] <= ratio <= LIMITS[1]:
            log.warning("cost model: not learning %s: measured/predicted %.2f looks like a stall", name, ratio)
            continue
        before, n = factors.get(name, 1.0), runs.get(name, 0)
        # a geometric running mean of the factor each run implies (before * ratio)
        factor = before * ratio ** (1.0 / (min(n, MAX_WEIGHT - 1) + 1))
        factors[name] = min(max(factor, LIMITS[0]), LIMITS[1])
        runs[name] = n + 1
    data = {"format": FORMAT, "version": VERSION, "base": base,
            "note": "measured/predicted time per runtime, learnt by compile(tune=..., learn=True); "
                    "delete this file to forget it (docs/cost_model.md)",
            "runtimes": {name: {"factor": round(f, 4), "runs": runs[name]} for name, f in sorted(factors.items())}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise HetccError(f"cannot write the corrections file {path}: {exc.strerror or exc}; set "
                         "HETCC_CORRECTIONS to a writable file") from None
    return path, {k: round(v, 4) for k, v in factors.items()}
