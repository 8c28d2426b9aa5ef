"""The stream's teacher frames and label maps for the online loop: decoded once, sequentially, and kept.

The loop needs every teacher frame several times and out of order: the test window (ahead), the FWT window
(``L * s_S`` frames further ahead), the training window and the replay store (behind), the BWT window (far
behind), and the final pass (all of them again). Decoding by seeking is slow and inexact with some codecs
(``other_methods.md`` §3.2, quirk 8), so :class:`FrameStore` decodes the videos once, in stream order, as far as
the loop has asked, keeping only the teacher frames, resized to the student's input size, as uint8 in one array:

- in RAM (``np.empty``): ``n_frames * H * W * 3`` bytes, e.g. 360 frames of 128 x 224 = 31 MB (the default
  synthetic stream at s_T 4), but 3600 frames of 1080p = 22 GB (3 h of Cityscapes-like video at s_T 75);
- or in a file (``np.memmap``; the page cache keeps what fits in RAM), deleted when the store closes.

:class:`LabelStore` keeps the label maps of one pseudo-GT folder in a dict in RAM mode (``n * h * w`` bytes), and
re-reads the compressed ``npz`` file at each use in disk mode (those files already are the disk cache).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from config.errors import DataError
from data.transforms import resize_frame
from training.online.teacher_label import iter_frames, read_seg, seg_path

Frame = tuple[str, int]  # (video stem, frame index in the video)


def video_size(path: Path) -> tuple[int, int]:
    """(H, W) of a video from its header."""
    cap = cv2.VideoCapture(str(path))
    try:
        h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        cap.release()
    if h <= 0 or w <= 0:
        raise DataError(f"{path}: OpenCV cannot read this video's frame size")
    return h, w


def video_fps(path: Path) -> float | None:
    """Frames per second from a video's header (None when it does not say)."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    return fps if fps > 0 else None


class FrameStore:
    """The teacher frames ``frames`` (stream order) of the videos in ``videos`` (stem -> path), as uint8 RGB
    ``[H, W, 3]`` at ``size_hw``, decoded sequentially on demand and kept.

    Args:
        videos: every video stem of ``frames`` -> its mp4 path.
        frames: the teacher frames in stream order (``stream_frames``); a key of the loop is an index into it.
        size_hw: (H, W) every frame is resized to (the student's input size).
        cache_file: None = keep the frames in RAM; a path = keep them in this file (removed by :meth:`close`).
    """

    def __init__(self, videos: dict[str, Path], frames: Sequence[Frame], size_hw: tuple[int, int],
                 cache_file: Path | None = None) -> None:  # fmt: skip
        self.frames, self.size_hw, self.cache_file = list(frames), tuple(size_hw), cache_file
        shape = (len(self.frames), *self.size_hw, 3)
        if cache_file is None:
            self.array = np.empty(shape, np.uint8)
        else:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            self.array = np.memmap(cache_file, dtype=np.uint8, mode="w+", shape=shape)
        self.decoded = 0  # frames [0, decoded) are in the array
        self.decode_seconds = 0.0
        self._reader = self._read(videos)

    @staticmethod
    def nbytes(n_frames: int, size_hw: Sequence[int]) -> int:
        """Bytes the store of ``n_frames`` frames of ``size_hw`` holds."""
        return n_frames * int(size_hw[0]) * int(size_hw[1]) * 3

    def _read(self, videos: dict[str, Path]) -> Iterator[tuple[str, int, np.ndarray]]:
        """(video, index, RGB frame) of every teacher frame, in stream order: each video decoded once."""
        by_video: dict[str, set[int]] = {}
        for stem, idx in self.frames:
            by_video.setdefault(stem, set()).add(idx)
        for stem in dict.fromkeys(s for s, _ in self.frames):  # stream order of the videos
            for idx, rgb in iter_frames(videos[stem], by_video[stem]):
                yield stem, idx, rgb

    def _decode_until(self, index: int) -> None:
        """Decode (in stream order) until frame ``index`` is in the array."""
        start = time.perf_counter()
        try:
            while self.decoded <= index:
                stem, idx, rgb = next(self._reader)
                if (stem, idx) != self.frames[self.decoded]:  # iter_frames yields exactly the asked indices
                    raise RuntimeError(f"decoded {stem}/{idx}, expected {self.frames[self.decoded]}")
                if rgb.shape[:2] != self.size_hw:
                    rgb = resize_frame(rgb, self.size_hw)
                self.array[self.decoded] = rgb
                self.decoded += 1
        finally:
            self.decode_seconds += time.perf_counter() - start

    def images(self, keys: Sequence[int]) -> np.ndarray:
        """Frames ``[len(keys), H, W, 3]`` uint8 RGB of the stream indices ``keys`` (any order)."""
        if len(keys):
            self._decode_until(max(keys))
        return (
            np.stack([self.array[k] for k in keys])
            if len(keys)
            else np.empty((0, *self.size_hw, 3), np.uint8)
        )

    def close(self) -> None:
        """Release the array and remove the cache file (if any; Linux keeps a mapped file's data until unmapped)."""
        self.array = None  # type: ignore[assignment]
        if self.cache_file is not None:
            self.cache_file.unlink(missing_ok=True)


class LabelStore:
    """The label maps uint8 ``[h, w]`` of one pseudo-GT folder for the stream's teacher frames.

    Args:
        folder: ``<dataset>/pseudo_groundtruth_seg/<name>``.
        frames: the teacher frames in stream order.
        keep: keep every map read in RAM (else re-read the npz at each use).
    """

    def __init__(self, folder: Path, frames: Sequence[Frame], keep: bool = True) -> None:
        self.folder, self.frames, self.keep = Path(folder), list(frames), keep
        self._cache: dict[int, np.ndarray] = {}
        self.read_seconds = 0.0

    @property
    def name(self) -> str:
        return self.folder.name

    def get(self, key: int) -> np.ndarray:
        """The label map of stream index ``key``."""
        seg = self._cache.get(key)
        if seg is None:
            start = time.perf_counter()
            seg = read_seg(self.folder, *self.frames[key])
            self.read_seconds += time.perf_counter() - start
            if self.keep:
                self._cache[key] = seg
        return seg

    def missing(self) -> list[Path]:
        """Label files of the stream's frames that do not exist (checked before any work)."""
        return [p for p in (seg_path(self.folder, s, i) for s, i in self.frames) if not p.is_file()]


__all__ = ["Frame", "FrameStore", "LabelStore", "video_fps", "video_size"]
