"""Samples for video training and training-time validation: a labelled frame with its adjacent frames.

:class:`FramePairs` serves, for every labelled frame of a split, the frames at the configured offsets
(``data_cfg.adjacent_frames``: ``[-1]`` for SSP, ``[-1, -2, -3]`` for TCB), all with one augmentation draw,
and optionally the frame-to-frame homographies (from a CPU registration provider, or the synthetic set's true
ones) and the synthetic set's true optical flow, both carried through the augmentation geometry.

Offsets are bounds-checked and never wrap around a clip (the reference's negative-indexing defect,
``ssp.md`` §15.1 #5): ``edge_policy`` ``drop`` drops a sample whose adjacent frame falls outside its clip,
``repeat_first`` clamps the index into the clip (the edge frame is repeated).

Augmentation randomness comes from ``np.random.default_rng((seed, epoch, index))``, as in
:class:`data.image_dataset.LabelledFrames`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from config.errors import DataError
from data.augment import VideoTrainAugment
from data.catalog import IGNORE_INDEX, DatasetInfo
from data.frames import Clip, FramePair
from data.image_dataset import LabelledFrames, load_frame
from data.synthetic.io import load_flow, load_homographies
from data.teacher import TeacherSource, teacher_maps
from data.transforms import (
    ClipSample,
    apply_geometry,
    resize_soft,
    scale_matrix,
    square_crop_geometry,
    to_tensor,
)
from data.video_batch import DataNeeds

EdgePolicy = Literal["drop", "repeat_first"]


class Registration(Protocol):
    """A CPU registration provider: ``H`` float64 (3, 3), ``p_cur ~ H p_prev`` in the given frames' pixels."""

    def estimate_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None) -> np.ndarray: ...


@dataclass(frozen=True)
class VideoSample:
    """Labelled frame ``index`` of clip number ``clip``; ``indices`` = the clip indices of all frames of the
    sample in time order (already bounds-checked / clamped)."""

    clip: int
    index: int
    indices: tuple[int, ...]


def _time_offsets(offsets: Sequence[int]) -> tuple[int, ...]:
    """Offsets plus 0, ascending; 0 and duplicates among ``offsets`` are errors (they would silently feed the
    same frame twice)."""
    offs = [int(o) for o in offsets]
    if 0 in offs:
        raise ValueError(f"adjacent frame offsets must not contain 0 (the labelled frame itself): {offs}")
    if len(set(offs)) != len(offs):
        raise ValueError(f"adjacent frame offsets must be distinct: {offs}")
    return tuple(sorted([*offs, 0]))


@lru_cache(maxsize=4096)
def _disk_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header only (no decode)."""
    with Image.open(path) as img:
        return img.height, img.width


def pixel_resize_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3x3 matrix of a resize ``src_hw -> dst_hw``, pixel-centre convention ``x' = (x + 0.5) s - 0.5``."""
    return scale_matrix(dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0])


def _compose_steps(steps: np.ndarray, a: int, b: int) -> np.ndarray:
    """``H_{a->b} = H_b ... H_{a+1}`` from per-step ``steps[t] = H_{t-1->t}``; identity when ``a == b``."""
    h = np.eye(3)
    for t in range(a + 1, b + 1):
        h = steps[t] @ h
    return h


