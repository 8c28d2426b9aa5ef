"""Pseudo-label an extra dataset in the teacher's taxonomy: ``python -m eval.pseudo_label CONFIG [key=value ...]``.

CONFIG is a bare name in ``config/pseudo/`` or a path (:mod:`config.pseudo_sections`). For every labelled frame of
the listed splits of the extra dataset, the teacher scores the master classes (with test-time augmentation), the
scores are resized to the extra label's resolution and, with ``use_priors``, each pixel takes the best class among
those the ontology mapping allows for its extra label (``other_methods.md`` §2.3). Output, in
``<labels_root>/<experiment>/`` (``.../no_priors/`` without priors):

- ``data/<clip>/mask/<stem>.png``: uint8 master training ids, void = 255 (never the teacher's void channel index);
- ``soft/<clip>/<stem>.npz`` with ``save_soft``: the corrected distribution ``S*C/sum(S*C)`` [C,H,W] float16;
- ``pseudo_labels.json``: the manifest (settings, teacher, mapping, files per split, void statistics and, with
  ``reference_path``, the quality against the true labels), read by compound training (``data_cfg.pseudo_labels``);
- ``all_void.txt``: frames whose pseudo-label came out all void; ``preview/``: image | extra label | pseudo-label.

Runs without a display, shows a progress bar and resumes: frames whose outputs exist are skipped and counted, and a
folder made with other settings is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config.cli import CliParser
from config.errors import ConfigError, DataError, run_cli, writing
from config.files import atomic_path, atomic_write_text
from config.loader import CONFIG_ROOT, load, to_dict
from config.pseudo_sections import PseudoLabelConfig
from data.catalog import IGNORE_INDEX, DatasetInfo, get_dataset_info
from data.compound import FORMAT, MANIFEST
from data.frames import Clip, read_frame, read_split
from data.image_dataset import worker_init
from data.ontology import OntologyMapping, corrected_distribution, read_labels_csv, read_mapping
from data.transforms import resize_frame, to_tensor
from eval.evaluate import device_name, resolve_device, software
from eval.pseudo_label_outputs import label_path, summarise, write_png_atomic, write_previews
from models.fast_path import prepare_inference
from models.runs import checkpoint_path, load_image_model, locate_run
from models.score_teachers import ScoreTeacher, SegmentorTeacher, hf_teacher_from_folder, tta_scores

# settings that must match for a folder to be resumed (everything that changes the labels)
_SETTINGS = (
    "dataset_path",
    "mapping_csv",
    "use_priors",
    "tta",
    "teacher",
    "input_size",
    "splits",
    "save_soft",
)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.pseudo_label", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/pseudo/ or a path to a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. use_priors=false tta.flip=true")
    return p


@dataclasses.dataclass
class Teacher:
    """A loaded teacher: the scorer, its master taxonomy, the input size and what to record about it."""

    scorer: ScoreTeacher
    info: DatasetInfo  # master classes (names, colours) and the decoding of reference masks
    input_size: tuple[int, int]
    describe: dict[str, Any]


def load_teacher(cfg: PseudoLabelConfig, device: torch.device) -> Teacher:
    """The tcseg run or the ``transformers`` folder that ``cfg.teacher`` names."""
    t = cfg.teacher
    if t.run is not None:
        run = locate_run(
            t.run, cfg.save_dir
        ).resolve()  # one spelling, so a resumed folder recognises its teacher
        model, run_cfg, meta = load_image_model(
            run, best=t.best_model and checkpoint_path(run, True).is_file()
        )
        info = get_dataset_info(run_cfg.data_cfg.dataset)
        size = tuple(t.input_size or run_cfg.data_cfg.crop_size)
        desc = {
            "run": str(run),
            "checkpoint": str(Path(meta["path"]).resolve()),
            "epoch": meta.get("epoch"),
            "dataset": info.name,
        }
        prepare_inference(model.to(device), device)  # the same scores, sooner (models.fast_path)
        return Teacher(SegmentorTeacher(model, info.num_classes), info, size, desc)
    scorer, names = hf_teacher_from_folder(t.hf_folder, device)
    palette = tuple(
        tuple(int(v) for v in np.random.default_rng(i).integers(0, 256, 3)) for i in range(len(names))
    )
    info = DatasetInfo(name=Path(t.hf_folder).name, class_names=tuple(names), palette=palette,
                       default_root=cfg.reference_path or "", fps=1.0, prepare_command="")  # fmt: skip
    return Teacher(scorer, info, tuple(t.input_size), {"hf_folder": t.hf_folder, "classes": names})


def extra_info(root: Path, classes: list) -> DatasetInfo:
    """A descriptor of the extra dataset, for reading its clips and colouring its labels (never for training)."""
    names = tuple(c.name for c in classes)
    palette = tuple(  # labels.csv's colours, else fixed random ones
        c.color or tuple(int(v) for v in np.random.default_rng(100 + i).integers(0, 256, 3))
        for i, c in enumerate(classes)
    )
    return DatasetInfo(name=root.name, class_names=names, palette=palette, default_root=str(root), fps=1.0,
                       prepare_command="bring it into the prepared layout (README, 'Label-space KD')")  # fmt: skip


class ExtraFrames(Dataset):
    """The labelled frames of the extra dataset: ``image`` [3,H,W] at the teacher's input size, ``raw`` [h,w] uint8
    extra label ids at the label's own resolution, ``key`` ``<clip>/<stem>``, ``split``."""

    def __init__(self, items: list[tuple[str, Clip, int]], size_hw: tuple[int, int]) -> None:
        self.items, self.size_hw = items, size_hw

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        split, clip, i = self.items[idx]
        raw = cv2.imread(str(clip.masks[i]), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
            raise DataError(
                f"{clip.masks[i]}: the extra label must be a readable single-channel 8-bit id image"
            )
        image = to_tensor([resize_frame(read_frame(clip.frames[i]), self.size_hw)])[0]
        return {"image": image, "raw": raw, "key": f"{clip.name}/{clip.frames[i].stem}", "split": split,
                "frame": str(clip.frames[i])}  # fmt: skip


def _collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]), **{k: [it[k] for it in items] for k in
            ("raw", "key", "split", "frame")}}  # fmt: skip


