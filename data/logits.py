"""Saved teacher logits for knowledge distillation: frame rules, the manifest, encoding and reading (``ssp.md`` §6).

A dump (``python -m eval.vis.image TEACHER_RUN --save-logits``) writes ``<folder>/<clip>/<frame stem>.npy`` (or
``.npz``) holding the raw logits ``(K, H, W)`` of one frame (no softmax, no temperature), plus ``manifest.json``
beside them. A student reads them with :class:`TeacherLogits`, which refuses a dump that does not fit its config
(classes, class order, size, frame rule) with one line naming the field.

Frame rules (which frames a dump holds, which a student needs), for clip index ``i``:

- ``all``: every frame;
- ``kd_pairs(k)``: ``i mod k in {0, 1}``: each KD sample ``1 + k n`` and its predecessor (KD-SSP; the reference's
  ``--skip-frames k``; ``k <= 2`` is every frame);
- ``kd_samples(k)``: ``i mod k == 1``: the KD samples alone (the KD image baseline; ``k = 1`` is every frame).

Sizes: the student's input size (default), the teacher's (``eval``), any ``HxW``, or ``native``: the teacher head's
own output (stride 4), which the teacher's forward only interpolates to its input size; the loader upsamples it
with the teacher's own mode (manifest ``upsampling``), so nothing is lost when teacher and student share a size.

Storage (``float16`` by default, ``bfloat16`` stored as its raw 16 bits, ``float32``): ``npy`` is read memory-mapped
(no decompression), ``npz`` is the reference's compressed format (smaller on disk, CPU-heavy to read).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from config.errors import ConfigError, DataError
from data.transforms import resize_soft

MANIFEST_NAME = "manifest.json"
LOGIT_DTYPES = ("float16", "bfloat16", "float32")
LOGIT_FORMATS = ("npy", "npz")
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
RESIZE_METHOD = "bilinear, antialiased when shrinking (torch interpolate antialias=True)"
_RULE = re.compile(r"^\s*(all|kd_pairs|kd_samples)\s*(?:\(\s*(\d+)\s*\))?\s*$")


@dataclass(frozen=True)
class FrameRule:
    """Which frame indices of a clip a dump holds or a student needs (module docstring)."""

    kind: str = "all"
    k: int = 1

    @classmethod
    def parse(cls, text: str, setting: str = "--logits-frames") -> FrameRule:
        """``all``, ``kd_pairs(k)`` or ``kd_samples(k)``; anything else is a one-line :class:`ConfigError`."""
        m = _RULE.match(str(text))
        if m is None or (m.group(1) != "all" and m.group(2) is None) or (m.group(2) and int(m.group(2)) < 1):
            raise ConfigError(
                f"{setting}: '{text}' is not a frame rule; use all, kd_pairs(K) or kd_samples(K), K >= 1"
            )
        return cls(m.group(1), int(m.group(2) or 1))

    def keeps(self, i: int) -> bool:
        if self.kind == "all" or self.k == 1:
            return True
        if self.kind == "kd_pairs":
            return i % self.k in (0, 1)
        return i % self.k == 1

    def indices(self, n_frames: int) -> list[int]:
        """The kept indices of a clip of ``n_frames`` frames."""
        return [i for i in range(n_frames) if self.keeps(i)]

    def covers(self, other: FrameRule) -> bool:
        """Whether every frame ``other`` keeps is kept here (checked over one common period)."""
        period = math.lcm(self.k, other.k) + 2
        return all(self.keeps(i) for i in range(period) if other.keeps(i))

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}({self.k})"


def student_rule(train_skip_frames: int | None, with_previous: bool) -> FrameRule:
    """The frames a KD student reads: samples ``1 + k n`` (``k = train_skip_frames``, null = 1), and with
    ``with_previous`` (KD-SSP) their predecessors too (``ssp.md`` §6.1 step 3)."""
    return FrameRule("kd_pairs" if with_previous else "kd_samples", train_skip_frames or 1)


def encode(logits: torch.Tensor, dtype: str) -> np.ndarray:
    """[K,H,W] float tensor -> the array stored for ``dtype`` (bfloat16: its raw bits as uint16)."""
    x = logits.detach().float().cpu()
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return x.numpy().astype(dtype)


def decode(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A stored array -> float16 or float32 ``(K,H,W)`` (bfloat16 widens to float32 exactly)."""
    if dtype == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(arr).view(np.int16))
        return bits.view(torch.bfloat16).float().numpy()
    return np.asarray(arr)


def frame_bytes(num_classes: int, size_hw: Sequence[int], dtype: str) -> int:
    """Uncompressed bytes of one frame's logits: ``K x H x W x bytes`` (``ssp.md`` §6.3)."""
    return int(num_classes) * int(size_hw[0]) * int(size_hw[1]) * BYTES[dtype]


def logits_folder_of(path: str | Path, split: str = "train") -> Path:
    """A logits folder given as itself, or as the teacher run folder holding it (``<run>/logits/<split>``)."""
    p = Path(path)
    nested = p / "logits" / split
    return nested if not (p / MANIFEST_NAME).is_file() and (nested / MANIFEST_NAME).is_file() else p


