"""Run the command line: ``python -m castore``."""

import sys

from castore.cli import main

if __name__ == "__main__":
    sys.exit(main())
