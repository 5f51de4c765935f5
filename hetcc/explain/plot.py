"""What bounds each segment of a plan, and a roofline picture of it (``hetcc explain --png``).

Works from a report (``Plan.to_dict()``, as report.json stores it): plain dicts, possibly from
someone else's bundle, so every number is checked and a missing one never crashes. The rules and
how to read the picture are in docs/explain.md.

matplotlib is imported only by ``write_png``/``png_bytes``, and through its object API with the Agg
canvas: no pyplot, no display, and no change to the caller's global matplotlib backend.
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

from hetcc.cost_model.devices import DeviceSpec
from hetcc.cost_model.profiles import profile_for
from hetcc.errors import HetccError, TargetError
from hetcc.target import Target

BOUNDS = ("compute", "bandwidth", "capacity", "call overhead")
CAPACITY_MARGIN = 0.10
"""A segment whose resident bytes reach (1 - margin) of its device's capacity is capacity-bound: the
capacity is a datasheet or 80%-of-RAM figure, and runtimes need workspace beyond the weights."""
OVERHEAD_SHARE = 0.5
"""A segment is call-overhead-bound when its backend's per-call overhead is more than this share of
its time."""
UNKNOWN = "unknown"
BOUND_COLORS = {"compute": "#d62728", "bandwidth": "#1f77b4", "capacity": "#9467bd",
                "call overhead": "#ff7f0e", UNKNOWN: "#7f7f7f"}
_LINE_COLORS = ("#2ca02c", "#8c564b", "#17becf", "#bcbd22", "#e377c2", "#444444")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
# The op class a segment's efficiency is taken from: the first of these among its ops (the classes
# that carry the FLOPs come first).
_CLASS_ORDER = ("attention", "matmul", "conv", "norm", "reduction", "elementwise", "data")


# ---- bounds ------------------------------------------------------------------------------------

def _num(value) -> float | None:
    """A finite number from the report, or None (a hand-edited report must not crash us)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def device_for(target, devices: dict | None = None) -> tuple[DeviceSpec | None, str]:
    """(spec, '') for the device a target runs on, or (None, why not).

    ``devices`` maps a target string ('onnxruntime:cpu') or a device name ('cpu', 'cuda:0') to a
    DeviceSpec, as ``compile(devices=...)`` does. Otherwise a 'cpu' target is this machine (the
    calibrated profile's spec, else ``this_cpu()``), a cuda/rocm target the GPU compile costs it on
    (``device_for_target``), and another device is looked up by name in the device registry."""
    devices = {str(k).lower(): v for k, v in (devices or {}).items()}
    try:
        t = Target.parse(str(target))
    except TargetError:
        return None, f"target {str(target)!r} is malformed, so its device is unknown"
    device = t.device if t.index is None else f"{t.device}:{t.index}"
    for key in (str(t), device, t.device):
        spec = devices.get(key)
        if isinstance(spec, DeviceSpec):
            return spec, ""
    if t.device == "cpu":  # the spec compile used: the calibrated profile's, else measured
        from hetcc.cost_model.devices import this_cpu
        from hetcc.cost_model.profiles import calibrated

        calibration = calibrated()
        return (calibration.device if calibration else this_cpu()), ""
    from hetcc.cost_model.registry import get_device
    from hetcc.cost_model.target_devices import device_for_target

    if t.index is None or t.index.isdigit() or t.index.startswith("gfx"):
        try:
            spec = device_for_target(t)  # the GPU behind tensorrt:cuda:0 and the like
        except (HetccError, KeyError, ValueError):
            spec = None
        if spec is not None:
            return spec, ""

    for name in (t.index, t.device):  # 'iree:rocm:mi300x' names its device by its index part
        if name is None:
            continue
        try:
            return get_device(name), ""
        except (HetccError, KeyError, ValueError):
            pass
    return None, (f"no spec for device {device!r} of {t}: pass devices={{{str(t)!r}: spec}} "
                  "(e.g. hetcc.cost_model.registry.get_device('h100'))")


