"""On-disk cache of optical flow per frame pair, wrapped around any flow provider (:class:`CachedFlow`).

Keys, layout and atomic writes are :class:`data.pair_cache.PairStore`'s, under ``<cache_dir>/flow_<provider>/``:
a record is the float32 flow ``[2,H,W]`` of ``first -> second`` at the frames' resolution. Only calls with
``pairs`` (frames that are the files' content, resized at most) are cached; others pass straight through.
``python -m data.flow_cache`` fills it ahead of training.
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
from models.flow.base import FlowProvider


class CachedFlow(FlowProvider):
    """``provider`` with its flows of frame pairs on disk under ``cache_dir`` (same interface as a provider)."""

    def __init__(self, provider: FlowProvider, cache_dir: str | Path) -> None:
        self.inner, self.cache_dir = provider, Path(cache_dir)
        self.name, self.needs_pairs, self.precision = provider.name, provider.needs_pairs, provider.precision
        self.store = PairStore(self.cache_dir, f"flow_{provider.name}")
        self.hits = self.misses = 0

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "cache_dir": str(self.cache_dir)}

    def key(self, pair: FramePair, size_hw: tuple[int, int]) -> str:
        return PairStore.key(self.inner.settings(), pair, size_hw)

    def stats(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses}

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        if pairs is None:
            return self.inner(img1, img2)
        size = tuple(img1.shape[-2:])
        keys = [self.key(p, size) for p in pairs]
        found = [self.store.load(k) for k in keys]
        found = [
            f if f is not None and f.shape == (2, *size) else None for f in found
        ]  # a damaged record misses
        miss = [i for i, f in enumerate(found) if f is None]
        self.hits += len(found) - len(miss)
        self.misses += len(miss)
        out = torch.empty((img1.shape[0], 2, *size), dtype=torch.float32)
        for i, f in enumerate(found):
            if f is not None:
                out[i] = torch.from_numpy(np.asarray(f, np.float32))
        if miss:
            flows = self.inner(img1[miss], img2[miss], [pairs[i] for i in miss]).cpu()
            for j, i in enumerate(miss):
                out[i] = flows[j]
                self.store.save(keys[i], flows[j].numpy().astype(np.float32))
        return out
