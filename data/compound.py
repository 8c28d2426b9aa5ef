"""Compound training over several datasets (label-space KD, ``other_methods.md`` §2): the source dataset with its
own labels plus extra datasets labelled by a teacher in the source (master) taxonomy, with a weighted epoch order.

A pseudo-label folder, written by ``python -m eval.pseudo_label CONFIG``::

    <labels_dir>/pseudo_labels.json             manifest: format, dataset_root, master classes, files per split
    <labels_dir>/data/<clip>/mask/<stem>.png    master training ids 0 .. N-1, 255 = void (not the raw id + 1)

The frames come from ``<dataset_root>/data/<clip>/origin`` (the extra dataset in the prepared layout); the extra
dataset's own masks, in its own taxonomy, are never read.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from config.errors import ConfigError, DataError
from data.catalog import IGNORE_INDEX, DatasetInfo
from data.frames import Clip
from data.image_dataset import LabelledFrames

MANIFEST = "pseudo_labels.json"
FORMAT = "tcseg-pseudo-labels/1"
REPO = Path(__file__).resolve().parents[1]  # a relative dataset_root is relative to the repository root
RERUN = "run `python -m eval.pseudo_label CONFIG` (the pseudo-labelling config) again"


def read_pseudo_labels(
    labels_dir: str | Path, master_info: DatasetInfo, split: str | None = "train"
) -> tuple[list[Clip], DatasetInfo, dict]:
    """The clips of an extra dataset whose masks are the teacher's pseudo-labels of ``split`` (None: of every split
    the folder holds; an extra dataset's val frames are training data too), a descriptor that
    reads them (``label_encoding="train_ids"``, named ``<source>+pseudo:<folder name>``) and the manifest.

    Everything wrong with the folder is a one-line :class:`DataError` that names the file and what to do."""
    labels_dir = Path(labels_dir)
    path, manifest, root, files = _manifest(labels_dir, master_info, split)
    stems: dict[str, list[str]] = {}
    for entry in files:
        clip, sep, stem = str(entry).partition("/")  # <clip>/<stem>, as the pseudo-labelling writes them
        if not (sep and clip and stem):
            raise DataError(f"{path}: files.{split} entry {entry!r} is not <clip>/<stem>; {RERUN}")
        stems.setdefault(clip, []).append(stem)
    clips = []
    for name, names in stems.items():
        origin = root / "data" / name / "origin"
        frames = tuple(sorted(origin.glob("*.png")) + sorted(origin.glob("*.jpg")))  # as data.frames lists
        if not frames:
            raise DataError(f"{origin}: no frames of clip '{name}' listed in {path}; check its dataset_root")
        index = {p.stem: i for i, p in enumerate(frames)}
        masks: dict[int, Path] = {}
        for stem in names:
            mask = labels_dir / "data" / name / "mask" / f"{stem}.png"
            if stem not in index:
                raise DataError(f"{path}: {name}/{stem} has no frame in {origin}; check its dataset_root")
            if not mask.is_file():
                raise DataError(f"{mask}: listed in {path} (files.{split}) but missing; {RERUN}")
            masks[index[stem]] = mask
        clips.append(Clip(name=name, frames=frames, masks=masks))
    folder = labels_dir.name or labels_dir.resolve().name
    info = dataclasses.replace(
        master_info, name=f"{master_info.name}+pseudo:{folder}", label_encoding="train_ids"
    )
    return clips, info, manifest


def _manifest(labels_dir: Path, master_info: DatasetInfo, split: str | None) -> tuple[Path, dict, Path, list]:
    """The checked manifest of a pseudo-label folder: ``(its path, its content, dataset root, files of split)``."""
    path = labels_dir / MANIFEST
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: pseudo-label folder not found; fix data_cfg.pseudo_labels or {RERUN}")
    if not path.is_file():
        raise DataError(f"{path} not found: not a pseudo-label folder; {RERUN}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON manifest ({err}); {RERUN}") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise DataError(f"{path}: unknown format {fmt!r} (expected {FORMAT!r}); {RERUN}")
    if manifest.get("complete") is False:
        raise DataError(f"{path}: the pseudo-labelling of this folder did not finish; {RERUN} (it resumes)")
    master = manifest.get("master") if isinstance(manifest.get("master"), dict) else {}
    names = list(master_info.class_names)
    if master.get("classes") != names or master.get("void", IGNORE_INDEX) != IGNORE_INDEX:
        raise DataError(
            f"{path}: pseudo-labels in the classes {master.get('classes')} (void {master.get('void')}) but the "
            f"source {master_info.name} has {names} (void {IGNORE_INDEX}); label with its teacher: {RERUN}"
        )
    text = manifest.get("dataset_root")
    if not isinstance(text, str) or not text:
        raise DataError(f"{path}: no dataset_root (the extra dataset's folder); {RERUN}")
    in_repo = not Path(text).is_absolute() and (REPO / text).is_dir()  # relative to the repository root
    listed = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    files = (
        [f for v in listed.values() if isinstance(v, list) for f in v] if split is None else listed.get(split)
    )
    if not isinstance(files, list) or not files:
        raise DataError(f"{path}: no pseudo-labels for split '{split}' (files.{split}); {RERUN} with it")
    return path, manifest, REPO / text if in_repo else Path(text), files


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The plain sample order of an epoch: a permutation of ``n`` seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded by a tuple of ints (any sign, no collisions between different keys in practice)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """``round(total * w_d / sum(w))`` per entry, with largest-remainder rounding so the counts sum to ``total``;
    a weight of 0 always gets 0."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda d: (weights[d] == 0, counts[d] - exact[d], d))
    for d in by_remainder[: total - sum(counts)]:
        counts[d] += 1
    return counts


