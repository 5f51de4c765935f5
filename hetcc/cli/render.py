"""Tables for `hetcc explain` and `hetcc targets`, and the facts `hetcc targets` gathers.

explain works from report.json alone (plain dicts, as Plan.to_dict wrote them), so it needs no
runtime installed; targets asks every installed backend about this machine."""
from __future__ import annotations

import re

from rich.table import Table
from rich.text import Text

from hetcc.precision import CALIBRATED

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""Characters a terminal acts on (escape sequences, bell, carriage return, bidirectional
overrides) rather than shows."""


def printable(value):
    """``value`` (JSON data) with every control character in its strings shown as an escape
    (``\\x1b``), so a report from someone else cannot drive the terminal that shows it."""
    if isinstance(value, str):
        return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable(v) for v in value]
    return value


def plan_table(report: dict) -> Table:
    table = Table()
    budgeted = isinstance(report.get("accuracy"), dict)  # a lower precision was allowed
    for head in ("segment", "target", "nodes", "MFLOP", "MB moved", "OI", "CF MB", "pred ms", "meas ms",
                 "max err") + (("rel err", "file MB") if budgeted else ()):
        table.add_column(head, justify="left" if head in ("segment", "target") else "right", no_wrap=True)
    table.add_column("fell back here because", overflow="fold")
    for s in report.get("segments", []):
        flops, moved = _float(s.get("flops")), _float(s.get("bytes_moved"))
        table.add_row(
            Text(str(s.get("name"))), Text(str(s.get("target"))),
            str(len(s["nodes"])) if isinstance(s.get("nodes"), list) and s["nodes"] else "-",
            _fmt(flops, 1e-6, ".2f"), _fmt(moved, 1e-6, ".2f"),
            _fmt(flops / moved if flops is not None and moved else None, 1, ".1f"),
            _fmt(_float(s.get("resident_bytes")), 1e-6, ".2f"),
            _fmt(_float(s.get("predicted_seconds")), 1e3, ".3f"),
            _fmt(_float(s.get("measured_seconds")), 1e3, ".3f"), _fmt(_float(s.get("max_error")), 1, ".1e"),
            *((_fmt(_float(s.get("relative_error")), 1, ".1e"), _fmt(_float(s.get("artifact_bytes")), 1e-6, ".2f"))
              if budgeted else ()),
            Text("\n".join(_fell_back(s.get("fell_back")))),
        )
    return table


def _float(value) -> float | None:
    """A number from the report, or None: a hand-edited report must not crash the table."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value, scale, spec: str) -> str:
    return "-" if value is None else format(value * scale, spec)


def _fell_back(fell_back) -> list[str]:
    """Nodes grouped by reason: one line per reason, naming a few of its nodes."""
    by_reason: dict[str, list[str]] = {}
    for node, why in (fell_back.items() if isinstance(fell_back, dict) else ()):
        by_reason.setdefault(str(why), []).append(str(node))
    lines = []
    for why, nodes in by_reason.items():
        shown = ", ".join(nodes[:3]) + (f" +{len(nodes) - 3} more" if len(nodes) > 3 else "")
        lines.append(f"{shown}: {why}")
    return lines


def plan_footer(report: dict, signature: str, runtimes: dict) -> list[str]:
    lines = []
    predicted = _float(report.get("predicted_seconds"))
    if predicted is not None:
        status = "optimal" if report.get("optimal") else "not proven optimal"
        lines.append(f"predicted {predicted * 1e3:.3f} ms ({report.get('objective')}, {status}, solver "
                     f"{report.get('solver')}, {report.get('attempts', 1)} attempt(s)); targets "
                     f"considered: {', '.join(map(str, report.get('targets') or []))}")
    accuracy = report.get("accuracy")
    if isinstance(accuracy, dict):
        from hetcc.plan import accuracy_line

        lines.append(accuracy_line(accuracy))
    lines.append(f"inputs {signature}")
    if isinstance(runtimes, dict) and runtimes:
        lines.append("built with " + ", ".join(f"{k} {v}" for k, v in runtimes.items()))
    lines.extend(f"note: {n}" for n in report.get("notes") or [])
    from hetcc.tune import candidate_lines

    candidates = report.get("candidates")
    lines.extend(candidate_lines(candidates if isinstance(candidates, list) else ()))
    return lines


