"""Samples for image training and evaluation.

:class:`LabelledFrames` serves the labelled frames of a split (training and training-time validation).
:class:`FrameStream` serves every frame of every clip, in order, labelled or not (evaluation CLIs, logit dumps);
it lets a DataLoader prefetch while evaluation still sees one frame at a time, so memory does not grow with
video length.

Augmentation randomness comes from ``np.random.default_rng((seed, epoch, index))``: the same sample gets the same
draw whatever the number of workers or processes, and a resumed run replays the epoch it was killed in exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.catalog import IGNORE_INDEX, DatasetInfo
from data.frames import Clip, frame_sampling, read_frame, read_mask
from data.teacher import TeacherSource, teacher_maps
from data.transforms import (
    ClipSample,
    center_square_crop,
    random_square_crop,
    resize_frame,
    resize_label,
    to_tensor,
)

Augment = Callable[[ClipSample, np.random.Generator], ClipSample]


@dataclass(frozen=True)
class FrameRef:
    """Frame ``index`` of clip number ``clip`` in the dataset's clip list."""

    clip: int
    index: int


def load_frame(
    clip: Clip, index: int, info: DatasetInfo, size_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Frame (H, W, 3) uint8 RGB and training ids (H, W) uint8 at ``size_hw``; unlabelled frames get all-255."""
    frame = resize_frame(read_frame(clip.frames[index]), size_hw)
    if index in clip.masks:
        label = resize_label(read_mask(clip.masks[index], info), size_hw)
    else:
        label = np.full(size_hw, IGNORE_INDEX, np.uint8)
    return frame, label


class LabelledFrames(Dataset):
    """Labelled frames of a split. Item: ``image`` [3,H,W] float (ImageNet-normalised), ``label`` [H,W] int64.

    Training: every labelled frame (with ``skip`` k: those at clip indices 1, 1+k, ...), augmented when
    ``augment`` is given. Validation: labelled frames whose clip index is a multiple of ``skip``; with
    ``square_crop`` the centre H x H crop (training-time validation, as the reference does).

    With a ``teacher`` (:mod:`data.teacher`) each item also carries the teacher's entries (``teacher_logits``
    [K,H,W], or ``teacher_grid`` and ``teacher_frames`` online), augmented with the same draw as the frame; the
    training samples are then the distillation samples: every frame at clip indices 1, 1+k, ... (all frames for
    k = 1), labelled or not (``ssp.md`` §6.1). Validation keeps its labelled frames (the teacher's logits of them
    only give the KL to the teacher). ``labelled_only`` ``{(clip, stem)}`` keeps the labels of those frames only
    (a labelled fraction, :mod:`data.fractions`).
    """

    def __init__(
        self,
        clips: list[Clip],
        info: DatasetInfo,
        size_hw: tuple[int, int],
        *,
        train: bool,
        augment: Augment | None = None,
        square_crop: bool = False,
        skip: int | None = None,
        seed: int = 0,
        teacher: TeacherSource | None = None,
        labelled_only: set[tuple[str, str]] | None = None,
    ) -> None:
        self.clips, self.info, self.size_hw = clips, info, tuple(size_hw)
        self.train, self.augment, self.square_crop, self.seed = train, augment, square_crop, seed
        self.teacher = teacher
        self.epoch = 0  # set by the training loop before each epoch (workers are re-created per epoch)
        k = skip or 1
        keep = (lambda i: k == 1 or i % k == 1) if train else (lambda i: i % k == 0)

        def candidates(clip: Clip) -> list[int]:
            if teacher is not None and train:
                return list(range(len(clip)))
            if labelled_only is not None:  # a labelled fraction: the other frames' labels are hidden
                return [i for i in clip.labelled if (clip.name, clip.frames[i].stem) in labelled_only]
            return clip.labelled

        self.samples = [FrameRef(c, i) for c, clip in enumerate(clips) for i in candidates(clip) if keep(i)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        ref = self.samples[idx]
        clip = self.clips[ref.clip]
        frame, label = load_frame(clip, ref.index, self.info, self.size_hw)
        soft = teacher_maps(self.teacher, clip, (ref.index,), self.size_hw)
        sample = ClipSample(frames=[frame], labels=[label], soft=soft)
        if self.train and self.augment is not None:
            sample = self.augment(sample, np.random.default_rng((self.seed, self.epoch, idx)))
        elif self.train and self.square_crop:
            sample = random_square_crop(sample, np.random.default_rng((self.seed, self.epoch, idx)))
        elif self.square_crop:
            sample = center_square_crop(sample)
        item = {
            "image": to_tensor(sample.frames)[0],
            "label": torch.from_numpy(sample.labels[0].astype(np.int64)),
            "clip": clip.name,
            "frame": clip.frames[ref.index].stem,
        }
        if self.teacher is not None:
            entries = self.teacher.entries(clip, (ref.index,), sample.soft)
            item.update({key: value[0] for key, value in entries.items()})  # one frame: drop T
        return item


class FrameStream(Dataset):
    """Every frame of every clip in order (optionally a subset), for evaluation and logit dumps.

    ``skip_frames``: an int K keeps the frames with ``i mod K in {0, 1}`` (``--skip-frames``, the reference rule of
    :func:`data.frames.frame_sampling`); a :class:`data.logits.FrameRule` keeps the frames it names
    (``kd_samples(4)``: ``i mod 4 == 1`` only). Item: ``image`` [3,H,W], ``label`` [H,W] int64 (all 255 when
    unlabelled), ``labelled`` bool, ``clip_index``, ``t`` (index in the clip), ``clip`` and ``frame`` names, and
    ``rgb`` [H,W,3] uint8 for overlays. With ``native_labels`` a labelled frame's ``label`` keeps the mask file's
    resolution (batch with :func:`collate_stream`, since sizes may differ between clips).

    ``registration`` (a CPU provider, ``VideoModel.stream_registration``): every item also carries
    ``homography`` [3,3] float32 ``H_{t-1 -> t}`` estimated on the frame and its predecessor at the working size,
    and ``registered`` (False at a clip's first frame, whose homography is NaN): the estimate then runs in the
    loader's worker processes, ahead of the network.
    """

    def __init__(
        self,
        clips: list[Clip],
        info: DatasetInfo,
        size_hw: tuple[int, int],
        skip_frames: int | FrameRule = 1,  # noqa: F821 (data.logits.FrameRule, imported in the body)
        native_labels: bool = False,
        registration: Any | None = None,
    ) -> None:
        from data.logits import FrameRule

        self.clips, self.info, self.size_hw, self.native_labels = clips, info, tuple(size_hw), native_labels
        self.registration = registration
        self.rule = skip_frames if isinstance(skip_frames, FrameRule) else None

        def kept(n: int) -> list[int]:
            return self.rule.indices(n) if self.rule is not None else frame_sampling(n, skip_frames)

        self.items = [FrameRef(c, i) for c, clip in enumerate(clips) for i in kept(len(clip))]

    def drop_done(self, done: Callable[[str, str], bool]) -> int:
        """Remove the frames for which ``done(clip name, frame stem)`` is true (a resumed logits dump); returns how
        many were removed. The remaining frames keep their order."""
        before = len(self.items)
        self.items = [r for r in self.items if not done(self.clips[r.clip].name, self.stem(r))]
        return before - len(self.items)

    def stem(self, ref: FrameRef) -> str:
        return self.clips[ref.clip].frames[ref.index].stem

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        ref = self.items[idx]
        clip = self.clips[ref.clip]
        frame, label = load_frame(clip, ref.index, self.info, self.size_hw)
        if self.native_labels and ref.index in clip.masks:
            label = read_mask(clip.masks[ref.index], self.info)  # metrics at the label's own resolution
        item = {
            "image": to_tensor([frame])[0],
            "label": torch.from_numpy(label.astype(np.int64)),
            "labelled": ref.index in clip.masks,
            "rgb": torch.from_numpy(frame),
            "clip_index": ref.clip,
            "t": ref.index,
            "clip": clip.name,
            "frame": clip.frames[ref.index].stem,
        }
        if self.registration is not None:
            item["registered"] = ref.index > 0
            h = np.full((3, 3), np.nan)
            if ref.index > 0:  # consecutive frames go to different workers: read the predecessor again
                prev = resize_frame(read_frame(clip.frames[ref.index - 1]), self.size_hw)
                h = self.registration.estimate_np(prev, frame, clip.pair(ref.index - 1, ref.index))
            item["homography"] = torch.from_numpy(np.asarray(h, dtype=np.float32))
        return item


def collate_stream(items: list[dict]) -> dict:
    """``default_collate`` for :class:`FrameStream` items, with ``label`` kept as a list of [h,w] tensors when their
    sizes differ (native-resolution labels)."""
    from torch.utils.data import default_collate

    labels = [it["label"] for it in items]
    if len({tuple(lb.shape) for lb in labels}) == 1:
        return default_collate(items)
    out = default_collate([{k: v for k, v in it.items() if k != "label"} for it in items])
    out["label"] = labels
    return out


def worker_init(worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV thread per worker, so workers do not oversubscribe the cores."""
    cv2.setNumThreads(1)
