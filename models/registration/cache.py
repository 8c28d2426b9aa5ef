"""On-disk cache of homographies per frame pair, wrapped around any provider.

Keys, layout and atomic writes are :class:`data.pair_cache.PairStore`'s (``<cache_dir>/<provider>/...``): only
pass ``pairs`` for frames that are the files' content, resized at most (evaluation, unaugmented training); calls
without pairs pass straight through. A record is float64 ``[10]``: ``H`` row-major, then 1.0 if the estimate
fell back to the identity (so cached fallbacks are still counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data.frames import FramePair
from data.pair_cache import PairStore
from models.flow.base import check_frames
from models.registration.base import RegistrationProvider, check_frames_np


class CachedRegistration(RegistrationProvider):
    """``provider`` with its results cached under ``cache_dir`` (same interface as a provider)."""

    def __init__(self, provider: RegistrationProvider, cache_dir: str | Path) -> None:
        super().__init__()
        self.inner = provider
        self.name = provider.name
        self.runs_in_loader = provider.runs_in_loader
        self.needs_pairs = provider.needs_pairs
        self.cache_dir = Path(cache_dir)
        self.store = PairStore(self.cache_dir, provider.name)

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "cache_dir": str(self.cache_dir)}

    def key(self, pair: FramePair, size_hw: tuple[int, int]) -> str:
        """sha1 hex of the inner settings, the frame resolution and both frame files' identity."""
        return PairStore.key(self.inner.settings(), pair, size_hw)

    def _path(self, key: str) -> Path:
        return self.store.path(key)

    def _load(self, key: str) -> tuple[np.ndarray, bool] | None:
        rec = self.store.load(key)  # None when absent or damaged: recompute and overwrite
        if rec is None or rec.shape != (10,) or not np.isfinite(rec).all():
            return None
        return rec[:9].reshape(3, 3), bool(rec[9])

    def _save(self, key: str, h: np.ndarray, fallback: bool) -> None:
        self.store.save(key, np.concatenate([np.asarray(h, np.float64).ravel(), [float(fallback)]]))

    def _lookup(self, keys: Sequence[str]) -> list[tuple[np.ndarray, bool] | None]:
        found = [self._load(k) for k in keys]
        hits = [f for f in found if f is not None]
        self._stats["cache_hits"] += len(hits)
        self._stats["cache_misses"] += len(found) - len(hits)
        self._stats["pairs"] += len(hits)
        self._stats["fallback_identity"] += sum(fb for _, fb in hits)
        return found

    def _store(self, keys: Sequence[str], hs: Sequence[np.ndarray]) -> None:
        for k, h, fb in zip(keys, hs, self.inner.last_fallbacks, strict=True):
            self._save(k, h, fb)

    def estimate(self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None = None) -> Tensor:
        if pairs is None:
            return self.inner.estimate(prev, cur)
        check_frames(prev, cur, pairs, f"registration '{self.name}'")
        keys = [self.key(p, tuple(prev.shape[-2:])) for p in pairs]
        found = self._lookup(keys)
        out = torch.empty((prev.shape[0], 3, 3), dtype=torch.float32, device=prev.device)
        miss = [i for i, f in enumerate(found) if f is None]
        for i, f in enumerate(found):
            if f is not None:
                out[i] = torch.from_numpy(f[0])
        if miss:
            hs = self.inner.estimate(prev[miss], cur[miss], [pairs[i] for i in miss])
            out[miss] = hs
            self._store([keys[i] for i in miss], hs.double().cpu().numpy())
        return out

    def estimate_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None = None) -> np.ndarray:
        if pair is None:
            return self.inner.estimate_np(prev, cur)
        check_frames_np(prev, cur, f"registration '{self.name}'")
        key = self.key(pair, prev.shape[:2])
        found = self._lookup([key])[0]
        if found is not None:
            return found[0]
        h = self.inner.estimate_np(prev, cur, pair)
        self._store([key], [h])
        return h

    def stats(self) -> dict[str, int]:
        """The inner provider's counters plus this cache's hits (whose pairs and fallbacks count too)."""
        inner = self.inner.stats()
        own = self._stats
        return {
            **inner,
            **{k: inner[k] + own[k] for k in ("pairs", "fallback_identity")},
            "cache_hits": own["cache_hits"],
            "cache_misses": own["cache_misses"],
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self.inner.reset_stats()