def targets_info() -> dict:
    from hetcc import __version__
    from hetcc.backends.registry import get_backend, installed, precisions_of
    from hetcc.target import Target

    backends, targets = [], []
    for name, spec in sorted(installed().items()):
        entry = {"name": name, "entry_point": spec if isinstance(spec, str) else repr(spec),
                 "versions": {}, "devices": [], "options": [], "error": None}
        backends.append(entry)
        try:  # a broken plugin is reported, and must not hide the others
            backend = get_backend(name)
            entry["devices"] = list(backend.devices)
            entry["versions"] = backend.versions()
            entry["options"] = [o.describe() for o in getattr(backend, "options", ())]
            untested = getattr(backend, "untested", {})
            for device in backend.devices:
                target = Target(name, device)
                usable = bool(backend.is_available(target))
                targets.append({"target": str(target), "usable": usable,
                                "why": "" if usable else backend.why_unavailable(target),
                                "untested": untested.get(device, ""),
                                # what compile(accuracy=...) may choose among on this target here
                                "precisions": list(precisions_of(backend, target)) if usable else []})
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"
    return {"hetcc": __version__, "backends": backends, "devices": _devices(), "targets": targets,
            "usable": [t["target"] for t in targets if t["usable"]]}


def _devices() -> list[dict]:
    import torch

    from hetcc.cost_model.devices import this_cpu
    from hetcc.cost_model.profiles import calibrated

    calibration = calibrated()  # `hetcc calibrate`'s spec when there is one: what compile uses
    cpu = calibration.device if calibration else this_cpu()
    out = [{"device": "cpu", "description": cpu.source, "peak_gflops_fp32": cpu.peak_flops["fp32"] / 1e9,
            "mem_bandwidth_gbs": cpu.mem_bandwidth / 1e9, "mem_capacity_gb": cpu.mem_capacity / 1e9}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"device": f"cuda:{i}", "description": props.name,
                        "mem_capacity_gb": props.total_memory / 1e9})
    return out


def targets_tables(info: dict) -> list[tuple[str, Table]]:
    """(heading, table) for backends, devices and targets."""
    backends = Table()
    for head in ("backend", "devices", "versions"):
        backends.add_column(head, overflow="fold")
    for b in info["backends"]:
        versions = b["error"] or ", ".join(f"{k} {v}" for k, v in b["versions"].items())
        backends.add_row(b["name"], ", ".join(b["devices"]), Text(versions, style="red" if b["error"] else ""))

    devices = Table()
    for head in ("device", "fp32 GFLOP/s", "GB/s", "memory GB", "description"):
        devices.add_column(head, justify="left" if head in ("device", "description") else "right",
                           overflow="fold")
    for d in info["devices"]:
        devices.add_row(d["device"], _num(d.get("peak_gflops_fp32")), _num(d.get("mem_bandwidth_gbs")),
                        _num(d.get("mem_capacity_gb")), Text(str(d.get("description", ""))))

    options = Table()
    for head in ("backend", "option", "values", "default", "meaning"):
        options.add_column(head, overflow="fold")
    for b in info["backends"]:
        for o in b.get("options") or []:
            reaches = f" (only {', '.join(b['name'] + ':' + d for d in o['devices'])})" if o["devices"] else ""
            options.add_row(b["name"], o["name"], Text(o["values"]), Text(_default(o["default"])),
                            Text(o["meaning"] + reaches))

    targets = Table()
    for head in ("target", "usable", "lower precisions (--accuracy)", "status", "why not"):
        targets.add_column(head, overflow="fold")
    for t in info["targets"]:
        # a target whose vendor calls have never run on real hardware says so wherever it is offered
        status = Text("untested on hardware", style="yellow") if t.get("untested") else Text("")
        targets.add_row(t["target"], Text("yes", style="green") if t["usable"] else Text("no", style="red"),
                        Text(", ".join(p + (" (with --calibration)" if p in CALIBRATED else "")
                                       for p in t.get("precisions") or ()) or "-"), status, Text(t["why"]))
    return [("backends installed", backends), ("devices on this machine", devices),
            ("backend options (--option BACKEND.NAME=VALUE; backend_options={...} in Python)", options),
            ("targets", targets)]


def _default(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as it is written on the command line
    return "-" if value is None or value in ({}, [], ()) else str(value)


def _num(value) -> str:
    return "-" if value is None else f"{value:.1f}"
