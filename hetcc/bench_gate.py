"""The regression gate: a bench run's ratios to its reference, against a committed baseline.

A baseline file (JSON, format in docs/benchmarks.md) holds one entry per (model, variant, batch,
machine class): the variant's median latency over the reference's median, measured in the same
run. Ratios, not times, are compared, because on a shared machine the times drift together while
their ratio holds. A ratio that grew by more than ``max_regression`` times fails the gate; entries
the baseline lacks, or has only for other machine classes, are reported and do not fail. The
baseline changes only when asked (``--update-baseline``)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hetcc.errors import HetccError

FORMAT = "hetcc-bench-baseline"
VERSION = 1
OK, REGRESSED, FASTER = "ok", "regressed", "faster"
MISSING, OTHER_CLASS, NOT_COMPARABLE = "missing", "no baseline for this machine class", "not comparable"


class BaselineError(HetccError):
    """A baseline file that cannot be read or is not a hetcc baseline."""


def key(entry: dict) -> tuple:
    return entry["model"], entry["variant"], entry["batch"], entry["machine_class"]


def entries(results: dict) -> list[dict]:
    """Baseline entries for a results document: one per measured variant and batch, the
    reference itself excepted (its ratio is 1 by definition)."""
    machine = results["machine"]
    out = []
    for row in results["results"]:
        if row["reference"] or row.get("ratio") is None:
            continue
        out.append({
            "model": results["model"], "variant": row["variant"], "batch": row["batch"],
            "machine_class": machine["machine_class"], "ratio": round(row["ratio"], 4),
            "ratio_p10": _round(row.get("ratio_p10")), "ratio_p90": _round(row.get("ratio_p90")),
            "reference": results["reference"], "targets": row["targets"],
            "median_ms": round(row["latency"]["median_s"] * 1e3, 4),
            "recorded": time.strftime("%Y-%m-%d"), "cpu": machine.get("cpu"),
            "versions": {k: v for k, v in results.get("versions", {}).items()
                         if k in ("hetcc", "torch", "onnxruntime", "openvino")},
        })
    return out


def _round(value):
    return None if value is None else round(value, 4)


def empty() -> dict:
    return {"format": FORMAT, "version": VERSION, "entries": []}


def load(path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"baseline {path} not found; record one with --update-baseline") from None
    except (OSError, ValueError) as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path} is not a hetcc bench baseline (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise BaselineError(f"{path} has baseline version {version!r}; this hetcc reads up to {VERSION}")
    rows = data.get("entries")
    needed = ("model", "variant", "batch", "machine_class", "ratio")
    if not isinstance(rows, list) or not all(isinstance(e, dict) and all(k in e for k in needed)
                                             for e in rows):
        raise BaselineError(f"{path}: \"entries\" must be a list of objects with {', '.join(needed)}")
    return data


def merge(baseline: dict, results: dict) -> dict:
    """The baseline with this run's entries added, replacing those with the same key."""
    new = entries(results)
    keys = {key(e) for e in new}
    kept = [e for e in baseline.get("entries", []) if key(e) not in keys]
    merged = sorted(kept + new, key=lambda e: tuple(str(k) for k in key(e)))
    return {**baseline, "format": FORMAT, "version": VERSION, "entries": merged}


def save(path, baseline: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(baseline, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def compare(results: dict, baseline: dict, max_regression: float) -> dict:
    """Each variant's ratio against its baseline entry. ``failed`` when any ratio grew by more
    than ``max_regression`` times (exactly that much still passes)."""
    if max_regression < 1:
        raise BaselineError(f"--max-regression must be >= 1 (a factor, e.g. 1.25), got {max_regression}")
    by_key = {key(e): e for e in baseline.get("entries", [])}
    classes: dict[tuple, set] = {}
    for e in baseline.get("entries", []):
        classes.setdefault(key(e)[:3], set()).add(e["machine_class"])
    rows = [_check(e, by_key.get(key(e)), classes.get(key(e)[:3], set()), max_regression)
            for e in entries(results)]
    machine = results["machine"]["machine_class"]
    notes = []
    if rows and all(r["status"] == OTHER_CLASS for r in rows):
        found = sorted({c for r in rows for c in r["other_classes"]})
        notes.append(f"no baseline for this machine class ({machine}); the baseline has "
                     f"{', '.join(found)}. Nothing was compared; record one with --update-baseline")
    return {"machine_class": machine, "max_regression": max_regression, "rows": rows, "notes": notes,
            "failed": any(r["status"] == REGRESSED for r in rows)}


def _check(now: dict, then: dict | None, other_classes: set, limit: float) -> dict:
    row = {"model": now["model"], "variant": now["variant"], "batch": now["batch"], "ratio": now["ratio"],
           "baseline_ratio": None, "change": None, "other_classes": sorted(other_classes)}
    where = f"{now['model']} {now['variant']} (batch {now['batch']})"
    if then is None:
        if other_classes:
            row.update(status=OTHER_CLASS, message=f"{where}: no baseline for this machine class "
                       f"({now['machine_class']}); the baseline has {', '.join(sorted(other_classes))}")
        else:
            row.update(status=MISSING, message=f"{where}: not in the baseline; record it with "
                       "--update-baseline")
        return row
    row["baseline_ratio"] = then["ratio"]
    differs = [f"{k} {then.get(k)} then, {now[k]} now" for k in ("reference", "targets")
               if k in then and then[k] != now[k]]
    if differs or not then["ratio"]:
        row.update(status=NOT_COMPARABLE, message=f"{where}: not comparable with the baseline "
                   f"({'; '.join(differs) or 'its ratio is 0'}); re-record it with --update-baseline")
        return row
    change = now["ratio"] / then["ratio"]
    row["change"] = change
    ratios = f"{now['ratio']:.3f}x the reference, baseline {then['ratio']:.3f}x"
    if change > limit:
        row.update(status=REGRESSED, message=f"{where}: REGRESSED {change:.2f}x slower relative to the "
                   f"reference ({ratios}; threshold {limit}x)")
    elif change < 1 / limit:
        row.update(status=FASTER, message=f"{where}: {1 / change:.2f}x faster than the baseline "
                   f"({ratios}); record it with --update-baseline to keep the gain")
    else:
        row.update(status=OK, message=f"{where}: ok, {change:.2f}x the baseline ({ratios})")
    return row


def verdict(gate: dict) -> str:
    regressed = [r for r in gate["rows"] if r["status"] == REGRESSED]
    if regressed:
        worst = max(regressed, key=lambda r: r["change"])
        return (f"regression gate FAILED: {len(regressed)} variant(s) slower than {gate['max_regression']}x "
                f"the baseline, worst {worst['variant']} {worst['change']:.2f}x")
    compared = sum(r["status"] in (OK, FASTER) for r in gate["rows"])
    return (f"regression gate passed: {compared} variant(s) within {gate['max_regression']}x of the "
            f"baseline ({gate['machine_class']})")
