"""Reading a prepared dataset: its clips, their frames, and which frames are labelled.

Prepared layout (shared by the real datasets and the synthetic one, ``ssp.md`` §7.4)::

    <root>/train.txt, <root>/val.txt[, <root>/test.txt]     one clip folder name per line
    <root>/data/<clip>/origin/<stem>.png                     frames, sorted by name
    <root>/data/<clip>/mask/<stem>.png                       raw labels of the labelled frames (id + 1, 0 = ignore)

Everything that can be wrong with a dataset on disk becomes a one-line :class:`DataError` that names the file and
says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from config.errors import DataError
from data.catalog import DatasetInfo, get_dataset_info

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Clip:
    """One clip of consecutive frames. ``masks`` maps a frame index in the clip to its mask file."""

    name: str
    frames: tuple[Path, ...]
    masks: dict[int, Path] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def labelled(self) -> list[int]:
        """Indices of the labelled frames, ascending."""
        return sorted(self.masks)

    @property
    def dir(self) -> Path:
        return self.frames[0].parent.parent

    def pair(self, first: int, second: int) -> FramePair:
        """The frames ``first`` -> ``second`` of this clip (bounds-checked, never wrapped)."""
        if not (0 <= first < len(self.frames) and 0 <= second < len(self.frames)):
            raise IndexError(
                f"frame pair ({first}, {second}) outside clip {self.name} of {len(self.frames)} frames"
            )
        return FramePair(self.frames[first], self.frames[second], first, second)


@dataclass(frozen=True)
class FramePair:
    """Two frames of one clip on disk, ``first -> second``: what a flow or registration provider needs to find
    stored results (true flow / homographies of the synthetic set, on-disk caches).

    Flow providers return the flow on ``first``'s pixels pointing into ``second``; registration providers return
    ``H`` with ``p_second ~ H p_first`` (``first`` = previous frame, ``second`` = current frame).
    """

    first_path: Path
    second_path: Path
    first: int  # index of the first frame in its clip
    second: int

    @property
    def clip_dir(self) -> Path:
        return self.first_path.parent.parent


def dataset_root(dataset: str, path: str | None) -> Path:
    """The dataset root: ``data_cfg.path`` or the descriptor's default folder."""
    return Path(path) if path else Path(get_dataset_info(dataset).default_root)


def more_samples_hint(dataset: str, path: str | None, samples: int) -> str:
    """``, or generate ...``: how the dataset itself can give ``samples`` training samples, for messages that
    suggest a smaller batch first. Empty for a real dataset: it has the labelled frames it has."""
    if get_dataset_info(dataset).name != "synthetic":
        return ""
    from data.synthetic.generate import more_clips_command  # generator only when needed

    return f", or generate more clips with `{more_clips_command(dataset_root(dataset, path), samples)}`"


def ensure_dataset(dataset: str, path: str | None, size_hw: tuple[int, int], generate: bool = True) -> Path:
    """Return the root of a prepared dataset; the synthetic set is generated on demand at ``size_hw``.

    A missing real dataset is a :class:`DataError` that says how to prepare it.
    """
    info = get_dataset_info(dataset)
    root = dataset_root(dataset, path)
    if info.name == "synthetic" and generate:
        from data.synthetic import SyntheticParams, ensure_synthetic  # generator only when needed

        return ensure_synthetic(root, SyntheticParams(height=size_hw[0], width=size_hw[1]))
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} not found: prepare it with {info.prepare_hint(root)} "
            f"(README, 'Real datasets') or set data_cfg.path"
        )
    return root


def read_split(root: Path, split: str, info: DatasetInfo, min_len: int = 0) -> list[Clip]:
    """The clips listed in ``<root>/<split>.txt`` (duplicates removed, order kept)."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    listing = root / f"{split}.txt"
    if not listing.is_file():
        extra = " (the preparation writes train.txt and val.txt only)" if split == "test" else ""
        raise DataError(f"{listing} not found{extra}: prepare the dataset with {info.prepare_hint(root)}")
    names = list(dict.fromkeys(line.strip() for line in listing.read_text().splitlines() if line.strip()))
    clips = [read_clip(root / "data" / name, name, info) for name in names]
    if not clips:
        raise DataError(f"{listing} lists no clips: re-run the preparation ({info.prepare_hint(root)})")
    return [c for c in clips if len(c) >= min_len]


def open_split(dcfg: Any, split: str, min_len: int = 0) -> tuple[Path, DatasetInfo, list[Clip]]:
    """The dataset of a ``data_cfg`` (generated first when it is the synthetic set and missing) and the clips of
    ``split``: ``(root, dataset descriptor, clips)``. Clips shorter than ``min_len`` frames are left out."""
    info = get_dataset_info(dcfg.dataset)
    root = ensure_dataset(dcfg.dataset, dcfg.path, tuple(dcfg.crop_size), dcfg.generate_if_missing)
    return root, info, read_split(root, split, info, min_len)


def read_clip(clip_dir: Path, name: str, info: DatasetInfo) -> Clip:
    """Index one clip folder: its frames and which of them have masks."""
    origin = clip_dir / "origin"
    root = clip_dir.parent.parent  # <root>/data/<clip>
    if not origin.is_dir():
        raise DataError(
            f"{origin} not found: the clip is listed but missing; re-run {info.prepare_hint(root)}"
        )
    frames = tuple(sorted(origin.glob("*.png")) + sorted(origin.glob("*.jpg")))
    if not frames:
        raise DataError(f"{origin} holds no frames (*.png): re-run {info.prepare_hint(root)}")
    index = {p.stem: i for i, p in enumerate(frames)}
    masks: dict[int, Path] = {}
    for mask in sorted((clip_dir / "mask").glob("*.png")):
        if mask.stem not in index:
            raise DataError(f"{mask} has no matching frame in {origin}: re-run {info.prepare_hint(root)}")
        masks[index[mask.stem]] = mask
    return Clip(name=name, frames=frames, masks=masks)


def read_frame(path: Path) -> np.ndarray:
    """An RGB frame (H, W, 3) uint8; an unreadable file is a :class:`DataError` naming it."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot read the image (missing or corrupt); re-create or remove it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, info: DatasetInfo) -> np.ndarray:
    """A prepared mask as training ids (H, W) uint8, 255 = ignore; bad values raise naming the file."""
    parents = Path(path).parents  # <root>/data/<clip>/mask/<stem>.png
    root = parents[3] if len(parents) > 3 else None
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(
            f"{path}: cannot read the mask (missing or corrupt); re-run {info.prepare_hint(root)}"
        )
    if raw.ndim == 3:
        raise DataError(
            f"{path}: masks must be single-channel id images, not colour; re-run {info.prepare_hint(root)}"
        )
    if raw.dtype != np.uint8:
        raise DataError(f"{path}: masks must be 8-bit, got {raw.dtype}; re-run {info.prepare_hint(root)}")
    return info.mask_to_train_ids(raw, path, root)


def frame_sampling(n_frames: int, skip: int) -> list[int]:
    """Indices ``i`` with ``i mod skip in {0, 1}`` (the reference ``--skip-frames`` rule: each sampled frame
    and its predecessor); ``skip`` 1 or 2 keeps every frame."""
    if skip < 1:
        raise DataError(f"--skip-frames must be at least 1, got {skip}")
    return [i for i in range(n_frames) if skip <= 2 or i % skip in (0, 1)]
