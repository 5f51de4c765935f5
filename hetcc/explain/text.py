"""Why each segment runs where it does, in words named after the model's structure: the modules a
segment runs, the runner-up target and why it lost, and what it hands over, values named by the
module that makes them and by the model's own output names.

Works on plain report dicts (Plan.to_dict, or a bundle's report.json), which may be from a hetcc
before these fields existed or edited by hand: what is missing or malformed is left out, never a
crash. Used by Plan.summary, `hetcc explain` and its HTML page.
"""
from __future__ import annotations

from hetcc.module_paths import ROOT

LISTED = 6
"""Modules or values named per line; the rest are counted."""


def why_lines(report: dict) -> list[str]:
    """Per segment: what it runs, its runner-up, what it hands over (one line each, indented)."""
    segments = segments_of(report)
    if "output_names" not in report and not any("modules" in s or "runner_up" in s for s in segments):
        return []  # a report from before these fields: the table says all it knows
    lines = []
    for s in segments:
        head = f"{s.get('name')} on {s.get('target')}"
        modules = strings(s.get("modules"))
        lines.append(f"{head} runs {listing(modules)}" if modules else head)
        runner = runner_up_text(s)
        if runner:
            lines.append(f"  runner-up {runner}")
        handed = hand_overs(report, s)
        if handed:
            lines.append(f"  hands over {listing(handed)}")
    return lines


def runner_up_text(seg: dict) -> str:
    target = seg.get("runner_up")
    if not isinstance(target, str):
        return ""
    why = seg.get("runner_up_why")
    return f"{target}: {why}" if isinstance(why, str) and why else target


def hand_overs(report: dict, seg: dict) -> list[str]:
    """What ``seg`` returns, each as 'name (module) -> where it goes': the segments that read it,
    and 'caller' for a model output (a segment returns nothing else)."""
    names, producers = tables(report)
    readers: dict[str, list[str]] = {}
    for other in segments_of(report):
        for value in strings(other.get("inputs")):
            readers.setdefault(value, []).append(str(other.get("name")))
    out = []
    for value in strings(seg.get("outputs")):
        goes = list(readers.get(value, []))
        if value in names or not goes:
            goes.append("caller")
        out.append(f"{value_label(value, names, producers)} -> {', '.join(goes)}")
    return out


def value_label(value: str, names: dict, producers: dict) -> str:
    """``last_hidden_state = getitem_6 (model.encoder.layer.0.output.LayerNorm)``: the model's
    name for an output first, then the graph's, then the module that makes it."""
    text = f"{names[value]} = {value}" if value in names else value
    if value in producers:
        text += f" ({producers[value] or ROOT})"
    return text


def listing(items: list[str], limit: int = LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def segments_of(report: dict) -> list[dict]:
    return [s for s in report.get("segments") or [] if isinstance(s, dict)]


def strings(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def tables(report: dict) -> tuple[dict, dict]:
    """(output names, producers) from the report, strings only."""
    def table(value) -> dict:
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}

    return table(report.get("output_names")), table(report.get("producers"))