def _op_class(ops) -> str:
    """The op class of a segment's ops (names like 'aten.addmm.default'), as passes/facts counts it."""
    from hetcc.passes import facts  # one classification of op names, shared with the cost model

    sets = {"attention": facts._ATTENTION, "matmul": facts._MATMUL, "conv": {"convolution"},
            "norm": facts._NORM, "reduction": facts._REDUCE, "data": facts._DATA}
    found = set()
    for op in (ops if isinstance(ops, dict) else {}):
        parts = str(op).split(".")
        base = parts[1] if len(parts) > 1 and parts[0] == "aten" else parts[0]
        if base in facts._VIEWS or base == "getitem" or parts[0] != "aten":
            continue
        found.add(next((c for c, names in sets.items() if base in names), "elementwise"))
    return next((c for c in _CLASS_ORDER if c in found), "default")


def segment_bounds(report: dict, devices: dict | None = None, profiles: dict | None = None) -> list[dict]:
    """One dict per segment of ``report``: where it sits on its device's roofline and what bounds it.

    Keys: name, target, device (spec name or None), device_note (why the device is unknown, else
    ''), device_source, device_peak_flops and device_bandwidth (the spec's own numbers), flops,
    bytes_moved, resident_bytes, seconds and time_source ('measured' or 'predicted'; seconds None
    when neither is a positive number), intensity (FLOP/byte; None when no bytes move),
    attained_flops (FLOP/s), op_class and efficiency (1.0 unless ``profiles`` is given),
    line_efficiency (the backend's GEMM efficiency: the target's line in the picture), peak_flops
    and bandwidth (the device's fp32 peak and bandwidth times that efficiency), ridge_point,
    roof_flops (what the roofline allows at this intensity) and roof_fraction, capacity and
    capacity_fraction, call_overhead and overhead_fraction, bound (one of BOUNDS, or 'unknown'
    where the device is unknown) and why (one sentence).

    Rules, first match wins: 'capacity' when resident bytes >= (1 - CAPACITY_MARGIN) x capacity;
    'call overhead' when the backend's call overhead > OVERHEAD_SHARE x the segment's time, or the
    segment does no work; 'compute' when intensity >= the ridge point; else 'bandwidth'.

    ``profiles`` ({backend: BackendProfile}, as for compile) scales the roofline by the backend's
    efficiency for the segment's op class; without it the roofline is the device's own, and the
    call overhead is the default profile's."""
    out = []
    for seg in report.get("segments") or []:
        if isinstance(seg, dict):
            out.append(_classify(seg, devices, profiles))
    return out


def _classify(seg: dict, devices, profiles) -> dict:
    target = str(seg.get("target"))
    flops = _num(seg.get("flops")) or 0.0
    moved = _num(seg.get("bytes_moved")) or 0.0
    resident = _num(seg.get("resident_bytes")) or 0.0
    # a lower precision reads its weights narrower: the segment moves right on the roofline
    fp32_intensity = flops / moved if moved else None
    narrowed = _num(seg.get("precision_bytes_moved"))
    moved = narrowed if narrowed and 0 < narrowed <= moved else moved
    measured, predicted = _num(seg.get("measured_seconds")), _num(seg.get("predicted_seconds"))
    if measured and measured > 0:
        seconds, source = measured, "measured"
    elif predicted and predicted > 0:
        seconds, source = predicted, "predicted"
    else:
        seconds, source = None, None
    try:
        backend = Target.parse(target).backend
    except TargetError:
        backend = target.split(":")[0]
    profile = profile_for(backend, profiles)
    op_class = _op_class(seg.get("ops")) if profiles else "default"
    eff = profile.eff(op_class) if profiles else 1.0
    spec, note = device_for(target, devices)
    row = {
        "name": str(seg.get("name")), "target": target, "device": spec.name if spec else None,
        "device_note": note, "device_source": spec.source if spec else None,
        "flops": flops, "bytes_moved": moved, "resident_bytes": resident,
        "seconds": seconds, "time_source": source, "intensity": flops / moved if moved else None,
        "fp32_intensity": fp32_intensity, "precision": seg.get("precision") if isinstance(seg.get("precision"), str) else None,
        "attained_flops": flops / seconds if seconds else None, "op_class": op_class,
        "efficiency": eff, "line_efficiency": profile.eff("matmul") if profiles else 1.0,
        "device_peak_flops": None, "device_bandwidth": None,
        "peak_flops": None, "bandwidth": None, "ridge_point": None,
        "roof_flops": None, "roof_fraction": None, "capacity": None, "capacity_fraction": None,
        "call_overhead": profile.call_overhead,
        "overhead_fraction": profile.call_overhead / seconds if seconds else None,
    }
    if spec is not None:
        try:
            row["device_peak_flops"], row["device_bandwidth"] = spec.flops_for("fp32"), spec.mem_bandwidth
            peak, bw = row["device_peak_flops"] * eff, row["device_bandwidth"] * eff
        except (KeyError, TypeError):
            spec, row["device_note"] = None, f"device {spec.name!r} has no fp32 peak FLOP/s"
    if spec is not None:
        roof = peak if row["intensity"] is None else min(peak, row["intensity"] * bw)
        row.update(peak_flops=peak, bandwidth=bw, ridge_point=peak / bw, roof_flops=roof,
                   capacity=spec.mem_capacity, capacity_fraction=resident / spec.mem_capacity)
        if row["attained_flops"] is not None and roof > 0:
            row["roof_fraction"] = row["attained_flops"] / roof
    row["bound"], row["why"] = _bound(row)
    if row["bound"] in ("compute", "bandwidth") and row["roof_fraction"] is not None \
            and row["roof_fraction"] < 0.1:
        row["why"] += (f"; it attains only {row['roof_fraction']:.1%} of that roof, so its time goes "
                       "elsewhere (per-node dispatch, a slow kernel, a noisy measurement)")
    return row


