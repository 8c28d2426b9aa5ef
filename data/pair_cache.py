"""One on-disk store for results computed on a pair of frame files (homographies, optical flow), written and read
by the same code.

Key: sha1 of (the provider's settings, the frame resolution, both frame paths resolved with their byte size and
``mtime_ns``): changing a setting, resizing, or rewriting a frame file misses. The key does not see the pixels, so
only frames that are the files' content (resized at most) may be looked up. Layout:
``<root>/<name>/<key[:2]>/<key>.npy``. Files are written under a unique temporary name and moved into place
(``os.replace``), so concurrent data-loader workers never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import DataError
from data.frames import FramePair


def file_id(path: Path) -> list[Any]:
    """``[resolved path, size, mtime_ns]`` of a frame file (part of the key)."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as err:
        raise DataError(f"{p}: cannot read the frame file for the cache key ({err.strerror})") from None
    return [str(p), st.st_size, st.st_mtime_ns]


class PairStore:
    """Arrays keyed by a frame pair and settings under ``<root>/<name>/``."""

    def __init__(self, root: str | Path, name: str) -> None:
        self.root, self.name = Path(root), name

    @staticmethod
    def key(settings: dict[str, Any], pair: FramePair, size_hw: tuple[int, int]) -> str:
        """sha1 hex of the settings, the frame resolution and both frame files' identity."""
        blob = {"settings": settings, "size_hw": list(size_hw), "first": file_id(pair.first_path),
                "second": file_id(pair.second_path)}  # fmt: skip
        return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / self.name / key[:2] / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        """The stored array, or None when absent or unreadable (then it is recomputed and overwritten)."""
        try:
            return np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def save(self, key: str, array: np.ndarray) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Bytes the store holds (every ``.npy`` under ``<root>/<name>``)."""
        base = self.root / self.name
        return sum(p.stat().st_size for p in base.rglob("*.npy")) if base.is_dir() else 0
