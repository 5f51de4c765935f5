"""hetcc.analyze: what each node of a model costs, without compiling it, and a short summary of
where the cost is: per target under the cost model, and per submodule."""
from __future__ import annotations

from dataclasses import dataclass, field

from hetcc.capture import capture
from hetcc.module_paths import ROOT, node_paths
from hetcc.passes.facts import NodeFacts, graph_facts
from hetcc.target import Target

TARGETS = ("openvino:cpu", "onnxruntime:cpu", "torch:cpu")
"""What summary() predicts for by default: the CPU runtimes whose profiles were measured (a
prediction needs no runtime installed)."""


@dataclass(frozen=True)
class Analysis:
    nodes: tuple[NodeFacts, ...]
    """Per call_function node of the core-ATen graph, in graph order."""
    weight_bytes: int
    """Parameters, buffers and constants: the model's resident footprint."""
    modules: dict[str, str] = field(default_factory=dict, repr=False)
    """Node name -> the submodule it was called from (``model.encoder.layer.0.attention.self``;
    '' for the model's own forward)."""

    @property
    def flops(self) -> float:
        return sum(n.flops for n in self.nodes)

    @property
    def bytes_moved(self) -> int:
        return sum(n.bytes_moved for n in self.nodes)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0

    @property
    def resident_bytes(self) -> int:
        return sum(n.resident_bytes for n in self.nodes)

    def by_class(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            row = out.setdefault(n.op_class, {"nodes": 0, "flops": 0.0, "bytes": 0})
            row["nodes"] += 1
            row["flops"] += n.flops
            row["bytes"] += n.bytes_moved
        return out

    def seconds(self, targets=TARGETS, devices: dict | None = None,
                profiles: dict | None = None) -> dict[str, dict[str, float]]:
        """Target -> node name -> seconds the cost model predicts for that node there (no hand-
        overs, no call overhead; nothing is run). ``devices`` and ``profiles`` as for compile;
        a CPU target runs on this machine's calibrated or measured spec, and one in a lower
        precision (``onnxruntime:cpu@int8``) reads and computes in it, as compile prices it. A
        target whose device is unknown is left out."""
        from hetcc.backends.registry import arithmetic_here
        from hetcc.cost_model.profiles import calibrated, profile_for
        from hetcc.cost_model.roofline import node_seconds
        from hetcc.cost_model.target_devices import profile_name
        from hetcc.explain.plot import device_for

        calibration = calibrated()
        out = {}
        for target in [targets] if isinstance(targets, str) else targets:
            device, _ = device_for(target, devices)
            if device is None:
                continue
            profile = profile_for(profile_name(target), profiles, calibration)
            precision, arithmetic = Target.parse(str(target)).precision, arithmetic_here(target)
            out[str(target)] = {n.name: node_seconds(n, device, profile, precision=precision, arithmetic=arithmetic)
                                for n in self.nodes}
        return out

    def by_module(self, depth: int, seconds: dict[str, dict[str, float]] | None = None) -> dict[str, dict]:
        """Module path cut to its first ``depth`` parts -> nodes, flops, bytes, and seconds per
        target (from :meth:`seconds`), in graph order."""
        rows: dict[str, dict] = {}
        for n in self.nodes:
            path = ".".join(self.modules.get(n.name, "").split(".")[:depth])
            row = rows.setdefault(path, {"nodes": 0, "flops": 0.0, "bytes": 0,
                                         "seconds": dict.fromkeys(seconds or {}, 0.0)})
            row["nodes"] += 1
            row["flops"] += n.flops
            row["bytes"] += n.bytes_moved
            for target, per_node in (seconds or {}).items():
                row["seconds"][target] += per_node[n.name]
        return rows

    def summary(self, targets=TARGETS, depth: int | None = None, top: int = 10,
                devices: dict | None = None, profiles: dict | None = None) -> str:
        """A short text: totals, the predicted time on each target, and the ``top`` modules by
        predicted time on the first target at ``depth`` (default: the shallowest depth that
        splits the model into ``top`` modules or more, or the deepest there is)."""
        seconds = self.seconds(targets, devices, profiles)
        first = next(iter(seconds), None)
        lines = [self._totals()]
        classes = sorted(self.by_class().items(), key=lambda kv: -kv[1]["flops"])
        if self.flops:
            lines.append("FLOPs by op class: " + ", ".join(
                f"{c} {row['flops'] / self.flops:.0%}" for c, row in classes
                if row["flops"] / self.flops >= 0.01))
        if seconds:
            lines.append("predicted (cost model: nodes only, no hand-overs or call overhead): "
                         + ", ".join(f"{t} {sum(s.values()) * 1e3:.3f} ms" for t, s in seconds.items()))
        depth = depth or self._depth(top)
        rows = self.by_module(depth, seconds)
        key = (lambda kv: -kv[1]["seconds"][first]) if first else (lambda kv: -kv[1]["flops"])
        ranked = sorted(rows.items(), key=key)
        total = sum(seconds[first].values()) if first else self.flops
        by = f"predicted time on {first}" if first else "FLOPs"
        lines.append(f"by module (depth {depth}), top {min(top, len(ranked))} of {len(ranked)} by {by}:")
        head = ["module", "nodes", "MFLOP", "MB moved", *(f"{t} ms" for t in seconds), "share"]
        table = [head]
        for path, row in ranked[:top]:
            cost = row["seconds"][first] if first else row["flops"]
            # a module whose submodules have rows of their own: this row is its own nodes
            own = any(other.startswith(f"{path}.") or (not path and other) for other in rows)
            table.append([(path or ROOT) + (" (own nodes)" if own else ""), str(row["nodes"]),
                          f"{row['flops'] / 1e6:.2f}", f"{row['bytes'] / 1e6:.2f}",
                          *(f"{row['seconds'][t] * 1e3:.3f}" for t in seconds),
                          f"{cost / total:.0%}" if total else "-"])
        lines += _aligned(table)
        rest = ranked[top:]
        if rest:
            cost = sum(row["seconds"][first] if first else row["flops"] for _, row in rest)
            more = f"  {len(rest)} more module{'s' if len(rest) > 1 else ''}"
            lines.append(f"{more}: {cost / total:.0%}" if total else more)
        return "\n".join(lines)

    def _depth(self, top: int) -> int:
        """The shallowest depth with ``top`` modules or more, else the deepest."""
        deepest = max((len(p.split(".")) for p in self.modules.values() if p), default=1)
        for depth in range(1, deepest + 1):
            if len({".".join(p.split(".")[:depth]) for p in self.modules.values()}) >= top:
                return depth
        return deepest

    def _totals(self) -> str:
        return (f"{len(self.nodes)} nodes, {self.flops / 1e6:.2f} MFLOP, {self.bytes_moved / 1e6:.2f} MB "
                f"moved (OI {self.intensity:.1f} FLOP/B), {self.weight_bytes / 1e6:.2f} MB of weights")

    def __repr__(self) -> str:
        # the nodes alone print as some 17,000 characters for a small BERT: say what is there
        return f"<hetcc.Analysis {self._totals()}; .summary() for times per target and per module>"


def _aligned(table: list[list[str]]) -> list[str]:
    """Rows of a text table, indented: the first column left-aligned, the numbers right."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in table]


def analyze(model, example_inputs, dynamic_shapes=None) -> Analysis:
    """FLOPs, bytes moved, resident bytes and operational intensity per node and in total; the
    submodule of each node; ``.summary()`` adds predicted times per target and per module."""
    cap = capture(model, example_inputs, dynamic_shapes=dynamic_shapes)
    facts = graph_facts(cap.graph, cap.values, cap.weights)
    weight_bytes = sum(t.numel() * t.element_size() for t in cap.weights.values())
    return Analysis(tuple(facts.values()), weight_bytes, node_paths(cap.graph, facts))
