"""Starting or resuming a run: config, device, process group, run folder. Shared by image and video training.

The main process holds the run folder's lock from the start to the end of training (one run, one writer), logs
the run's start, end or failure in its ``log.txt`` and rebuilds ``<save_dir>/RUNS.txt`` (:mod:`training.run_index`)
at each of them.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch

from config.errors import ConfigError, UserError, user_message
from config.files import release_lock
from config.loader import (
    check_layer,
    dump,
    from_dict,
    load,
    parse_overrides,
    read_yaml,
    resolve_config_path,
    save,
    to_dict,
)
from config.schema import KINDS
from eval.evaluate import resolve_device
from models.runs import locate_run
from training import distributed as D
from training.checkpoint import LOCK_NAME, load_resume_state, lock_run, new_run_dir, seed_everything
from training.run_index import FAILED, FINISHED, RESUMED, START, log_event, update_index


@dataclass
class RunSetup:
    """What a training entry point needs before it builds data and models."""

    cfg: Any
    run: Path
    device: torch.device
    resume: (
        dict | None
    )  # the last.pth of a resumed run (None for a new run or one killed before its first save)
    lock: int | None = None  # the main process's hold on the run folder (see training.checkpoint.lock_run)


def _conflicts(overrides: dict, stored: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += _conflicts(value, stored.get(key, {}), f"{prefix}{key}.")
        elif key != "resume_training" and stored.get(key) != value:
            out.append(f"{prefix}{key}={value!r} (stored: {stored.get(key)!r})")
    return out


def _looks_like(config: dict, kind: str) -> bool:
    """Whether a stored config has a section only configs of ``kind`` have (``model_cfg``, ``video_model_cfg``)."""
    own = {f.name for f in dataclasses.fields(KINDS[kind])}
    others = set().union(*({f.name for f in dataclasses.fields(c)} for k, c in KINDS.items() if k != kind))
    return bool((own - others) & set(config))


def start_run(config: str, overrides: list[str], kind: str) -> RunSetup:
    """Load the config, join the process group, and create a new run folder or reopen the one to resume.

    The main process locks the run folder (a second process training it gets one line naming the first) and holds
    the lock until :func:`clean_up_failed_start` ends; it logs the start in ``log.txt`` and updates ``RUNS.txt``.
    """
    cfg = load(config, kind, overrides)
    device = D.init(resolve_device(cfg.training_cfg.device, "training_cfg.device").type)

    resume, lock = None, None
    if cfg.resume_training:
        run = locate_run(cfg.resume_training, cfg.save_dir)
        stored_path = run / "config.yaml"
        if not stored_path.is_file():
            raise ConfigError(f"{stored_path} not found: cannot resume a run without its stored config")
        stored_dict = read_yaml(stored_path)
        other = next((k for k in KINDS if k != kind and _looks_like(stored_dict, k)), None)
        if other is not None:
            raise ConfigError(
                f"{run.name} is {'an' if other == 'image' else 'a'} {other} run: resume it with "
                f"python -m training.train_{other} CONFIG resume_training={run.name}"
            )
        stored = from_dict(stored_dict, kind)
        bad = _conflicts(check_layer(parse_overrides(overrides), KINDS[kind]), to_dict(stored))
        if bad:
            raise ConfigError(
                f"resuming {run.name} uses its stored config; conflicting overrides: {', '.join(bad)}"
            )
        lock = lock_run(run) if D.is_main() else None  # before reading last.pth: no other writer from here on
        try:
            if D.is_main():
                print(
                    f"== resuming run {run}: using its stored config.yaml; the config file given is ignored =="
                )
            cfg = stored
            resume = load_resume_state(run)
            if resume is None and D.is_main():
                print(f"== {run.name} has no last.pth yet (killed before its first epoch ended): starting it "
                      "afresh ==")  # fmt: skip
            if D.is_main():
                log_event(run, RESUMED)
                update_index(run.parent)
        except BaseException:
            release_lock(lock)
            raise
    else:
        run = Path(D.broadcast_object(str(new_run_dir(cfg.save_dir)) if D.is_main() else None))
        if D.is_main():
            lock = _open_new_run(run, cfg, _shown(resolve_config_path(config, kind)))
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
    return RunSetup(cfg=cfg, run=run, device=device, resume=resume, lock=lock)


def _shown(path: Path) -> str:
    """A config file as the user would type it: relative to the working folder when inside it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _open_new_run(run: Path, cfg: Any, config_file: str) -> int:
    """Lock a just-created run folder and write its start (config, log, index); a failure removes it again."""
    lock = lock_run(run)
    try:
        save(cfg, run / "config.yaml")
        log_event(run, START, config_file)
        update_index(run.parent)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)  # nothing of it can be used: it never started
        release_lock(lock)
        raise
    return lock


# What a run folder holds before its first checkpoint: the files start_run and the start of training write.
_START_FILES = {"config.yaml", "image_config.yaml", "log.txt", "tensorboard", "metrics.json", LOCK_NAME}


@contextmanager
def clean_up_failed_start(setup: RunSetup) -> Iterator[None]:
    """The life of a started run: nothing is left half-made when training fails, and the run is released at the end.

    A new run that dies before its first checkpoint is removed (it holds only the files of its start), any other
    failing run gets the reason in its ``log.txt``, a finished one ``FINISHED``. At the end, whatever happened, the
    main process lets go of the run's lock and rebuilds ``RUNS.txt``."""
    main = D.is_main()
    try:
        yield
        if main:
            log_event(setup.run, FINISHED)
    except Exception as err:  # not KeyboardInterrupt: an interrupted run is left as a kill would leave it
        if main:
            run = setup.run
            fresh = setup.resume is None and not (run / "last.pth").exists()
            if fresh and {p.name for p in run.iterdir()} <= _START_FILES:
                shutil.rmtree(run, ignore_errors=True)
                print(f"== removed {run}: the run failed before its first checkpoint")
            else:
                # a rank that failed only because another one left on a user error logs that error
                reason = (user_message(err) if isinstance(err, UserError)
                          else D.user_error_elsewhere() or f"{type(err).__name__}: {err}")  # fmt: skip
                _best_effort(log_event, run, FAILED, reason)
        raise
    finally:
        release_lock(setup.lock)
        if main:
            _best_effort(update_index, setup.run.parent)


def _best_effort(fn: Callable[..., object], *args: Any) -> None:
    """Bookkeeping at the end of a run: a full disk or a read-only folder must not hide why the run ended."""
    try:
        fn(*args)
    except (OSError, UserError) as err:
        print(f"== could not {fn.__name__.replace('_', ' ')} in {args[0]}: {err}")
