"""From an :class:`~config.online_sections.OnlineConfig` to what the loop runs: the stream and the learner.

Everything a run needs from the dataset folder is checked here, before any training, so a missing folder or label
file is one line at start and not a crash an hour in. The config's null values are resolved here too (C from
the teacher's manifest or the stream's metadata; ``groundtruth`` = the teacher; ``also_score_against`` = ``gd``
when the dataset has it with the teacher's classes; buffer sizes from N and s_S).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from config.errors import ConfigError, DataError
from config.online_sections import OnlineConfig
from data.synthetic.stream import GT_NAME, LABELS, read_stream_meta, stream_identity
from training.online.frames import Frame, video_fps, video_size
from training.online.loop import Learner
from training.online.regularisers import build_regulariser
from training.online.replay import build_replay
from training.online.students import build_student
from training.online.teacher_label import MANIFEST, frame_count, list_videos, stream_frames


@dataclass
class StreamInfo:
    """The stream as the config selects it, with every null resolved.

    ``frames`` are the teacher frames in stream order; ``stream_index[i]`` is frame i's index in the whole stream
    (all videos, every frame), for plots and look blocks; ``blocks`` are the stream's look blocks
    (``{"look", "start", "stop"}`` in whole-stream frames) when its metadata has them; ``scored`` are the label
    folders scored against, ``groundtruth`` first."""

    dataset: Path
    videos: dict[str, Path]
    frames: list[Frame]
    stream_index: list[int]
    num_classes: int
    class_names: list[str]
    teacher: Path
    scored: list[Path]
    size_hw: tuple[int, int]
    fps: float | None
    blocks: list[dict[str, Any]] | None
    notes: list[str] = field(default_factory=list)


def _manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path}: unreadable manifest; label the stream again") from None


def _label_command(cfg: OnlineConfig, name: str) -> str:
    return (f"python -m training.online.teacher_label --dataset {cfg.dataset} --teacher-run RUN --teacher-name "
            f"{name} --teacher-subsample {cfg.teacher_subsample}")  # fmt: skip


def open_stream(cfg: OnlineConfig) -> StreamInfo:
    """Check the dataset, the label folders and their files; resolve C, the scored folders and the input size."""
    dataset = Path(cfg.dataset)
    if not dataset.is_dir():
        raise DataError(f"dataset: {dataset} not found; make the synthetic stream with: python -m "
                        f"data.synthetic.stream --out {dataset}")  # fmt: skip
    start, stop = cfg.start or 0, cfg.stop
    paths = list_videos(dataset, start, stop)
    frames = stream_frames(dataset, cfg.teacher_subsample, start, stop)
    if not frames:
        raise DataError(
            f"{dataset}: the videos are shorter than teacher_subsample {cfg.teacher_subsample}: no frames"
        )
    labels, meta = dataset / LABELS, read_stream_meta(dataset) or {}
    teacher = labels / cfg.teacher
    if not teacher.is_dir():
        raise DataError(f"{teacher}: no such teacher label folder; label the stream: {_label_command(cfg, cfg.teacher)} "
                        f"(or teacher={GT_NAME} to train on the true labels)")  # fmt: skip
    manifest = _manifest(teacher)
    if manifest is not None and manifest.get("subsample") not in (None, cfg.teacher_subsample):
        raise DataError(f"{teacher}: labelled every {manifest['subsample']} frames, but teacher_subsample is "
                        f"{cfg.teacher_subsample}; set teacher_subsample={manifest['subsample']}")  # fmt: skip
    if manifest is not None and "stream" in manifest and manifest["stream"] != stream_identity(dataset):
        raise DataError(f"{teacher}: labels of another stream (it was generated again since); delete the folder and "
                        f"label again: {_label_command(cfg, cfg.teacher)}")  # fmt: skip
    truth_classes = meta.get("class_names")
    classes = (manifest or {}).get("classes") or truth_classes
    if cfg.num_classes is None and not classes:
        raise ConfigError(f"num_classes: {teacher} has no {MANIFEST} and {dataset} no stream_meta.json to tell the "
                          "number of classes; set num_classes (--numclasses)")  # fmt: skip
    c = cfg.num_classes or len(classes)
    names = list(classes) if classes and len(classes) == c else [f"class_{i}" for i in range(c)]
    notes: list[str] = []
    primary = cfg.scored_folder
    extra = cfg.also_score_against
    if extra is None:  # the true labels, when they exist and share the teacher's taxonomy
        same = manifest is None or truth_classes is None or manifest.get("classes") == truth_classes
        extra = [GT_NAME] if (labels / GT_NAME).is_dir() and same else []
        if (labels / GT_NAME).is_dir() and not same:
            notes.append(
                f"not scored against {GT_NAME}: the teacher's classes are not the stream's true classes"
            )
    scored = [labels / n for n in dict.fromkeys([primary, *extra])]
    for folder in [teacher, *scored]:
        if not folder.is_dir():
            raise DataError(f"{folder}: no such label folder (groundtruth / also_score_against); label it with: "
                            f"{_label_command(cfg, folder.name)}")  # fmt: skip
    videos = {p.stem: p for p in paths}
    return StreamInfo(dataset, videos, frames, _stream_index(meta, paths, frames), c, names, teacher, scored,
                      _size(cfg, paths), meta.get("fps") or video_fps(paths[0]), meta.get("blocks"), notes)  # fmt: skip


def _stream_index(meta: dict[str, Any], paths: list[Path], frames: list[Frame]) -> list[int]:
    """Whole-stream frame index of each teacher frame: the metadata's video offsets, else summed frame counts."""
    starts = {v["name"]: v["stream_start"] for v in meta.get("videos", []) if "stream_start" in v}
    if not all(p.stem in starts for p in paths):
        starts, total = {}, 0
        for p in list_videos(paths[0].parent.parent):  # offsets count the videos before the --start slice too
            starts[p.stem], total = total, total + frame_count(p)
    return [starts[s] + i for s, i in frames]


