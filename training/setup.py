"""Starting or resuming a run: config, device, process group, run folder. Shared by image and video training."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch

from config.errors import ConfigError, UserError, user_message
from config.loader import check_layer, dump, from_dict, load, parse_overrides, read_yaml, save, to_dict
from config.schema import KINDS
from eval.evaluate import resolve_device
from models.runs import locate_run
from training import distributed as D
from training.checkpoint import load_resume_state, new_run_dir, seed_everything


@dataclass
class RunSetup:
    """What a training entry point needs before it builds data and models."""

    cfg: Any
    run: Path
    device: torch.device
    resume: (
        dict | None
    )  # the last.pth of a resumed run (None for a new run or one killed before its first save)


def _conflicts(overrides: dict, stored: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += _conflicts(value, stored.get(key, {}), f"{prefix}{key}.")
        elif key != "resume_training" and stored.get(key) != value:
            out.append(f"{prefix}{key}={value!r} (stored: {stored.get(key)!r})")
    return out


def start_run(config: str, overrides: list[str], kind: str) -> RunSetup:
    """Load the config, join the process group, and create a new run folder or reopen the one to resume."""
    cfg = load(config, kind, overrides)
    device = D.init(resolve_device(cfg.training_cfg.device, "training_cfg.device").type)

    resume = None
    if cfg.resume_training:
        run = locate_run(cfg.resume_training, cfg.save_dir)
        stored_path = run / "config.yaml"
        if not stored_path.is_file():
            raise ConfigError(f"{stored_path} not found: cannot resume a run without its stored config")
        stored = from_dict(read_yaml(stored_path), kind)
        bad = _conflicts(check_layer(parse_overrides(overrides), KINDS[kind]), to_dict(stored))
        if bad:
            raise ConfigError(
                f"resuming {run.name} uses its stored config; conflicting overrides: {', '.join(bad)}"
            )
        if D.is_main():
            print(f"== resuming run {run}: using its stored config.yaml; the config file given is ignored ==")
        cfg = stored
        resume = load_resume_state(run)
        if resume is None and D.is_main():
            print(
                f"== {run.name} has no last.pth yet (killed before its first epoch ended): starting it afresh =="
            )
    else:
        run = Path(D.broadcast_object(str(new_run_dir(cfg.save_dir)) if D.is_main() else None))
        if D.is_main():
            save(cfg, run / "config.yaml")
    if D.is_main():
        print(f"== run folder: {run}")
        print(dump(cfg), end="")
    seed_everything(cfg.training_cfg.seed + D.rank())
    # The loop forks data-loader workers every epoch and for every validation. OpenCV's thread pool does not survive
    # a fork: once the main process has run a parallel OpenCV call (DIS flow or ORB registration inside a model),
    # a forked worker hangs in its first one. Training keeps OpenCV single-threaded (torch has the cores anyway).
    cv2.setNumThreads(1)
    if cfg.training_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return RunSetup(cfg=cfg, run=run, device=device, resume=resume)


# What a run folder holds before its first checkpoint: the files start_run and the start of training write.
_START_FILES = {"config.yaml", "image_config.yaml", "log.txt", "tensorboard", "metrics.json"}


@contextmanager
def clean_up_failed_start(setup: RunSetup) -> Iterator[None]:
    """Nothing is left half-made when training fails: a new run that dies before its first checkpoint is removed
    (it holds only the files of its start), any other failing run gets the reason in its ``log.txt``."""
    try:
        yield
    except Exception as err:  # not KeyboardInterrupt: an interrupted run is left as a kill would leave it
        if D.is_main():
            run = setup.run
            fresh = setup.resume is None and not (run / "last.pth").exists()
            if fresh and {p.name for p in run.iterdir()} <= _START_FILES:
                shutil.rmtree(run, ignore_errors=True)
                print(f"== removed {run}: the run failed before its first checkpoint")
            else:
                reason = user_message(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
                with open(run / "log.txt", "a") as fh:
                    fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  FAILED: {reason}\n")
        raise
