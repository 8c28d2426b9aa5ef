"""Unlabelled training frames with the optical flow to their partner frame (semi-supervised training,
``other_methods.md`` §1.1-1.2).

The pool is the training split's frames with their labels hidden: the annotated frames (the reference: the
annotated frame of each Cityscapes snippet, labelled ones included) or every frame of the clips, each paired with
the frame ``t + offset`` of its clip (frames without a partner are left out). The flow ``t -> t + offset`` comes
from the one flow cache (:class:`models.flow.cache.CachedFlow`, filled ahead by ``python -m data.flow_cache``);
a pair it lacks is computed on the fly in the loader and stored, so a later run computes no flow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.frames import Clip, FramePair, read_frame
from data.transforms import resize_frame, to_tensor
from models.flow.base import FlowProvider
from models.flow.cache import CachedFlow

POOLS = ("annotated", "all")


def partner_pairs(
    clips: list[Clip], pool: str, offset: int = 1, exclude: set[tuple[str, str]] | None = None
) -> list[FramePair]:
    """``t -> t + offset`` for the frames ``t`` of ``pool`` (``annotated``: each clip's labelled frames; ``all``:
    every frame) that have a partner in their clip, minus the ``(clip, stem)`` frames in ``exclude``."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    out = []
    for clip in clips:
        starts = clip.labelled if pool == "annotated" else range(len(clip))
        out += [clip.pair(t, t + offset) for t in starts if 0 <= t + offset < len(clip)
                and (clip.name, clip.frames[t].stem) not in (exclude or ())]  # fmt: skip
    return out


def frame01(path: Path, size_hw: tuple[int, int]) -> torch.Tensor:
    """A frame file resized to ``size_hw`` as ``[1,3,H,W]`` RGB float in [0, 1] (what flow providers take)."""
    return torch.from_numpy(resize_frame(read_frame(path), size_hw)).permute(2, 0, 1)[None].float() / 255.0


def mask_bottom_rows(flow: torch.Tensor, fraction: float) -> torch.Tensor:
    """``flow`` [...,2,H,W] with the bottom ``fraction`` of rows set to zero (the reference's
    ``discard_flow_bottom``, the ego-vehicle's hood; the loss ignores zero-flow neighbours, so this masks them)."""
    out = flow.clone()
    rows = int(round(flow.shape[-2] * fraction))
    if rows > 0:
        out[..., flow.shape[-2] - rows :, :] = 0
    return out


class UnlabelledPairs(Dataset):
    """Item: ``image`` [3,H,W] float (ImageNet-normalised), ``flow`` [2,H,W] float32 in pixels of ``size_hw``
    (``t -> t + offset``, bottom ``mask_bottom`` of the rows zeroed), ``index`` (into :attr:`pairs`).

    No augmentation (the reference's recipe has none; a flip or crop would have to move the flow with it).

    Args:
        pairs: from :func:`partner_pairs`.
        size_hw: the network input size, at which the flow is computed and read.
        flow: the provider; a :class:`CachedFlow` reads and fills its cache.
    """

    def __init__(
        self, pairs: list[FramePair], size_hw: tuple[int, int], flow: FlowProvider, mask_bottom: float = 0.0
    ) -> None:
        if not pairs:
            raise ValueError("no unlabelled frame has a partner frame")
        self.pairs, self.size_hw, self.flow, self.mask_bottom = pairs, tuple(size_hw), flow, mask_bottom

    def missing(self) -> int:
        """Pairs whose flow is not cached yet (all of them without a cache): computed on the fly when read."""
        if not isinstance(self.flow, CachedFlow):
            return len(self.pairs)
        return sum(not self.flow.store.path(self.flow.key(p, self.size_hw)).is_file() for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def read_flow(self, pair: FramePair) -> torch.Tensor:
        """``[2,H,W]`` flow of one pair from the cache, computed (and stored) when it is not there."""
        if isinstance(self.flow, CachedFlow):
            stored = self.flow.store.load(self.flow.key(pair, self.size_hw))
            if stored is not None and stored.shape == (2, *self.size_hw):
                return torch.from_numpy(np.array(stored, np.float32))
        with torch.no_grad():
            a, b = frame01(pair.first_path, self.size_hw), frame01(pair.second_path, self.size_hw)
            return self.flow(a, b, [pair])[0].float().cpu()

    def __getitem__(self, idx: int) -> dict:
        pair = self.pairs[idx]
        rgb = resize_frame(read_frame(pair.first_path), self.size_hw)
        flow = self.read_flow(pair)
        if self.mask_bottom > 0:
            flow = mask_bottom_rows(flow, self.mask_bottom)
        return {"image": to_tensor([rgb])[0], "flow": flow, "index": idx}
