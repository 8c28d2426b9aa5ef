"""The typed video batch, and :class:`DataNeeds`: what a video model asks the data side to serve.

:class:`data.video_dataset.FramePairs` serves one dict per sample; :func:`collate_video` stacks them into a
:class:`VideoBatch`. Shapes use ``B`` samples of ``T`` frames each, in time order, at ``H x W``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataNeeds:
    """What a video model asks the data side to serve for training and training-time validation.

    Attributes:
        offsets: offsets of the frames fed with the current one (``(-1,)``: the pair ``t-1, t``; ``()``: the
            current frame alone).
        max_key_offset: training only: the earliest frame is drawn at a random distance ``d`` in
            ``[1, max_key_offset]`` before the current one (DFF's random key offset); 1 = fixed offsets.
        true_homographies: homographies from the dataset's stored ground truth, carried through augmentation.
        registration: a CPU registration provider the loader runs on the augmented frames (or None).
        true_flows: backward flows from the dataset's stored ground truth, carried through augmentation.
        teacher: a loader-side teacher source (:mod:`data.teacher`) whose maps every frame carries (distillation).
    """

    offsets: tuple[int, ...] = (-1,)
    max_key_offset: int = 1
    true_homographies: bool = False
    registration: Any = None
    true_flows: bool = False
    teacher: Any = None

    def merge(self, other: DataNeeds) -> DataNeeds:
        """Both sets of needs (a model's and its training step's); the frame layout must agree."""
        if (other.offsets, other.max_key_offset) != ((-1,), 1) and (
            (other.offsets, other.max_key_offset) != (self.offsets, self.max_key_offset)
        ):
            raise ValueError(f"conflicting frame layouts: {self} and {other}")
        return DataNeeds(
            offsets=self.offsets,
            max_key_offset=self.max_key_offset,
            true_homographies=self.true_homographies or other.true_homographies,
            registration=self.registration if self.registration is not None else other.registration,
            true_flows=self.true_flows or other.true_flows,
            teacher=self.teacher if self.teacher is not None else other.teacher,
        )


# Optional per-sample tensors a dataset may add; each is stacked over the batch when every item has it.
_OPTIONAL = (
    "homographies",
    "flows",
    "teacher_logits",
    "teacher_grid",
    "teacher_frames",
    "registration_fallback",
)


@dataclass
class VideoBatch:
    """A batch of video samples (``SAM 2``'s ``BatchedVideoDatapoint`` in spirit).

    Attributes:
        frames: [B,T,3,H,W] float32, ImageNet-normalised, time order.
        labels: [B,T,H,W] int64, 255 = ignore (all 255 on unlabelled frames).
        label_valid: [B,T] bool, whether a frame has a label.
        current: index in ``T`` of the frame the loss and the validation score are on.
        homographies: [B,T-1,3,3] float32 or None; entry i maps frame i onto frame i+1 (``p_{i+1} ~ H p_i``).
        flows: [B,T-1,2,H,W] float32 or None; entry i is the backward flow of frame i+1 onto frame i
            (``frame_{i+1}(p) ~ frame_i(p + f(p))``), carried through the augmentation.
        teacher_logits: [B,T,K,H,W] float16/float32 or None: saved teacher logits (offline distillation).
        teacher_grid: [B,T,3,H,W] float32 or None: where each output pixel samples the teacher's logits (online).
        teacher_frames: [B,T,3,Ht,Wt] float32 or None: the unaugmented frames at the teacher's size (online).
        registration_fallback: [B,T-1] bool or None: loader registrations that fell back to the identity.
        clips, frames_names: per sample, the clip name and the current frame's file stem.
    """

    frames: Tensor
    labels: Tensor
    label_valid: Tensor
    current: int
    homographies: Tensor | None = None
    flows: Tensor | None = None
    teacher_logits: Tensor | None = None
    teacher_grid: Tensor | None = None
    teacher_frames: Tensor | None = None
    registration_fallback: Tensor | None = None
    clips: list[str] = field(default_factory=list)
    frame_names: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def flat_frames(self) -> Tensor:
        """[B*T,3,H,W]: every frame of the batch for one pass of a 2D network (sample-major)."""
        return self.frames.flatten(0, 1)

    def _map(self, fn: Any) -> VideoBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoBatch:
        """The batch with every tensor on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VideoBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return self._map(lambda t: t.pin_memory())


def collate_video(items: list[dict]) -> VideoBatch:
    """Stack :class:`data.video_dataset.FramePairs` items into a :class:`VideoBatch`."""
    currents = {int(it["current"]) for it in items}
    if len(currents) != 1:
        raise ValueError(
            f"samples of one batch must share the current-frame position, got {sorted(currents)}"
        )
    optional = {
        key: torch.stack([it[key] for it in items]) for key in _OPTIONAL if all(key in it for it in items)
    }
    return VideoBatch(
        frames=torch.stack([it["frames"] for it in items]),
        labels=torch.stack([it["labels"] for it in items]),
        label_valid=torch.stack([it["label_valid"] for it in items]),
        current=currents.pop(),
        clips=[it["clip"] for it in items],
        frame_names=[it["frame"] for it in items],
        **optional,
    )
