"""Device registry: built-in specs with a source per number, user devices files, lookup by name.

``get_device("H100")`` returns the ``DeviceSpec`` of ``h100-sxm``. Names are case-insensitive and
have aliases; an unknown name raises ``UnknownDeviceError`` (a ``TargetError``) listing close
matches first. ``registry(extra_files=[...])`` adds or overrides devices from YAML or JSON files
(format in docs/devices.md); ``load_devices(path)`` returns only what one file defines. "cpu" is this
machine, measured by ``this_cpu()`` on first access, never at import.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from hetcc.cost_model import devices as _devices
from hetcc.cost_model.devices import DeviceSpec

from hetcc.errors import HetccError, TargetError

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "fp4", "int4")
KINDS = ("gpu", "cpu", "accelerator")
FIELDS = {  # file field -> what it expects (quoted in error messages)
    "base": "the name of a known device to start from",
    "aliases": "a list of other names",
    "kind": f"one of {', '.join(KINDS)}",
    "description": "text",
    "peak_tflops": f"a mapping dtype -> dense TFLOP/s (dtypes: {', '.join(DTYPES)})",
    "mem_bandwidth_gbs": "a positive number of GB/s (1e9 bytes/s)",
    "mem_capacity_gb": "a positive number of GB (1e9 bytes)",
    "mem_capacity_gib": "a positive number of GiB (2**30 bytes)",
    "host_link": "{name: text, gbs: GB/s per direction, latency_us: optional} or null for the host",
    "peer_link": "{name: text, gbs: GB/s per direction} or null",
    "price_per_hour": "USD per device-hour (a positive number) or null",
    "sources": "a mapping field -> text saying where that number comes from",
}
LINK_FIELDS = {"host_link": ("name", "gbs", "latency_us"), "peer_link": ("name", "gbs")}
BUILTIN_LABEL = "hetcc.cost_model.device_specs"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


class DeviceSpecError(HetccError):
    """A devices file (or the built-in table) is unreadable or invalid."""


class UnknownDeviceError(TargetError, KeyError):
    """No device by that name. A KeyError too, so the registry behaves as a Mapping."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def normalize(name: str) -> str:
    """Canonical spelling of a device name: lower case, spaces and underscores as '-'."""
    return re.sub(r"[\s_]+", "-", str(name).strip().lower())


def ridge_point(spec: DeviceSpec, dtype: str = "fp32") -> float:
    """FLOPs per byte at which ``spec`` turns from bandwidth- to compute-bound for ``dtype``."""
    return spec.flops_for(dtype) / spec.mem_bandwidth


# --- parsing and validating one file -------------------------------------------------------------

@dataclass
class _Patch:
    """One validated device entry of a file, in DeviceSpec units, not yet merged with its base."""
    label: str
    name: str
    base: str | None
    aliases: list[str]
    values: dict            # DeviceSpec field -> value (only what the entry gives)
    sources: dict           # DeviceSpec source key -> text
    extra: dict = field(default_factory=dict)


