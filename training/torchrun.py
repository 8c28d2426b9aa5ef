"""torchrun whose user errors end as one line: ``python -m training.torchrun [torchrun options] -m MODULE``.

It takes torchrun's options unchanged, e.g. ``python -m training.torchrun --standalone --nproc_per_node=2 -m
training.train_image base_synthetic``, and runs the same launcher. The difference is the end of a run that
stops on a user error. The training processes print the error once and all exit with code 2
(:func:`training.distributed.end_together`). Plain torchrun then raises its own ``ChildFailedError``: a
Python traceback and a table of failures under the line, and exit code 1. This launcher exits 2 after the
line and torchrun's own one-line log (``failed (exitcode: 2) local_rank: ...``). Any other failure is
reported as torchrun reports it.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

USER_ERROR_EXIT = 2  # config.errors.run_cli's exit code for a user error


def main(argv: list[str] | None = None) -> None:
    """Run torchrun on ``argv`` (default: the command line); a user error in the processes exits 2."""
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        _, first = err.get_first_failure()
        if first.exitcode != USER_ERROR_EXIT:
            raise  # not a user error: torchrun's own report, traceback and all
        # a rank that did not exit 2 by itself (e.g. stuck in a GPU collective and stopped by torchrun) is named
        for rank, failure in sorted(err.failures.items()):
            if failure.exitcode != USER_ERROR_EXIT:
                print(f"torchrun: rank {rank} ended with exit code {failure.exitcode} after that error",
                      file=sys.stderr)  # fmt: skip
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":
    main()
