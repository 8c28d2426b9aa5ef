"""What evaluation writes under ``<run>/results/<split>/`` and ``<run>/logits/<split>/`` (``ssp.md`` §12.2).

- ``pred/<clip>/<frame>.png``: uint8 prediction, value = class id + 1 (0 = ignore; reference-compatible);
- ``color/<clip>/<frame>.png`` and ``overlay/<clip>/<frame>.png``: palette rendering and frame blend;
- ``video/<clip>.gif``: the overlays as an animation at the dataset's frame rate, written frame by frame;
- ``metrics.json`` and ``per_class_iou.csv``;
- logits: ``<clip>/<frame>.npz`` (compressed) or ``.npy``, float16 by default, optionally downsampled, with a
  ``manifest.json`` that the distillation code checks before training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F

from data.catalog import DatasetInfo
from eval.vis.render import overlay, panel, write_png

RESULTS_README = """Prediction PNGs in pred/ hold class id + 1 (0 = ignore), the SSP reference convention.
color/ renders the class colours, overlay/ blends them over the frame, video/ animates the overlays.
metrics.json holds the scores with their protocol; per_class_iou.csv the per-class table.
"""


class PredictionWriter:
    """Writes per-frame prediction images and per-clip GIFs; frames of a clip must arrive in order."""

    def __init__(self, out_dir: Path, info: DatasetInfo, gif: bool = True) -> None:
        self.out, self.info, self.gif = out_dir, info, gif
        self._clip: str | None = None
        self._writer: Any = None
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "README.txt").write_text(RESULTS_README)

    def add(self, clip: str, frame: str, rgb: np.ndarray, pred: np.ndarray) -> None:
        """``rgb`` (H,W,3) uint8, ``pred`` (H,W) training ids."""
        write_png(self.out / "pred" / clip / f"{frame}.png", self.info.train_ids_to_raw(pred))
        write_png(self.out / "color" / clip / f"{frame}.png", self.info.colorize(pred))
        blend = overlay(rgb, pred, self.info)
        write_png(self.out / "overlay" / clip / f"{frame}.png", blend)
        if self.gif:
            if clip != self._clip:
                self._close_gif()
                (self.out / "video").mkdir(exist_ok=True)
                self._writer = imageio.get_writer(self.out / "video" / f"{clip}.gif", mode="I",
                                                  duration=1000.0 / self.info.fps, loop=0)  # fmt: skip
                self._clip = clip
            self._writer.append_data(blend)

    def _close_gif(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        self._close_gif()


class SideBySideWriter:
    """Per-clip GIF of panels ``frame | image-model prediction | video-model prediction | ground truth``.

    Frames of a clip must arrive in order; panels are scaled to at most ``max_height`` pixels high so that GIFs
    of 736x1280 videos stay viewable. Frames without a label show the frame greyed out in the last panel.
    """

    TITLES = ["frame", "image model", "video model", "ground truth"]

    def __init__(self, out_dir: Path, info: DatasetInfo, max_height: int = 240) -> None:
        self.out, self.info, self.max_height = out_dir, info, max_height
        self._clip: str | None = None
        self._writer: Any = None

    def add(self, clip: str, rgb: np.ndarray, image_pred: np.ndarray, video_pred: np.ndarray,
            label: np.ndarray | None) -> None:  # fmt: skip
        """``rgb`` (H,W,3) uint8; predictions and ``label`` (H,W) training ids (label may be None)."""
        if clip != self._clip:
            self.close()
            self.out.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(self.out / f"{clip}.gif", mode="I", duration=1000.0 / self.info.fps,
                                              loop=0)  # fmt: skip
            self._clip = clip
        gt = overlay(rgb, label, self.info) if label is not None else (rgb // 3 + 85).astype(np.uint8)
        images = [rgb, overlay(rgb, image_pred, self.info), overlay(rgb, video_pred, self.info), gt]
        h = rgb.shape[0]
        if h > self.max_height:
            size = (round(rgb.shape[1] * self.max_height / h), self.max_height)
            images = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images]
        self._writer.append_data(panel(images, self.TITLES))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class LogitsWriter:
    """Saves raw logits per frame (no softmax, no temperature) in a compact form, resumably.

    ``size``: (H, W) to resize to (bilinear, antialiased when shrinking) or None to keep the model's output size;
    ``stride``: extra integer downsampling by average pooling (2 -> a quarter of the pixels).
    """

    def __init__(self, out_dir: Path, manifest: dict, dtype: str = "float16", size: tuple[int, int] | None = None,
                 stride: int = 1, fmt: str = "npz") -> None:  # fmt: skip
        self.out, self.dtype, self.size, self.stride, self.fmt = out_dir, dtype, size, stride, fmt
        out_dir.mkdir(parents=True, exist_ok=True)
        self.manifest = {**manifest, "dtype": dtype, "resize": size, "stride": stride, "format": fmt,
                         "values": "raw logits, no softmax or temperature", "layout": "K x H x W"}  # fmt: skip
        self.frames = 0

    def path(self, clip: str, frame: str) -> Path:
        return self.out / clip / f"{frame}.{self.fmt}"

    def add(self, clip: str, frame: str, logits: torch.Tensor) -> None:
        """``logits`` [K,H,W] float."""
        x = logits[None].float()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        arr = x[0].cpu().numpy().astype(self.dtype)
        path = self.path(clip, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            if self.fmt == "npz":
                np.savez_compressed(fh, logits=arr)
            else:
                np.save(fh, arr)
        tmp.replace(path)
        self.frames += 1
        self.manifest["shape"] = list(arr.shape)

    def close(self) -> None:
        self.manifest["frames_written"] = self.frames
        (self.out / "manifest.json").write_text(json.dumps(self.manifest, indent=1))


def write_metrics(out_dir: Path, metrics: dict, per_class_rows: list[dict]) -> None:
    """``metrics.json`` and ``per_class_iou.csv`` (atomically: a reader never sees half a file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(out_dir / "metrics.json")
    with open(out_dir / "per_class_iou.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(per_class_rows[0]))
        w.writeheader()
        w.writerows(per_class_rows)


def format_table(title: str, miou: dict, class_names: tuple[str, ...] | list[str]) -> str:
    """A plain-text table of a ``ConfusionMatrix.summary`` dict (the numbers of metrics.json, as stored)."""

    def f(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    lines = [title, f"  {'class':<14} IoU %"]
    lines += [f"  {n:<14}{f(miou['per_class'][n])}" for n in class_names]
    lines.append(
        f"  {'mIoU':<14}{f(miou['miou'])}   (pixel acc {f(miou['pixel_acc'])}, mIoU zero-mode {f(miou['miou_zero'])})"
    )
    return "\n".join(lines)


def format_scores(metrics: dict) -> str:
    """TC and VC lines of a ``metrics.json`` dict."""
    lines = []
    for name, entry in (metrics.get("tc") or {}).items():
        v = entry["value"]
        card = entry["tc_protocol"]
        lines.append(f"  TC {name:<14}{'n/a' if v is None else f'{100 * v:6.2f}'}   "
                     f"(flow {card['flow']['model']}, {card['frames']['n_pairs']} pairs)")  # fmt: skip
    for n, entry in (metrics.get("vc") or {}).items():
        v = entry["value"]
        lines.append(
            f"  VC_{n:<13}{'n/a (' + str(entry.get('reason')) + ')' if v is None else f'{100 * v:6.2f}'}"
        )
    reg = metrics.get("registration")
    if reg:
        lines.append(f"  registration {reg['settings'].get('provider', '')}: {reg['stats']}")
    return "\n".join(lines)
