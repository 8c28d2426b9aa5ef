"""Teacher-logit storage and loading speed: ``python -m eval.logits_bench TEACHER_RUN --config STUDENT [flags]``.

1. Dumps the teacher's training logits in three formats when they are missing (``eval.vis.image --save-logits``
   skips frames already written), each in a folder of its own (a training dump in ``logits/train`` is left
   alone): tcseg's default (npy, float16, the student's input size) in ``<run>/logits/bench_default``, the
   teacher head's own output (``--logits-size native``: npy, float16, stride 4) in ``<run>/logits/bench_native``
   and the reference's (npz, float32, the teacher's input size) in ``<run>/logits/bench_reference``.
2. Prints bytes per frame and in total for each, and projects a dataset of ``--frames`` frames with
   ``n_frames x K x H x W x bytes`` (``ssp.md`` §6.3; compression of the reference npz is measured, not assumed).
3. Times the student's training samples (the config's frames, augmentation and teacher logits; no registration or
   flow, so that the logits are what differs) through a DataLoader with ``--workers`` workers, samples/s for each
   format, in one process on this machine. Writes ``<run>/logits/bench.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from config.cli import CliParser, at_least
from config.errors import run_cli
from config.files import atomic_write_text
from config.loader import load
from data.augment import ImageTrainAugment, VideoTrainAugment
from data.catalog import get_dataset_info
from data.frames import open_split
from data.image_dataset import LabelledFrames, worker_init
from data.logits import BYTES, TeacherLogits, student_rule
from data.teacher import SavedLogits
from data.video_batch import DataNeeds, collate_video
from data.video_dataset import video_samples
from eval.evaluate import device_name
from eval.vis import image as eval_image
from models.runs import locate_run

FORMATS = {  # name -> (subfolder, dump flags)
    "tcseg default (npy float16, student size)": (
        "bench_default",
        ["--logits-format", "npy", "--logits-dtype", "float16", "--logits-size"],  # + the student's HxW
    ),
    "native (npy float16, teacher head stride)": (
        "bench_native",
        ["--logits-format", "npy", "--logits-dtype", "float16", "--logits-size", "native"],
    ),
    "reference (npz float32, teacher size)": (
        "bench_reference",
        ["--logits-format", "npz", "--logits-dtype", "float32", "--logits-size", "eval"],
    ),
}


def _folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.glob("*/*") if p.suffix in (".npy", ".npz")]
    return len(files), sum(p.stat().st_size for p in files)


def time_loader(dataset: object, collate: object, workers: int, samples: int, batch: int) -> float:
    """Samples per second over ``samples`` samples (after one warm-up batch per worker)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, worker_init_fn=worker_init,
                        collate_fn=collate, generator=torch.Generator().manual_seed(0))  # fmt: skip
    it = iter(loader)
    for _ in range(max(workers, 1)):
        next(it)
    n, t0 = 0, time.perf_counter()
    while n < samples:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(b["image"]) if isinstance(b, dict) else b.batch_size
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = CliParser(prog="python -m eval.logits_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the teacher image run (name in --save-dir, or a path)")
    p.add_argument(
        "--config", required=True, help="the student config (image or video), e.g. kd_ssp_synthetic"
    )
    p.add_argument("--save-dir", default="checkpoints")
    p.add_argument("--workers", type=at_least(0), default=2, help="loader workers (default 2)")
    p.add_argument("--samples", type=at_least(1), default=240, help="timed samples per format")
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--frames", type=at_least(1), default=18000,
                   help="frames of the dataset to project (default 18000: UAVid's training frames, ssp.md 6.3)")  # fmt: skip
    p.add_argument("--project", default="8x736x1280/8x1440x2560",
                   help="K x H x W at the student's / teacher's size for the projection (default: UAVid)")  # fmt: skip
    p.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="student config override"
    )
    args = p.parse_args(argv)
    run = locate_run(args.run, args.save_dir)
    _, kind = eval_image.load_student(args.config)  # image or video config, as the dump's --student
    cfg = load(args.config, kind, args.override)
    info = get_dataset_info(cfg.data_cfg.dataset)
    size = tuple(cfg.data_cfg.crop_size)
    with_previous = kind == "video"
    rule = student_rule(cfg.data_cfg.train_skip_frames, with_previous)
    _, _, clips = open_split(cfg.data_cfg, "train", cfg.data_cfg.min_vid_len)
    report: dict = {"teacher_run": str(run), "student_config": args.config, "device": device_name(torch.device("cpu")),
                    "cpu_count": os.cpu_count(), "workers": args.workers, "samples": args.samples,
                    "batch_size": args.batch_size, "frames_rule": str(rule), "formats": {}}  # fmt: skip
    for name, (sub, flags) in FORMATS.items():
        folder = run / "logits" / sub
        eval_image.main([str(run), "--save-logits", "--split", "train", "--no-evaluation", "--logits-frames", str(rule),
                         "--logits-out", str(folder), *flags, *([f"{size[0]}x{size[1]}"] if flags[-1] == "--logits-size" else [])])  # fmt: skip
        store = TeacherLogits(folder)
        store.check(classes=info.class_names, size_hw=size, rule=rule)
        n, total = _folder_bytes(folder)
        teacher = SavedLogits(store)
        if kind == "video":
            augment = VideoTrainAugment(
                square_crop=cfg.data_cfg.square_crop, photometric=cfg.data_cfg.photometric
            )
            needs = DataNeeds(offsets=tuple(cfg.data_cfg.adjacent_frames), teacher=teacher)
            data = video_samples(clips, info, size, needs, train=True, augment=augment,
                                 skip=cfg.data_cfg.train_skip_frames, edge_policy=cfg.data_cfg.edge_policy)  # fmt: skip
            collate = collate_video
        else:
            data = LabelledFrames(clips, info, size, train=True, augment=ImageTrainAugment(cfg.data_cfg.square_crop),
                                  skip=cfg.data_cfg.train_skip_frames, teacher=teacher)  # fmt: skip
            collate = None
        rate = time_loader(data, collate, args.workers, args.samples, args.batch_size)
        report["formats"][name] = {"folder": str(folder), "stored": f"{store.num_classes}x{store.size_hw[0]}x"
                                   f"{store.size_hw[1]} {store.dtype} {store.fmt}", "frames": n, "bytes": total,
                                   "bytes_per_frame": round(total / max(n, 1)), "samples_per_s": round(rate, 1)}  # fmt: skip
    ours, native, ref = report["formats"].values()
    report["size_ratio"] = round(ref["bytes"] / max(ours["bytes"], 1), 2)
    report["speed_ratio"] = round(ours["samples_per_s"] / max(ref["samples_per_s"], 1e-9), 2)
    report["native_size_ratio"] = round(ref["bytes"] / max(native["bytes"], 1), 2)
    (ks, hs, ws), (kt, ht, wt) = (tuple(int(v) for v in part.split("x")) for part in args.project.split("/"))
    compression = ref["bytes_per_frame"] / (
        store.num_classes * store.size_hw[0] * store.size_hw[1] * BYTES["float32"]
    )
    report["projection"] = {
        "formula": "n_frames x K x H x W x bytes", "frames": args.frames,
        "tcseg_default_bytes": args.frames * ks * hs * ws * BYTES["float16"],
        "reference_bytes_uncompressed": args.frames * kt * ht * wt * BYTES["float32"],
        "native_bytes": args.frames * kt * -(-ht // 4) * -(-wt // 4) * BYTES["float16"],
        "reference_npz_ratio_measured": round(compression, 3),
    }  # fmt: skip
    atomic_write_text(run / "logits" / "bench.json", json.dumps(report, indent=1))
    print(f"teacher logits of {args.config}'s training frames ({report['frames_rule']}), {report['device']}, "
          f"{args.workers} loader workers, batch {args.batch_size}:")  # fmt: skip
    for name, r in report["formats"].items():
        print(f"  {name:<44} {r['stored']:<24} {r['frames']:>6} frames  {r['bytes_per_frame']:>10,d} B/frame  "
              f"{r['bytes'] / 1e6:9.1f} MB  {r['samples_per_s']:7.1f} samples/s")  # fmt: skip
    print(f"  reference / default: {report['size_ratio']}x the bytes; default / reference: {report['speed_ratio']}x "
          f"the samples/s; reference / native: {report['native_size_ratio']}x the bytes")  # fmt: skip
    pj = report["projection"]
    print(f"  projection, {pj['formula']}, {pj['frames']} frames: default {ks}x{hs}x{ws} float16 = "
          f"{pj['tcseg_default_bytes'] / 1e9:.1f} GB; native (stride 4 of {ht}x{wt}) float16 = "
          f"{pj['native_bytes'] / 1e9:.1f} GB; reference {kt}x{ht}x{wt} float32 = "
          f"{pj['reference_bytes_uncompressed'] / 1e12:.2f} TB uncompressed (npz measured here at "
          f"{pj['reference_npz_ratio_measured']:.2f} of that)")  # fmt: skip
    print(f"written {run / 'logits' / 'bench.json'}")
    return report


if __name__ == "__main__":
    run_cli(main)
