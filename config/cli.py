"""Command-line parsing for every tcseg CLI: a bad flag is one line and exit code 2, like any other user error.

argparse prints the whole usage block before its error, which buries the one line that matters (a long CLI's
usage is 20 lines). :class:`CliParser` prints ``<prog>: error: <message> (see <prog> --help)`` instead; ``--help``
still shows everything. :func:`at_least` is an argparse ``type`` for bounded integers, so a bad count is refused
while the arguments are read, before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr with exit code 2 (sub-parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer that is at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse names in its own messages
    return parse