def _bound(r: dict) -> tuple[str, str]:
    ms = "" if r["seconds"] is None else f"{r['seconds'] * 1e3:.3g} ms {r['time_source']}"
    if r["capacity_fraction"] is not None and r["capacity_fraction"] >= 1 - CAPACITY_MARGIN:
        return "capacity", (f"{_bytes(r['resident_bytes'])} resident is {r['capacity_fraction']:.0%} "
                            f"of {r['device']}'s {_bytes(r['capacity'])}")
    if r["overhead_fraction"] is not None and r["overhead_fraction"] > OVERHEAD_SHARE:
        return "call overhead", (f"the backend's {r['call_overhead'] * 1e6:.0f} us call overhead is more "
                                 f"than {OVERHEAD_SHARE:.0%} of its {ms} time (overhead / time = "
                                 f"{r['overhead_fraction']:.2f})")
    if not r["flops"] and not r["bytes_moved"]:
        return "call overhead", "does no FLOPs and moves no bytes: only the call costs time"
    if r["ridge_point"] is None:
        return UNKNOWN, r["device_note"]
    if r["intensity"] is None or r["intensity"] >= r["ridge_point"]:
        oi = "no bytes moved" if r["intensity"] is None else f"OI {r['intensity']:.3g}"
        return "compute", f"{oi} >= ridge point {r['ridge_point']:.3g} FLOP/B of {r['device']}"
    return "bandwidth", (f"OI {r['intensity']:.3g} < ridge point {r['ridge_point']:.3g} FLOP/B of "
                         f"{r['device']}")


# ---- formatting ----------------------------------------------------------------------------------

def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _bytes(value: float) -> str:
    return _si(value, "B")


def title_text(report: dict, title: str | None = None) -> str:
    """One line: what was planned, for what objective, and the predicted total."""
    parts = [f"plan for {report.get('objective') or '?'}"]
    predicted = _num(report.get("predicted_seconds"))
    if predicted is not None:
        status = "optimal" if report.get("optimal") else "not proven optimal"
        parts.append(f"predicted {predicted * 1e3:.3f} ms ({status})")
    segs = [s for s in report.get("segments") or [] if isinstance(s, dict)]
    measured = [_num(s.get("measured_seconds")) for s in segs]
    if segs and all(m is not None for m in measured):
        parts.append(f"segments measured {sum(measured) * 1e3:.3f} ms in all")
    targets = sorted({str(s.get("target")) for s in segs})
    parts.append(f"{len(segs)} segment(s) on {', '.join(targets) or 'no target'}")
    return (f"{title}: " if title else "") + ", ".join(parts)


# ---- the picture ---------------------------------------------------------------------------------

def write_png(report: dict, path, devices: dict | None = None, profiles: dict | None = None,
              title: str | None = None) -> Path:
    """Write the roofline + capacity picture of ``report`` to ``path`` (PNG); returns the path."""
    path = Path(path)
    path.write_bytes(png_bytes(report, devices, profiles, title))
    return path