class CompoundFrames(Dataset):
    """Several datasets as one, the source first. Item: the part's item plus ``dataset`` (its index).

    ``weights`` (one per part, >= 0, None = every sample equally likely) set each part's share of an epoch, which
    :meth:`epoch_order` draws; the training loop uses that order when a dataset has one."""

    def __init__(
        self,
        parts: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if not parts:
            raise ValueError("CompoundFrames needs at least one dataset")
        if weights is not None:
            if len(weights) != len(parts) or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"weights {list(weights)}: need {len(parts)} values >= 0, at least one > 0")
            empty = [d for d, (p, w) in enumerate(zip(parts, weights, strict=True)) if w > 0 and len(p) == 0]
            if empty:
                raise ValueError(f"datasets {empty} have a weight > 0 but no samples")
        self.parts = list(parts)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.names = list(names) if names is not None else [f"dataset{d}" for d in range(len(parts))]
        self.starts = [0]
        for p in self.parts:
            self.starts.append(self.starts[-1] + len(p))
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(
        self, value: int
    ) -> None:  # the loop sets it before each epoch; the parts' augmentation uses it
        self._epoch = value
        for p in self.parts:
            p.epoch = value

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < len(self):
            raise IndexError(f"sample {idx} outside 0..{len(self) - 1}")
        d = bisect.bisect_right(self.starts, idx) - 1
        return {**self.parts[d][idx - self.starts[d]], "dataset": d}

    def counts(self) -> list[int]:
        """Samples drawn from each part in one epoch (of ``len(self)`` samples)."""
        if self.weights is None:
            return [len(p) for p in self.parts]
        return largest_remainder(len(self), self.weights)

    def describe(self) -> list[dict[str, Any]]:
        """Per part: name, samples, weight (None = unweighted) and share of an epoch, for metrics.json."""
        n = max(len(self), 1)
        return [
            {"name": name, "samples": len(p), "weight": None if self.weights is None else self.weights[d],
             "share": round(k / n, 6)}
            for d, (name, p, k) in enumerate(zip(self.names, self.parts, self.counts(), strict=True))
        ]  # fmt: skip

    def epoch_order(self, seed: int, epoch: int) -> list[int]:
        """The global sample order of one epoch; depends only on (seed, epoch).

        Unweighted: :func:`epoch_permutation`, the loop's plain order. Weighted: part d gives ``counts()[d]``
        samples, the first of a (seed, epoch, d) permutation of it (repeated only when it needs more than it
        has), and the whole list is shuffled with a (seed, epoch) generator."""
        if self.weights is None:
            return epoch_permutation(len(self), seed, epoch)
        order: list[int] = []
        for d, (start, part, k) in enumerate(zip(self.starts, self.parts, self.counts(), strict=False)):
            if k == 0:
                continue
            perm = torch.randperm(len(part), generator=_generator(seed, epoch, d)).tolist()
            order.extend(start + i for i in (perm * -(-k // len(perm)))[:k])
        shuffle = torch.randperm(len(order), generator=_generator(seed, epoch)).tolist()
        return [order[i] for i in shuffle]


def check_compound(cfg: Any, *, distilled: bool) -> None:
    """Refuse, before anything is built, what ``data_cfg.pseudo_labels`` cannot be combined with."""
    dcfg = cfg.data_cfg
    if not dcfg.pseudo_labels:
        return
    clash = {"a KD teacher (loss_cfg.loss_func: kldiv)": distilled, "semi_cfg": getattr(cfg, "semi_cfg", None),
             **{f"data_cfg.{k}": getattr(dcfg, k) for k in ("labeled_fraction", "labeled_split_file",
                                                           "held_out_fraction")}}  # fmt: skip
    clash = [name for name, value in clash.items() if value is not None and value is not False]
    if clash:
        raise ConfigError(
            f"data_cfg.pseudo_labels: training on teacher pseudo-labels cannot be combined with "
            f"{', '.join(clash)}; unset one of them"
        )


def compound_train_set(
    dcfg: Any, info: DatasetInfo, source: LabelledFrames, verbose: bool = True
) -> tuple[CompoundFrames, list[dict]]:
    """The source training set followed by one set per ``dcfg.pseudo_labels`` folder (same size, augmentation
    and seed), weighted by ``dcfg.dataset_weights``; and its description per dataset (``describe``)."""
    parts, names = [source], [info.name]
    for folder in dcfg.pseudo_labels:
        clips, pinfo, _ = read_pseudo_labels(folder, info, None)  # every labelled split of the extra set
        parts.append(LabelledFrames(clips, pinfo, source.size_hw, train=True, augment=source.augment,
                                    square_crop=source.square_crop, seed=source.seed))  # fmt: skip
        names.append(pinfo.name)
    data = CompoundFrames(parts, dcfg.dataset_weights, names)
    described = data.describe()
    if verbose:
        for d in described:
            weight = "" if d["weight"] is None else f", weight {d['weight']:g}"
            print(f"==   {d['name']}: {d['samples']} samples{weight}, {d['share']:.1%} of each epoch")
    return data, described
