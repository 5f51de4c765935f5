"""`python -m hetcc.cli` runs the command line, as `python -m hetcc` and the `hetcc` script do."""
import sys

from hetcc.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