def png_bytes(report: dict, devices: dict | None = None, profiles: dict | None = None,
              title: str | None = None, bounds: list[dict] | None = None, dpi: int = 100) -> bytes:
    """The PNG as bytes; ``bounds`` (from segment_bounds) saves classifying twice."""
    if bounds is None:
        bounds = segment_bounds(report, devices, profiles)
    fig = build_figure(report, bounds, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise HetccError("drawing the plan needs matplotlib: pip install matplotlib") from None
    return Figure, FigureCanvasAgg


def build_figure(report: dict, bounds: list[dict], title: str | None = None):
    """A matplotlib Figure (Agg canvas): roofline on the left, capacity on the right."""
    Figure, FigureCanvasAgg = _matplotlib()
    n = len(bounds)
    fig = Figure(figsize=(15, max(7.0, 3.6 + 0.3 * n)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 2, width_ratios=(3, 2))
    roof, cap = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    targets = list(dict.fromkeys(b["target"] for b in bounds))
    markers = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(targets)}
    _roofline(roof, bounds, markers)
    _capacity(cap, bounds)
    fig.suptitle(_txt("\n".join(textwrap.wrap(title_text(report, title), 115)), 400), fontsize=13,
                 fontweight="bold")
    _legend(fig, roof, cap, bounds, markers)
    fig.draw_without_rendering()  # settle the layout, then freeze it so the labels can be placed
    fig.set_layout_engine("none")
    points = [b for b in bounds if b["intensity"] and b["attained_flops"]]
    _place_labels(roof, [(b["intensity"], b["attained_flops"]) for b in points],
                  [_txt(f"{b['name']} · {b['target']}") for b in points],
                  [(r["peak"] / r["bw"], r["peak"]) for r in _roofs(bounds)])
    return fig


def _txt(text, limit: int = 40) -> str:
    """Report text as matplotlib shows it literally: no mathtext ('$'), and not too long."""
    text = str(text)
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text.replace("$", r"\$")


def _decades(lo: float, hi: float) -> tuple[float, float]:
    return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))


def _roofs(bounds: list[dict]) -> list[dict]:
    """One roofline per distinct (device, GEMM efficiency), naming the targets that share it."""
    roofs: dict[tuple, dict] = {}
    for b in bounds:
        if b["device_peak_flops"] is None:
            continue
        eff = b["line_efficiency"]
        peak, bw = b["device_peak_flops"] * eff, b["device_bandwidth"] * eff
        key = (b["device"], round(peak, 3), round(bw, 3))
        entry = roofs.setdefault(key, {"device": b["device"], "peak": peak, "bw": bw, "eff": eff,
                                       "targets": []})
        if b["target"] not in entry["targets"]:
            entry["targets"].append(b["target"])
    return list(roofs.values())


