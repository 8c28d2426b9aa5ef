"""Evaluate and visualise any run as a video model: ``python -m eval.vis.video RUN [flags]``.

A video run streams through its method's recurrence (``init_state``, then ``step``; the state is reset at every
clip start), an image run through the per-frame adapter, so memory does not grow with video length and both are
scored by the same code. Scores mIoU on the labelled frames, TC over every pair of consecutive frames
(``--tc-protocol``, default the SSP reference definition and the strict one, each written with its protocol
card) and VC_n where labels are dense. Writes ``<run>/results/<split>/`` as a whole (replacing the previous
results only once complete): README.txt, metrics.json (with the method's
description: helpers, their settings and counters), per_class_iou.csv, per_clip_tc.csv, tc_over_time.png,
pred/color/overlay PNGs, per-clip overlay GIFs, and side-by-side GIFs ``frame | image network | video model |
ground truth``. The image-network panel is the per-frame prediction of the video run's own image network, not of
the image run it started from: its title says whether the video training fine-tuned it (see
:func:`image_panel_title`).
"""

from __future__ import annotations

import argparse
import sys

import cv2
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config.cli import CliParser
from config.errors import run_cli
from data.image_dataset import FrameStream, worker_init
from eval.evaluate import autocast, device_name, software
from eval.vis.outputs import PredictionWriter, SideBySideWriter, format_scores, format_table, write_metrics
from eval.vis.stream import FrameScorer, add_common_args, build_tc, build_vc, open_run
from models.runs import load_streaming_model
from models.video.base import StepSide, VideoModel


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.vis.video", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    return p


def image_panel_title(model: VideoModel, meta: dict) -> str:
    """The side-by-side title of the image-network panel, short enough for a 224-pixel-wide panel.

    A video run's image network started as the image run's but is fine-tuned with the method unless
    ``freeze_image_model``: then it is no longer the image run's model, and the title must not say so.
    """
    if meta.get("kind") == "image":
        return "image model"  # an image run through the per-frame adapter: the model itself
    return "image net (frozen)" if model.freeze_image_model else "image net (tuned here)"


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if not (args.evaluation or args.write_res):
        print("nothing to do: --no-evaluation and --no-write-res")
        return None
    ev = open_run(args, load_streaming_model)
    model, info, size, device, clips = ev.model, ev.info, ev.size, ev.device, ev.clips
    stream = FrameStream(clips, info, size, native_labels=args.resolution == "label")
    loader = DataLoader(stream, batch_size=1, num_workers=args.num_workers, worker_init_fn=worker_init)
    scorer = None
    if args.evaluation:
        scorer = FrameScorer(info, clips, device, build_tc(args, info, device), build_vc(args.vc))
    results = ev.results.path  # renamed to ev.results.final by commit(), once complete
    writer = PredictionWriter(results, info) if args.write_res else None
    side_by_side = (SideBySideWriter(results / "side_by_side", info, image_title=image_panel_title(model, ev.meta))
                    if args.write_res else None)  # fmt: skip

    state = model.init_state()
    for item in tqdm(
        loader, desc=f"{ev.run.name} {args.split}", dynamic_ncols=True, disable=not sys.stderr.isatty()
    ):
        c, t = int(item["clip_index"][0]), int(item["t"][0])
        clip = clips[c]
        if t == 0:
            state = model.init_state()  # each clip starts fresh
        frame = item["image"].to(device)
        with torch.inference_mode(), autocast(device, ev.amp):
            out, state = model.step(frame, state, StepSide(pair=clip.pair(t - 1, t) if t else None))
        logits = out.logits
        pred = logits[0].float().argmax(0)
        label = item["label"][0] if bool(item["labelled"][0]) else None
        rgb = item["rgb"][0].numpy()
        if scorer is not None:
            scorer.add(c, t, rgb, pred, label, logits[0])
        if writer is not None:
            ids = pred.cpu().numpy().astype("uint8")
            writer.add(clip.name, item["frame"][0], rgb, ids)
            with torch.inference_mode(), autocast(device, ev.amp):
                # methods that skip the image network on some frames (DFF) get it run here, for the panel only
                image = model.image_model(frame) if out.image_logits is None else out.image_logits
                image = model.image_model.resize_logits(image, size)
            image_ids = image[0].float().argmax(0).cpu().numpy().astype("uint8")
            gt = None if label is None else label.numpy().astype("uint8")
            if gt is not None and gt.shape != ids.shape:  # --resolution label: show it at the frame's size
                gt = cv2.resize(gt, (ids.shape[1], ids.shape[0]), interpolation=cv2.INTER_NEAREST)
            side_by_side.add(clip.name, rgb, image_ids, ids, gt)
    if writer is not None:
        writer.close()
        side_by_side.close()
    if scorer is None:
        ev.results.commit()
        print(f"outputs in {ev.results.final}")
        return None

    sw = software()
    meta = ev.meta
    metrics = {
        "split": args.split, "run": str(ev.run), "checkpoint": meta["path"], "epoch": meta.get("epoch"),
        "dataset": info.name, "image_run": meta.get("image_run"),
        **scorer.metrics(size, model.inference, sw, args.resolution),
        "video_model": model.describe(), "precision": args.precision, "device": device_name(device), "software": sw,
    }  # fmt: skip
    write_metrics(results, metrics, scorer.cm.per_class_rows(info.class_names))
    scorer.write_tc_files(results)
    ev.results.commit()
    summary = scorer.cm.summary(info.class_names)
    print(format_table(f"{ev.run.name} on {info.name} {args.split} ({scorer.labelled_frames} labelled frames)",
                       summary, info.class_names))  # fmt: skip
    print(format_scores(metrics))
    print(f"results in {ev.results.final}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
