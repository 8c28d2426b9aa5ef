"""``python -m data.prepare [options]`` / ``python -m data.prepare verify ROOT``: see ``--help``."""

from config.errors import run_cli
from data.prepare.cli import main

if __name__ == "__main__":
    run_cli(main)
