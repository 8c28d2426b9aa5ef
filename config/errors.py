"""User-facing errors and the one place that turns them into a one-line message and exit code 2.

Every mistake a user can fix (a misspelt key, a missing dataset, a missing checkpoint) raises a subclass of
:class:`UserError`. Command-line entry points run through :func:`run_cli`, which prints ``<prefix>: <message>``
on stderr and exits with code 2, without a traceback. Programming errors keep their tracebacks.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable


class UserError(Exception):
    """An error the user can fix. Its message is one line that names the file or key and says what to do."""

    prefix = "error"


class ConfigError(UserError):
    """A bad config file, key, type or value."""

    prefix = "config error"


class DataError(UserError):
    """A missing or malformed dataset, image or label file."""

    prefix = "data error"


class CheckpointError(UserError):
    """A missing, unreadable or mismatched checkpoint or weights file."""

    prefix = "checkpoint error"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def user_message(err: UserError) -> str:
    """The one-line message of ``err``, also when a data-loader worker raised it.

    PyTorch re-raises a worker's exception with the same type but the worker's whole traceback as its message
    (``Caught DataError in DataLoader worker process 0. Original Traceback ...``); the user's line is its last.
    """
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        text = last.partition(f"{type(err).__name__}: ")[2] or last
    return text


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a CLI ``main``; a :class:`UserError` becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as err:
        print(f"{err.prefix}: {user_message(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
