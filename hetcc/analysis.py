"""hetcc.analyze: what each node of a model costs, without compiling it."""
from __future__ import annotations

from dataclasses import dataclass

from hetcc.capture import capture
from hetcc.passes.facts import NodeFacts, graph_facts


@dataclass(frozen=True)
class Analysis:
    nodes: tuple[NodeFacts, ...]
    """Per call_function node of the core-ATen graph, in graph order."""
    weight_bytes: int
    """Parameters, buffers and constants: the model's resident footprint."""

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


def analyze(model, example_inputs, dynamic_shapes=None) -> Analysis:
    """FLOPs, bytes moved, resident bytes and operational intensity per node and in total."""
    cap = capture(model, example_inputs, dynamic_shapes=dynamic_shapes)
    facts = graph_facts(cap.graph, cap.values, cap.weights)
    weight_bytes = sum(t.numel() * t.element_size() for t in cap.weights.values())
    return Analysis(tuple(facts.values()), weight_bytes)