def _roofline(ax, bounds: list[dict], markers: dict) -> None:
    from matplotlib.ticker import FuncFormatter

    points = [b for b in bounds if b["intensity"] and b["attained_flops"]]
    roofs = _roofs(bounds)
    xs = [b["intensity"] for b in points] + [r["peak"] / r["bw"] for r in roofs]
    ys = [b["attained_flops"] for b in points] + [r["peak"] for r in roofs]
    if not xs:
        xs, ys = [1.0], [1e9]
    x0, x1 = _decades(min(xs) / 3, max(xs) * 3)
    y0, y1 = _decades(min(ys) / 3, max(ys) * 3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    for i, r in enumerate(roofs):
        color, ridge = _LINE_COLORS[i % len(_LINE_COLORS)], r["peak"] / r["bw"]
        grid = [x0, ridge, x1] if x0 < ridge < x1 else [x0, x1]
        eff = "" if r["eff"] == 1.0 else f" x GEMM eff {r['eff']:.2f}"
        label = _txt(f"{r['device']}{eff}: {_si(r['peak'], 'FLOP/s')}, {_si(r['bw'], 'B/s')}, ridge "
                     f"{ridge:.3g} FLOP/B  [{', '.join(r['targets'])}]", 160)
        ax.plot(grid, [min(r["peak"], x * r["bw"]) for x in grid], color=color, lw=2.2, label=label,
                zorder=2, linestyle=("-", "--", "-.", ":")[i // len(_LINE_COLORS) % 4])
        ax.plot([ridge], [r["peak"]], marker="*", ms=15, color=color, mec="black", zorder=3)
        ax.axvline(ridge, color=color, lw=0.8, ls=":", zorder=1)
        ax.text(ridge, y0, f" ridge {ridge:.3g} ", rotation=90, ha="right", va="bottom", fontsize=8.5,
                color=color)
    for b in points:
        if b["fp32_intensity"] and b["fp32_intensity"] != b["intensity"]:
            # where the segment would sit with fp32 weights, and the shift its precision makes
            ax.annotate("", xy=(b["intensity"], b["attained_flops"]),
                        xytext=(b["fp32_intensity"], b["attained_flops"]), zorder=5,
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 1.2, "ls": "--"})
        ax.scatter(b["intensity"], b["attained_flops"], s=90, marker=markers[b["target"]],
                   color=BOUND_COLORS.get(b["bound"], BOUND_COLORS[UNKNOWN]), edgecolor="black",
                   linewidth=0.7, zorder=6,  # above the labels: a label never hides a point
                   alpha=1.0 if b["time_source"] == "measured" else 0.45)
    ax.set_xlabel("operational intensity (FLOP / byte moved)", fontsize=11)
    ax.set_ylabel("attained FLOP/s = FLOPs / time (measured, else predicted)", fontsize=11)
    ax.set_title("roofline: each segment at its intensity and attained speed", fontsize=12)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v, "FLOP/s")))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(labelsize=10)
    ax.grid(True, which="major", alpha=0.3)
    lines = []
    missing = [b["name"] for b in bounds if b not in points]
    if missing:
        lines.append(_txt("not plotted (no FLOPs, bytes or time): " + ", ".join(missing[:6])
                          + (f" +{len(missing) - 6}" if len(missing) > 6 else ""), 160))
    unknown = list(dict.fromkeys(b["target"] for b in bounds if b["device"] is None))
    if unknown:
        lines.append(_txt(f"no roofline for {', '.join(unknown)}: no spec for its device "
                          "(docs/explain.md)", 160))
    if lines:
        # top left: above the bandwidth slope, where no segment can be
        ax.text(0.01, 0.99, "\n".join(lines), transform=ax.transAxes, fontsize=9, color="0.3",
                va="top", zorder=7, bbox={"fc": "white", "ec": "none", "alpha": 0.8})


# Offsets (points) tried in turn for a label, nearest first; the far ones get a leader line.
_OFFSETS = [(9, 7), (9, -7), (-9, 7), (-9, -7), (0, 12), (0, -12)] + [
    (round(r * math.cos(a)), round(r * math.sin(a)))
    for r in (26, 42, 60, 80) for a in (math.radians(d) for d in range(15, 360, 30))]


def _place_labels(ax, xy: list[tuple], texts: list[str], obstacles: list[tuple] = ()) -> None:
    """Label each point where its text overlaps no other label, point, obstacle (data coordinates)
    or the axes' edge; where every spot overlaps something, the spot that overlaps least."""
    from matplotlib.text import Text

    if not xy:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in [*xy, *obstacles]:  # the points themselves
        px, py = ax.transData.transform((x, y))
        taken.append((px - 7, py - 7, px + 7, py + 7))
    order = sorted(range(len(xy)), key=lambda i: (xy[i][1], xy[i][0]), reverse=True)
    for i in order:
        best, best_cost = None, None
        for dx, dy in _OFFSETS:
            ann = ax.annotate(
                texts[i], xy[i], xytext=(dx, dy), textcoords="offset points", fontsize=9.5,
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top", zorder=5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                arrowprops={"arrowstyle": "-", "color": "0.45", "lw": 0.7, "shrinkA": 0, "shrinkB": 5}
                if abs(dx) + abs(dy) > 25 else None)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            rect = (box.x0 - 2, box.y0 - 2, box.x1 + 2, box.y1 + 2)
            cost = sum(_overlap(rect, t) for t in taken)
            cost += (box.width * box.height) * (not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and
                                                     frame.y0 <= box.y0 and box.y1 <= frame.y1))
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (ann, rect), cost
            else:
                ann.remove()
            if cost == 0:
                break
        taken.append(best[1])


