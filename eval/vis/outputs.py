"""What evaluation writes under ``<run>/results/<split>/`` and ``<run>/logits/<split>/`` (``ssp.md`` §12.2).

A results folder is written as a whole (:class:`ResultsFolder`): into a hidden sibling, renamed into place when
complete, so a new evaluation never leaves files of an older one beside its own (an older ``per_clip_tc.csv``
beside a new ``metrics.json``) and a failed one leaves the previous results as they were. Its ``README.txt``
lists every file and folder in it. Logits folders are not results: they are written in place, resumably.

- ``pred/<clip>/<frame>.png``: uint8 prediction, value = class id + 1 (0 = ignore; reference-compatible);
- ``color/<clip>/<frame>.png`` and ``overlay/<clip>/<frame>.png``: palette rendering and frame blend;
- ``video/<clip>.gif``: the overlays as an animation at the dataset's frame rate, written when the clip ends;
- ``metrics.json`` and ``per_class_iou.csv``;
- logits (``eval.vis.image --save-logits``, in ``<run>/logits/<split>/`` or ``--logits-out``): ``<clip>/<frame>.npy``
  (memory-mappable) or ``.npz`` (compressed), float16 by default, resized to the student's size by default, with a
  ``manifest.json`` that the distillation code checks before training (:class:`LogitsWriter`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import time
import weakref
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F

from config.errors import ConfigError, writing
from config.files import atomic_path, atomic_write_text, check_writable
from data.catalog import DatasetInfo
from data.logits import (
    LOGIT_DTYPES,
    LOGIT_FORMATS,
    MANIFEST_NAME,
    RESIZE_METHOD,
    FrameRule,
    encode,
    frame_bytes,
)
from eval.vis.render import overlay, panel, write_png

# What the user can do when a run folder cannot be written (results, benchmark figures).
RUN_FOLDER_FIX = "copy the run to another disk and pass its folder as --save-dir"

# Every entry a results folder can hold, with the line README.txt gives it.
RESULTS_ENTRIES = {
    "README.txt": "this list",
    "metrics.json": "the scores (mIoU, per-class IoU, TC with its protocol card, VC_n) and how they were computed",
    "per_class_iou.csv": "IoU of each class (the per-class table of metrics.json)",
    "per_clip_tc.csv": "TC of each clip, for every TC protocol",
    "tc_over_time.png": "plot of the TC of each pair of consecutive frames over time, per clip",
    "pred": "<clip>/<frame>.png predictions: value = class id + 1, 0 = ignore (the SSP reference convention)",
    "color": "<clip>/<frame>.png predictions in the class colours",
    "overlay": "<clip>/<frame>.png class colours blended over the frame",
    "video": "<clip>.gif the overlays of each clip, animated at the dataset's frame rate",
    "side_by_side": "<clip>.gif panels: frame | image-network prediction | video-model prediction | ground truth",
}


class ResultsFolder:
    """``<run>/results/<split>/``, written as a whole: writers fill :attr:`path`, a hidden sibling, and
    :meth:`commit` writes ``README.txt`` and renames it into place; the old folder stays until then.

    Creating it checks that the run folder can be written, before any frame is computed. A folder never
    committed (the evaluation failed) is deleted when this object goes (or the process ends), like a
    :class:`tempfile.TemporaryDirectory`; an evaluation that wrote nothing (``--save-logits`` alone) keeps the old
    results.
    """

    def __init__(self, final: Path, title: str) -> None:
        self.final, self.title = Path(final), title
        self.path = self.final.parent / f".{self.final.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
        check_writable(self.final.parent, fix=RUN_FOLDER_FIX)
        with writing(self.path, fix=RUN_FOLDER_FIX):
            self.path.mkdir()
        self._discard = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def commit(self) -> bool:
        """Put the new results in place of the old ones, with a ``README.txt`` headed by the title (what was
        evaluated). Returns False (old results kept, nothing changed) when nothing was written."""
        if not any(self.path.iterdir()):
            self._discard()
            return False
        atomic_write_text(self.path / "README.txt", results_readme(self.path, self.title), fix=RUN_FOLDER_FIX)
        old = self.final.with_name(f".{self.final.name}.{os.getpid()}.old")
        with writing(self.final, fix=RUN_FOLDER_FIX):
            if self.final.exists():
                os.replace(self.final, old)
            try:
                os.replace(self.path, self.final)
            except BaseException:
                if old.exists():
                    os.replace(old, self.final)  # the previous results stay where they were
                raise
        self._discard.detach()  # (on a failure above, the new folder is discarded as for a failed evaluation)
        shutil.rmtree(old, ignore_errors=True)
        return True


def results_readme(folder: Path, title: str) -> str:
    """The ``README.txt`` of a results folder: ``title``, then one line per file or folder in it."""
    names = sorted({p.name for p in folder.iterdir()} | {"README.txt"})
    width = max(len(n) + 1 for n in names)
    lines = [title, f"written {time.strftime('%Y-%m-%d %H:%M:%S')}; the next evaluation of this split replaces "
             "the whole folder", ""]  # fmt: skip
    for name in names:
        shown = name + ("/" if (folder / name).is_dir() else "")
        lines.append(f"{shown:<{width}}  {RESULTS_ENTRIES.get(name, 'written by this evaluation')}")
    return "\n".join(lines) + "\n"


class ClipAnimation:
    """``<folder>/<clip>.gif``, one per clip: the frames of a clip are gathered and written when it ends.

    imageio's GIF writer holds every frame until it closes anyway; gathering them here means a failed evaluation
    leaves no open writer behind (one that would write into a deleted folder when the process exits)."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.folder, self.fps = folder, fps
        self._clip: str | None = None
        self._frames: list[np.ndarray] = []

    def add(self, clip: str, image: np.ndarray) -> None:
        """Append ``image`` (H,W,3) uint8 to the animation of ``clip`` (a new clip writes the previous one)."""
        if clip != self._clip:
            self.close()
            self._clip = clip
        self._frames.append(image)

    def close(self) -> None:
        """Write the animation of the current clip."""
        frames, self._frames = self._frames, []
        if frames:
            path = self.folder / f"{self._clip}.gif"
            with writing(path, fix=RUN_FOLDER_FIX):
                self.folder.mkdir(parents=True, exist_ok=True)
                imageio.mimwrite(path, frames, duration=1000.0 / self.fps, loop=0)


