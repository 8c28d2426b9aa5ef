"""Tiny archives in the official download layouts (UAVid v1.5 video release, the VDD annotation of UAVid), and the
masks the converter must make from them.

Frames are 64x96; frame ``i`` of every video is a flat grey of :func:`frame_level` (i), so the order of the
extracted frames can be checked after the lossy mp4v round trip. Labels are horizontal bands of the official
UAVid colours; the VDD labels say roof on the left half and water on the right half, so the overlay rules
(roof only on building, water only on clutter) are visible in the expected masks.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np

HW = (64, 96)
# row band -> UAVid colour; every class once, clutter twice (the top and bottom bands)
BANDS: tuple[tuple[int, int, tuple[int, int, int]], ...] = (
    (0, 8, (128, 64, 128)),  # road
    (8, 16, (128, 128, 0)),  # low vegetation
    (16, 24, (0, 128, 0)),  # tree
    (24, 32, (64, 64, 0)),  # human
    (32, 38, (64, 0, 128)),  # moving car
    (38, 44, (192, 0, 192)),  # static car
    (44, 54, (128, 0, 0)),  # building
    (54, 64, (0, 0, 0)),  # clutter
)
UNKNOWN_COLOR = (200, 10, 10)
UNKNOWN_BOX = (slice(56, 58), slice(90, 93))  # 6 pixels inside clutter and the VDD water half
VDD_SPLIT_COL = 48  # VDD roof (5) left of it, water (6) right of it
DEFAULT_SEQS = {"seq1": "uavid_train", "seq2": "uavid_train", "seq16": "uavid_val"}


def frame_level(i: int) -> int:
    """Grey level of frame ``i`` of every test video (distinct for 13 consecutive frames)."""
    return 20 + 15 * (i % 13)


def write_video(path: Path, n_frames: int, hw: tuple[int, int] = HW) -> None:
    """A short mp4 (mp4v) of flat grey frames, as OpenCV writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (hw[1], hw[0]))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for i in range(n_frames):
        writer.write(np.full((*hw, 3), frame_level(i), np.uint8))
    writer.release()


def png_bytes(img: np.ndarray) -> bytes:
    """PNG file bytes of an RGB (H, W, 3) or single-channel image."""
    ok, buf = cv2.imencode(".png", img[..., ::-1] if img.ndim == 3 else img)
    assert ok
    return buf.tobytes()


def uavid_label(unknown: bool = False) -> np.ndarray:
    """An RGB UAVid label (H, W, 3) in the official colours; ``unknown`` adds 6 pixels of an unlisted colour."""
    rgb = np.zeros((*HW, 3), np.uint8)
    for top, bottom, color in BANDS:
        rgb[top:bottom] = color
    if unknown:
        rgb[UNKNOWN_BOX] = UNKNOWN_COLOR
    return rgb


def vdd_label() -> np.ndarray:
    """A VDD id label (H, W) uint8: roof (5) on the left, water (6) on the right."""
    ids = np.full(HW, 5, np.uint8)
    ids[:, VDD_SPLIT_COL:] = 6
    return ids


def expected_mask(unknown: bool = False, vdd: bool = True) -> np.ndarray:
    """The raw mask the converter must write for :func:`uavid_label` (+ :func:`vdd_label`)."""
    raw_of = {(128, 64, 128): 1, (128, 128, 0): 2, (0, 128, 0): 3, (64, 64, 0): 4, (64, 0, 128): 5,
              (192, 0, 192): 5, (128, 0, 0): 7, (0, 0, 0): 0}  # fmt: skip
    raw = np.zeros(HW, np.uint8)
    for top, bottom, color in BANDS:
        raw[top:bottom] = raw_of[color]
    if vdd:
        building = raw == 7
        building[:, VDD_SPLIT_COL:] = False
        clutter = raw == 0
        clutter[:, :VDD_SPLIT_COL] = False
        if unknown:
            clutter[UNKNOWN_BOX] = False  # an unknown colour is not clutter: no water there
        raw[building], raw[clutter] = 8, 6
    return raw


def make_uavid_zip(path: Path, seqs: dict[str, str] | None = None, n_frames: int = 12, label_every: int = 5,
                   top: str = "uavid_v1.5_official_release", unknown: tuple[str, int] | None = None,
                   extra: dict[str, bytes] | None = None) -> Path:  # fmt: skip
    """``uavid_v1.5_official_release.zip``: ``<top>/<split>/<seq>/images.mp4`` and ``Labels/%06d.png`` every
    ``label_every`` frames, plus what the converter must ignore (``Images/`` copies, ``uavid_test``, macOS
    junk). ``unknown`` = (seq, frame) whose label gets an unknown colour; ``extra`` = more members, verbatim."""
    seqs = DEFAULT_SEQS if seqs is None else seqs
    video = path.parent / f".{path.stem}.tmp.mp4"
    write_video(video, n_frames)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for seq, split in seqs.items():
            zf.write(video, f"{top}/{split}/{seq}/images.mp4")
            for f in range(0, n_frames, label_every):
                label = png_bytes(uavid_label(unknown == (seq, f)))
                zf.writestr(f"{top}/{split}/{seq}/Labels/{f:06d}.png", label)
                zf.writestr(f"{top}/{split}/{seq}/Images/{f:06d}.png", label)  # not needed: not extracted
        zf.write(video, f"{top}/uavid_test/seq21/images.mp4")
        zf.writestr(f"__MACOSX/{top}/uavid_train/._images.mp4", b"junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    video.unlink()
    return path


def make_vdd_zip(path: Path, seqs: dict[str, str] | None = None, n_frames: int = 12, label_every: int = 5,
                 skip: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The VDD annotation of UAVid: ``UAVid7/<split>/<seq>/VDD_Labels/%06d.png`` (single-channel VDD ids)."""
    seqs = DEFAULT_SEQS if seqs is None else seqs
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for seq, split in seqs.items():
            if seq in skip:
                continue
            for f in range(0, n_frames, label_every):
                zf.writestr(f"UAVid7/{split}/{seq}/VDD_Labels/{f:06d}.png", png_bytes(vdd_label()))
    return path


def make_uavid_archives(datasets: Path, **kwargs) -> tuple[Path, Path]:
    """Both UAVid archives under their download names in ``datasets``."""
    datasets.mkdir(parents=True, exist_ok=True)
    vdd_kwargs = {k: v for k, v in kwargs.items() if k in ("seqs", "n_frames", "label_every")}
    return (make_uavid_zip(datasets / "uavid_v1.5_official_release.zip", **kwargs),
            make_vdd_zip(datasets / "VDD_UAVid7_labels.zip", **vdd_kwargs))  # fmt: skip


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """An in-memory zip with these members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def train_one_step(dataset: str, root: Path, save_dir: Path, hw: tuple[int, int]) -> Path:
    """Train a tiny image model for one step on a prepared dataset; return the run folder."""
    from training import train_image

    return train_image.main([
        "base_synthetic", f"data_cfg.dataset={dataset}", f"data_cfg.path={root}", f"save_dir={save_dir}",
        f"data_cfg.crop_size=[{hw[0]}, {hw[1]}]", "model_cfg.backbone=tiny_cnn", "training_cfg.batch_size=2",
        "training_cfg.num_epochs=1", "training_cfg.max_steps_per_epoch=1", "training_cfg.num_workers=0",
        "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
    ])  # fmt: skip
