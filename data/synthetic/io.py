"""Reading and writing the synthetic set's files: frames, masks, homographies, flow, metadata.

Layout of a clip folder ``<root>/data/<clip>/``:

- ``origin/%06d.png`` RGB frames; ``mask/<stem>.png`` raw labels (class id + 1, 0 = ignore);
- ``homographies.npy`` float64 [T, 3, 3], entry t = H_{t-1 -> t} on pixel coordinates, entry 0 = identity;
- ``flow/<stem>.npz`` float16 [H, W, 2] arrays "forward" (t -> t+1, not for the last frame) and "backward"
  (t -> t-1, not for the first frame), channel 0 = x, 1 = y, with frame_{t+1}(x + F(x)) ~ frame_t(x).

Files are written byte-reproducibly: ``.npz`` archives get fixed zip timestamps (numpy's own ``savez`` stamps
the current time), and the metadata JSON has sorted keys and no dates.
"""

from __future__ import annotations

import io as _io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from config.errors import DataError
from config.files import acquire_lock, lock_holder, release_lock

META_NAME = "synthetic_meta.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def frame_stem(index: int) -> str:
    """File stem of frame ``index`` in a clip: ``%06d``."""
    return f"{index:06d}"


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image [H, W, 3] as PNG (OpenCV writes BGR, hence the channel flip)."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise DataError(f"{path}: could not write the image (is the disk full or read-only?)")


def write_mask(path: Path, raw: np.ndarray) -> None:
    """Write a raw label map uint8 [H, W] (class id + 1, 0 = ignore) as a single-channel PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(raw, dtype=np.uint8)):
        raise DataError(f"{path}: could not write the mask (is the disk full or read-only?)")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = _io.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)  # keeps Fortran order if given
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def load_homographies(clip_dir: Path) -> np.ndarray:
    """float64 [T, 3, 3] frame-to-frame homographies of a clip (entry t = H_{t-1 -> t}; entry 0 = identity)."""
    path = Path(clip_dir) / "homographies.npy"
    if not path.is_file():
        raise DataError(f"{path}: missing; only the synthetic set stores true homographies (regenerate it with "
                        "'python -m data.synthetic --out <root> --force')")  # fmt: skip
    try:
        homs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable homographies ({err})") from err
    if homs.ndim != 3 or homs.shape[1:] != (3, 3):
        raise DataError(f"{path}: expected an array [T, 3, 3], got shape {homs.shape}")
    return homs.astype(np.float64, copy=False)


def load_flow(clip_dir: Path, frame_stem: str, direction: Literal["forward", "backward"]) -> np.ndarray:
    """True optical flow float32 [H, W, 2] (x, y in pixels) of frame ``frame_stem``.

    ``forward`` is t -> t+1 (absent for a clip's last frame), ``backward`` is t -> t-1 (absent for its first).
    """
    if direction not in ("forward", "backward"):
        raise DataError(f"flow direction must be 'forward' or 'backward', got {direction!r}")
    path = Path(clip_dir) / "flow" / f"{frame_stem}.npz"
    if not path.is_file():
        raise DataError(f"{path}: missing flow file; is '{frame_stem}' a frame of this clip?")
    try:
        with np.load(path, allow_pickle=False) as data:
            if direction not in data.files:
                edge = "last" if direction == "forward" else "first"
                raise DataError(
                    f"{path}: no {direction} flow (frame {frame_stem} is the {edge} frame of its clip)"
                )
            flow = data[direction]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable flow file ({err})") from err
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise DataError(f"{path}: expected a {direction} flow [H, W, 2], got shape {flow.shape}")
    return np.ascontiguousarray(flow, dtype=np.float32)


def read_meta(root: Path, name: str = META_NAME) -> dict[str, Any] | None:
    """The dataset's metadata, or None when ``name`` (``synthetic_meta.json``) is missing (an incomplete dataset)."""
    path = Path(root) / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable metadata ({err}); regenerate with --force") from err


def changes(meta: dict[str, Any], params: dict[str, Any], versions: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every parameter (``meta["params"]`` against ``params``) and every version key of
    ``meta`` that differs from a request: what a message says when a folder holds a set made differently."""
    old = meta.get("params") or {}
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v]
    return diff + [f"{k} {meta.get(k)!r} -> {v}" for k, v in versions.items() if meta.get(k) != v]


def existing_set(out: Path, meta: dict[str, Any] | None, same: bool, params: dict[str, Any],
                 versions: dict[str, Any], what: str) -> bool:  # fmt: skip
    """Whether ``out`` holds a complete set made with the requested parameters (``same``, judged by the caller from
    ``meta``); a set made otherwise is a :class:`DataError` listing what differs. False when there is no metadata."""
    if meta is None:
        return False
    if same:
        return True
    raise DataError(f"{out}: holds {what} made differently ({'; '.join(changes(meta, params, versions))}); add "
                    "--force to replace it, or choose another --out")  # fmt: skip


@contextmanager
def writing_set(out: Path, lock_name: str, what: str) -> Iterator[None]:
    """Hold the lock ``out/lock_name`` (``out`` created) for the block that (re)writes a derived set in ``out``; a
    second writer is one :class:`DataError` naming the holder."""
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out / lock_name)
    if lock is None:
        raise DataError(f"{out}: another process (pid {lock_holder(out / lock_name)}) is writing {what}; wait for "
                        "it or choose another --out")  # fmt: skip
    try:
        yield
    finally:
        release_lock(lock)


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    """Write ``synthetic_meta.json`` (sorted keys, no timestamps: reproducible bytes)."""
    (Path(root) / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
