"""A self-contained HTML page of a plan (``hetcc explain --html``): the plan table with each segment's
bound, the devices behind the rooflines, the notes, and the roofline/capacity picture inline.

One file with no external reference: inline CSS, the PNG as a base64 data URI, no scripts, no links.
Every text taken from the report is escaped, since a report may come from someone else's bundle.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from hetcc.errors import HetccError
from hetcc.explain.text import hand_overs, strings, why_lines
from hetcc.explain.plot import (
    BOUND_COLORS,
    CAPACITY_MARGIN,
    OVERHEAD_SHARE,
    UNKNOWN,
    _bytes,
    _num,
    _si,
    png_bytes,
    segment_bounds,
    title_text,
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.summary { color: #444; margin: 0 0 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f4f4f4; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.why, td.fell { max-width: 34em; font-size: 12px; color: #444; }
.bound { display: inline-block; padding: 1px 7px; border-radius: 9px; color: #fff; font-weight: 600;
         white-space: nowrap; }
figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption, .muted { color: #666; font-size: 12px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, scale: float, spec: str) -> str:
    value = _num(value)
    return "-" if value is None else format(value * scale, spec)


def _fell_back(fell_back) -> list[str]:
    """One line per reason, naming a few of its nodes (as the explain table does)."""
    by_reason: dict[str, list[str]] = {}
    for node, why in (fell_back.items() if isinstance(fell_back, dict) else ()):
        by_reason.setdefault(str(why), []).append(str(node))
    return [", ".join(nodes[:3]) + (f" +{len(nodes) - 3} more" if len(nodes) > 3 else "") + f": {why}"
            for why, nodes in by_reason.items()]


def write_html(report: dict, path, devices: dict | None = None, profiles: dict | None = None,
               title: str | None = None) -> Path:
    """Write the HTML report of ``report`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_html(report, devices, profiles, title), encoding="utf-8")
    return path


def render_html(report: dict, devices: dict | None = None, profiles: dict | None = None,
                title: str | None = None) -> str:
    """The HTML page as a string (see write_html)."""
    bounds = segment_bounds(report, devices, profiles)
    try:
        png = png_bytes(report, devices, profiles, title, bounds=bounds)
        figure = (f'<figure><img alt="roofline and capacity of each segment" '
                  f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                  "<figcaption>Left: each segment at its operational intensity and attained FLOP/s, "
                  "under its device's roofline. Right: each segment's resident bytes against each "
                  "device's memory. Colour: bound.</figcaption></figure>")
    except HetccError as exc:  # matplotlib missing: the tables are still worth having
        figure = f'<p class="muted">(no figure: {_e(exc)})</p>'
    segments = [s for s in report.get("segments") or [] if isinstance(s, dict)]
    heading = "hetcc explain" + (f": {title}" if title else "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(heading)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>{_e(heading)}</h1>", f'<p class="summary">{_e(title_text(report))}</p>',
        _facts(report), figure, "<h2>Segments</h2>", _table(segments, bounds), *_why(report, segments),
        "<h2>Devices</h2>", _devices(bounds), "<h2>How the bound is decided</h2>", _rules(),
    ]
    notes = [str(n) for n in report.get("notes") or []]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _facts(report: dict) -> str:
    items = []
    if report.get("targets"):
        # the plan's targets: those asked for, the lower-precision variants an accuracy budget
        # added (name@precision) and torch:cpu, which is always there to fall back on
        items.append(f"targets considered: {', '.join(map(str, report['targets']))}")
    if report.get("solver"):
        solve = _fmt(report.get("solve_seconds"), 1e3, ".0f")
        items.append(f"solver {report['solver']} ({solve} ms), {report.get('attempts', 1)} attempt(s)")
    lower = _num(report.get("lower_bound"))
    if lower is not None:
        items.append(f"lower bound {lower * 1e3:.3f} ms")
    return f'<p class="muted">{_e("; ".join(items))}</p>' if items else ""


def _badge(bound: str) -> str:
    color = BOUND_COLORS.get(bound, BOUND_COLORS[UNKNOWN])
    return f'<span class="bound" style="background:{color}">{_e(bound)}</span>'


def _table(segments: list[dict], bounds: list[dict]) -> str:
    head = ("segment", "target", "device", "nodes", "MFLOP", "MB moved", "OI", "CF MB", "pred ms",
            "meas ms", "max err", "GFLOP/s", "% of roof", "bound", "why this bound",
            "fell back here because")
    rows = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for s, b in zip(segments, bounds):
        nodes = s.get("nodes")
        cells = [
            ("", b["name"]), ("", b["target"]), ("", b["device"] or "unknown"),
            ("num", str(len(nodes)) if isinstance(nodes, list) and nodes else "-"),
            ("num", _fmt(s.get("flops"), 1e-6, ".2f")), ("num", _fmt(s.get("bytes_moved"), 1e-6, ".2f")),
            ("num", _fmt(b["intensity"], 1, ".1f")), ("num", _fmt(s.get("resident_bytes"), 1e-6, ".2f")),
            ("num", _fmt(s.get("predicted_seconds"), 1e3, ".3f")),
            ("num", _fmt(s.get("measured_seconds"), 1e3, ".3f")),
            ("num", _fmt(s.get("max_error"), 1, ".1e")),
            ("num", _fmt(b["attained_flops"], 1e-9, ".2f")), ("num", _fmt(b["roof_fraction"], 100, ".1f")),
        ]
        tds = "".join(f'<td class="{c}">{_e(v)}</td>' if c else f"<td>{_e(v)}</td>" for c, v in cells)
        tds += f"<td>{_badge(b['bound'])}</td>" + f'<td class="why">{_e(b["why"])}</td>'
        fell = "<br>".join(_e(line) for line in _fell_back(s.get("fell_back")))
        tds += f'<td class="fell">{fell}</td>'
        rows.append(f"<tr>{tds}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _why(report: dict, segments: list[dict]) -> list[str]:
    """Per segment: the modules it runs, the runner-up and why it lost, what it hands over."""
    if not why_lines(report):  # a report from before these fields
        return []
    head = ("segment", "target", "runs", "runner-up", "its pred ms", "why the runner-up lost", "hands over")
    rows = ["<h2>Why each segment runs where it does</h2>", "<table>",
            "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for s in segments:
        runner = s.get("runner_up")
        cells = [_e(s.get("name")), _e(s.get("target")), "<br>".join(map(_e, strings(s.get("modules")))),
                 _e(runner) if isinstance(runner, str) else "-",
                 _fmt(s.get("runner_up_seconds"), 1e3, ".3f"), _e(s.get("runner_up_why") or ""),
                 "<br>".join(map(_e, hand_overs(report, s)))]
        classes = ("", "", "", "", ' class="num"', ' class="why"', ' class="why"')
        rows.append("<tr>" + "".join(f"<td{c}>{v}</td>" for c, v in zip(classes, cells)) + "</tr>")
    rows.append("</table>")
    return rows


def _devices(bounds: list[dict]) -> str:
    seen, rows = set(), []
    for b in bounds:
        key = (b["target"], b["device"])
        if key in seen:
            continue
        seen.add(key)
        if b["device"] is None:
            rows.append(f"<tr><td>{_e(b['target'])}</td><td colspan=\"5\">{_e(b['device_note'])}</td></tr>")
            continue
        cells = [b["target"], b["device"], _si(b["device_peak_flops"], "FLOP/s"),
                 _si(b["device_bandwidth"], "B/s"), f"{b['device_peak_flops'] / b['device_bandwidth']:.3g}",
                 _bytes(b["capacity"]), b.get("device_source") or ""]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    head = ("target", "device", "peak fp32", "bandwidth", "ridge FLOP/B", "capacity", "source")
    return "\n".join(["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>", *rows,
                      "</table>"])


def _rules() -> str:
    rules = [
        (f"<b>capacity</b>: the segment's resident bytes (CF) reach {1 - CAPACITY_MARGIN:.0%} of its "
         "device's memory capacity (the capacity figures are datasheet or 80%-of-RAM numbers, and a "
         "runtime needs workspace beyond the weights)"),
        (f"<b>call overhead</b>: the backend's fixed cost per call is more than {OVERHEAD_SHARE:.0%} "
         "of the segment's time (measured, else predicted), or the segment does no work"),
        ("<b>compute</b>: operational intensity (FLOPs / bytes moved) at or above the device's ridge "
         "point (peak FLOP/s / bandwidth)"),
        "<b>bandwidth</b>: operational intensity below the ridge point",
    ]
    return ('<ol>' + "".join(f"<li>{r}</li>" for r in rules) + "</ol>"
            '<p class="muted">The first rule that holds wins. Rooflines are fp32. See docs/explain.md.</p>')
