"""The demo: ``python -m training.demo`` (``make demo``).

On the embedded synthetic aerial video set (generated on first use): train the CPU-sized image model
(``config/image/base_synthetic.yaml``), evaluate its last checkpoint on the val split with ``eval.vis.image``,
and print one results table whose numbers are those written to ``<run>/results/val/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from config.errors import run_cli
from config.loader import load
from data.frames import ensure_dataset
from eval.vis import image as eval_image
from training import train_image


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "overrides", nargs="*", help="overrides for base_synthetic, e.g. training_cfg.num_epochs=2"
    )
    args = p.parse_args(argv)
    t0 = time.time()
    cfg = load("base_synthetic", "image", args.overrides)
    root = ensure_dataset(cfg.data_cfg.dataset, cfg.data_cfg.path, tuple(cfg.data_cfg.crop_size))
    print(f"== [demo] synthetic dataset ready at {root} ({time.time() - t0:.0f} s)")

    t1 = time.time()
    run = train_image.main(["base_synthetic", *args.overrides])
    print(f"== [demo] image model trained in {time.time() - t1:.0f} s: {run}")

    t2 = time.time()
    metrics = eval_image.main([str(run), "--split", "val"])
    print(f"== [demo] evaluated in {time.time() - t2:.0f} s")

    stored = json.loads((Path(run) / "results" / "val" / "metrics.json").read_text())
    rows = [("image model (ResNet-18 + UperNet)", stored["miou"]["value"], stored["pixel_acc"])]
    assert metrics is not None and stored["miou"]["value"] == metrics["miou"]["value"]
    print("\n== [demo] results on the synthetic val split (from results/val/metrics.json)")
    print(f"  {'model':<36} {'mIoU %':>7} {'pixel acc %':>12}")
    for name, miou, acc in rows:
        print(f"  {name:<36} {100 * miou:7.2f} {100 * acc:12.2f}")
    print(f"  run: {run}   total time: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    run_cli(main)
