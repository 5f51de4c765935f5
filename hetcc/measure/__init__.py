"""Measuring tools, built on the compiler and never used by it: side-by-side latency (bench.py),
what `hetcc bench` measures (bench_run.py) and its regression gate (bench_gate.py), predicted
against measured times (accuracy.py), backend conformance (conformance.py) and calibration of the
cost model (calibrate.py)."""
