"""Backends: the base class every backend fills in, the registry that finds them, one module per
built-in backend, and what several of them share (ONNX export, ONNX Runtime sessions)."""
