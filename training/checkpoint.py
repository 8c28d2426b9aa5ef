"""Writing run folders and checkpoints: unique run names, atomic saves, RNG state, resume.

Run folder: ``<save_dir>/<YYYY-MM-DD_HH-MM-SS>[_<n>]/`` (never reused: a suffix is added when two runs start in
the same second). Checkpoints are written to a temporary file in the same folder and renamed over the old one,
so a run killed while saving still has its previous ``last.pth``. Reading lives in :mod:`models.runs`.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.runs import read_checkpoint


def new_run_dir(save_dir: str | Path) -> Path:
    """Create and return a fresh, unique run folder under ``save_dir``."""
    root = Path(save_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1000):
        run = root / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            run.mkdir()  # atomic: fails if another process took the name
            return run
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a unique run folder in {root}")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


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