class TeacherLogits:
    """A folder of saved teacher logits, read by a student's data loader.

    Args:
        folder: the logits folder (or the teacher run holding ``logits/<split>``).
        setting: the config key or flag that named it, for error messages.
    """

    def __init__(self, folder: str | Path, setting: str = "data_cfg.logits_folder") -> None:
        self.setting = setting
        self.folder = logits_folder_of(folder)
        path = self.folder / MANIFEST_NAME
        if not path.is_file():
            raise DataError(
                f"{setting}: {path} not found; dump the teacher's logits first (python -m eval.vis.image TEACHER_RUN "
                "--save-logits --split train --no-evaluation) and point this key at the folder it prints"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
            self.size_hw = tuple(int(v) for v in self.manifest["size"])
            self.classes = list(self.manifest["classes"])
            self.dtype, self.fmt = str(self.manifest["dtype"]), str(self.manifest["format"])
            self.rule = FrameRule.parse(self.manifest["frames_rule"], f"{path}: frames_rule")
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a tcseg logits manifest ({err}); dump the logits again") from None
        if self.dtype not in LOGIT_DTYPES or self.fmt not in LOGIT_FORMATS:
            raise DataError(
                f"{path}: unknown dtype '{self.dtype}' or format '{self.fmt}'; dump the logits again"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check(
        self, *, classes: Sequence[str], size_hw: Sequence[int], rule: FrameRule, split: str = "train"
    ) -> None:
        """Refuse (one line, naming the field) a dump that does not fit the student.

        ``size_hw`` is the student's input size: a dump at another size of the same aspect ratio is resized on every
        read (the reference's way, slower), another aspect ratio is refused."""
        where = f"{self.setting} ({self.folder / MANIFEST_NAME})"
        fix = "dump the teacher's logits again for this config, or point the key at a matching dump"
        if len(classes) != self.num_classes:
            raise ConfigError(
                f"{where}: num_classes {self.num_classes} in the dump, the student has {len(classes)}; {fix}"
            )
        if list(classes) != self.classes:
            raise ConfigError(
                f"{where}: class order differs (dump: {', '.join(self.classes)}; student: {', '.join(classes)}); {fix}"
            )
        h, w = (int(v) for v in size_hw)
        ratio = self.size_hw[0] / self.size_hw[1]
        if abs(ratio - h / w) > 0.03 * h / w:  # UAVid's 1440x2560 teacher vs 736x1280 student: 2.2 %
            raise ConfigError(f"{where}: size {self.size_hw[0]}x{self.size_hw[1]} in the dump, the student's crop_size is "
                              f"{h}x{w} (another aspect ratio); {fix}")  # fmt: skip
        if not self.rule.covers(rule):
            raise ConfigError(f"{where}: frames_rule {self.rule} in the dump, the student needs {rule} "
                              f"(data_cfg.train_skip_frames); dump with --logits-frames {rule}")  # fmt: skip
        if self.manifest.get("split", split) != split:
            raise ConfigError(
                f"{where}: split '{self.manifest.get('split')}' in the dump, training needs '{split}'; {fix}"
            )

    def path(self, clip: str, stem: str) -> Path:
        return self.folder / clip / f"{stem}.{self.fmt}"

    def load(self, clip: str, stem: str, size_hw: Sequence[int] | None = None) -> np.ndarray:
        """The logits of frame ``stem`` of ``clip``: ``(K, H, W)`` float16 (float32 for float32/bfloat16 dumps),
        resized to ``size_hw`` when it differs from the stored size. A missing file names the frame."""
        path = self.path(clip, stem)
        try:
            if self.fmt == "npy":
                arr = np.load(path, mmap_mode="r")
            else:
                with np.load(path) as z:
                    arr = z[z.files[0]]
        except FileNotFoundError:
            raise DataError(
                f"{self.setting}: no teacher logits for frame {stem} of clip {clip} ({path} is missing); rerun the dump "
                f"with the same flags (--logits-frames {self.rule}; it skips the frames already written)"
            ) from None
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable logits ({err}); delete it and rerun the dump") from None
        out = decode(arr, self.dtype)
        if out.shape[0] != self.num_classes:
            raise DataError(
                f"{path}: {out.shape[0]} classes, the manifest says {self.num_classes}; dump again"
            )
        if size_hw is not None and tuple(out.shape[1:]) != tuple(size_hw):
            mode = self.manifest.get("upsampling")
            if mode in ("bilinear", "bicubic") and all(
                a <= b for a, b in zip(out.shape[1:], size_hw, strict=True)
            ):
                # a native dump: upsample as the teacher's own forward does (exact when the sizes are the teacher's)
                x = torch.from_numpy(np.array(out, dtype=np.float32))[None]  # a copy: the map is read-only
                y = F.interpolate(x, size=tuple(size_hw), mode=mode, align_corners=False)[0]
                return y.to(torch.float16 if out.dtype == np.float16 else torch.float32).numpy()
            return resize_soft(np.ascontiguousarray(out), tuple(size_hw))
        return np.array(out)  # a private copy: the memory map stays read-only