class FramePairs(Dataset):
    """Labelled frames of a split with their adjacent frames: video training and training-time validation.

    Samples: the labelled frames that :class:`LabelledFrames` would serve (train: with ``skip`` k those at
    clip indices 1, 1+k, ...; val: index % k == 0), each with the frames at ``offsets`` relative to it
    (negative = earlier; positive offsets work too). A sample with an adjacent frame outside its clip is
    dropped (``edge_policy="drop"``; counted in :attr:`dropped`) or uses the clamped index
    (``"repeat_first"``).

    Item (``T = len(offsets) + 1`` frames, in time order; ``H, W`` = the output size: ``size_hw``, or
    ``S x S``, ``S = min(size_hw)``, with a square crop):

    - ``frames`` [T,3,H,W] float32, ImageNet-normalised; for offsets ``[-1]``: ``[x_{t-1}, x_t]``;
    - ``current`` int: position of the labelled frame in ``frames``;
    - ``labels`` [T,H,W] int64, 255 = ignore (all 255 where a frame has no label);
    - ``label_valid`` [T] bool: the frame has a label;
    - ``indices`` [T] int64: clip index of each frame (clamped ones repeat);
    - ``clip``, ``frame`` str: clip name and the labelled frame's file stem;
    - ``homographies`` [T-1,3,3] float32 (with ``registration`` or ``gt_homographies``): entry i-1 maps
      frame i-1 to frame i in output pixels, ``p_i ~ H p_{i-1}`` (``ssp.md`` §3.2);
    - ``flows`` [T-1,2,H,W] float32 (with ``gt_flow``): entry i-1 is the backward flow of frame i, on frame
      i's pixels pointing into frame i-1 (x, y in output pixels): ``frame_i(p) ~ frame_{i-1}(p + f(p))``.
    - with a ``teacher`` (:mod:`data.teacher`): ``teacher_logits`` [T,K,H,W] (offline) or ``teacher_grid``
      [T,3,H,W] and ``teacher_frames`` [T,3,Ht,Wt] (online), augmented with the frames; training samples are then
      every frame at clip indices 1, 1+k, ..., labelled or not (distillation, ``ssp.md`` §6.1).

    With ``max_key_offset`` > 1 (training, offsets ``[-1]`` only) the earlier frame of each training item is
    drawn at a random distance in ``[1, max_key_offset]`` (DFF's random key offset). :func:`collate_video`
    stacks items into a :class:`data.video_batch.VideoBatch`.

    Augmentation: ``train`` with ``augment``: one draw per sample for all frames, labels and flows;
    ``train`` without ``augment`` but ``square_crop``: a random square crop; validation with ``square_crop``:
    the centre square crop (training-time validation, as the reference). With ``augment``, square cropping is
    the augment's own ``square_crop`` setting (``square_crop`` here then only matters for validation).
    Homographies are computed after the augmentation: by ``registration.estimate_np(prev, cur, None)`` on
    the augmented uint8 RGB frames (not called for a repeated, clamped frame: identity), or, with
    ``gt_homographies``, from the stored true ones as ``M H M^-1`` (``M`` = resize + augmentation, source ->
    output pixels; steps composed ``H_b ... H_{a+1}`` between non-adjacent frames). True flows go through the
    augmentation like soft targets (bilinear) and their vectors are multiplied by the linear part of ``M``.
    Both ground-truth options need the synthetic set's files. Homographies are normalised to ``h33 = 1``.
    """

    def __init__(
        self,
        clips: list[Clip],
        info: DatasetInfo,
        size_hw: tuple[int, int],
        *,
        offsets: Sequence[int] = (-1,),
        train: bool,
        augment: VideoTrainAugment | None = None,
        square_crop: bool = False,
        skip: int | None = None,
        seed: int = 0,
        edge_policy: EdgePolicy = "drop",
        registration: Registration | None = None,
        gt_homographies: bool = False,
        gt_flow: bool = False,
        max_key_offset: int = 1,
        teacher: TeacherSource | None = None,
    ) -> None:
        if edge_policy not in ("drop", "repeat_first"):
            raise ValueError(f"edge_policy must be 'drop' or 'repeat_first', got {edge_policy!r}")
        if registration is not None and gt_homographies:
            raise ValueError("give either a registration provider or gt_homographies=True, not both")
        self.clips, self.info, self.size_hw = clips, info, tuple(size_hw)
        self.train, self.augment, self.square_crop, self.seed = train, augment, square_crop, seed
        self.edge_policy, self.registration = edge_policy, registration
        self.gt_homographies, self.gt_flow = gt_homographies, gt_flow
        self.epoch = 0  # set by the training loop before each epoch (workers are re-created per epoch)
        self.time_offsets = _time_offsets(offsets)
        self.current = self.time_offsets.index(0)
        if max_key_offset < 1 or (max_key_offset > 1 and (tuple(offsets) != (-1,) or gt_flow)):
            raise ValueError(
                "a random key offset (max_key_offset > 1) needs offsets [-1] and no stored flow (which links "
                f"neighbouring frames only), got max_key_offset={max_key_offset}, offsets={list(offsets)}"
            )
        self.max_key_offset = max_key_offset if train else 1  # validation always uses the fixed offsets
        if gt_flow and any(
            b - a != 1 for a, b in zip(self.time_offsets, self.time_offsets[1:], strict=False)
        ):
            raise ValueError(
                f"gt_flow needs contiguous offsets (the stored true flow links neighbouring frames only), "
                f"got {list(offsets)}"
            )
        self.teacher = teacher  # validation: still the labelled frames, scored against the human labels (6.5)
        # Same sample enumeration (skip rules; training with a teacher: every 1 + k n frame) as image training
        refs = LabelledFrames(clips, info, self.size_hw, train=train, skip=skip, teacher=teacher).samples
        self.samples: list[VideoSample] = []
        self.dropped = 0  # samples dropped by edge_policy "drop"
        for ref in refs:
            n = len(clips[ref.clip])
            idx = [ref.index + o for o in self.time_offsets]
            if any(not 0 <= i < n for i in idx):
                if edge_policy == "drop":
                    self.dropped += 1
                    continue
                idx = [min(max(i, 0), n - 1) for i in idx]  # clamp, never wrap
            self.samples.append(VideoSample(ref.clip, ref.index, tuple(idx)))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self._with_key_offset(self.samples[idx], idx)
        clip = self.clips[s.clip]
        loaded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i in s.indices:  # a clamped index repeats: read it once
            if i not in loaded:
                loaded[i] = load_frame(clip, i, self.info, self.size_hw)
        frames = [loaded[i][0] for i in s.indices]
        # None for unlabelled frames: nothing to warp; they become all-ignore after augmentation
        labels = [loaded[i][1] if i in clip.masks else None for i in s.indices]
        flows = self._flows_at_input(clip, s.indices) if self.gt_flow else None
        maps = teacher_maps(self.teacher, clip, s.indices, self.size_hw)
        sample, m = self._augment(ClipSample(frames, labels, _join_soft(flows, maps)), idx)
        flows, maps = _split_soft(sample.soft, flows, maps)
        out_hw = sample.frames[0].shape[:2]

        item: dict = {
            "frames": to_tensor(sample.frames),
            "current": self.current,
            "labels": torch.from_numpy(
                np.stack(
                    [np.full(out_hw, IGNORE_INDEX, np.uint8) if lb is None else lb for lb in sample.labels]
                ).astype(np.int64)
            ),
            "label_valid": torch.tensor([i in clip.masks for i in s.indices], dtype=torch.bool),
            "indices": torch.tensor(s.indices, dtype=torch.int64),
            "clip": clip.name,
            "frame": clip.frames[s.index].stem,
        }
        if self.gt_homographies:
            item["homographies"] = torch.from_numpy(self._gt_homographies(clip, s.indices, m))
        elif self.registration is not None:
            homs, fallbacks = self._registered(clip, s.indices, sample.frames)
            item["homographies"], item["registration_fallback"] = (
                torch.from_numpy(homs),
                torch.from_numpy(fallbacks),
            )
        if self.gt_flow:
            item["flows"] = torch.from_numpy(self._flows_out(flows, m, out_hw))
        if maps is not None:
            item.update(self.teacher.entries(clip, s.indices, maps))
        return item

    # ------------------------------------------------------------------------------------------ helpers
    def _with_key_offset(self, s: VideoSample, idx: int) -> VideoSample:
        """With ``max_key_offset`` d_max > 1: the earlier frame at a random distance d in [1, d_max] (within the
        clip), drawn from its own generator so the augmentation draw stays that of fixed offsets."""
        if self.max_key_offset == 1:
            return s
        rng = np.random.default_rng((self.seed, self.epoch, idx, 1))
        d = int(rng.integers(1, min(self.max_key_offset, s.index) + 1)) if s.index > 0 else 0
        return VideoSample(s.clip, s.index, (max(s.index - d, 0), s.index))

    def _augment(self, sample: ClipSample, idx: int) -> tuple[ClipSample, np.ndarray]:
        """Apply the sample's augmentation; return it with its source->output pixel matrix."""
        h, w = sample.size()
        if self.train and (self.augment is not None or self.square_crop):
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            if self.augment is not None:
                return self.augment.apply(sample, rng)
            m, out_hw = square_crop_geometry(h, w, rng)
        elif self.square_crop:
            m, out_hw = square_crop_geometry(h, w)
        else:
            return sample, np.eye(3)
        return apply_geometry(sample, m, out_hw), m

    def _gt_homographies(self, clip: Clip, indices: tuple[int, ...], m: np.ndarray) -> np.ndarray:
        """True homographies between consecutive sample frames, [T-1,3,3] float32, in output pixels."""
        steps = load_homographies(clip.dir)
        if len(steps) != len(clip):
            raise DataError(
                f"{clip.dir}/homographies.npy holds {len(steps)} entries for {len(clip)} frames: "
                "regenerate the synthetic set ('python -m data.synthetic --out <root> --force')"
            )
        # disk pixels -> loaded (resized) pixels -> augmented output pixels
        full = m @ pixel_resize_matrix(_disk_size(clip.frames[indices[0]]), self.size_hw)
        inv = np.linalg.inv(full)
        homs = [full @ _compose_steps(steps, a, b) @ inv for a, b in zip(indices, indices[1:], strict=False)]
        return self._stack_homs(homs)

    def _registered(
        self, clip: Clip, indices: tuple[int, ...], frames: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Provider homographies between consecutive augmented frames, [T-1,3,3] float32, and [T-1] bool: which
        estimates fell back to the identity (so the training loop can count them across loader workers)."""
        homs, fallbacks = [], []
        for i in range(1, len(indices)):
            if indices[i] == indices[i - 1]:  # a repeated (clamped) frame: exactly the identity
                homs.append(np.eye(3))
                fallbacks.append(False)
                continue
            # no FramePair: these are augmented frames, so an on-disk cache keyed by the pair would be wrong
            homs.append(np.asarray(self.registration.estimate_np(frames[i - 1], frames[i], None), np.float64))
            fallbacks.append(bool((getattr(self.registration, "last_fallbacks", None) or [False])[-1]))
        return self._stack_homs(homs), np.asarray(fallbacks, dtype=bool)

    @staticmethod
    def _stack_homs(homs: list[np.ndarray]) -> np.ndarray:
        if not homs:
            return np.zeros((0, 3, 3), np.float32)
        # normalise the projective scale (h33 = 1) before the float32 cast; keeps entries well-conditioned
        return np.stack([h / h[2, 2] for h in homs]).astype(np.float32)

    def _flows_at_input(self, clip: Clip, indices: tuple[int, ...]) -> list[np.ndarray | None]:
        """Soft-target list for :class:`ClipSample`: entry i (i >= 1) = backward flow of frame i onto frame
        i-1 as (2, H, W) float32 at ``size_hw`` (vectors rescaled with the resize); entry 0 = None."""
        h, w = self.size_hw
        soft: list[np.ndarray | None] = [None]
        for a, b in zip(indices, indices[1:], strict=False):
            if b == a:  # repeated (clamped) frame: no motion
                soft.append(np.zeros((2, h, w), np.float32))
                continue
            if b != a + 1:
                raise ValueError(
                    f"gt_flow needs contiguous offsets: frames {a} and {b} of {clip.name} are not neighbours"
                )
            flow = load_flow(clip.dir, clip.frames[b].stem, "backward")  # [Hd, Wd, 2] on frame b's pixels
            dh, dw = flow.shape[:2]
            f = resize_soft(np.ascontiguousarray(flow.transpose(2, 0, 1)), (h, w))
            f[0] *= w / dw  # a resize by s maps a displacement d to s d (pixel-centre offsets cancel)
            f[1] *= h / dh
            soft.append(f)
        return soft

    @staticmethod
    def _flows_out(
        soft: list[np.ndarray | None] | None, m: np.ndarray, out_hw: tuple[int, int]
    ) -> np.ndarray:
        """Warped flow fields -> [T-1,2,H,W] float32 with vectors mapped by the linear part of ``m``:
        ``f_out(p) = A f(M^-1 p)`` (exact because ``M`` is affine)."""
        if soft is None or len(soft) < 2:
            return np.zeros((0, 2, *out_hw), np.float32)
        if np.abs(m[2] - (0.0, 0.0, 1.0)).max() > 1e-9:
            raise ValueError("flows can only be carried through affine augmentation geometry")
        a = m[:2, :2].astype(np.float32)
        flows = np.stack(soft[1:])  # [T-1,2,H,W]; entries 1.. are always set by _flows_at_input
        return np.ascontiguousarray(np.einsum("ij,tjhw->tihw", a, flows), dtype=np.float32)


def _join_soft(
    flows: list[np.ndarray | None] | None, maps: list[np.ndarray] | None
) -> list[np.ndarray | None] | None:
    """One soft map per frame for the augmentation: the teacher's maps, then the flow's 2 channels (zeros where a
    frame has no flow), so that both take the same draw."""
    if maps is None:
        return flows
    if flows is None:
        return maps
    return [
        np.concatenate([mp.astype(np.float32), np.zeros((2, *mp.shape[1:]), np.float32) if f is None else f])
        for mp, f in zip(maps, flows, strict=True)
    ]


def _split_soft(
    soft: list[np.ndarray | None] | None,
    flows: list[np.ndarray | None] | None,
    maps: list[np.ndarray] | None,
) -> tuple[list[np.ndarray | None] | None, list[np.ndarray] | None]:
    """Undo :func:`_join_soft` on the augmented maps: (flows, teacher maps), in the teacher maps' own dtype."""
    if maps is None or flows is None:
        return (soft, None) if maps is None else (None, soft)
    c = maps[0].shape[0]
    return [None, *(s[c:] for s in soft[1:])], [
        s[:c].astype(mp.dtype) for s, mp in zip(soft, maps, strict=True)
    ]


def video_samples(
    clips: list[Clip],
    info: DatasetInfo,
    size_hw: tuple[int, int],
    needs: DataNeeds,
    *,
    train: bool,
    augment: VideoTrainAugment | None = None,
    square_crop: bool = False,
    skip: int | None = None,
    seed: int = 0,
    edge_policy: EdgePolicy = "drop",
) -> FramePairs:
    """The :class:`FramePairs` that serve exactly what ``needs`` (a video model's and its step's) asks for."""
    return FramePairs(
        clips, info, size_hw, offsets=needs.offsets, train=train, augment=augment, square_crop=square_crop,
        skip=skip, seed=seed, edge_policy=edge_policy, registration=needs.registration,
        gt_homographies=needs.true_homographies, gt_flow=needs.true_flows, max_key_offset=needs.max_key_offset,
        teacher=needs.teacher if train else None,  # the training dump; validation may get its own (train_video)
    )  # fmt: skip
