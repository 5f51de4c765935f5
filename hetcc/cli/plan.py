"""`hetcc plan`: place a model across devices that need not be present and print the predicted
latency, throughput and cost (hetcc.predict). Nothing is lowered; the output says it is a prediction."""
from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

from hetcc.cli.inputs import CliError, scope_target
from hetcc.model_files import load_model

EPILOG = ("examples:\n  hetcc plan examples/gpt.py:build --devices h100,mi300x,epyc\n"
          "  hetcc plan examples/big_decoder.py:build --devices h100,h100 --objective throughput --dtype bf16\n"
          "  hetcc plan examples/gpt.py:build --devices my_devices.yaml --objective cost --json\n\n"
          "--devices takes registry names (docs/devices.md lists them) and/or YAML/JSON devices files; a file\n"
          "given there adds all the devices it defines (docs/devices.md). --device-file only makes a\n"
          "file's devices known. A device named twice counts as two devices. --meta builds the model on\n"
          "PyTorch's meta device, so a model far larger than this machine's memory can be planned.")


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help="path/to/file.py:function, or a .pt2 exported program")
    p.add_argument("--devices", required=True,
                   help="comma-separated device names and/or devices files, e.g. h100,mi300x,epyc")
    p.add_argument("--device-file", action="append", default=[], metavar="FILE",
                   help="YAML/JSON devices file whose devices become known (repeatable)")
    p.add_argument("--objective", default="latency", choices=("latency", "throughput", "cost"),
                   help="what to minimise (default: latency)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="cast the model and its float inputs to this dtype first (default fp32)")
    p.add_argument("--memory-fraction", type=float, default=0.9, metavar="F",
                   help="share of each device's memory resident tensors may use (default 0.9)")
    p.add_argument("--resident-input", action="append", default=[], metavar="NAME",
                   help="a model input (or name prefix) that stays on the device, e.g. a KV cache")
    p.add_argument("--pin", action="append", type=scope_target, default=[], metavar="SCOPE=DEVICE",
                   help="run a submodule or node on one device (repeatable)")
    p.add_argument("--meta", action="store_true",
                   help="build the model on the meta device: no weights are allocated")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                   help="seconds per placement solve (the cost objective solves once per device subset); "
                        "past it the best placement found is kept, marked not proven optimal (default 60)")
    p.add_argument("--inputs", metavar="NPZ", help="example inputs (needed for a .pt2 without them)")


def split_devices(text: str) -> tuple[list[str], list[str]]:
    """--devices -> (device names, devices files): an item that names an existing file, or ends in
    .yaml/.yml/.json, is a file."""
    names, files = [], []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower().endswith((".yaml", ".yml", ".json")) or Path(item).is_file():
            if not Path(item).is_file():
                raise CliError(f"devices file {item} not found")
            files.append(item)
        else:
            names.append(item)
    return names, files


def cmd_plan(args) -> int:
    from hetcc.cost_model.registry import registry
    from hetcc.device_plan import predict

    names, files = split_devices(args.devices)
    files = list(args.device_file) + files
    reg = registry(files)  # a malformed file fails here, before the model is built
    for path in files[len(args.device_file):]:
        defined = reg.defined_in(Path(path))
        if not defined:
            raise CliError(f"devices file {path} defines no devices")
        names += defined
    if not names:
        raise CliError("--devices names no device")
    model, inputs, options = _load(args)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for our result
        prediction = predict(model, inputs, names, objective=args.objective, dtype=args.dtype,
                             dynamic_shapes=options.get("dynamic_shapes"), device_files=files,
                             memory_fraction=args.memory_fraction,
                             resident_inputs=args.resident_input, pins=dict(args.pin) or None,
                             time_limit=args.time_limit)
    if args.json:
        print(json.dumps(_finite(prediction.to_dict()), indent=1, default=str, allow_nan=False))
    else:
        _render(prediction)
    return 0


def _load(args):
    if not args.meta:
        return load_model(args.model, args.inputs)
    import torch

    with torch.device("meta"):
        return load_model(args.model, args.inputs)


def _finite(value):
    """JSON has no infinity: an unlimited capacity or an idle device's rate becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _render(p) -> None:
    from rich.table import Column, Table
    from rich.text import Text

    from hetcc.cli.app import _stdout_console
    from hetcc.device_plan import cut_label
    from hetcc.explain.text import listing

    console = _stdout_console()
    console.print(f"[bold]PREDICTION[/bold] from the cost model: nothing was lowered or run. "
                  f"Objective {p.objective}, {p.dtype}, devices {', '.join(p.devices)}.")
    seg = Table("segment", "device", "nodes", "GFLOP", "GB moved", "GB resident", "pred ms", "bound",
                Column("runs", overflow="fold"))
    for s in p.segments:
        seg.add_row(s.name, s.device, str(len(s.nodes)), f"{s.flops / 1e9:.3f}", f"{s.bytes_moved / 1e9:.3f}",
                    f"{s.resident_bytes / 1e9:.3f}", f"{s.seconds * 1e3:.4f}", s.bound,
                    Text(listing(list(s.modules))))
    console.print(seg)
    if p.cuts:
        cuts = Table(Column("cut (tensor, module making it)", overflow="fold"), "from", "to", "MB", "ms")
        for c in p.cuts:
            cuts.add_row(Text(cut_label(c)), c.source, c.destination, f"{c.nbytes / 1e6:.3f}",
                         f"{c.seconds * 1e3:.4f}")
        console.print(cuts)
    loads = Table("device", "busy ms/request", "GB resident", "GB usable", "$/hour")
    for d in p.loads:
        loads.add_row(d.device, f"{d.busy_seconds * 1e3:.4f}", f"{d.resident_bytes / 1e9:.3f}",
                      "unlimited" if math.isinf(d.capacity) else f"{d.capacity / 1e9:.1f}",
                      "-" if d.price_per_hour is None else f"{d.price_per_hour:.2f}")
    console.print(loads)
    cost = "n/a (a device used has no price)" if p.cost_per_million is None else f"${p.cost_per_million:,.2f}"
    console.print(f"predicted latency {p.latency_seconds * 1e3:.4f} ms; throughput {p.throughput:,.1f} "
                  f"requests/s with requests pipelined across {', '.join(p.devices_used)}; cost per "
                  f"million requests {cost}")
    status = ("proven optimal" if p.optimal else "not proven optimal" if math.isinf(p.gap)
              else f"within {p.gap:.2%} of the optimum (proven bound), not proven optimal")
    console.print(f"placement {status} under the model (solver {p.solver}, {p.solve_seconds:.1f}s "
                  f"including tracing)")
    for note in p.notes:
        console.print(f"note: {note}")
