"""The homography (global registration) provider interface, ``ssp.md`` §3.2.

Convention: ``H = H_{t-1 -> t}`` with ``p_cur ~ H p_prev`` in homogeneous pixel coordinates at the frame
resolution, pixel centres at integer coordinates (as :func:`models.warp.homography_warp` expects).

Providers are plain objects, not ``nn.Module``s, so that frozen matching networks stay out of model state dicts.
A failed estimate (too few matches or inliers, a degenerate or non-finite fit) is replaced by the identity and
counted in :meth:`RegistrationProvider.stats`, never printed per frame.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data.frames import FramePair
from models.flow.base import check_frames, to_uint8_rgb

_COUNTERS = ("pairs", "fallback_identity", "cache_hits", "cache_misses", "feature_reuse")


def valid_homography(h: np.ndarray | None) -> np.ndarray | None:
    """``h`` normalised to ``h[2,2] = 1`` as float64 ``[3,3]``, or None when missing, non-finite or degenerate."""
    if h is None:
        return None
    h = np.asarray(h, dtype=np.float64)
    if h.shape != (3, 3) or not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return None
    h = h / h[2, 2]
    if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-8:  # singular: collapses the frame
        return None
    return h


def check_frames_np(prev: np.ndarray, cur: np.ndarray, what: str) -> None:
    """Both frames ``[H,W,3]`` uint8 RGB of one size."""
    if prev.shape != cur.shape or prev.ndim != 3 or prev.shape[2] != 3 or prev.dtype != np.uint8:
        raise ValueError(
            f"{what}: expected two HxWx3 uint8 RGB frames of one shape, got {prev.shape} "
            f"{prev.dtype} and {cur.shape} {cur.dtype}"
        )


class RegistrationProvider(ABC):
    """Estimates ``H_{prev -> cur}`` for frame pairs, in the model (tensors) or in the data loader (numpy).

    Subclasses implement :meth:`settings` and either :meth:`_fit_np` (one uint8 pair on the CPU; the default
    :meth:`_fit_batch` converts tensors and loops over it) or :meth:`_fit_batch` itself. Both return raw
    estimates or None; :meth:`_record` validates them, substitutes the identity and counts.

    Attributes:
        name: the registry name.
        runs_in_loader: whether :meth:`estimate_np` works (CPU providers), i.e. the data loader may call it.
        needs_pairs: whether it reads stored results for frames on disk (``gt``): augmented training frames then
            get their homographies from the dataset's ground truth instead.
        last_fallbacks: per sample of the latest call, whether it fell back to the identity (for the cache).
    """

    name: str = ""
    runs_in_loader: bool = True
    needs_pairs: bool = False
    precision: str = "float32"  # what estimate() runs the provider in, whatever the caller's autocast

    def __init__(self) -> None:
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self.last_fallbacks: list[bool] = []

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-ready description (provider, thresholds and their semantics, ...): recorded and the cache key."""

    def _fit_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None) -> np.ndarray | None:
        """Raw ``H`` (3x3) for one ``HxWx3`` uint8 RGB pair, or None on failure."""
        raise NotImplementedError(f"registration provider '{self.name}' has no CPU path")

    def _fit_batch(
        self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None
    ) -> list[np.ndarray | None]:
        """Raw estimates for a ``[B,3,H,W]`` batch; default: uint8 conversion and :meth:`_fit_np` per sample."""
        a, b = to_uint8_rgb(prev), to_uint8_rgb(cur)
        return [self._fit_np(a[i], b[i], pairs[i] if pairs is not None else None) for i in range(len(a))]

    def _record(self, raw: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        """Validate raw estimates, replace failures by the identity and count both."""
        out, flags = [], []
        for h in raw:
            ok = valid_homography(h)
            flags.append(ok is None)
            out.append(np.eye(3) if ok is None else ok)
        self._stats["pairs"] += len(out)
        self._stats["fallback_identity"] += sum(flags)
        self.last_fallbacks = flags
        return out

    def estimate(self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None = None) -> Tensor:
        """``H`` ``[B,3,3]`` float32 on ``prev.device`` for ``prev``/``cur`` ``[B,3,H,W]`` RGB in [0,1].

        ``pairs`` (one per sample) name the frames on disk: ``gt`` needs them, the cache keys on them. Pass them
        only for frames that are the files' content (resized is fine, augmented or cropped is not).
        """
        check_frames(prev, cur, pairs, f"registration '{self.name}'")
        # float32 even inside a bf16-autocast step: a frozen helper, and its output is geometry (see flow providers)
        with torch.no_grad(), torch.autocast(prev.device.type, enabled=False):
            hs = self._record(self._fit_batch(prev.float(), cur.float(), pairs))
        return torch.from_numpy(np.stack(hs)).to(device=prev.device, dtype=torch.float32)

    def estimate_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None = None) -> np.ndarray:
        """``H`` float64 ``[3,3]`` for two ``HxWx3`` uint8 RGB frames (the data-loader path, CPU providers)."""
        check_frames_np(prev, cur, f"registration '{self.name}'")
        return self._record([self._fit_np(prev, cur, pair)])[0]

    def stats(self) -> dict[str, int]:
        """Counters since the last :meth:`reset_stats`: ``pairs``, ``fallback_identity``, ``cache_hits``,
        ``cache_misses`` (on-disk cache), ``feature_reuse`` (previous frame's features reused while streaming)."""
        return dict(self._stats)

    def reset_stats(self) -> None:
        self._stats = dict.fromkeys(_COUNTERS, 0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"
