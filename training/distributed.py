"""torchrun / DDP helpers. Without ``RANK``/``WORLD_SIZE`` in the environment everything is a single process.

Under ``torchrun --nproc_per_node=N``: NCCL on CUDA, gloo on the CPU. Rank 0 alone writes logs, TensorBoard,
checkpoints and pictures; metrics are summed over ranks once (see :mod:`eval.metrics`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


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