def output_dir(cfg: PseudoLabelConfig) -> Path:
    out = Path(cfg.labels_root) / cfg.experiment
    return out if cfg.use_priors else out / "no_priors"


def settings(cfg: PseudoLabelConfig, teacher: Teacher, mapping_csv: Path | None) -> dict:
    return {"dataset_path": cfg.dataset_path, "mapping_csv": None if mapping_csv is None else str(mapping_csv),
            "use_priors": cfg.use_priors, "tta": to_dict(cfg.tta), "teacher": teacher.describe,
            "input_size": list(teacher.input_size), "splits": list(cfg.splits), "save_soft": cfg.save_soft}  # fmt: skip


def check_resumable(out: Path, current: dict) -> float | None:
    """Refuse a folder holding pseudo-labels made with other settings (one line naming what differs); return the
    labelling speed the folder's manifest recorded (kept when a rerun writes nothing)."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{path}: unreadable manifest; delete {out} to label again") from None
    diff = [k for k in _SETTINGS if stored.get("settings", {}).get(k) != current[k]]
    if diff:
        raise DataError(f"{out} holds pseudo-labels made with other settings ({', '.join(diff)} differ); choose "
                        "another experiment name, or delete the folder to label again")  # fmt: skip
    return stored.get("frames_per_s")


def label_batch(teacher: Teacher, mapping: OntologyMapping | None, batch: dict, device: torch.device,
                cfg: PseudoLabelConfig) -> tuple[list[np.ndarray], list[np.ndarray | None], list[float]]:  # fmt: skip
    """Pseudo-labels [h,w] uint8 (void 255) and soft targets [C,h,w] (or None) of a batch, and the skipped scales."""
    scores, skipped = tta_scores(teacher.scorer, batch["image"].to(device), cfg.tta.flip, cfg.tta.scales)
    labels, softs = [], []
    for s, raw in zip(scores, batch["raw"], strict=True):
        s = s[None] if s.shape[-2:] == raw.shape else F.interpolate(s[None], size=raw.shape, mode="bilinear",
                                                                    align_corners=False)  # fmt: skip
        cand = None if mapping is None else mapping.candidates(raw).to(s.device)[None]
        labels.append(teacher.scorer.constrain(s, cand)[0].cpu().numpy().astype(np.uint8))
        if cfg.save_soft:
            n = teacher.scorer.num_classes
            full = (
                torch.ones(1, n + 1, *raw.shape, dtype=torch.bool, device=s.device) if cand is None else cand
            )
            if cand is None:  # no prior: the void channel is dropped, as in the hard labels
                full[:, n] = False
            softs.append(corrected_distribution(s, full)[0].cpu().numpy().astype(np.float16))
        else:
            softs.append(None)
    return labels, softs, skipped


def producer(folder: str | Path) -> tuple[str, list[str]]:
    """The ``config/pseudo/*.yaml`` (and the overrides: ``use_priors=false`` for a ``no_priors`` folder) that writes
    ``folder``, so that a run naming pseudo-labels can have them made (``make labelspace``, the zoo)."""
    target = Path(folder).resolve()
    for path in sorted((CONFIG_ROOT / "pseudo").glob("*.yaml")):
        for extra in ([], ["use_priors=false"]):
            if output_dir(load(path.stem, "pseudo", extra)).resolve() == target:
                return path.stem, extra
    raise ConfigError(f"data_cfg.pseudo_labels: no config/pseudo/*.yaml writes {folder}; make it with python -m "
                      "eval.pseudo_label CONFIG, or name the folder such a config writes")  # fmt: skip


def ensure(folder: str | Path, teacher_run: str | Path, overrides: list[str] | None = None) -> Path:
    """Make (or complete: nothing is redone) the pseudo-labels that the ``config/pseudo/*.yaml`` writing ``folder``
    describes, and return where they are. When that config names no teacher, ``teacher_run`` labels them into
    ``<teacher_run>/pseudo_labels/`` (another teacher, another folder: labels of two teachers never mix).
    ``overrides`` (``key=value``) apply to the pseudo-labelling config."""
    name, extra = producer(folder)
    cfg = load(name, "pseudo", [*extra, *(overrides or [])])
    if cfg.teacher.run is None and cfg.teacher.hf_folder is None:
        teacher = Path(teacher_run).resolve()
        extra = [*extra, f"teacher.run={teacher}", f"labels_root={teacher / 'pseudo_labels'}"]
    return main([name, *extra, *(overrides or [])])


def main(argv: list[str] | None = None) -> Path:
    """Pseudo-label; return the output folder."""
    args = build_parser().parse_args(argv)
    cfg: PseudoLabelConfig = load(args.config, "pseudo", args.overrides)
    cfg.check()
    device = resolve_device(cfg.device, "device")
    root = Path(cfg.dataset_path)
    if cfg.generate_stand_in:
        from data.synthetic.coarse import ensure_coarse  # generator only when asked for

        ensure_coarse(root)  # a complete set is left alone
    if not root.is_dir():
        raise DataError(f"dataset_path: {root} not found; prepare the extra dataset there (for the synthetic "
                        f"stand-in: python -m data.synthetic.coarse --out {root})")  # fmt: skip
    labels_csv = Path(cfg.labels_csv) if cfg.labels_csv else root / "labels.csv"
    classes = read_labels_csv(labels_csv)
    teacher = load_teacher(cfg, device)
    mapping_csv, mapping = None, None
    if cfg.use_priors:
        mapping_csv = (
            Path(cfg.mapping_csv) if cfg.mapping_csv else root / "lists" / f"{cfg.master_labels}.csv"
        )
        mapping = read_mapping(mapping_csv, labels_csv, master=list(teacher.info.class_names))
    out = output_dir(cfg)
    current = settings(cfg, teacher, mapping_csv)
    previous_rate = check_resumable(out, current)
    extra = extra_info(root, classes)

    items = [
        (split, clip, i)
        for split in cfg.splits
        for clip in read_split(root, split, extra)
        for i in clip.labelled
    ]
    if not items:
        raise DataError(
            f"{root}: no labelled frames in the split(s) {', '.join(cfg.splits)}; priors need labels"
        )
    done = {s: [] for s in cfg.splits}
    todo = []
    for split, clip, i in items:
        key = f"{clip.name}/{clip.frames[i].stem}"
        exists = label_path(out, key).is_file() and (
            not cfg.save_soft or (out / "soft" / f"{key}.npz").is_file())  # fmt: skip
        (done[split].append(key) if exists else todo.append((split, clip, i)))
    skipped_existing = len(items) - len(todo)
    manifest = {"format": FORMAT, "experiment": cfg.experiment, "complete": False, "settings": current,
                "dataset_root": cfg.dataset_path, "use_priors": cfg.use_priors,
                "master": {"taxonomy": teacher.info.name, "classes": list(teacher.info.class_names),
                           "void": IGNORE_INDEX},
                "unmapped_extra_classes": [] if mapping is None else mapping.unmapped}  # fmt: skip
    with writing(out, fix="choose another labels_root"):
        out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    print(f"== {len(items)} labelled frames of {root} ({', '.join(cfg.splits)}); teacher {teacher.describe}; "
          f"priors {'on (' + str(mapping_csv) + ')' if mapping else 'off'}; output {out}")  # fmt: skip
    if not todo:
        print(f"== all {len(items)} pseudo-labels exist in {out}: nothing to do")
    elif skipped_existing:
        print(f"== {skipped_existing} pseudo-labels exist already and are skipped; {len(todo)} to go")
    loader = DataLoader(ExtraFrames(todo, teacher.input_size), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        collate_fn=_collate, worker_init_fn=worker_init)  # fmt: skip
    skipped_scales: set[float] = set()
    start, written = time.perf_counter(), 0
    for batch in tqdm(loader, desc="pseudo-labels", unit="batch", dynamic_ncols=True, disable=not todo):
        labels, softs, skipped = label_batch(teacher, mapping, batch, device, cfg)
        skipped_scales.update(skipped)
        for key, split, ids, soft in zip(batch["key"], batch["split"], labels, softs, strict=True):
            write_png_atomic(label_path(out, key), ids)
            if soft is not None:
                (out / "soft" / key).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(out / "soft" / f"{key}.npz") as tmp, open(tmp, "wb") as fh:
                    np.savez_compressed(fh, soft=soft)
            done[split].append(key)
            written += 1
    seconds = time.perf_counter() - start
    if skipped_scales:
        print(f"== TTA scales skipped for lack of GPU memory: {sorted(skipped_scales)}")
    reference = None if cfg.reference_path is None else Path(cfg.reference_path)
    stats = summarise(out, done, teacher.info, reference)
    atomic_write_text(out / "all_void.txt", "".join(f"{k}\n" for k in stats["all_void"]))
    write_previews(out, items, teacher.info, extra, classes, cfg.previews, reference)
    manifest.update({"complete": True, "files": {s: sorted(v) for s, v in done.items()}, "written": written,
                     "skipped_existing": skipped_existing, "skipped_tta_scales": sorted(skipped_scales),
                     "frames_per_s": round(written / seconds, 2) if written and seconds > 0 else previous_rate,
                     "device": device_name(device), "software": software(), **stats})  # fmt: skip
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    rate = f" at {manifest['frames_per_s']} frames/s" if manifest["frames_per_s"] else ""
    print(f"== wrote {written} pseudo-labels{rate}, skipped {skipped_existing} existing; {len(stats['all_void'])} "
          f"all-void (all_void.txt); void fraction {stats['void_fraction']:.4f}")  # fmt: skip
    if "quality" in stats:
        q = stats["quality"]
        print(f"== quality against {q['reference']}: pixel acc {q['pixel_acc']}, mIoU (nan_exclude) "
              f"{q['miou_nan_exclude']}, mIoU (zero) {q['miou_zero']}, coverage {q['coverage']}")  # fmt: skip
    return out


if __name__ == "__main__":
    run_cli(main)
