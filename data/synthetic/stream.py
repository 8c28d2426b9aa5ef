"""A long synthetic drone stream with a cyclic domain shift, for the online-distillation benchmark (``other_methods.md`` §3).

Continuous flights (one world each, rendered by the generator's world, flight and sensor code) written as mp4 videos
that in natural order form one stream, cut into blocks of ``block_frames`` frames whose *look* (:data:`LOOKS`) cycles
A, B, A, B, ... across video boundaries. Looks change the RGB frames only; the true labels of every frame are saved
as a pseudo-GT folder named ``gd`` (the reference's layout for real GT)::

    <out>/videos/video_01.mp4 ...                               mp4v, natural sort = stream order
    <out>/pseudo_groundtruth_seg/gd/<video>/<frame:06d>.npz     key "seg": uint8 H x W training ids, 255 = ignore
    <out>/stream_meta.json                                      written last: params, frame counts, block schedule

``python -m data.synthetic.stream --out datasets/synthetic_stream``. A killed run resumes from its finished videos
(in ``<out>/.stream.work/``); a rerun with the same parameters does nothing; other parameters need ``--force``,
which replaces only the generator's files (teacher label folders of the old stream are kept, and
``training.online.teacher_label`` refuses them as stale).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from config.cli import CliParser, at_least
from config.errors import ConfigError, DataError, run_cli
from config.files import atomic_write_text
from data.catalog import IGNORE_INDEX, SYNTHETIC
from data.synthetic import io
from data.synthetic.looks import LOOKS
from data.synthetic.params import GENERATOR_VERSION, SyntheticParams
from data.synthetic.video import build_scene

STREAM_VERSION = 1  # bump when a code change changes the stream's bytes (the worlds follow GENERATOR_VERSION)
META_NAME = "stream_meta.json"
VIDEOS = "videos"
LABELS = "pseudo_groundtruth_seg"
GT_NAME = "gd"
FOURCC = "mp4v"
_LOCK = ".stream.lock"
_WORK = ".stream.work"
_OURS = {VIDEOS, LABELS, META_NAME, _LOCK, _WORK}  # top-level names we write in --out; the rest is the user's
_VIDEO_NAME = re.compile(r"video_\d{2,}\.mp4")


@dataclass(frozen=True)
class StreamParams:
    """What to generate. Sizes in pixels (H x W); ``block_frames`` counts stream frames; ``looks`` cycle per block."""

    seed: int = 2000
    height: int = 128
    width: int = 224
    videos: int = 6
    minutes_per_video: float = 1.0
    fps: float = 4.0
    block_frames: int = 60
    looks: tuple[str, ...] = (
        "day",
        "overcast",
    )  # dusk and winter: beyond a daylight teacher (docs/benchmarks.md)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values the generator cannot honour."""
        for name, lo, hi in (("height", 32, 4096), ("width", 32, 4096), ("videos", 1, 9999), ("block_frames", 1, 10**7)):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"stream {name}: expected an integer in {lo}..{hi}, got {v!r}")
        if self.height % 2 or self.width % 2:  # mp4 encoders work on 2x2 chroma blocks
            raise ConfigError(f"stream size: height and width must be even for mp4, got {self.height}x{self.width}")  # fmt: skip
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"stream seed: expected a non-negative integer, got {self.seed!r}")
        if not 0.1 <= self.fps <= 60:
            raise ConfigError(f"stream fps: expected 0.1..60, got {self.fps!r}")
        if not 2 <= self.frames_per_video <= 10**6:
            raise ConfigError(f"stream minutes_per_video: {self.minutes_per_video!r} min at {self.fps} fps gives "
                              f"{self.frames_per_video} frames; need at least 2")  # fmt: skip
        bad = [k for k in self.looks if k not in LOOKS]
        if not self.looks or bad:
            raise ConfigError(f"stream looks: expected names among {', '.join(LOOKS)}, got {list(self.looks)}")  # fmt: skip

    @property
    def frames_per_video(self) -> int:
        return round(self.minutes_per_video * 60 * self.fps)

    @property
    def total_frames(self) -> int:
        return self.videos * self.frames_per_video

    def synthetic(self) -> SyntheticParams:
        """The world/flight/sensor parameters: the defaults, with the ground speed per frame scaled from the
        generator's 10 fps to ``fps`` (the drone flies as fast in seconds whatever the frame rate)."""
        s = SYNTHETIC.fps / self.fps
        lo, hi = SyntheticParams().speed_px
        return SyntheticParams(seed=self.seed, height=self.height, width=self.width,
                               speed_px=(min(40.0, lo * s), min(40.0, hi * s)))  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict, the form stored in ``stream_meta.json`` (floats stay floats: 4 and 4.0 compare equal)."""
        return {**dataclasses.asdict(self), "looks": list(self.looks), "fps": float(self.fps),
                "minutes_per_video": float(self.minutes_per_video)}  # fmt: skip


def video_stem(index: int) -> str:
    """Name of video ``index`` (0-based): ``video_01``, ... ``video_10``, ... (stream order = natural order)."""
    return f"video_{index + 1:02d}"


def look_of(params: StreamParams, stream_index: int) -> str:
    """The look of a frame, by its index in the whole stream."""
    return params.looks[(stream_index // params.block_frames) % len(params.looks)]


def block_schedule(params: StreamParams) -> list[dict[str, Any]]:
    """The blocks of the stream in order: ``{"look", "start", "stop"}`` in stream frame indices (stop exclusive)."""
    total, b = params.total_frames, params.block_frames
    return [{"look": look_of(params, s), "start": s, "stop": min(s + b, total)} for s in range(0, total, b)]


def video_blocks(params: StreamParams, index: int) -> list[list[Any]]:
    """The look ranges of video ``index`` in its own frame indices: ``[[start, stop, look], ...]``."""
    n, off = params.frames_per_video, index * params.frames_per_video
    cut = [
        (max(b["start"], off) - off, min(b["stop"], off + n) - off, b["look"]) for b in block_schedule(params)
    ]
    return [[lo, hi, look] for lo, hi, look in cut if lo < hi]


def count_frames(path: Path) -> int:
    """Frames decoded by reading ``path`` sequentially with OpenCV (no seeking)."""
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def render_video(params: StreamParams, index: int, work: Path) -> None:
    """Render video ``index`` into ``work``: its mp4, its gd labels, then a done marker."""
    n, stem, (h, w) = params.frames_per_video, video_stem(index), (params.height, params.width)
    # spawn(videos)[index] is the same seed whatever the number of videos: adding videos keeps the others
    scene = build_scene(params.synthetic(), np.random.SeedSequence(params.seed).spawn(params.videos)[index], n)  # fmt: skip
    labels = work / LABELS / GT_NAME / stem
    shutil.rmtree(labels, ignore_errors=True)  # a killed run's partial folder
    labels.mkdir(parents=True)
    (work / VIDEOS).mkdir(exist_ok=True)
    partial = work / VIDEOS / f"{stem}.partial.mp4"  # OpenCV picks the container by the extension
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*FOURCC), float(params.fps), (w, h))
    if not writer.isOpened():
        raise DataError(f"{partial}: OpenCV cannot write {FOURCC} mp4 here (an OpenCV build without FFmpeg?); "
                        "install opencv-python from PyPI")  # fmt: skip
    try:
        for t in range(n):
            frame = scene.render(t)
            rgb = LOOKS[look_of(params, index * n + t)](scene.sensor_image(frame, t))
            writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
            io.save_npz(labels / f"{t:06d}.npz", {"seg": frame.labels})
    finally:
        writer.release()
    decoded = count_frames(partial)
    if decoded != n:
        raise DataError(f"{partial}: wrote {n} frames but OpenCV decodes {decoded} back; this OpenCV build's "
                        f"{FOURCC} encoder is broken")  # fmt: skip
    os.replace(partial, work / VIDEOS / f"{stem}.mp4")
    done = {"params": params.to_json(), "version": STREAM_VERSION, "frames": n}
    atomic_write_text(work / "done" / f"{stem}.json", json.dumps(done, sort_keys=True))  # last: it is done


def _finished(params: StreamParams, work: Path) -> set[int]:
    """Videos that a killed run with the same parameters finished (a done marker and the mp4)."""
    out = set()
    for i in range(params.videos):
        try:
            done = json.loads((work / "done" / f"{video_stem(i)}.json").read_text())
        except (OSError, ValueError):
            continue
        same = done.get("params") == params.to_json() and done.get("version") == STREAM_VERSION
        if same and (work / VIDEOS / f"{video_stem(i)}.mp4").is_file():
            out.add(i)
    return out


def _render_all(params: StreamParams, work: Path, workers: int, progress: bool) -> None:
    """Render every video into ``work`` that is not finished there yet (the output does not depend on ``workers``)."""
    (work / "done").mkdir(parents=True, exist_ok=True)
    finished = _finished(params, work)
    todo = [i for i in range(params.videos) if i not in finished]
    bar = tqdm(total=params.videos, initial=len(finished), desc=f"stream -> {work.parent}", unit="video",
               disable=not progress, file=sys.stderr)  # fmt: skip
    if workers <= 1 or len(todo) <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for i in todo:
                render_video(params, i, work)
                bar.update(1)
        finally:
            cv2.setNumThreads(threads)
    else:  # "spawn": a fresh interpreter per worker, safe whatever threads the caller (e.g. torch) has started
        ctx = multiprocessing.get_context("spawn")
        # one OpenCV thread per process: the processes already use the cores
        with ProcessPoolExecutor(workers, ctx, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            for fut in as_completed([pool.submit(render_video, params, i, work) for i in todo]):
                fut.result()  # raises a worker's error here
                bar.update(1)
    bar.close()


def read_stream_meta(out: Path) -> dict[str, Any] | None:
    """The stream's ``stream_meta.json``, or None when it is missing (an incomplete or foreign folder)."""
    return io.read_meta(Path(out), META_NAME)


