"""`hetcc calibrate`: measure this machine's CPU and each CPU runtime, and write the profile that
`hetcc compile` (and `hetcc.compile` without `profiles=`) then uses. See docs/cost_model.md."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from hetcc.cli.inputs import CliError

EPILOG = ("examples:\n  hetcc calibrate\n  hetcc calibrate --targets onnxruntime:cpu,torch:cpu --seconds 1\n"
          "  hetcc calibrate -o profile.json --json | jq '.backends.torch.efficiency'\n"
          "  HETCC_PROFILE=profile.json hetcc compile ...\n\n"
          "Without -o the profile goes to the cache dir ($HETCC_CACHE_DIR or ~/.cache/hetcc), one file per\n"
          "CPU model, thread count and torch version; compile picks it up there. Run it on a quiet machine.")


def add_arguments(p) -> None:
    p.add_argument("--targets", help="comma-separated CPU targets (default: every usable CPU target here)")
    p.add_argument("--seconds", type=float, default=0.3, metavar="S",
                   help="timing per case and target (default 0.3; each target also compiles 8 cases)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the profile (default: the cache dir)")


def cmd_calibrate(args) -> int:
    from hetcc.backends.registry import resolve, usable_targets
    from hetcc.measure.calibrate import calibrate
    from hetcc.cost_model.profiles import profile_path, read_profile
    from hetcc.target import parse_targets

    if not args.seconds > 0:
        raise CliError(f"--seconds must be positive, got {args.seconds}")
    if args.targets:
        targets = parse_targets(args.targets)
        for target in targets:
            if target.device != "cpu":
                raise CliError(f"calibrate measures CPU targets only, got {target}")
            resolve(target)  # unknown or unusable: fails now, with the reason
        names = [str(t) for t in targets]
    else:
        names = [t for t in usable_targets() if t.endswith(":cpu")]
    path = Path(args.output) if args.output else profile_path()
    log = logging.getLogger("hetcc")

    def progress(stage, detail):
        print(f"hetcc: {stage}: {detail}", file=sys.stderr, flush=True)

    with contextlib.redirect_stdout(sys.stderr):  # runtimes' chatter must not reach --json
        data = calibrate(names, args.seconds, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)
    read_profile(path)  # what we write must read back
    log.info("wrote %s", path)
    if args.json:
        print(json.dumps({"profile": str(path), **data}, indent=1))
        return 0
    _print_table(data, path)
    return 0


def _print_table(data: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    # one row per efficiency key and one column per target: the keys (op class, its memory side,
    # single transcendental ops) outnumber the targets and would not fit as columns
    targets = list(data["timings"])
    profiles = [data["backends"][t.split(":")[0]] for t in targets]
    keys = sorted({k for b in profiles for k in b["efficiency"]} - {"default"})
    table = Table(title="efficiency (x this CPU's GEMM FLOP/s and copy bandwidth)")
    table.add_column("")
    for target in targets:
        table.add_column(target, justify="right")
    for key in keys:
        table.add_row(key, *(f"{b['efficiency'][key]:.2f}" if key in b["efficiency"] else "-" for b in profiles))
    table.add_row("call µs", *(f"{b['call_overhead'] * 1e6:.0f}" for b in profiles))
    table.add_row("per node µs", *(f"{b['per_node'] * 1e6:.1f}" for b in profiles))
    table.add_row("per view µs", *(f"{(b.get('per_view') or 0) * 1e6:.1f}" for b in profiles))
    table.add_row("+1 input µs", *(f"{data['timings'][t].get('handoff_per_value', 0) * 1e6:.1f}" for t in targets))
    console = Console(highlight=False, width=160 if not sys.stdout.isatty() else None)
    d = data["device"]
    console.print(f"cpu: {d['peak_flops']['fp32'] / 1e9:.0f} GFLOP/s fp32, "
                  f"{d['mem_bandwidth'] / 1e9:.1f} GB/s (best of 3)", markup=False)
    console.print(table)
    console.print("call µs is the runtime's own (hetcc's input checks are measured apart); CPU-to-CPU "
                  "hand-over is zero-copy.", markup=False)
    console.print(f"profile written to {path}; hetcc compile uses it from now on", markup=False)
