"""Run the command line: ``python -m castore``."""

from castore.cli import run

if __name__ == "__main__":
    run()
