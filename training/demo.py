"""The demo: ``python -m training.demo`` (``make demo``).

On the embedded synthetic aerial video set (generated on first use):

1. train the CPU-sized image model (``config/image/base_synthetic.yaml``) and evaluate it with ``eval.vis.image``;
2. train SSP on top of it (``config/video/ssp_synthetic.yaml``) and evaluate it with ``eval.vis.video``;
3. time both per frame with ``eval.benchmark`` (batch 1, same frames, same device, registration included);
4. print one table whose numbers are read back from the files those commands wrote
   (``results/val/metrics.json`` and ``benchmark/*.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from config.cli import CliParser
from config.errors import run_cli
from config.loader import load
from data.frames import ensure_dataset
from eval import benchmark
from eval.vis import image as eval_image
from eval.vis import video as eval_video
from training import train_image, train_video


def _tc(metrics: dict, name: str) -> float | None:
    entry = (metrics.get("tc") or {}).get(name)
    return None if entry is None else entry["value"]


def main(argv: list[str] | None = None) -> dict:
    p = CliParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", action="append", default=[], metavar="KEY=VALUE",
                   help="override for base_synthetic (repeatable), e.g. --image training_cfg.num_epochs=2")  # fmt: skip
    p.add_argument("--video", action="append", default=[], metavar="KEY=VALUE",
                   help="override for ssp_synthetic (repeatable)")  # fmt: skip
    p.add_argument("--bench-frames", type=int, default=100, help="timed frames per benchmark run")
    args = p.parse_args(argv)
    t0 = time.time()
    cfg = load("base_synthetic", "image", args.image)
    root = ensure_dataset(cfg.data_cfg.dataset, cfg.data_cfg.path, tuple(cfg.data_cfg.crop_size))
    print(f"== [demo] synthetic dataset ready at {root} ({time.time() - t0:.0f} s)")
    times = {}

    t = time.time()
    image_run = train_image.main(["base_synthetic", *args.image])
    eval_image.main([str(image_run), "--split", "val"])
    times["image"] = time.time() - t
    print(f"== [demo] image model trained and evaluated in {times['image']:.0f} s: {image_run}")

    t = time.time()
    video_run = train_video.main(["ssp_synthetic", f"image_model_cfg.checkpoint_name={Path(image_run).resolve()}",
                                  *args.video])  # fmt: skip
    eval_video.main([str(video_run), "--split", "val"])
    times["video"] = time.time() - t
    print(f"== [demo] SSP trained and evaluated in {times['video']:.0f} s: {video_run}")

    t = time.time()
    # One torch thread: the OpenCV registration then has the second core to itself and runs alongside the
    # network (SSP.overlap_registration); both models are timed with the same setting (docs/benchmarks.md
    # also gives the 2-thread figures).
    bench = benchmark.main(
        [str(video_run), "--frames", str(args.bench_frames), "--warmup", "10", "--threads", "1"]
    )
    times["benchmark"] = time.time() - t

    img = json.loads((Path(image_run) / "results" / "val" / "metrics.json").read_text())
    vid = json.loads((Path(video_run) / "results" / "val" / "metrics.json").read_text())
    res = bench["results"]
    rows = [
        ("image model (ResNet-18 + UperNet)", img, res["image/fp32"]["fps"]),
        (
            f"SSP ({vid['video_model']['helpers']['registration']['settings']['provider']} registration)",
            vid,
            res["video/fp32"]["fps"],
        ),
    ]

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    print(f"\n== [demo] synthetic val split: mIoU on {img['miou']['frames']} labelled frames, TC over every pair "
          f"of consecutive frames (true flow), FPS at batch 1 on {bench['device']}")  # fmt: skip
    print(f"  {'model':<36} {'mIoU %':>7} {'TC ref %':>9} {'TC strict %':>12} {'FPS':>8}")
    for name, m, fps in rows:
        print(f"  {name:<36} {pct(m['miou']['value']):>7} {pct(_tc(m, 'tc_reference')):>9} "
              f"{pct(_tc(m, 'strict')):>12} {fps:8.1f}")  # fmt: skip
    print(f"  SSP FPS / image FPS: {res['ratio/fp32']:.3f}")
    print(f"  runs: {image_run}  {video_run}")
    print(f"  time: image {times['image']:.0f} s, SSP {times['video']:.0f} s, benchmark {times['benchmark']:.0f} s, "
          f"total {time.time() - t0:.0f} s")  # fmt: skip
    return {"image": img, "video": vid, "benchmark": bench, "image_run": image_run, "video_run": video_run}


if __name__ == "__main__":
    run_cli(main)
