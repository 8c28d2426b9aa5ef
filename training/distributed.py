"""torchrun / DDP helpers. Without ``RANK``/``WORLD_SIZE`` in the environment everything is a single process.

Under ``torchrun --nproc_per_node=N``: NCCL on CUDA, gloo on the CPU. Rank 0 alone writes logs, TensorBoard,
checkpoints and pictures; metrics are summed over ranks once (see :mod:`eval.metrics`). A user error on any rank
ends every rank with exit code 2 and is printed once (:func:`end_together`).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist

from config.errors import UserError, error_line, output_error, user_message

# How long a rank that ends on a user error waits for the others to end too (a rank stuck in a GPU collective,
# which leaving the process group does not interrupt, is then left to torchrun).
EXIT_WAIT_S = 30.0


def init(device_kind: str) -> torch.device:
    """Join the process group when launched by torchrun; return this process's device."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend)
    if device_kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (e.g. the run folder name)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset), the others after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts buffers at the *start* of each forward, so after the last training step every rank holds the
    statistics of its own last batch. Validation and the saved checkpoint must see one model: rank 0's.
    """
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _world_size_env() -> int:
    """The number of processes torchrun started (also before the process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _agent_store() -> tuple[dist.Store, str] | None:
    """torchrun's key-value store and this attempt's key prefix; None outside torchrun.

    The store is torchrun's own (``TORCHELASTIC_USE_AGENT_STORE``): it outlives every rank and exists before the
    process group does, so ranks can tell each other about a user error whenever it happens.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=EXIT_WAIT_S))  # fmt: skip
    except (KeyError, ValueError, RuntimeError):
        return None
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return store, f"tcseg/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def user_error_elsewhere() -> str | None:
    """The message of a user error another rank reported (see :func:`end_together`), or None."""
    found = _agent_store() if _world_size_env() > 1 else None
    if found is None:
        return None
    store, prefix = found
    try:
        return store.get(prefix + "message").decode() if store.check([prefix + "message"]) else None
    except RuntimeError:
        return None


@contextmanager
def end_together() -> Iterator[None]:
    """Under torchrun, a user error on any rank ends every rank with exit code 2, and its line is printed once.

    Wrap a training CLI's ``main`` in it (inside the run's clean-up, which has run by then). A user error (or an OS
    error of writing that :func:`config.errors.run_cli` would print as one) is reported through torchrun's store;
    the first rank to report prints run_cli's line. The rank then leaves the process group, so that a rank waiting
    for it in a collective fails at once (gloo) instead of hanging, and that failure is recognised as a consequence
    of the reported error. The group's connections close only once nothing holds the group: the DDP wrapper in the
    frames of the failed call does, so those frames are cleared first. The ranks then wait for each other and exit
    2 together, since torchrun stops the ranks still running once one has exited (they would end with -15). Any
    other error keeps its traceback.
    """
    if _world_size_env() <= 1:
        yield
        return
    try:
        yield
    except Exception as err:
        user = err if isinstance(err, UserError) else output_error(err) if isinstance(err, OSError) else None
        if user is None and user_error_elsewhere() is None:
            raise  # a genuine failure of this rank
        found = _agent_store()
        if user is not None and _report(found, user_message(user)):
            print(error_line(user), file=sys.stderr)
        traceback.clear_frames(err.__traceback__)  # the locals of the failed call: the DDP model among them
        del err, user
        gc.collect()
        _exit_together(found)


def _report(found: tuple[dist.Store, str] | None, message: str) -> bool:
    """Tell the other ranks about a user error; True for the first rank to report one (it prints it)."""
    if found is None:  # not torchrun's store: rank 0 prints (ranks usually fail alike)
        return int(os.environ.get("RANK", "0")) == 0
    store, prefix = found
    if not store.check([prefix + "message"]):  # the first one stays, for user_error_elsewhere
        store.set(prefix + "message", message)
    return store.add(prefix + "reported", 1) == 1


def _exit_together(found: tuple[dist.Store, str] | None) -> NoReturn:
    """Leave the process group (which unblocks the ranks waiting for this one), wait until every rank is here
    (at most ``EXIT_WAIT_S``), and exit 2 at once.

    ``os._exit`` right after the common release makes the ranks exit within a millisecond or so of each other,
    before torchrun's next look (every 0.1 s); SIGTERM is ignored meanwhile, for a rank it stops all the same.
    Whatever a normal exit would do is done by then: the run folder was cleaned up, the line printed.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass  # already broken by the rank that left first
    if found is not None:
        store, prefix = found
        try:
            if store.add(prefix + "exiting", 1) >= _world_size_env():
                store.set(prefix + "go", "1")  # the last rank to arrive releases everyone
            store.wait([prefix + "go"], timedelta(seconds=EXIT_WAIT_S))
        except RuntimeError:
            pass  # a rank stuck in a GPU collective never arrives: torchrun stops it once this one exits
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)