def _overlap(a: tuple, b: tuple) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _capacity(ax, bounds: list[dict]) -> None:
    from matplotlib.ticker import FuncFormatter

    caps: dict[float, list[str]] = {}
    for b in bounds:
        if b["capacity"]:
            names = caps.setdefault(b["capacity"], [])
            if b["device"] not in names:
                names.append(b["device"])
    sizes = [b["resident_bytes"] for b in bounds if b["resident_bytes"] > 0] + list(caps)
    lo, hi = (min(sizes), max(sizes)) if sizes else (1e3, 1e9)
    log = hi / lo > 100
    x0 = _decades(lo / 3, hi)[0] if log else 0.0
    x1 = hi * (4 if log else 1.15)
    ys = list(range(len(bounds)))[::-1]
    widths = [max(b["resident_bytes"], x0 * 1.0001) if log else b["resident_bytes"] for b in bounds]
    ax.barh(ys, [w - x0 for w in widths], left=x0, height=0.6, edgecolor="black", linewidth=0.5,
            color=[BOUND_COLORS.get(b["bound"], BOUND_COLORS[UNKNOWN]) for b in bounds], zorder=3)
    for y, w, b in zip(ys, widths, bounds):
        span = (math.log(w / x0) / math.log(x1 / x0)) if log else w / x1
        inside = span > 0.7  # a long bar carries its number inside, clear of the capacity lines
        ax.text(w / 1.15 if log and inside else w * 0.98 if inside else w * 1.15 if log else w + x1 * 0.01,
                y, _bytes(b["resident_bytes"]), va="center", ha="right" if inside else "left",
                fontsize=9.5, zorder=4, color="white" if inside else "black",
                fontweight="bold" if inside else "normal")
    if log:
        ax.set_xscale("log")
    ax.set_xlim(x0, x1)
    ax.set_ylim(-0.8, len(bounds) + 1.0)
    for i, (capacity, names) in enumerate(sorted(caps.items())):
        color = "0.15"
        ax.axvspan(capacity * (1 - CAPACITY_MARGIN), capacity, color=BOUND_COLORS["capacity"], alpha=0.15,
                   zorder=1)
        ax.axvline(capacity, color=color, lw=1.8, zorder=2)
        label = _txt(f"{', '.join(names)}: {_bytes(capacity)} ")
        ax.text(capacity, len(bounds) - 0.15 + 0.6 * (i % 2), label, ha="right", va="center", fontsize=9.5,
                color=color, fontweight="bold")
    ax.set_yticks(ys, [_txt(f"{b['name']} · {b['target']}") for b in bounds], fontsize=9.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _bytes(v) if v > 0 else "0"))
    ax.tick_params(axis="x", labelsize=10)
    ax.set_xlabel("resident bytes (capacity footprint)" + (", log scale" if log else ""), fontsize=11)
    ax.set_title("capacity: each segment's footprint vs device memory", fontsize=12)
    ax.grid(True, axis="x", which="major", alpha=0.3)


def _legend(fig, roof, cap, bounds: list[dict], markers: dict) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = roof.get_legend_handles_labels()
    if handles:
        handles.append(Line2D([], [], marker="*", ms=13, ls="", color="0.6", mec="black"))
        labels.append("ridge point: peak FLOP/s / bandwidth (dotted line)")
        roof.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=9.5,
                    frameon=False,
                    title="rooflines (device: peak, bandwidth, ridge  [targets])", title_fontsize=10)
    used = [k for k in (*BOUNDS, UNKNOWN) if any(b["bound"] == k for b in bounds)]
    handles = [Patch(facecolor=BOUND_COLORS[k], edgecolor="black", label=k) for k in used]
    handles += [Line2D([], [], marker=m, ls="", color="white", mec="black", ms=9, label=_txt(t))
                for t, m in markers.items()]
    if any(b["time_source"] == "predicted" for b in bounds):
        handles.append(Line2D([], [], marker="o", ls="", color="0.5", alpha=0.45, mec="black", ms=9,
                              label="faded: time predicted, not measured"))
    handles.append(Patch(facecolor=BOUND_COLORS["capacity"], alpha=0.15,
                         label=f"within {CAPACITY_MARGIN:.0%} of capacity"))
    cap.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=9.5,
               frameon=False, title="colour: bound   shape: target", title_fontsize=10)
