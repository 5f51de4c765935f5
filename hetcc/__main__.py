"""`python -m hetcc` runs the command line, like the `hetcc` console script."""
import sys

from hetcc.cli import main

if __name__ == "__main__":
    sys.exit(main())