def _size(cfg: OnlineConfig, paths: list[Path]) -> tuple[int, int]:
    """The student's input size: ``input_size``, else the frame size (every video must share it)."""
    if cfg.input_size is not None:
        return int(cfg.input_size[0]), int(cfg.input_size[1])
    sizes = {p.name: video_size(p) for p in paths}
    if len(set(sizes.values())) > 1:
        raise DataError(f"videos of different sizes ({', '.join(f'{n} {h}x{w}' for n, (h, w) in sizes.items())}); "
                        "set input_size: [H, W]")  # fmt: skip
    return next(iter(sizes.values()))


def check_labels(stores: list[Any]) -> None:
    """Every label folder has a file for every teacher frame (a missing one would end the run hours later)."""
    for store in stores:
        missing = store.missing()
        if missing:
            raise DataError(f"{store.folder}: {len(missing)} label files of the stream's teacher frames are missing "
                            f"(first: {missing[0]}); label the stream again with the same teacher_subsample")  # fmt: skip


def buffer_kwargs(cfg: OnlineConfig) -> dict[str, Any]:
    """The replay buffer's arguments, nulls resolved: capacities from N, windows from s_S, and as many replayed
    frames per batch as make a window's epoch about N frames (the reference's er/mir epoch)."""
    b, n, s = cfg.buffer_cfg, cfg.dataset_size, cfg.student_subsample
    window = b.window or s
    per_batch = math.ceil(max(n - window, 0) / math.ceil(window / cfg.batch_size))
    by_name: dict[str, dict[str, Any]] = {
        "fifo": {"capacity": n},
        "uniform": {"capacity": b.capacity or n},
        "prioritized": {"capacity": b.capacity or n, "alpha": b.alpha},
        "er": {"window": window, "capacity": b.store_capacity, "replay_per_batch": _or(b.replay_per_batch, per_batch)},
        "efifo": {"window": window, "capacity": b.store_capacity, "replay_per_batch": _or(b.replay_per_batch, per_batch)},
        "mir": {"window": window, "capacity": b.store_capacity, "candidates": b.candidates, "k": _or(b.k, per_batch),
                "lr": b.lr},
    }  # fmt: skip
    return {**by_name[cfg.buffer], "seed": cfg.seed}


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def trainer_kwargs(cfg: OnlineConfig) -> dict[str, Any]:
    """The regulariser's arguments."""
    t = cfg.trainer_cfg
    schedule = {"warmup": t.warmup, "update_freq": t.update_freq}
    return {"none": {}, "lwf": {"alpha": t.alpha, "temperature": t.temperature, "reduction": t.reduction, **schedule},
            "mas": {"reg": t.reg, "decay": t.decay, **schedule}}[cfg.trainer]  # fmt: skip


def student_kwargs(cfg: OnlineConfig) -> dict[str, Any]:
    """The student's arguments."""
    s = cfg.student_cfg
    if cfg.student == "tinynet":
        return {"bn": s.bn, "upsampling": s.upsampling, "width": s.width}
    return {"model_cfg": s.model_cfg, "load_backbone_weights": s.load_backbone_weights}


def build_learner(cfg: OnlineConfig, num_classes: int, device: torch.device) -> Learner:
    """Student (seeded), Adam, replay buffer and regulariser."""
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, num_classes, **student_kwargs(cfg)).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.learning_rate)
    buffer = build_replay(cfg.buffer, **buffer_kwargs(cfg))
    return Learner(student, optimizer, buffer, build_regulariser(cfg.trainer, **trainer_kwargs(cfg)), device)


__all__ = ["StreamInfo", "buffer_kwargs", "build_learner", "check_labels", "open_stream", "student_kwargs",
           "trainer_kwargs"]  # fmt: skip
