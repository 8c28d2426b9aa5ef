"""The run log's events and ``<save_dir>/RUNS.txt``: which run folder holds what, and how it ended.

Run folders keep their date names (``resume_training`` and tests rely on them), so ``RUNS.txt`` says what each
one is, in aligned columns: run, kind (image/video), method (video: ``video_model_cfg.model_name``; image:
architecture on backbone), dataset, the config file it was started from, and its status. It is rebuilt from the
run folders alone (``config.yaml``, ``log.txt``, the ``.lock``) whenever a run starts, ends or fails, and written
atomically, so it is never stale for long and never half written; a hand edit is overwritten.

Status: ``running`` while a process holds the run's lock, else the last event in its ``log.txt``: ``finished``,
``failed`` (the reason is on that line), or ``stopped`` (killed or interrupted: resume it). A run folder from
before these events counts as finished when its ``metrics.json`` has every epoch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from config.errors import writing
from config.files import atomic_write_text, is_locked
from models.runs import architecture_of
from training.checkpoint import LOCK_NAME, SAVE_FIX

INDEX_NAME = "RUNS.txt"
LOG_NAME = "log.txt"
# Events written into log.txt (after the time stamp); the last of START/RESUMED/FINISHED/FAILED is the status.
START, RESUMED, FINISHED, FAILED = "START", "RESUMED", "FINISHED", "FAILED"
_HEADER = ("run", "kind", "method", "dataset", "config", "status")


def log_event(run: Path, event: str, detail: str = "") -> None:
    """Append ``<time>  <EVENT>[: detail]`` to the run's ``log.txt``."""
    with writing(run / LOG_NAME, fix=SAVE_FIX), open(run / LOG_NAME, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {event}{': ' + detail if detail else ''}\n")


def _events(run: Path) -> list[tuple[str, str]]:
    """(event, detail) of every event line of ``log.txt``, in order."""
    try:
        lines = (run / LOG_NAME).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, sep, rest = line.partition("  ")
        event, _, detail = rest.partition(": ")
        if sep and event in (START, RESUMED, FINISHED, FAILED):
            out.append((event, detail))
    return out


def _all_epochs_done(run: Path, cfg: dict) -> bool:
    """Older runs (no events): ``metrics.json`` holds as many epochs as the config runs."""
    t = cfg.get("training_cfg") or {}
    epochs = t.get("epochs_to_run") or t.get("early_stopping") or t.get("num_epochs")
    try:
        done = json.loads((run / "metrics.json").read_text()).get("epochs", [])
    except (OSError, ValueError, AttributeError):
        return False
    return bool(done) and isinstance(epochs, int) and done[-1].get("epoch") == epochs


def run_status(run: Path, cfg: dict | None = None) -> str:
    """``running``, ``finished``, ``failed`` or ``stopped`` (see the module docstring)."""
    events = [e for e, _ in _events(run)]
    last = events[-1] if events else None
    if last in (FINISHED, FAILED):  # checked first: the process writes it just before letting go of its lock
        return last.lower()
    if is_locked(run / LOCK_NAME):
        return "running"
    if last is None and cfg is not None and _all_epochs_done(run, cfg):
        return "finished"
    return "stopped"


def describe_run(run: Path) -> dict[str, str] | None:
    """One row of the index for a run folder, or None when ``run`` holds no readable ``config.yaml``."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict):
        return None
    kind = "video" if "video_model_cfg" in cfg else "image"
    started = [d for e, d in _events(run) if e == START]
    data = cfg.get("data_cfg") if isinstance(cfg.get("data_cfg"), dict) else {}
    return {"run": run.name, "kind": kind,
            "method": architecture_of(cfg, kind).removeprefix(f"{kind} model "),
            "dataset": str(data.get("dataset", "?")), "config": started[0] if started else "?",
            "status": run_status(run, cfg)}  # fmt: skip


def render_index(rows: list[dict[str, Any]]) -> str:
    """The text of ``RUNS.txt``: a comment line, then aligned columns."""
    table = [_HEADER, *[tuple(str(r[k]) for k in _HEADER) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    note = "# runs in this folder; rebuilt by tcseg training whenever a run starts, ends or fails (edits are lost)"
    return "\n".join([note, *lines]) + "\n"


def update_index(save_dir: Path) -> Path:
    """Rebuild ``<save_dir>/RUNS.txt`` from the run folders in it (sorted by name: by start time)."""
    save_dir = Path(save_dir)
    runs = sorted(p for p in save_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = [row for row in map(describe_run, runs) if row is not None]
    path = save_dir / INDEX_NAME
    atomic_write_text(path, render_index(rows), fix=SAVE_FIX)
    return path