class _Problems:
    def __init__(self, label: str):
        self.label, self.lines = label, []

    def add(self, msg: str, device: str | None = None, field_: str | None = None) -> None:
        where = self.label + (f": device '{device}'" if device else "")
        self.lines.append(where + (f": field '{field_}'" if field_ else "") + f": {msg}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise DeviceSpecError(f"invalid devices file {self.label}:\n  - " + "\n  - ".join(self.lines))


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _number(value, expect: str, add, *, zero_ok: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML 1.1 reads '1e3' as text: write 1.0e+3 or 1000)"
            except ValueError:
                pass
        add(f"wrong type: got {type(value).__name__} {value!r}; expected {expect}{hint}")
        return None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        add(f"got {value!r}; expected {expect}")
        return None
    return float(value)


def _text(value, add) -> str | None:
    if not isinstance(value, str) or not value.strip():
        add(f"wrong type: got {type(value).__name__} {value!r}; expected non-empty text")
        return None
    return value


def _link(key: str, raw, add) -> tuple | None:
    if not isinstance(raw, dict):
        add(f"wrong type: got {type(raw).__name__} {raw!r}; expected {FIELDS[key]}")
        return None
    ok = True
    for sub in raw:
        if sub not in LINK_FIELDS[key]:
            add(f"unknown key '{sub}'{_suggest(str(sub), LINK_FIELDS[key])}; expected {FIELDS[key]}")
            ok = False
    for sub in ("name", "gbs"):
        if sub not in raw:
            add(f"missing '{sub}'; expected {FIELDS[key]}")
            ok = False
    if not ok:
        return None
    name = _text(raw["name"], lambda m: add(f"'name': {m}"))
    gbs = _number(raw["gbs"], "a positive number of GB/s per direction", lambda m: add(f"'gbs': {m}"))
    lat = 0.0
    if "latency_us" in raw:
        lat = _number(raw["latency_us"], "a number of microseconds >= 0",
                      lambda m: add(f"'latency_us': {m}"), zero_ok=True)
    if name is None or gbs is None or lat is None:
        return None
    return name, gbs * 1e9, lat * 1e-6


def _source_keys(key: str, values: dict) -> list[str]:
    """DeviceSpec source keys that a file's source key stands for."""
    if key == "peak_tflops":
        return [f"peak_flops.{d}" for d in values.get("peak_flops", {})]
    if key.startswith("peak_tflops."):
        return ["peak_flops." + key.split(".", 1)[1]]
    return {"mem_bandwidth_gbs": ["mem_bandwidth"], "mem_capacity_gb": ["mem_capacity"],
            "mem_capacity_gib": ["mem_capacity"], "host_link": ["host_link_bandwidth"],
            "peer_link": ["peer_link_bandwidth"], "price_per_hour": ["price_per_hour"]}.get(key, [])


def _parse_entry(label: str, name: str, raw: dict, problems: _Problems, strict: bool) -> _Patch:
    values, sources, extra, aliases, base = {}, {}, {}, [], None
    given_sources = {}

    def adder(f):
        return lambda msg: problems.add(msg, name, f)

    for key, value in raw.items():
        add = adder(key)
        if key not in FIELDS:
            add(f"unknown field{_suggest(str(key), FIELDS)}; known fields: {', '.join(FIELDS)}")
        elif key == "base":
            base = normalize(value) if _text(value, add) else None
        elif key == "aliases":
            if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
                add(f"wrong type: got {value!r}; expected {FIELDS[key]}")
            else:
                aliases = [normalize(a) for a in value]
        elif key == "kind":
            if value not in KINDS:
                add(f"got {value!r}; expected {FIELDS[key]}")
            else:
                extra["kind"] = value
        elif key == "description":
            if _text(value, add):
                extra["description"] = value
        elif key == "peak_tflops":
            if not isinstance(value, dict) or not value:
                add(f"wrong type: got {value!r}; expected {FIELDS[key]}")
                continue
            peak = {}
            for dtype, tflops in value.items():
                if dtype not in DTYPES:
                    add(f"unknown dtype '{dtype}'{_suggest(str(dtype), DTYPES)}; known dtypes: "
                        f"{', '.join(DTYPES)}")
                    continue
                v = _number(tflops, "a positive number of dense TFLOP/s", adder(f"peak_tflops.{dtype}"))
                if v is not None:
                    peak[dtype] = v * 1e12
            values["peak_flops"] = peak
        elif key in ("mem_bandwidth_gbs", "mem_capacity_gb", "mem_capacity_gib", "price_per_hour"):
            if key == "price_per_hour" and value is None:
                values["price_per_hour"] = None
                continue
            v = _number(value, FIELDS[key], add)
            if v is not None:
                scale = {"mem_bandwidth_gbs": 1e9, "mem_capacity_gb": 1e9, "mem_capacity_gib": 2.0**30}
                target = {"mem_bandwidth_gbs": "mem_bandwidth", "price_per_hour": "price_per_hour"}
                values[target.get(key, "mem_capacity")] = v * scale.get(key, 1.0)
        elif key in LINK_FIELDS:
            if value is None:
                values[key] = None
            else:
                link = _link(key, value, add)
                if link is not None:
                    values[key] = link
        elif key == "sources":
            if not isinstance(value, dict):
                add(f"wrong type: got {value!r}; expected {FIELDS[key]}")
                continue
            given_sources = value
    if "mem_capacity_gb" in raw and "mem_capacity_gib" in raw:
        problems.add("give mem_capacity_gb or mem_capacity_gib, not both", name, "mem_capacity_gib")

    valid_keys = [k for k in FIELDS if k not in ("base", "aliases", "kind", "description", "sources")]
    for key, text in given_sources.items():
        add = adder(f"sources.{key}")
        dtype_key = isinstance(key, str) and key.startswith("peak_tflops.")
        if not (key in valid_keys or (dtype_key and key.split(".", 1)[1] in DTYPES)):
            add(f"unknown source key{_suggest(str(key), valid_keys)}; expected a field name such as "
                f"'mem_bandwidth_gbs' or 'peak_tflops.bf16'")
        elif _text(text, add):
            for spec_key in _source_keys(key, values):
                sources[spec_key] = text
    if strict:  # the built-in table: every number names its source
        needed = [f"peak_flops.{d}" for d in values.get("peak_flops", {})] + ["mem_bandwidth",
                  "mem_capacity", "price_per_hour"]
        needed += [f"{k}_bandwidth" for k in LINK_FIELDS if values.get(k)]
        for k in needed:
            if k not in sources:
                problems.add("no source for this number", name, k)
    return _Patch(label, name, base, aliases, values, sources, extra)


def _parse(label: str, data, strict: bool = False) -> list[_Patch]:
    problems = _Problems(label)
    if not isinstance(data, dict) or not data:
        got = "nothing" if data is None or data == {} else f"a {type(data).__name__}"
        problems.add(f"expected a mapping of device name -> fields, got {got}")
        problems.raise_if_any()
    patches, seen = [], set()
    for raw_name, raw in data.items():
        name = normalize(raw_name) if isinstance(raw_name, str) else ""
        if not _NAME_RE.match(name):
            problems.add(f"invalid device name {raw_name!r}: use letters, digits, '.', '_', '+' or '-' "
                         "(no ':', which separates a target's parts)")
            continue
        if name in seen:
            problems.add("defined twice in this file", name)
        seen.add(name)
        if not isinstance(raw, dict):
            problems.add(f"wrong type: got {type(raw).__name__} {raw!r}; expected a mapping of fields "
                         f"({', '.join(FIELDS)})", name)
            continue
        patches.append(_parse_entry(label, name, raw, problems, strict))
    problems.raise_if_any()
    return patches


def _read(path: Path):
    label = str(path)
    if not path.is_file():
        raise DeviceSpecError(f"devices file {label} not found" + (" (it is a directory)"
                                                                   if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise DeviceSpecError(f"{label}: unknown file type {suffix or '(none)'!r}; a devices file "
                              "ends in .yaml, .yml or .json")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeviceSpecError(f"{label}: line {exc.lineno}, column {exc.colno}: invalid JSON: "
                                  f"{exc.msg}") from None
    try:
        import yaml
    except ImportError:
        raise DeviceSpecError(f"{label}: reading YAML needs pyyaml (pip install pyyaml), or write the "
                              "file as .json") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DeviceSpecError(f"{label}: {where}invalid YAML: {problem}") from None


# --- merging entries into specs -------------------------------------------------------------------

Entry = DeviceSpec | Callable[[], DeviceSpec]


def _merge(patch: _Patch, base: DeviceSpec | None, canonical: str) -> DeviceSpec:
    """The spec that ``patch`` describes: its values over ``base``'s, each number with a source."""
    v, label = patch.values, patch.label
    sources = dict(base.sources) if base else {}
    given = [f"peak_flops.{d}" for d in v.get("peak_flops", {})]
    given += [k for k in ("mem_bandwidth", "mem_capacity", "price_per_hour") if k in v]
    for key in LINK_FIELDS:
        if key in v:  # replaced or removed: the base's source no longer applies
            sources.pop(f"{key}_bandwidth", None)
            if v[key]:
                given.append(f"{key}_bandwidth")
    for k in given:
        sources[k] = patch.sources.get(k, f"{label}, device '{patch.name}'")
    sources.update({k: s for k, s in patch.sources.items() if k not in given})
    if label == BUILTIN_LABEL:
        source = f"hetcc built-in registry ({BUILTIN_LABEL}); per-number sources in .sources"
    else:
        source = f"{base.source}; changed by {label}" if base else label
    kw = {
        "name": canonical, "source": source, "sources": sources,
        "peak_flops": {**(base.peak_flops if base else {}), **v.get("peak_flops", {})},
        "extra": {**(base.extra if base else {}), **patch.extra, "defined_in": label},
    }
    kw.update({k: v[k] for k in ("mem_bandwidth", "mem_capacity", "price_per_hour") if k in v})
    if "host_link" in v:
        name, bw, lat = v["host_link"] or (None, float("inf"), 0.0)
        kw.update(host_link=name, host_link_bandwidth=bw, host_link_latency=lat)
    if "peer_link" in v:
        name, bw, _ = v["peer_link"] or (None, None, None)
        kw.update(peer_link=name, peer_link_bandwidth=bw)
    return replace(base, **kw) if base else DeviceSpec(**kw)


def _missing(patch: _Patch) -> list[str]:
    v, out = patch.values, []
    if "fp32" not in v.get("peak_flops", {}):
        out.append("peak_tflops")
    out += [f for f, k in (("mem_bandwidth_gbs", "mem_bandwidth"), ("mem_capacity_gb", "mem_capacity"))
            if k not in v]
    if "host_link" not in v and patch.extra.get("kind") != "cpu":
        out.append("host_link")
    return out


def _measured_cpu() -> DeviceSpec:
    spec = _devices.this_cpu()
    src = spec.source or "measured on this machine"
    sources = {f"peak_flops.{d}": src for d in spec.peak_flops}
    sources.update({
        "peak_flops.fp32": f"{src}: 1024^3 fp32 GEMM through torch (devices.measure_cpu)",
        "mem_bandwidth": f"{src}: 64 MiB copy, read + write counted (devices.measure_cpu)",
        "mem_capacity": "80% of this machine's physical memory (os.sysconf)",
        "price_per_hour": "this machine: no price",
    })
    sources.update(spec.sources)
    extra = {"kind": "cpu", "description": "this machine's CPU, measured", **spec.extra}
    return replace(spec, name="cpu", sources=sources, extra=extra)


class DeviceRegistry(Mapping):
    """Device name -> DeviceSpec, case-insensitive, with aliases. Lazy entries ('cpu') are built
    on first access. Iterates over canonical names."""

    def __init__(self, entries: dict[str, Entry], aliases: dict[str, str]):
        self._entries, self._aliases, self._defined = dict(entries), dict(aliases), {}

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        key = normalize(name)
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise UnknownDeviceError(self._unknown_message(name, key))

    def _unknown_message(self, name, key: str) -> str:
        pool = sorted(self._entries) + sorted(self._aliases)
        label, seen = [], set()
        for c in difflib.get_close_matches(key, pool, n=6, cutoff=0.5):
            target = self._aliases.get(c, c)
            if target not in seen:
                seen.add(target)
                label.append(c if c == target else f"{c} (= {target})")
        close = label[:4]
        first = f"; close matches: {', '.join(close)}" if close else ""
        aliases = ", ".join(f"{a} -> {c}" for a, c in sorted(self._aliases.items()))
        return (f"unknown device {name!r}{first}. Known devices: {', '.join(sorted(self._entries))} "
                f"(aliases: {aliases}). Add your own in a devices file: see docs/devices.md")

    def __getitem__(self, name: str) -> DeviceSpec:
        key = self.canonical(name)
        entry = self._entries[key]
        if not isinstance(entry, DeviceSpec):
            entry = self._entries[key] = entry()
        return entry

    def __contains__(self, name) -> bool:
        try:
            self.canonical(name)
        except (UnknownDeviceError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def defined_in(self, path) -> list[str]:
        """Names of the devices that the file at ``path`` added or changed."""
        return list(self._defined.get(str(path), []))

    def with_file(self, path) -> DeviceRegistry:
        """A copy of this registry with the devices of one YAML/JSON file added or overridden."""
        path = Path(path)
        new = DeviceRegistry(self._entries, self._aliases)
        new._defined = dict(self._defined)
        new._defined[str(path)] = new._apply(_parse(str(path), _read(path)))
        return new

    def _apply(self, patches: list[_Patch]) -> list[str]:
        problems, names = _Problems(patches[0].label if patches else "?"), []
        for p in patches:
            target = p.name
            if p.base is None and (p.name in self._entries or p.name in self._aliases):
                target = self.canonical(p.name)  # a known name: change that device in place
                base_key = target
            elif p.base is not None:
                if p.base not in self._entries and p.base not in self._aliases:
                    close = difflib.get_close_matches(p.base, list(self._entries) + list(self._aliases),
                                                      n=3, cutoff=0.5)
                    hint = f"; close matches: {', '.join(close)}" if close else ""
                    problems.add(f"unknown base device '{p.base}'{hint}; known devices: "
                                 f"{', '.join(sorted(self._entries))}", p.name, "base")
                    continue
                base_key = self.canonical(p.base)
            else:
                base_key = None
                missing = _missing(p)
                if missing:
                    wanted = "; ".join(f"'{m}' ({FIELDS[m]}{', with fp32' * (m == 'peak_tflops')})"
                                       for m in missing)
                    problems.add(f"missing required field(s) for a new device: {wanted}; or give "
                                 "'base' to start from a known device", p.name, missing[0])
                    continue
            self._aliases.pop(target, None)
            for alias in p.aliases:
                if alias in self._entries and alias != target:
                    problems.add(f"alias '{alias}' is already a device name", p.name, "aliases")
                else:
                    self._aliases[alias] = target
            self._entries[target] = self._entry(p, base_key, target)
            names.append(target)
        problems.raise_if_any()
        return names

    def _entry(self, patch: _Patch, base_key: str | None, target: str) -> Entry:
        if base_key is None:
            return _merge(patch, None, target)
        base = self._entries[base_key]
        if isinstance(base, DeviceSpec):
            return _merge(patch, base, target)
        return lambda: _merge(patch, base(), target)  # a lazy base ('cpu') stays lazy


@lru_cache(maxsize=1)
def _builtin_patches() -> tuple[_Patch, ...]:
    from hetcc.cost_model.device_specs import SPECS

    return tuple(_parse(BUILTIN_LABEL, SPECS, strict=True))


def registry(extra_files: Iterable = ()) -> DeviceRegistry:
    """The built-in devices plus "cpu" (this machine, measured lazily), then each file in order."""
    if isinstance(extra_files, (str, Path)):
        extra_files = [extra_files]
    reg = DeviceRegistry({"cpu": _measured_cpu}, {})
    reg._apply(list(_builtin_patches()))
    for path in extra_files:
        reg = reg.with_file(path)
    return reg


def get_device(name: str, extra_files: Iterable = ()) -> DeviceSpec:
    """The spec of one device by name or alias (case-insensitive)."""
    return registry(extra_files)[name]


def load_devices(path) -> dict[str, DeviceSpec]:
    """The devices that one YAML/JSON file defines or changes, resolved against the built-ins."""
    reg = registry([path])
    return {name: reg[name] for name in reg.defined_in(Path(path))}
