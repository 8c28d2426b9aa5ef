"""Writing run folders and checkpoints: unique run names, atomic saves, RNG state, resume.

Run folder: ``<save_dir>/<YYYY-MM-DD_HH-MM-SS>[_<n>]/`` (never reused: a suffix is added when two runs start in
the same second). Checkpoints are written to a temporary file in the same folder and renamed over the old one,
so a run killed while saving still has its previous ``last.pth``. The process training a run holds its ``.lock``
(:func:`lock_run`), so a second one cannot write into it. Reading lives in :mod:`models.runs`.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from config.errors import CheckpointError, OutputError, writing
from config.files import acquire_lock, atomic_path, lock_holder
from config.loader import to_dict
from models.runs import read_checkpoint, weights_for_init

# What a user can do when the run folder cannot be written (read-only save_dir, full disk).
SAVE_FIX = "set save_dir to another folder"
LOCK_NAME = ".lock"  # in a run folder: held by the process training the run


def new_run_dir(save_dir: str | Path) -> Path:
    """Create and return a fresh, unique run folder under ``save_dir`` (a read-only or full one: one line)."""
    root = Path(save_dir)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    if root.exists() and not root.is_dir():
        raise OutputError(f"save_dir {root} is a file, not a folder; {SAVE_FIX}")
    with writing(root / stamp, fix=SAVE_FIX):
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            run = root / (stamp if n == 0 else f"{stamp}_{n}")
            try:
                run.mkdir()  # atomic: fails if another process took the name
                return run
            except FileExistsError:
                continue
    raise RuntimeError(f"could not create a unique run folder in {root}")


def lock_run(run: Path) -> int:
    """Make this process the one writer of ``run`` until it ends (or :func:`~config.files.release_lock`): two
    processes training the same run would overwrite each other's checkpoints. Returns the lock's descriptor."""
    fd = acquire_lock(run / LOCK_NAME, fix=SAVE_FIX)
    if fd is None:
        raise OutputError(
            f"run {run.name} is in use by process {lock_holder(run / LOCK_NAME)}; wait for it or stop it"
        )
    return fd


class _WriteRecorder:
    """A file for ``torch.save`` that keeps the OS error of a failed write: torch replaces it with a RuntimeError
    ("unexpected pos", "PytorchStreamWriter failed writing file") that has lost the cause (e.g. a full disk)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.fh.flush()


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples): about the size of its checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a unique temporary file, fsync, then rename over ``path``; the temporary file is removed
    if anything fails, and a read-only folder or a full disk is one line with the space needed."""
    with atomic_path(path, need=_tensor_bytes(obj), fix=SAVE_FIX) as tmp, open(tmp, "wb") as fh:
        out = _WriteRecorder(fh)
        try:
            torch.save(obj, out)
        except RuntimeError as err:
            if out.error is not None:
                raise out.error from err
            raise
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(path: Path, model: nn.Module, cfg: Any, kind: str, **extra: Any) -> None:
    """A self-describing checkpoint, written atomically: weights, resolved config, kind, plus ``extra`` (epoch,
    step, optimizer, ...). Frozen helpers are not submodules, so they are never in ``model.state_dict()``."""
    atomic_save({"model": model.state_dict(), "config": to_dict(cfg), "kind": kind, **extra}, path)


# pretrained_checkpoint must fill at least this share of the model's tensors, or it is the wrong checkpoint
MIN_LOADED_SHARE = 0.5


def load_pretrained_checkpoint(model: nn.Module, name: str, save_dir: str, what: str = "this model") -> None:
    """``pretrained_checkpoint``: load weights only; classifier keys are dropped only if the class count differs.

    Refuses (one line naming both architectures) when the file fills less than ``MIN_LOADED_SHARE`` of the
    model's tensors: a checkpoint of another architecture would otherwise load almost nothing, silently.
    """
    state, source, held = weights_for_init(name, save_dir)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any("classifier" not in k for k in shape_mismatch):
        raise CheckpointError(
            f"{source}: weights do not fit this model (shapes differ for {shape_mismatch[:4]})"
        )
    state = {k: v for k, v in state.items() if k not in shape_mismatch}
    loaded = sum(1 for k in state if k in own)
    if loaded < MIN_LOADED_SHARE * len(own):
        raise CheckpointError(
            f"pretrained_checkpoint: {source} ({held}) fills {loaded} of the {len(own)} tensors of {what}; it is a "
            "checkpoint of another architecture: point pretrained_checkpoint at a run of the same model"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    print(f"== initialised from {source}: {loaded} of {len(own)} tensors; "
          f"missing {len(missing)} {list(missing)[:4]}, unexpected {len(unexpected)} {list(unexpected)[:4]}"
          + ("; classifier re-initialised (class count differs)" if shape_mismatch else ""))  # fmt: skip


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_resume_state(run: Path) -> dict[str, Any] | None:
    """The ``last.pth`` of a run to resume, or None when the run was killed before its first save."""
    path = run / "last.pth"
    return read_checkpoint(path) if path.is_file() else None
