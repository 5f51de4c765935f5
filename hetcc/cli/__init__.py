"""The `hetcc` command line: `main` parses and dispatches (app.py); one module per command that
has more than a few lines (bench, calibrate, conformance, plan), the inputs a command reads
(inputs.py) and the tables it prints (render.py)."""
from hetcc.cli.app import main

__all__ = ["main"]
