"""RMS norms written so that ONNX Runtime's own fusion finds them.

An RMS norm (T5, Llama, Mistral, Qwen2: ``x * rsqrt(mean(x²) + eps) * w``) leaves torch's dynamo
exporter as Pow, ReduceMean, Add, Sqrt, Reciprocal and two Muls. ONNX Runtime's
``SimplifiedLayerNormFusion`` matches the same norm written with a Div (``x / sqrt(...)``) and
fuses it into one SimplifiedLayerNormalization kernel; with Reciprocal and Mul it finds nothing,
and the norm runs as six kernels and their temporaries. ``rsqrt_as_div`` rewrites
``Mul(x, Reciprocal(Sqrt(v)))`` as ``Div(x, Sqrt(v))``: standard ONNX, the same value rounded once
instead of twice. On ONNX Runtime 1.32 every RMS norm of examples/hf_models.py's t5 and
llama_prefill was then fused, and hetcc's onnxruntime:cpu plans of them ran 1.055x and 1.016x
faster in fp32, 1.083x and 1.026x in int8 (benchmarks/bench_rms_norm.py; docs/backends.md)."""
from __future__ import annotations

from pathlib import Path


def rsqrt_as_div(path) -> int:
    """Rewrite each ``Mul(x, Reciprocal(Sqrt(v)))`` of the ONNX file at ``path`` (its top graph)
    as ``Div(x, Sqrt(v))``, in place; returns how many. A Reciprocal read by anything but that one
    Mul, or that is a graph output, stays; so does every node of a model with graphs inside nodes
    (If, Loop), which may read the Reciprocal by name. Weights kept apart stay where they are."""
    import onnx

    from hetcc.backends.onnx_tables import has_subgraphs

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if has_subgraphs(graph):
        return 0
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    dropped = []
    for node in graph.node:
        if node.op_type != "Reciprocal" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        root = producer.get(node.input[0])
        read = readers.get(node.output[0], [])
        if root is None or root.op_type != "Sqrt" or len(read) != 1 or read[0].op_type != "Mul" \
                or read[0].domain not in ("", "ai.onnx") or list(read[0].input).count(node.output[0]) != 1:
            continue
        mul = read[0]
        other = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
        mul.op_type = "Div"
        del mul.input[:]
        mul.input.extend([other, node.input[0]])
        dropped.append(node)
    if dropped:
        gone = {node.output[0] for node in dropped}
        kept = [n for n in graph.node if not (n.op_type == "Reciprocal" and n.output[0] in gone)]
        shapes = [v for v in graph.value_info if v.name not in gone]
        del graph.node[:]
        graph.node.extend(kept)
        del graph.value_info[:]
        graph.value_info.extend(shapes)
        onnx.save(model, str(path))
    return len(dropped)