class PredictionWriter:
    """Writes per-frame prediction images and per-clip GIFs; frames of a clip must arrive in order."""

    def __init__(self, out_dir: Path, info: DatasetInfo, gif: bool = True) -> None:
        self.out, self.info = out_dir, info
        self._gif = ClipAnimation(out_dir / "video", info.fps) if gif else None

    def add(self, clip: str, frame: str, rgb: np.ndarray, pred: np.ndarray) -> None:
        """``rgb`` (H,W,3) uint8, ``pred`` (H,W) training ids."""
        write_png(self.out / "pred" / clip / f"{frame}.png", self.info.train_ids_to_raw(pred))
        write_png(self.out / "color" / clip / f"{frame}.png", self.info.colorize(pred))
        blend = overlay(rgb, pred, self.info)
        write_png(self.out / "overlay" / clip / f"{frame}.png", blend)
        if self._gif is not None:
            self._gif.add(clip, blend)

    def close(self) -> None:
        if self._gif is not None:
            self._gif.close()


class SideBySideWriter:
    """Per-clip GIF of panels ``frame | image-network prediction | video-model prediction | ground truth``.

    Frames of a clip must arrive in order; panels are scaled to at most ``max_height`` pixels high so that GIFs
    of 736x1280 videos stay viewable. Frames without a label show the frame greyed out in the last panel.
    ``image_title`` says whose image network the second panel shows (see ``eval.vis.video.image_panel_title``).
    """

    def __init__(
        self, out_dir: Path, info: DatasetInfo, max_height: int = 240, image_title: str = "image model"
    ) -> None:
        self.out, self.info, self.max_height = out_dir, info, max_height
        self.titles = ["frame", image_title, "video model", "ground truth"]
        self._gif = ClipAnimation(out_dir, info.fps)

    def add(self, clip: str, rgb: np.ndarray, image_pred: np.ndarray, video_pred: np.ndarray,
            label: np.ndarray | None) -> None:  # fmt: skip
        """``rgb`` (H,W,3) uint8; predictions and ``label`` (H,W) training ids (label may be None)."""
        gt = overlay(rgb, label, self.info) if label is not None else (rgb // 3 + 85).astype(np.uint8)
        images = [rgb, overlay(rgb, image_pred, self.info), overlay(rgb, video_pred, self.info), gt]
        h = rgb.shape[0]
        if h > self.max_height:
            size = (round(rgb.shape[1] * self.max_height / h), self.max_height)
            images = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images]
        self._gif.add(clip, panel(images, self.titles))

    def close(self) -> None:
        self._gif.close()


