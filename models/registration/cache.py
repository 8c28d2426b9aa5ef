"""On-disk cache of homographies per frame pair, wrapped around any provider.

Key: sha1 of (provider settings, frame resolution, both frame paths resolved with their byte size and
``mtime_ns``); changing a setting, resizing, or rewriting a frame file misses. The key does not see the pixels:
only pass ``pairs`` for frames that are the files' content, resized at most (evaluation, unaugmented training).
Calls without pairs pass straight through.

Layout: ``<cache_dir>/<provider>/<key[:2]>/<key>.npy``, float64 ``[10]``: ``H`` row-major, then 1.0 if the
estimate fell back to the identity (so cached fallbacks are still counted). Files are written to a temporary name
and moved into place (``os.replace``), so concurrent data-loader workers never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from config.errors import DataError
from data.frames import FramePair
from models.flow.base import check_frames
from models.registration.base import RegistrationProvider, check_frames_np


def _file_id(path: Path) -> list[Any]:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as err:
        raise DataError(
            f"{p}: cannot read the frame file for the registration cache key ({err.strerror})"
        ) from None
    return [str(p), st.st_size, st.st_mtime_ns]


class CachedRegistration(RegistrationProvider):
    """``provider`` with its results cached under ``cache_dir`` (same interface as a provider)."""

    def __init__(self, provider: RegistrationProvider, cache_dir: str | Path) -> None:
        super().__init__()
        self.inner = provider
        self.name = provider.name
        self.runs_in_loader = provider.runs_in_loader
        self.needs_pairs = provider.needs_pairs
        self.cache_dir = Path(cache_dir)

    def settings(self) -> dict[str, Any]:
        return {**self.inner.settings(), "cache_dir": str(self.cache_dir)}

    def key(self, pair: FramePair, size_hw: tuple[int, int]) -> str:
        """sha1 hex of the inner settings, the frame resolution and both frame files' identity."""
        blob = {
            "settings": self.inner.settings(),
            "size_hw": list(size_hw),
            "first": _file_id(pair.first_path),
            "second": _file_id(pair.second_path),
        }
        return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / self.name / key[:2] / f"{key}.npy"

    def _load(self, key: str) -> tuple[np.ndarray, bool] | None:
        path = self._path(key)
        try:
            rec = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # absent, or damaged: recompute and overwrite
            return None
        if rec.shape != (10,) or not np.isfinite(rec).all():
            return None
        return rec[:9].reshape(3, 3), bool(rec[9])

    def _save(self, key: str, h: np.ndarray, fallback: bool) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.concatenate([np.asarray(h, np.float64).ravel(), [float(fallback)]]))
        os.replace(tmp, path)

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