def same_stream(meta: dict[str, Any], params: StreamParams) -> bool:
    """True when a stream's metadata was written by this code with these parameters."""
    versions = (meta.get("version"), meta.get("generator_version")) == (STREAM_VERSION, GENERATOR_VERSION)
    return versions and meta.get("params") == params.to_json()


def stream_identity(dataset: Path) -> dict[str, Any] | None:
    """What identifies the stream at ``dataset`` (generator versions and parameters), or None for a folder of
    videos not made by this generator. Teacher label folders record it, so labels of a replaced stream are refused."""
    meta = read_stream_meta(dataset)
    return (
        None
        if meta is None
        else {k: meta.get(k) for k in ("generator", "version", "generator_version", "params")}
    )


def _done(out: Path, params: StreamParams, force: bool) -> bool:
    """True when a complete stream with ``params`` is there (and not ``force``); raise when ``out`` is not ours."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    foreign = sorted(p.name for p in (out / VIDEOS).glob("*.mp4") if not _VIDEO_NAME.fullmatch(p.name))
    if foreign:  # every videos/*.mp4 joins the stream that teacher_label reads
        raise DataError(f"{out / VIDEOS / foreign[0]}: not a video of this generator, and every videos/*.mp4 joins "
                        "the stream; move it away, or choose another --out")  # fmt: skip
    if force and (out / META_NAME).is_file():  # ours, even when its metadata is unreadable
        return False
    meta = read_stream_meta(out)
    if io.existing_set(out, meta, meta is not None and same_stream(meta, params), params.to_json(),
                       {"version": STREAM_VERSION, "generator_version": GENERATOR_VERSION}, "a synthetic stream"):  # fmt: skip
        return True
    names = [p.name for p in out.iterdir()] if out.is_dir() else []
    # Without metadata the folder is ours only when an earlier run of ours started there (lock or work folder).
    if names and (not {_LOCK, _WORK} & set(names) or any(n not in _OURS for n in names)):
        raise DataError(f"{out}: exists and is not a synthetic stream made by tcseg (no {META_NAME}); it is left "
                        "untouched: choose another --out, or remove the folder yourself")  # fmt: skip
    return False


def _place(work: Path, out: Path, params: StreamParams) -> None:
    """Move the finished videos and gd labels from ``work`` into ``out``, replacing the previous stream's."""
    videos = out / VIDEOS
    videos.mkdir(exist_ok=True)
    for old in videos.glob("*.mp4"):
        if _VIDEO_NAME.fullmatch(old.name) and not old.is_symlink():
            old.unlink()
    for i in range(params.videos):
        os.replace(work / VIDEOS / f"{video_stem(i)}.mp4", videos / f"{video_stem(i)}.mp4")
    gd = out / LABELS / GT_NAME
    if gd.exists():
        shutil.rmtree(gd)  # refuses a link, so never deletes through one
    gd.parent.mkdir(exist_ok=True)
    os.replace(work / LABELS / GT_NAME, gd)
    shutil.rmtree(work)