class LogitsWriter:
    """Saves raw logits per frame (no softmax, no temperature), resumably, with the manifest that students check
    (:class:`data.logits.TeacherLogits`, ``ssp.md`` §6.4).

    ``manifest``: what the dump is (``teacher_run``, ``checkpoint``, ``epoch``, ``split``, ``num_classes``,
    ``classes``, ``input_size``, ``logits_size``, ``frames_rule``, ``tta``); ``size``: (H, W) to resize to (bilinear,
    antialiased when shrinking: the filter of ``data.transforms.resize_soft``) or None to keep the model's output
    size (its input size); ``stride``: extra integer downsampling by average pooling (2 -> a quarter of the pixels);
    ``dtype`` and ``fmt``: how each frame is stored (:func:`data.logits.encode`; ``npz`` holds one array named
    ``logits``).

    Creating it refuses (one line naming the field) a folder that holds another dump, then writes the manifest, so
    an interrupted dump is still described; :meth:`close` updates it with the counts. A frame whose file exists is
    skipped, and every file is written under a unique temporary name in its folder, then renamed into place.
    """

    # what two calls must agree on to write into one folder (frames_rule: the same frames, however spelled)
    MUST_MATCH = ("classes", "size", "dtype", "format", "frames_rule", "tta", "stride", "checkpoint", "split")

    def __init__(self, out_dir: Path, manifest: dict, dtype: str = "float16", size: tuple[int, int] | None = None,
                 stride: int = 1, fmt: str = "npy") -> None:  # fmt: skip
        if dtype not in LOGIT_DTYPES or fmt not in LOGIT_FORMATS:
            raise ConfigError(f"logits: dtype '{dtype}' or format '{fmt}' unknown; dtypes: {', '.join(LOGIT_DTYPES)}, "
                              f"formats: {', '.join(LOGIT_FORMATS)}")  # fmt: skip
        self.out, self.dtype, self.stride, self.fmt = Path(out_dir), dtype, int(stride), fmt
        self.size = None if size is None else (int(size[0]), int(size[1]))
        h, w = self.size or tuple(int(v) for v in manifest["input_size"])
        self.size_hw = (-(-h // self.stride), -(-w // self.stride))  # avg_pool2d with ceil_mode
        self.fix = f"delete {self.out} or pass --logits-out DIR"
        self.manifest = {
            **manifest, "size": list(self.size_hw), "dtype": dtype, "format": fmt, "stride": self.stride,
            "resize_method": RESIZE_METHOD, "values": "raw logits, no softmax or temperature", "layout": "K x H x W",
            "bytes_per_frame": frame_bytes(len(manifest["classes"]), self.size_hw, dtype),
        }  # fmt: skip
        self.frames = 0  # written by this call
        self.skipped = 0  # already on disk, not written again
        self._check_existing()
        check_writable(self.out, fix=self.fix)
        self._write_manifest(complete=False)

    def _check_existing(self) -> None:
        """Refuse a folder holding another dump: a manifest that differs in a :attr:`MUST_MATCH` field, or logits
        without a manifest (written by something else, so their size, dtype and frames are unknown)."""
        path = self.out / MANIFEST_NAME
        if not path.is_file():
            stray = next(self.out.glob(f"*/*.{self.fmt}"), None) if self.out.is_dir() else None
            if stray is not None:
                raise ConfigError(f"--logits-out {self.out}: holds logits ({stray.relative_to(self.out)}) without a "
                                  f"{MANIFEST_NAME}, so they may be of another dump; {self.fix}")  # fmt: skip
            return
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: unreadable manifest ({err}); {self.fix}") from None
        for key in self.MUST_MATCH:
            mine = json.loads(json.dumps(self.manifest.get(key)))  # as it would be stored (tuples -> lists)
            theirs = old.get(key)
            if key == "frames_rule" and (_covers(mine, theirs) or _covers(theirs, mine)):
                if not _covers(mine, theirs):  # a narrower rerun writes nothing new: the dump keeps its rule
                    self.manifest["frames_rule"] = theirs
                continue  # the same frames, or more: a wider dump extends this one
            if theirs != mine:
                raise ConfigError(f"{path}: {key} {_shown(theirs)} in the existing dump, {_shown(mine)} in this one; "
                                  f"{self.fix}")  # fmt: skip

    def path(self, clip: str, frame: str) -> Path:
        return self.out / clip / f"{frame}.{self.fmt}"

    def done(self, clip: str, frame: str) -> bool:
        """Whether frame ``frame`` of ``clip`` is on disk already (files only appear complete)."""
        return self.path(clip, frame).is_file()

    def add(self, clip: str, frame: str, logits: torch.Tensor) -> bool:
        """``logits`` [K,H,W] float; returns False (and writes nothing) when the frame's file exists already."""
        path = self.path(clip, frame)
        if path.is_file():
            self.skipped += 1
            return False
        x = logits[None].float()
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        if (
            tuple(x.shape[-2:]) != self.size_hw
        ):  # the model's output is not its input size: the manifest is wrong
            raise ValueError(f"logits of {clip}/{frame} are {tuple(x.shape[-2:])} after resizing, the manifest says "
                             f"{self.size_hw}; pass --logits-size HxW")  # fmt: skip
        arr = encode(x[0], self.dtype)
        with writing(path.parent, fix=self.fix):
            path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, arr.nbytes, fix=self.fix) as tmp, open(tmp, "wb") as fh:
            if self.fmt == "npz":
                np.savez_compressed(fh, logits=arr)
            else:
                np.save(fh, arr)
        self.frames += 1
        return True

    def on_disk(self) -> tuple[int, int]:
        """Frames and bytes of logits files in the folder (this dump's and earlier calls')."""
        files = [p for p in self.out.glob(f"*/*.{self.fmt}") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)

    def _write_manifest(self, complete: bool) -> None:
        frames, nbytes = self.on_disk()
        self.manifest.update(frames_written=self.frames, frames_skipped=self.skipped, frames_on_disk=frames,
                             bytes_on_disk=nbytes, complete=complete)  # fmt: skip
        atomic_write_text(self.out / MANIFEST_NAME, json.dumps(self.manifest, indent=1), fix=self.fix)

    def close(self) -> dict:
        """Update the manifest with the counts of this call and of the folder; returns it."""
        self._write_manifest(complete=True)
        return self.manifest


def _covers(a: object, b: object) -> bool:
    """Whether frame rule ``a`` keeps every frame ``b`` keeps (strings; ``all`` = ``kd_pairs(2)`` = ``kd_samples(1)``)."""
    try:
        return FrameRule.parse(str(a)).covers(FrameRule.parse(str(b)))
    except ConfigError:
        return False


def _shown(value: object) -> str:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "(none)" if value is None else str(value)


def write_metrics(out_dir: Path, metrics: dict, per_class_rows: list[dict]) -> None:
    """``metrics.json`` and ``per_class_iou.csv`` (atomically: a reader never sees half a file)."""
    with writing(out_dir, fix=RUN_FOLDER_FIX):
        out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=1), fix=RUN_FOLDER_FIX)
    write_csv(out_dir / "per_class_iou.csv", per_class_rows, list(per_class_rows[0]))


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """A CSV table with a header line, written atomically."""
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, text.getvalue(), fix=RUN_FOLDER_FIX)


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
