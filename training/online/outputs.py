"""What an online-distillation run writes, in ``<save>/<subfolder>/experiment_<k>/`` (k = 1, 2, ...; never reused):

- ``config.yaml``: the resolved config; ``arguments``: the resolved values under the reference's argument names;
- ``performance.log`` / ``final.log``: the student scored against ``groundtruth`` (online pass / final pass), and
  ``performance_<folder>.log`` / ``final_<folder>.log`` for each folder of ``also_score_against`` (``_gd``: the
  true labels). ``;``-separated, a header ``acc;miou;acc_bwt;miou_bwt;acc_fwt;miou_fwt;iou_0;...;iou_{C-1}`` then one
  row per window, in stream order; NaN is written ``nan`` (BWT/FWT windows outside the stream, classes absent from
  a window's labels and predictions). The per-class IoUs are the test window's. In ``final.log`` the BWT/FWT
  columns are ``nan`` (the reference repeats acc/miou there: one final model has no "before" or "after");
- ``windows.json``: per window its position, frames, BWT/FWT frames, the stream index of every training sample
  (replay included), the optimiser steps before its test, loss and times; and the teacher frames ``[video, index]``;
- ``summary.json``: the means, forgetting, pooled mIoU and throughput (:func:`summary`); ``miou.png``: the plot;
- ``tensorboard/``: per-window scalars; ``masks/{online,final}/<video>/<frame:06d>.npz`` (key ``seg``, uint8) only
  with ``dump_masks``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import OutputError, writing
from config.files import atomic_path, atomic_write_text, save_figure
from eval.metrics import ConfusionMatrix
from training.online.loop import WindowRecord

FIX = "set save to another folder"


def new_experiment(save: str | Path, subfolder: str | None) -> Path:
    """Create ``<save>/<subfolder>/experiment_<k>`` with k one more than the largest existing (never reused)."""
    root = Path(save) / subfolder if subfolder else Path(save)
    if root.exists() and not root.is_dir():
        raise OutputError(f"save: {root} is a file, not a folder; {FIX}")
    with writing(root, fix=FIX):
        root.mkdir(parents=True, exist_ok=True)
        taken = [
            int(p.name.split("_", 1)[1])
            for p in root.glob("experiment_*")
            if p.name.split("_", 1)[1].isdigit()
        ]
        k = max(taken, default=0) + 1
        while True:
            try:
                (root / f"experiment_{k}").mkdir()  # atomic: another run taking k at the same time moves on
                return root / f"experiment_{k}"
            except FileExistsError:
                k += 1


def log_names(folder: str, primary: bool) -> tuple[str, str]:
    """(online log, final log) file names of a scored folder: ``performance.log`` / ``final.log`` for the
    ``groundtruth`` folder, ``performance_<folder>.log`` / ``final_<folder>.log`` for the others."""
    suffix = "" if primary else f"_{folder}"
    return f"performance{suffix}.log", f"final{suffix}.log"


def header(num_classes: int) -> str:
    """The log header (column 4 is ``miou_bwt``; the reference mislabels it ``miou_fwt``)."""
    return ";".join(["acc", "miou", "acc_bwt", "miou_bwt", "acc_fwt", "miou_fwt"] + [f"iou_{c}" for c in range(num_classes)])  # fmt: skip


def _cell(x: float | None) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.6f}"


def row(now: dict[str, Any], bwt: dict[str, Any] | None, fwt: dict[str, Any] | None) -> str:
    """One log row from window summaries (``acc``, ``miou``, ``iou``); a missing side window is ``nan``."""
    cells = [now["acc"], now["miou"]]
    for side in (bwt, fwt):
        cells += [None, None] if side is None else [side["acc"], side["miou"]]
    return ";".join(_cell(x) for x in cells + list(now["iou"]))


class Logs:
    """The ``;``-separated logs of every scored folder, rewritten atomically after each window (a reader never
    sees half a row, and a killed run keeps every finished window)."""

    def __init__(self, exp: Path, folders: list[str], num_classes: int) -> None:
        self.exp, self.folders, self.header = exp, folders, header(num_classes)
        self.rows: dict[str, list[str]] = {}
        for i, name in enumerate(folders):
            for log in log_names(name, i == 0):
                self.rows[log] = []
                self._write(log)

    def _write(self, log: str) -> None:
        atomic_write_text(self.exp / log, "\n".join([self.header, *self.rows[log]]) + "\n", fix=FIX)

    def add(self, rec: WindowRecord, final: bool = False) -> None:
        for i, name in enumerate(self.folders):
            log = log_names(name, i == 0)[int(final)]
            s = rec.scores[name]
            self.rows[log].append(
                row(rec.final[name], None, None) if final else row(s["now"], s["bwt"], s["fwt"])
            )
            self._write(log)


def write_mask(exp: Path, frame: tuple[str, int], pred: np.ndarray, kind: str) -> None:
    """``masks/<kind>/<video>/<frame:06d>.npz`` (key ``seg``, uint8), written atomically."""
    path = exp / "masks" / kind / frame[0] / f"{frame[1]:06d}.npz"
    with writing(path, fix=FIX):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fix=FIX) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, seg=pred.astype(np.uint8))


def _mean(values: list[float | None]) -> float | None:
    """NaN-excluding mean (None when nothing is left), rounded for JSON."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return round(float(np.mean(kept)), 6) if kept else None


