"""The regression gate: a bench run's ratios to its reference, against a committed baseline.

A baseline file (JSON, format in docs/benchmarks.md) holds one entry per (model, variant, batch,
machine class): ``ratio_fast``, the variant's p10 latency over the reference's p10, measured in the
same run. Ratios, not times, are compared, because on a shared machine the times drift together
while their ratio holds; the fast end (p10), because a busy neighbour only ever adds time. A ratio
that grew by more than ``max_regression`` times fails the gate; entries the baseline lacks, or has
only for other machine classes, are reported and do not fail. The baseline changes only when
asked (``--update-baseline``).

A busy machine can still bend one run (measured here: torch eager 30x slower for seconds at a
time while a neighbour ran, ONNX Runtime hardly at all), so :func:`run_gate` measures again when
the gate fails or the reference ran much slower than when the baseline was recorded, and judges
on the attempt whose reference ran fastest: the quietest one."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from hetcc.errors import HetccError

FORMAT = "hetcc-bench-baseline"
VERSION = 1
OK, REGRESSED, FASTER = "ok", "regressed", "faster"
MISSING, OTHER_CLASS, NOT_COMPARABLE = "missing", "no baseline for this machine class", "not comparable"
DISTURBED = 1.3
"""An attempt whose reference ran this many times slower than at the baseline is measured again."""
REQUIRED = ("model", "variant", "batch", "machine_class", "ratio_fast")


class BaselineError(HetccError):
    """A baseline file that cannot be read or is not a hetcc baseline."""


def key(entry: dict) -> tuple:
    return entry["model"], entry["variant"], entry["batch"], entry["machine_class"]


def entries(results: dict, digits: int | None = 4) -> list[dict]:
    """Baseline entries for a results document: one per measured variant and batch, the
    reference itself excepted (its ratio is 1 by definition). Ratios rounded to ``digits``
    for the file; the gate compares unrounded ones (digits=None)."""
    machine = results["machine"]
    out = []
    for row in results["results"]:
        if row["reference"] or row.get("ratio_fast") is None:
            continue
        out.append({
            "model": results["model"], "variant": row["variant"], "batch": row["batch"],
            "machine_class": machine["machine_class"], "ratio_fast": _round(row["ratio_fast"], digits),
            "ratio": _round(row.get("ratio"), digits), "reference": results["reference"],
            "targets": row["targets"], "median_ms": _round(row["latency"]["median_s"] * 1e3, digits),
            "reference_ms": _round(row["reference_median_s"] * 1e3, digits),
            "recorded": time.strftime("%Y-%m-%d"), "cpu": machine.get("cpu"),
            "versions": {k: v for k, v in results.get("versions", {}).items()
                         if k in ("hetcc", "torch", "onnxruntime", "openvino")},
        })
    return out


def _round(value, digits):
    return value if value is None or digits is None else round(value, digits)


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
    if not isinstance(rows, list) or not all(isinstance(e, dict) and all(k in e for k in REQUIRED)
                                             for e in rows):
        raise BaselineError(f"{path}: \"entries\" must be a list of objects with {', '.join(REQUIRED)}")
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
            for e in entries(results, digits=None)]
    machine = results["machine"]["machine_class"]
    notes = []
    if rows and all(r["status"] == OTHER_CLASS for r in rows):
        found = sorted({c for r in rows for c in r["other_classes"]})
        notes.append(f"no baseline for this machine class ({machine}); the baseline has "
                     f"{', '.join(found)}. Nothing was compared; record one with --update-baseline")
    slower = [r["reference_slower"] for r in rows if r.get("reference_slower")]
    return {"machine_class": machine, "max_regression": max_regression, "rows": rows, "notes": notes,
            "failed": any(r["status"] == REGRESSED for r in rows),
            "reference_slower": max(slower) if slower else None}


def _check(now: dict, then: dict | None, other_classes: set, limit: float) -> dict:
    row = {"model": now["model"], "variant": now["variant"], "batch": now["batch"],
           "ratio_fast": now["ratio_fast"], "baseline_ratio_fast": None, "change": None,
           "reference_slower": None, "other_classes": sorted(other_classes)}
    where = f"{now['model']} {now['variant']} (batch {now['batch']})"
    if then is None:
        if other_classes:
            row.update(status=OTHER_CLASS, message=f"{where}: no baseline for this machine class "
                       f"({now['machine_class']}); the baseline has {', '.join(sorted(other_classes))}")
        else:
            row.update(status=MISSING, message=f"{where}: not in the baseline; record it with "
                       "--update-baseline")
        return row
    row["baseline_ratio_fast"] = then["ratio_fast"]
    if then.get("reference_ms"):
        row["reference_slower"] = now["reference_ms"] / then["reference_ms"]
    differs = [f"{k} {then.get(k)} then, {now[k]} now" for k in ("reference", "targets")
               if k in then and then[k] != now[k]]
    if differs or not then["ratio_fast"]:
        row.update(status=NOT_COMPARABLE, message=f"{where}: not comparable with the baseline "
                   f"({'; '.join(differs) or 'its ratio is 0'}); re-record it with --update-baseline")
        return row
    change = now["ratio_fast"] / then["ratio_fast"]
    row["change"] = change
    ratios = f"{now['ratio_fast']:.3f}x the reference, baseline {then['ratio_fast']:.3f}x"
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
    if not compared:
        return f"regression gate: nothing compared (no matching baseline entries for {gate['machine_class']})"
    return (f"regression gate passed: {compared} variant(s) within {gate['max_regression']}x of the "
            f"baseline ({gate['machine_class']})")


def run_gate(measure, baseline: dict, max_regression: float, *, retries: int = 2, wait: float = 2.0,
             record: bool = False, say=None) -> dict:
    """Measure (``measure(seed=...)`` returns a results document) and compare with ``baseline``.
    When the gate fails, or the reference ran more than DISTURBED times slower than at the
    baseline, measure again, up to ``retries`` times, ``wait`` seconds apart; ``record`` (for
    updating the baseline) always measures 1 + ``retries`` times. The verdict and the returned
    results (with "gate" added) are those of the attempt whose reference ran fastest."""
    say = say or (lambda text: None)
    attempts = []
    for attempt in range(1 + retries):
        if attempt:
            time.sleep(wait)
        results = measure(seed=attempt)
        gate = compare(results, baseline, max_regression)
        attempts.append((results, gate))
        busy = (gate["reference_slower"] or 0) > DISTURBED
        if not record and not gate["failed"] and not busy:
            break
        if attempt < retries:
            say(f"attempt {attempt + 1}: " + ("the gate failed" if gate["failed"] else
                "the reference ran {:.1f}x slower than at the baseline".format(gate["reference_slower"])
                if busy else "recording") + "; measuring again")
    times = [_reference_seconds(r) for r, _ in attempts]
    best = min(range(len(attempts)), key=times.__getitem__)
    results, gate = attempts[best]
    gate["attempts"] = len(attempts)
    gate["reference_ms_per_attempt"] = [round(t * 1e3, 4) for t in times]
    if len(attempts) > 1:
        gate["notes"].append(
            f"measured {len(attempts)} times; judged on attempt {best + 1}, where the reference ran "
            f"fastest (reference ms per attempt: {', '.join(f'{t * 1e3:.3f}' for t in times)})")
    if (gate["reference_slower"] or 0) > DISTURBED:
        gate["notes"].append(
            f"the machine was busy: the reference ran {gate['reference_slower']:.1f}x slower than when "
            "the baseline was recorded, which can hide a slowdown (or this is another CPU of the same class)")
    results["gate"] = gate
    return results


def _reference_seconds(results: dict) -> float:
    """Geometric mean of the reference's median over the batch sizes (0 without a reference)."""
    times = [r["latency"]["median_s"] for r in results["results"] if r["reference"]]
    return math.exp(sum(math.log(t) for t in times) / len(times)) if times else 0.0
