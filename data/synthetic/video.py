"""One video end to end: build its scene from a seed, render its clips and write them to disk.

A video is one continuous flight over its own world, cut into consecutive clips (``clips_per_video``; val
videos may override it with ``val_clips_per_video``). All of a video's randomness comes from its own
``SeedSequence`` (spawned from the dataset seed), split further into independent streams for the flight, the
world and the sensor, so that a video's bytes depend only on the parameters and its index, never on which
process renders it or in what order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.catalog import SYNTHETIC
from data.synthetic import io
from data.synthetic.camera import plan_flight, relative_homographies
from data.synthetic.params import REFERENCE_WIDTH, SyntheticParams
from data.synthetic.planner import plan_layout
from data.synthetic.render import VideoScene
from data.synthetic.world import paint_world

SPLITS = ("train", "val")
_MARGIN_WU = 12.0  # world border beyond what the flight sees: room for objects that drive into view


@dataclass(frozen=True)
class VideoJob:
    """What one worker renders: a video of ``split`` and the names of its clips, in order."""

    split: str
    index: int  # index of the video within its split
    video_id: int  # global video number (in clip names)
    clip_names: tuple[str, ...]
    seed: np.random.SeedSequence


def video_seeds(params: SyntheticParams, split: str) -> list[np.random.SeedSequence]:
    """Per-video seed sequences of a split: ``SeedSequence(seed).spawn(2)[split].spawn(n_videos)``.

    Spawning per split keeps the validation worlds unchanged when only the number of training videos changes.
    """
    root = np.random.SeedSequence(params.seed).spawn(len(SPLITS))[SPLITS.index(split)]
    return root.spawn(params.train_videos if split == "train" else params.val_videos)


def build_scene(params: SyntheticParams, seed: np.random.SeedSequence, n_frames: int) -> VideoScene:
    """The world, flight, moving objects and sensor of one video of ``n_frames`` frames."""
    cam_ss, world_ss, sensor_ss, noise_ss = seed.spawn(4)
    flight = plan_flight(np.random.default_rng(cam_ss), n_frames, params)
    seen = flight.footprints(params.height, params.width).reshape(-1, 2)
    lo = np.floor(seen.min(0) - _MARGIN_WU)
    hi = np.ceil(seen.max(0) + _MARGIN_WU)
    flight = flight.shifted(lo)  # world origin at the top-left of everything the flight sees
    size = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
    rng = np.random.default_rng(world_ss)
    layout = plan_layout(rng, size, flight.centres, flight.forward, float(flight.tilt.mean()), n_frames)
    world = paint_world(rng, layout, params.raster_per_wu * params.width / REFERENCE_WIDTH)
    return VideoScene(world, flight, params, np.random.default_rng(sensor_ss), noise_ss)


def render_video(job: VideoJob, params: SyntheticParams, data_dir: Path) -> dict[str, list[int]]:
    """Render and write all clips of one video; return per-class pixel counts of its labelled frames.

    Counts are [num_classes + 1] lists (the last entry counts ignore pixels), under "labelled" (the frames that
    get a mask: the last frame of a train clip, every val frame) and "all" (every frame).
    """
    clip_len = params.train_clip_len if job.split == "train" else params.val_clip_len
    scene = build_scene(params, job.seed, clip_len * len(job.clip_names))
    nc = SYNTHETIC.num_classes
    counts = {"labelled": np.zeros(nc + 1, np.int64), "all": np.zeros(nc + 1, np.int64)}
    for c, name in enumerate(job.clip_names):
        clip = data_dir / name
        for sub in ("origin", "mask", "flow"):
            (clip / sub).mkdir(parents=True, exist_ok=True)
        first = c * clip_len
        ts = list(range(first, first + clip_len))
        np.save(clip / "homographies.npy", relative_homographies(scene.flight.homographies[ts]))
        for i, t in enumerate(ts):
            frame = scene.render(t)
            stem = io.frame_stem(i)
            io.write_rgb(clip / "origin" / f"{stem}.png", scene.sensor_image(frame, t))
            hist = np.bincount(np.minimum(frame.labels, nc).ravel(), minlength=nc + 1)
            counts["all"] += hist
            if (
                job.split == "val" or i == clip_len - 1
            ):  # train: sparse labels, only the last frame (as UAVid)
                io.write_mask(clip / "mask" / f"{stem}.png", SYNTHETIC.train_ids_to_raw(frame.labels))
                counts["labelled"] += hist
            flows = {}
            if i < clip_len - 1:
                flows["forward"] = _pack_flow(scene.flow(frame.owner, t, t + 1))
            if i > 0:
                flows["backward"] = _pack_flow(scene.flow(frame.owner, t, t - 1))
            io.save_npz(clip / "flow" / f"{stem}.npz", flows)
    return {k: v.tolist() for k, v in counts.items()}


def _pack_flow(flow: np.ndarray) -> np.ndarray:
    """float64 [H, W, 2] -> float16 [H, W, 2] stored channel-planar (Fortran order) for compression.

    Rounding to 1/256 px first (at most 0.002 px, about float16's own rounding error for flows of 2-8 px)
    clears the noisy low mantissa bits; with the planar order the archives get ~7x smaller. Readers still get
    an [H, W, 2] array.
    """
    return np.asfortranarray(np.round(flow * 256.0) / 256.0).astype(np.float16, order="F")