def _get(summary: dict[str, Any] | None, key: str) -> float | None:
    return None if summary is None else summary[key]


def folder_scores(records: list[WindowRecord], name: str, primary: bool) -> dict[str, Any]:
    """Means over the windows for one scored folder (NaN windows excluded): online, BWT, FWT and final-pass mIoU,
    forgetting = mean of (final-pass mIoU - online mIoU) per window (negative: the final student does worse on a
    window than when it first saw it), and the pooled mIoU of the summed test-window matrices."""
    now = [r.scores[name]["now"] for r in records]
    pooled = ConfusionMatrix(records[0].matrices[name].num_classes if records else 1)
    for r in records:
        pooled.mat += r.matrices[name].mat
    final = [_get(r.final.get(name), "miou") for r in records]
    diffs = [None if f is None or n is None else f - n["miou"] for f, n in zip(final, now, strict=True)]
    online_log, final_log = log_names(name, primary)
    return {
        "log": online_log, "final_log": final_log, "windows": len(records),
        "miou_mean": _mean([_get(s, "miou") for s in now]), "acc_mean": _mean([_get(s, "acc") for s in now]),
        "bwt_miou_mean": _mean([_get(r.scores[name]["bwt"], "miou") for r in records]),
        "fwt_miou_mean": _mean([_get(r.scores[name]["fwt"], "miou") for r in records]),
        "final_miou_mean": _mean(final), "forgetting": _mean(diffs),
        "pooled_miou": _mean([pooled.miou("nan_exclude")]),
    }  # fmt: skip


def by_look(records: list[WindowRecord], name: str, looks: list[str | None]) -> dict[str, Any] | None:
    """Mean online and final mIoU per look (domain) of the window's first test frame, when the stream has looks."""
    if not any(looks):
        return None
    out: dict[str, Any] = {}
    for look in sorted({x for x in looks if x}):
        rs = [r for r, x in zip(records, looks, strict=True) if x == look]
        out[look] = {"windows": len(rs), "miou_mean": _mean([_get(r.scores[name]["now"], "miou") for r in rs]),
                     "final_miou_mean": _mean([_get(r.final.get(name), "miou") for r in rs])}  # fmt: skip
    return out


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, NaN written as null, atomically."""
    atomic_write_text(path, json.dumps(_clean(data), indent=1) + "\n", fix=FIX)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def plot(path: Path, records: list[WindowRecord], folders: list[str], minutes: list[float],
         blocks: list[tuple[float, float, str]], title: str) -> None:  # fmt: skip
    """``miou.png``: per-window mIoU over the stream (online, BWT, FWT, final pass), one panel per scored folder,
    with the look blocks shaded. A window is drawn at the time of its first test frame (BWT/FWT too: they are the
    student's scores at that time on older / newer frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(folders), 1, figsize=(11, 3.2 * len(folders)), squeeze=False, sharex=True)
    shades = ("tab:gray", "tab:olive", "tab:cyan", "tab:pink")  # not the lines' colours
    colours: dict[str, str] = {}
    for look in dict.fromkeys(look for _, _, look in blocks):
        colours[look] = shades[len(colours) % len(shades)]
    for ax, name in zip(axes[:, 0], folders, strict=True):
        labelled: set[str] = set()
        for lo, hi, look in blocks:
            label = None if look in labelled else f"look: {look}"
            labelled.add(look)
            ax.axvspan(lo, hi, color=colours[look], alpha=0.12, lw=0, label=label)
        for which, style in (("now", "-o"), ("bwt", ":"), ("fwt", "--")):
            ys = [np.nan if r.scores[name][which] is None else r.scores[name][which]["miou"] for r in records]
            ax.plot(minutes, ys, style, ms=3, label={"now": "online", "bwt": "BWT", "fwt": "FWT"}[which])
        final = [_get(r.final.get(name), "miou") for r in records]
        ax.plot(
            minutes,
            [np.nan if f is None else f for f in final],
            "-",
            color="k",
            alpha=0.6,
            label="final pass",
        )
        ax.set_ylabel(f"mIoU vs {name}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8, ncol=6)
    axes[-1, 0].set_xlabel("stream time (min)")
    axes[0, 0].set_title(title, fontsize=10)
    save_figure(fig, path, fix=FIX)


__all__ = ["Logs", "by_look", "folder_scores", "header", "log_names", "new_experiment", "plot", "row",
           "write_json", "write_mask"]  # fmt: skip