def _meta(params: StreamParams) -> dict[str, Any]:
    n = params.frames_per_video
    return {
        "generator": "tcseg data.synthetic.stream", "version": STREAM_VERSION, "generator_version": GENERATOR_VERSION,
        "params": params.to_json(), "synthetic_params": params.synthetic().to_json(), "fps": float(params.fps),
        "size_hw": [params.height, params.width], "class_names": list(SYNTHETIC.class_names),
        "ignore_index": IGNORE_INDEX, "frames": params.total_frames,
        "videos": [{"name": video_stem(i), "file": f"{VIDEOS}/{video_stem(i)}.mp4", "frames": n,
                    "stream_start": i * n, "blocks": video_blocks(params, i)} for i in range(params.videos)],
        "blocks": block_schedule(params), "looks": {k: (LOOKS[k].__doc__ or "").strip() for k in params.looks},
        "labels": f"{LABELS}/{GT_NAME}/<video>/<frame:06d>.npz, key 'seg': uint8 H x W training ids, "
                  f"{IGNORE_INDEX} = ignore, every frame", "video_codec": FOURCC,
    }  # fmt: skip


def ensure_stream(out: Path, params: StreamParams | None = None, *, workers: int = 2, progress: bool = True,
                  force: bool = False) -> Path:  # fmt: skip
    """Make the stream at ``out`` unless a complete one with ``params`` (default :class:`StreamParams`) is there;
    return ``out``. Another stream there is a :class:`DataError` unless ``force``. Output bytes do not depend on
    ``workers``; a killed run resumes from its finished videos."""
    out, params = Path(out), params or StreamParams()
    params.validate()
    if _done(out, params, force):
        return out
    with io.writing_set(out, _LOCK, "this stream"):
        if _done(out, params, force):  # the other process may have finished it meanwhile
            return out
        (out / META_NAME).unlink(missing_ok=True)  # first: from here on the stream never looks complete
        work = out / _WORK
        _render_all(params, work, workers, progress)
        _place(work, out, params)
        atomic_write_text(out / META_NAME, json.dumps(_meta(params), indent=2, sort_keys=True) + "\n")
    return out


