"""Stage A of online distillation (``other_methods.md`` §3.1): teacher pseudo-labels for a stream of videos.

    python -m training.online.teacher_label --dataset datasets/synthetic_stream --teacher-run RUN --teacher-subsample 4

The videos ``<dataset>/videos/*.mp4`` in natural order are one long stream (``--start/--stop`` slice that list). Each
video is decoded once, sequentially (never by seeking, which is slow and inexact with some codecs); every frame with
index % s_T == 0 goes through the teacher in batches, and its argmax is saved as::

    <dataset>/pseudo_groundtruth_seg/<teacher>/<video>/<frame:06d>.npz    key "seg": uint8 H x W class ids
    <dataset>/pseudo_groundtruth_seg/<teacher>/manifest.json              teacher, s_T, classes, videos, input size

Resumable: frames whose file exists are skipped, and a video is decoded only up to its last missing frame; a folder
made with another teacher, s_T, input size or stream is refused. The online loop enumerates the teacher frames with
:func:`stream_frames` (the reference's Stage B rule), decodes them with :func:`iter_frames`, reads labels with
:func:`read_seg`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from config.cli import CliParser, at_least
from config.errors import ConfigError, DataError, run_cli
from config.files import acquire_lock, atomic_path, atomic_write_text, lock_holder, release_lock
from data.catalog import get_dataset_info
from data.synthetic.stream import GT_NAME, LABELS, VIDEOS, read_stream_meta, stream_identity
from data.transforms import resize_frame, to_tensor
from eval.evaluate import device_name, resolve_device
from models.fast_path import prepare_inference
from models.runs import architecture_of, load_image_model, locate_run
from models.score_teachers import ScoreTeacher, SegmentorTeacher, hf_teacher_from_folder

MANIFEST = "manifest.json"
FORMAT = "tcseg online-distillation teacher labels"
VERSION = 1
_LOCK = ".teacher_label.lock"
# manifest entries that must match for a folder to be resumed (everything that changes the labels)
_IDENTITY = ("teacher", "subsample", "classes", "input_size", "stream")
_DIGITS = re.compile(r"(\d+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers by value (``video_2`` < ``video_10``), as ``natsort`` does."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(name))


def list_videos(dataset: Path, start: int = 0, stop: int | None = None) -> list[Path]:
    """``<dataset>/videos/*.mp4`` in natural order, sliced ``[start:stop]`` (the stream, or a part of it)."""
    folder = Path(dataset) / VIDEOS
    videos = sorted(folder.glob("*.mp4"), key=lambda p: natural_key(p.name)) if folder.is_dir() else []
    if not videos:
        raise DataError(f"{folder}: no *.mp4 videos; a stream dataset keeps them in <dataset>/{VIDEOS}/ (make a "
                        f"synthetic one with: python -m data.synthetic.stream --out {dataset})")  # fmt: skip
    chosen = videos[start:stop]
    if not chosen:
        raise DataError(f"{folder}: --start {start} --stop {stop} selects none of its {len(videos)} videos")
    return chosen


def frame_count(video: Path) -> int:
    """Frames of a video as its container says (``CAP_PROP_FRAME_COUNT``, the reference's count; exact for the
    mp4 files OpenCV and FFmpeg write). A video that decodes shorter is caught by :func:`iter_frames`."""
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    cap.release()
    if n <= 0:
        raise DataError(f"{video}: OpenCV cannot read this video or its frame count; re-encode it as mp4 (H.264 or "
                        "mp4v), e.g. with ffmpeg -i in.mp4 out.mp4")  # fmt: skip
    return n


def stream_frames(
    dataset: Path, subsample: int, start: int = 0, stop: int | None = None
) -> list[tuple[str, int]]:
    """The teacher frames of the stream in order, as (video stem, frame index): ``k * s_T`` for ``k`` in
    ``range(floor(n_frames / s_T))`` per video (the reference's Stage B rule, ``other_methods.md`` §3.2; Stage A
    labels every index % s_T == 0, so a video's last partial stride may have one labelled frame more)."""
    if subsample < 1:
        raise ConfigError(f"teacher subsample: expected an integer >= 1, got {subsample}")
    out: list[tuple[str, int]] = []
    for video in list_videos(dataset, start, stop):
        out += [(video.stem, k * subsample) for k in range(frame_count(video) // subsample)]
    return out


def iter_frames(video_path: Path, indices: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``video_path`` once, sequentially, and yield ``(index, frame)`` for the requested ``indices`` in
    order; ``frame`` is RGB uint8 [H, W, 3]. Decoding stops after the last requested frame; the other frames are
    only grabbed (decoded, not converted). A video that ends too early is a :class:`DataError`."""
    if not indices:
        return
    last = max(indices)
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise DataError(f"{video_path}: OpenCV cannot open this video")
    try:
        for idx in range(last + 1):
            if idx in indices:
                ok, frame = cap.read()
            else:
                ok, frame = cap.grab(), None
            if not ok:
                raise DataError(f"{video_path}: the video ends after {idx} frames, but frame {last} is needed "
                                "(its header counts more frames than it holds); re-encode it")  # fmt: skip
            if frame is not None:
                yield idx, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def seg_path(folder: Path, video_stem: str, frame_idx: int) -> Path:
    """``<folder>/<video_stem>/<frame_idx:06d>.npz``: one label file of a pseudo-GT folder."""
    return Path(folder) / video_stem / f"{int(frame_idx):06d}.npz"


def read_seg(folder: Path, video_stem: str, frame_idx: int) -> np.ndarray:
    """The label map uint8 [H, W] (key ``seg``) of one frame in a pseudo-GT folder (a teacher's or ``gd``)."""
    path = seg_path(folder, video_stem, frame_idx)
    if not path.is_file():
        raise DataError(f"{path}: missing; label the stream first (python -m training.online.teacher_label)")
    try:
        with np.load(path, allow_pickle=False) as data:
            seg = data["seg"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable label file ({err}); delete it and label again") from None
    if seg.ndim != 2 or seg.dtype != np.uint8:
        raise DataError(f"{path}: expected 'seg' uint8 [H, W], got {seg.dtype} {list(seg.shape)}")
    return seg


@dataclass
class StreamTeacher:
    """A loaded teacher, on its device: ``scorer`` maps ImageNet-normalised RGB [B,3,h,w] to scores [B,C(+void),h,w];
    ``input_size`` (H, W) is what frames are resized to (None: each frame at its own size); ``identity`` is what a
    manifest compares (never a path: a moved run folder is still the same teacher); ``source`` where it came from."""

    scorer: ScoreTeacher
    classes: list[str]
    input_size: tuple[int, int] | None
    identity: dict[str, Any]
    source: str


def load_teacher(run: str | None = None, hf_folder: str | None = None, *, save_dir: str | Path = "checkpoints",
                 input_size: tuple[int, int] | None = None, best: bool = False,
                 device: torch.device | str = "cpu") -> tuple[StreamTeacher, str]:  # fmt: skip
    """The teacher a tcseg image ``run`` (at its ``data_cfg.crop_size`` unless ``input_size``) or a local
    ``transformers`` SegFormer/Mask2Former ``hf_folder`` (each frame at its own size unless ``input_size``) gives,
    and its default name (the run's or the folder's name)."""
    if (run is None) == (hf_folder is None):
        raise ConfigError("teacher: give exactly one of --teacher-run and --hf-folder")
    if run is not None:
        path = locate_run(run, save_dir).resolve()
        model, cfg, meta = load_image_model(
            path, best, hint="the teacher must be an image run (or use --hf-folder)"
        )
        classes = list(get_dataset_info(cfg.data_cfg.dataset).class_names)
        identity = {"kind": "tcseg image run", "run": path.name, "checkpoint": Path(meta["path"]).name,
                    "epoch": meta.get("epoch"), "step": meta.get("step"),
                    "model": architecture_of(meta.get("config"), meta.get("kind"))}  # fmt: skip
        size = input_size or tuple(int(v) for v in cfg.data_cfg.crop_size)
        prepare_inference(model.to(device), device)  # the same scores, sooner (models.fast_path)
        scorer: ScoreTeacher = SegmentorTeacher(model, len(classes))
        return StreamTeacher(scorer, classes, size, identity, str(meta["path"])), path.name
    folder = Path(hf_folder).resolve()
    scorer, classes = hf_teacher_from_folder(folder, device)
    identity = {"kind": "transformers folder", "name": folder.name, "classes": len(classes)}
    return StreamTeacher(scorer, classes, input_size, identity, str(folder)), folder.name


@torch.inference_mode()
def label_frames(
    teacher: StreamTeacher, frames: list[np.ndarray], device: torch.device | str
) -> list[np.ndarray]:
    """Teacher labels of RGB uint8 frames [H, W, 3] of one size: uint8 [H, W] each (argmax over the classes; a void
    channel is dropped), the scores resized back to the frame size first."""
    h, w = frames[0].shape[:2]
    x = to_tensor([resize_frame(f, teacher.input_size or (h, w)) for f in frames]).to(device)
    out = []
    for s in teacher.scorer.predict_scores(x):  # one at a time: full-size scores of a batch can be large
        s = s[None] if s.shape[-2:] == (h, w) else F.interpolate(s[None].float(), size=(h, w), mode="bilinear",
                                                                 align_corners=False)  # fmt: skip
        out.append(teacher.scorer.constrain(s, None)[0].to(torch.uint8).cpu().numpy())
    return out


def write_seg(path: Path, seg: np.ndarray) -> None:
    """``np.savez_compressed(seg=...)`` atomically: a temporary file in the same folder, renamed into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy would append .npz to a name
        np.savez_compressed(fh, seg=np.ascontiguousarray(seg, np.uint8))


def _stored_manifest(out: Path) -> dict[str, Any] | None:
    """The folder's manifest; None for a missing or empty folder. Labels without a manifest are refused."""
    path = out / MANIFEST
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise DataError(f"{path}: unreadable manifest; delete {out} to label again") from None
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise DataError(f"{out}: holds labels that teacher_label did not write (no {MANIFEST}); choose another "
                        "--teacher-name")  # fmt: skip
    return None


def _check_same(out: Path, stored: dict[str, Any], current: dict[str, Any], counts: dict[str, int]) -> None:
    """Refuse a folder made with other settings, or from videos of other lengths (one line naming what differs)."""
    diff = [f"{k} {stored.get(k)!r} -> {current[k]!r}" if k in ("subsample", "input_size") else k
            for k in _IDENTITY if stored.get(k) != current[k]]  # fmt: skip
    if diff:
        raise DataError(f"{out}: labels made with another {'; '.join(diff)}; choose another --teacher-name, or "
                        "delete the folder to label again")  # fmt: skip
    old = stored.get("videos", {})
    for stem, n in counts.items():
        if stem in old and old[stem] != n:
            raise DataError(f"{out}: labels of {stem} were made from a video of {old[stem]} frames, it now has {n}: "
                            "the stream changed; delete the folder to label again")  # fmt: skip


def label_stream(dataset: Path, teacher: StreamTeacher, teacher_name: str, subsample: int, start: int = 0,
                 stop: int | None = None, batch_size: int = 8, device: torch.device | str = "cpu", *,
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Label every frame with index % ``subsample`` == 0 of the videos ``[start:stop]`` of ``dataset`` that has no
    label file yet, into ``<dataset>/pseudo_groundtruth_seg/<teacher_name>/`` (``teacher`` already on ``device``).

    Returns counts and speeds: ``folder``, ``videos``, ``frames`` (teacher frames of the slice), ``labelled``,
    ``existing``, ``decoded`` (frames decoded), ``decode_fps``, ``teacher_fps`` (None when nothing was labelled)."""
    dataset = Path(dataset)
    if not _NAME.fullmatch(teacher_name) or teacher_name == GT_NAME:
        raise ConfigError(f"--teacher-name: '{teacher_name}' must be a plain folder name (letters, digits, ._@+-), "
                          f"not '{GT_NAME}' (the true labels)")  # fmt: skip
    if subsample < 1 or batch_size < 1:
        raise ConfigError(f"teacher subsample and batch size must be >= 1, got {subsample} and {batch_size}")
    if len(teacher.classes) > 255:
        raise ConfigError(f"teacher: {len(teacher.classes)} classes do not fit the uint8 label files")
    videos = list_videos(dataset, start, stop)
    counts = {v.stem: frame_count(v) for v in videos}
    out = dataset / LABELS / teacher_name
    current = {"teacher": teacher.identity, "subsample": subsample, "classes": list(teacher.classes),
               "input_size": None if teacher.input_size is None else list(teacher.input_size),
               "stream": stream_identity(dataset)}  # fmt: skip
    stored = _stored_manifest(out)
    if stored is not None:
        _check_same(out, stored, current, counts)
    todo = {
        s: [i for i in range(0, n, subsample) if not seg_path(out, s, i).is_file()] for s, n in counts.items()
    }
    total, n_todo = sum(len(range(0, n, subsample)) for n in counts.values()), sum(map(len, todo.values()))
    result: dict[str, Any] = {"folder": str(out), "videos": len(videos), "frames": total, "labelled": 0,
                              "existing": total - n_todo, "decoded": 0, "decode_fps": None, "teacher_fps": None}  # fmt: skip
    manifest = {"format": FORMAT, "version": VERSION, "teacher_name": teacher_name, **current,
                "teacher_source": teacher.source, "videos": {**(stored or {}).get("videos", {}), **counts},
                "label_encoding": "npz key 'seg': uint8 H x W teacher class ids (argmax), frames with index % "
                                  "subsample == 0"}  # fmt: skip
    if n_todo == 0 and manifest == stored:
        return result  # a rerun writes nothing
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out / _LOCK)
    if lock is None:
        raise DataError(
            f"{out}: another process (pid {lock_holder(out / _LOCK)}) is labelling into this folder"
        )
    try:
        if manifest != stored:  # first: a killed run's folder is recognised as made with these settings
            atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _label(videos, todo, out, teacher, batch_size, device, progress, result)
    finally:
        release_lock(lock)
    return result


def _label(videos: list[Path], todo: dict[str, list[int]], out: Path, teacher: StreamTeacher, batch_size: int,
           device: torch.device | str, progress: bool, result: dict[str, Any]) -> None:  # fmt: skip
    """The labelling loop of :func:`label_stream`: per video, decode, batch, label, write; fills ``result``."""
    bar = tqdm(total=sum(map(len, todo.values())), desc=f"teacher labels -> {out.name}", unit="frame",
               disable=not progress, file=sys.stderr)  # fmt: skip
    t_decode = t_teacher = 0.0
    for video in videos:
        need = todo[video.stem]
        if not need:
            continue  # every label exists: the video is not decoded at all
        (out / video.stem).mkdir(exist_ok=True)
        frames, batch = iter_frames(video, set(need)), []
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            t_decode += time.perf_counter() - t0
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) == batch_size):
                t0 = time.perf_counter()
                segs = label_frames(teacher, [f for _, f in batch], device)
                t_teacher += time.perf_counter() - t0
                for (idx, _), seg in zip(batch, segs, strict=True):
                    write_seg(seg_path(out, video.stem, idx), seg)
                bar.update(len(batch))
                result["labelled"] += len(batch)
                batch = []
            if item is None:
                break
        result["decoded"] += max(need) + 1  # sequential decoding up to the last needed frame
    bar.close()
    if result["labelled"]:  # (a rerun that only refreshes the manifest measures nothing)
        result["decode_fps"] = result["decoded"] / max(t_decode, 1e-9)
        result["teacher_fps"] = result["labelled"] / max(t_teacher, 1e-9)


def summary(result: dict[str, Any]) -> str:
    """One line about a :func:`label_stream` result."""
    if not result["labelled"]:
        return (f"{result['folder']}: all {result['frames']} teacher frames of the {result['videos']} videos exist; "
                "nothing to do")  # fmt: skip
    return (f"{result['folder']}: labelled {result['labelled']} frames of {result['videos']} videos "
            f"({result['existing']} existed); decoded {result['decoded']} frames at {result['decode_fps']:.1f} "
            f"frames/s, teacher {result['teacher_fps']:.1f} frames/s")  # fmt: skip


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 512x1024, got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected a positive HxW, got '{text}'")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m training.online.teacher_label", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="stream folder with videos/*.mp4")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher-run", help="a tcseg image run (name under --save-dir, or a path)")
    who.add_argument("--hf-folder", help="a local transformers SegFormer or Mask2Former folder")
    p.add_argument("--teacher-name", help="label folder name (default: the run's or the folder's name)")
    p.add_argument("--teacher-subsample", type=at_least(1), default=75, help="s_T: label every s_T-th frame (default 75)")  # fmt: skip
    p.add_argument(
        "--start", type=int, default=0, help="first video of the naturally sorted list (default 0)"
    )
    p.add_argument("--stop", type=int, default=None, help="end of the video slice, exclusive (default: all)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="teacher batch size (default 8)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default auto)")
    p.add_argument("--input-size", type=_size, help="teacher input HxW (default: the run's data_cfg.crop_size; "
                   "a transformers teacher: each frame's own size)")  # fmt: skip
    p.add_argument("--best-model", action="store_true", help="the run's best.pth instead of last.pth")
    p.add_argument("--save-dir", default="checkpoints", help="where --teacher-run names are looked up")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    list_videos(args.dataset, args.start, args.stop)  # a missing stream is reported before the teacher loads
    teacher, default_name = load_teacher(args.teacher_run, args.hf_folder, save_dir=args.save_dir,
                                         input_size=args.input_size, best=args.best_model, device=device)  # fmt: skip
    name = args.teacher_name or default_name
    truth = (read_stream_meta(args.dataset) or {}).get("class_names")
    if truth is not None and truth != teacher.classes:
        print(f"note: the teacher's classes ({', '.join(teacher.classes)}) are not the stream's true classes "
              f"({', '.join(truth)}): comparing with {GT_NAME} needs a label mapping")  # fmt: skip
    start = time.perf_counter()
    result = label_stream(args.dataset, teacher, name, args.teacher_subsample, args.start, args.stop,
                          args.batch_size, device, progress=not args.quiet)  # fmt: skip
    print(summary(result) + (f"; {time.perf_counter() - start:.1f} s on {device_name(device)}" if result["labelled"] else ""))  # fmt: skip
    return result


if __name__ == "__main__":
    run_cli(main)
