"""The `hetcc` command line: `main` parses and dispatches (main.py); one module per command that
has more than a few lines (bench, calibrate, conformance, plan), the inputs a command reads
(inputs.py) and the tables it prints (render.py)."""
from hetcc.cli.main import main

__all__ = ["main"]
