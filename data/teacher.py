"""What a distillation student's loader serves about its teacher, for image and video samples alike.

A teacher source gives, per frame, a soft map that goes through the sample's augmentation together with the frames
(one draw), then turns the augmented maps into batch entries:

- offline, :class:`data.logits.TeacherLogits` wrapped by :class:`SavedLogits`: the saved logits ``(K,H,W)`` at the
  student's size -> ``teacher_logits`` ``[T,K,H,W]`` (float16 as stored; float32 for float32/bfloat16 dumps);
- online, :class:`TeacherInputs`: a sampling map ``(3,H,W)`` = (x, y, inside) in the student's unaugmented pixels,
  -> ``teacher_grid`` ``[T,3,H,W]`` float32, plus ``teacher_frames`` ``[T,3,Ht,Wt]``: the unaugmented frames at the
  teacher's input size. The training step runs the teacher on them, resizes its logits to the student's size as
  the dump does, and samples them at ``teacher_grid`` (:func:`sample_teacher`). Bilinear warping reproduces a
  linear map exactly, so where the dump's logits would be read at a pixel the grid says exactly where: online
  targets equal offline ones up to float16 storage (and, for sub-pixel warps, OpenCV's 1/32-pixel weights).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from data.frames import Clip, read_frame
from data.logits import TeacherLogits
from data.transforms import resize_frame, to_tensor


class TeacherSource(Protocol):
    """A loader-side teacher source (module docstring)."""

    def soft(self, clip: Clip, index: int, size_hw: tuple[int, int]) -> np.ndarray:
        """The map of frame ``index`` that goes through the augmentation: ``(C, H, W)`` float."""
        ...

    def entries(
        self, clip: Clip, indices: tuple[int, ...], maps: list[np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """The item entries from the augmented maps of the sample's frames (time order)."""
        ...


class SavedLogits:
    """Offline: saved teacher logits, resized to the student's size when the dump is at another one."""

    def __init__(self, store: TeacherLogits) -> None:
        self.store = store

    def soft(self, clip: Clip, index: int, size_hw: tuple[int, int]) -> np.ndarray:
        return self.store.load(clip.name, clip.frames[index].stem, size_hw)

    def entries(
        self, clip: Clip, indices: tuple[int, ...], maps: list[np.ndarray]
    ) -> dict[str, torch.Tensor]:
        return {"teacher_logits": torch.from_numpy(np.ascontiguousarray(np.stack(maps)))}

    def describe(self) -> dict[str, Any]:
        return {"mode": "offline", "folder": str(self.store.folder), "manifest": self.store.manifest}


class TeacherInputs:
    """Online: the teacher's unaugmented input frames at ``size_hw`` and the augmentation's sampling map."""

    def __init__(self, size_hw: tuple[int, int]) -> None:
        self.size_hw = tuple(int(v) for v in size_hw)

    def soft(self, clip: Clip, index: int, size_hw: tuple[int, int]) -> np.ndarray:
        h, w = size_hw
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return np.stack([xs, ys, np.ones_like(xs)])

    def entries(
        self, clip: Clip, indices: tuple[int, ...], maps: list[np.ndarray]
    ) -> dict[str, torch.Tensor]:
        frames = [resize_frame(read_frame(clip.frames[i]), self.size_hw) for i in indices]
        return {
            "teacher_grid": torch.from_numpy(np.stack(maps).astype(np.float32)),
            "teacher_frames": to_tensor(frames),
        }

    def describe(self) -> dict[str, Any]:
        return {"mode": "online", "teacher_input_size": list(self.size_hw)}


def teacher_maps(
    source: TeacherSource | None, clip: Clip, indices: tuple[int, ...], size_hw: tuple[int, int]
) -> list[np.ndarray] | None:
    """The soft maps of a sample's frames (None without a teacher)."""
    if source is None:
        return None
    return [source.soft(clip, i, size_hw) for i in indices]


def sample_teacher(logits: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Online targets: ``logits`` [N,K,H,W] (the teacher's, at the student's unaugmented size) sampled at ``grid``
    [N,3,h,w] (x, y in those pixels, and the inside weight) -> [N,K,h,w], bilinear, zero outside."""
    h, w = logits.shape[-2:]
    x = (2 * grid[:, 0] + 1) / w - 1  # pixel centres (align_corners=False)
    y = (2 * grid[:, 1] + 1) / h - 1
    out = F.grid_sample(logits.float(), torch.stack([x, y], -1), mode="bilinear", padding_mode="border",
                        align_corners=False)  # fmt: skip
    return out * grid[:, 2:3]