# (flag, StreamParams field, type, help); the default shown comes from StreamParams
_OPTIONS = (
    ("--seed", "seed", at_least(0), "random seed"), ("--height", "height", int, "frame height in px, even"),
    ("--width", "width", int, "frame width in px, even"), ("--videos", "videos", at_least(1), "videos, one world each"),
    ("--minutes-per-video", "minutes_per_video", float, "length of each video"),
    ("--fps", "fps", float, "frames per second"),
    ("--block-frames", "block_frames", at_least(1), "frames per look block of the cyclic domain shift"),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    d = StreamParams()
    p = CliParser(prog="python -m data.synthetic.stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to create (e.g. datasets/synthetic_stream)")  # fmt: skip
    for flag, name, kind, text in _OPTIONS:
        p.add_argument(flag, dest=name, type=kind, default=getattr(d, name), help=f"{text} (default {getattr(d, name):g})")  # fmt: skip
    p.add_argument("--looks", default=",".join(d.looks), help=f"looks cycled block by block, comma-separated, "
                   f"among {', '.join(LOOKS)} (default {','.join(d.looks)})")  # fmt: skip
    p.add_argument("--workers", type=at_least(1), default=2, help="worker processes; same output (default 2)")
    p.add_argument("--force", action="store_true", help="replace a stream made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    looks = tuple(k.strip() for k in args.looks.split(",") if k.strip())
    params = StreamParams(looks=looks, **{name: getattr(args, name) for _, name, _, _ in _OPTIONS})
    params.validate()
    what = (f"{params.videos} videos x {params.frames_per_video} frames at {params.fps:g} fps "
            f"({params.total_frames} frames), looks {'/'.join(params.looks)} every {params.block_frames} frames")  # fmt: skip
    meta = read_stream_meta(args.out) if args.out.is_dir() and not args.force else None
    if meta is not None and same_stream(meta, params):
        print(f"{args.out}: a complete stream with these parameters exists; leaving it alone: {what}")
        return
    start = time.perf_counter()
    ensure_stream(args.out, params, workers=args.workers, progress=not args.quiet, force=args.force)
    print(f"{args.out}: generated in {time.perf_counter() - start:.1f} s: {what}")
    stale = sorted(p.name for p in (args.out / LABELS).iterdir() if p.is_dir() and p.name != GT_NAME)
    if args.force and stale:
        print(f"{args.out}: note: teacher labels {', '.join(stale)} in {LABELS}/ were made from the previous "
              "stream; teacher_label refuses them: delete them and label again")  # fmt: skip


if __name__ == "__main__":
    run_cli(main)
