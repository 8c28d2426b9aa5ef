"""What ``python -m eval.pseudo_label`` writes besides the labels' content: their paths, atomic PNG writes, the
statistics and quality of a folder read back from disk (so a resumed run reports on every frame), and previews."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from config.errors import DataError
from config.files import atomic_path
from data.catalog import IGNORE_INDEX, DatasetInfo
from data.frames import Clip, read_frame, read_mask
from data.transforms import resize_frame
from eval.metrics import ConfusionMatrix
from eval.vis.render import panel, write_png


def label_path(out: Path, key: str) -> Path:
    """``<out>/data/<clip>/mask/<stem>.png``: the extra dataset's own relative mask path, under ``out``."""
    clip, stem = key.split("/", 1)
    return out / "data" / clip / "mask" / f"{stem}.png"


def write_png_atomic(path: Path, ids: np.ndarray) -> None:
    """A uint8 id PNG written under a temporary name and renamed, so a killed run leaves no half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", ids)
    if not ok:
        raise DataError(f"{path}: cannot encode the pseudo-label")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())


def summarise(out: Path, done: dict[str, list[str]], info: DatasetInfo, reference: Path | None) -> dict:
    """Void statistics, the all-void list and (``reference_path``) the quality against the true labels, from the
    files on disk, so a resumed run reports on every frame."""
    n = info.num_classes
    counts = np.zeros(n + 1, np.int64)  # the last entry: void
    all_void: list[str] = []
    cm, covered, labelled = ConfusionMatrix(n), 0, 0
    ref_root = reference
    for keys in done.values():
        for key in keys:
            ids = cv2.imread(str(label_path(out, key)), cv2.IMREAD_UNCHANGED)
            hist = np.bincount(ids.ravel(), minlength=256)
            counts[:n] += hist[:n]
            counts[n] += hist[IGNORE_INDEX]
            if hist[IGNORE_INDEX] == ids.size:
                all_void.append(key)
            if ref_root is not None:
                clip, stem = key.split("/", 1)
                ref = read_mask(ref_root / "data" / clip / "mask" / f"{stem}.png", info)
                if ref.shape != ids.shape:
                    ref = cv2.resize(ref, ids.shape[::-1], interpolation=cv2.INTER_NEAREST)
                has_gt, has_pl = ref != IGNORE_INDEX, ids != IGNORE_INDEX
                labelled += int(has_gt.sum())
                covered += int((has_gt & has_pl).sum())
                cm.update(torch.from_numpy(ids[has_gt & has_pl]), torch.from_numpy(ref[has_gt & has_pl]))
    total = int(counts.sum())
    stats = {"frames": sum(len(v) for v in done.values()), "void_fraction": round(counts[n] / max(total, 1), 6),
             "class_fraction": {name: round(int(c) / max(total, 1), 6) for name, c in
                                zip(info.class_names, counts[:n], strict=True)},
             "all_void": all_void}  # fmt: skip
    if ref_root is not None:
        s = cm.summary(info.class_names)
        stats["quality"] = {
            "reference": str(ref_root), "coverage": round(covered / max(labelled, 1), 6),
            "pixel_acc": s["pixel_acc"], "miou_nan_exclude": s["miou"], "miou_zero": s["miou_zero"],
            "pixel_acc_void_as_error": round(int(cm.mat.diag().sum()) / max(labelled, 1), 6),
            "per_class_iou": s["per_class"],
        }  # fmt: skip
    return stats


def write_previews(out: Path, items: list[tuple[str, Clip, int]], info: DatasetInfo, extra: DatasetInfo,
                   classes: list, count: int, reference: Path | None) -> None:  # fmt: skip
    """``preview/<i>.png``: image | extra label | pseudo-label (| truth) for ``count`` frames spread over the set."""
    if count == 0 or not items:
        return
    for j, idx in enumerate(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)):
        _, clip, i = items[idx]
        rgb = read_frame(clip.frames[i])
        raw = cv2.imread(str(clip.masks[i]), cv2.IMREAD_UNCHANGED)
        pl = cv2.imread(str(label_path(out, f"{clip.name}/{clip.frames[i].stem}")), cv2.IMREAD_UNCHANGED)
        lut = np.full(256, IGNORE_INDEX, np.uint8)  # extra raw id -> its row in labels.csv (the colour index)
        for k, c in enumerate(classes):
            lut[c.id] = k
        size = raw.shape
        images = [resize_frame(rgb, size), extra.colorize(lut[raw]), info.colorize(pl)]
        titles = ["image", f"extra label ({extra.name})", "pseudo-label (master)"]
        if reference is not None:  # the hidden truth, in the master taxonomy
            truth = read_mask(reference / "data" / clip.name / "mask" / f"{clip.frames[i].stem}.png", info)
            images.append(info.colorize(cv2.resize(truth, size[::-1], interpolation=cv2.INTER_NEAREST)))
            titles.append("truth (reference_path)")
        write_png(out / "preview" / f"{j:02d}.png", panel(images, titles))
