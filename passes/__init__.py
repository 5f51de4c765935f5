"""The planning passes: per-node facts, placement units, capability, the placement problem and its
solvers (latency and pipelined throughput), segments, and why a segment is where it is."""
