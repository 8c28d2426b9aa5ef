"""Evaluate and visualise a video-model run: ``python -m eval.vis.video RUN [flags]``.

Streams each clip of the split frame by frame through the model's recurrence (``init_state``, then ``step``;
the state is reset at every clip start), so memory does not grow with video length. Scores mIoU on the labelled
frames, TC over every pair of consecutive frames (``--tc-protocol``, default the SSP reference definition and
the strict one, each written with its protocol card) and VC_n where labels are dense. Writes
``<run>/results/<split>/``: metrics.json, per_class_iou.csv, per_clip_tc.csv, tc_over_time.png, pred/color/
overlay PNGs, per-clip overlay GIFs, and side-by-side GIFs ``frame | image model | video model | ground truth``
(the image-model panel is the per-frame prediction of the video model's own image network).
"""

from __future__ import annotations

import argparse
import sys

import cv2
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config.errors import run_cli
from data.catalog import get_dataset_info
from data.frames import ensure_dataset, read_split
from data.image_dataset import FrameStream, worker_init
from eval.evaluate import autocast, device_name, software
from eval.vis.outputs import PredictionWriter, SideBySideWriter, format_scores, format_table, write_metrics
from eval.vis.stream import FrameScorer, add_common_args, build_tc, build_vc, resolve_device
from models.runs import load_video_model, locate_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.vis.video", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if not (args.evaluation or args.write_res):
        print("nothing to do: --no-evaluation and --no-write-res")
        return None
    device = resolve_device(args.device)
    run = locate_run(args.run, args.save_dir)
    model, cfg, meta = load_video_model(run, best=args.best_model)
    model.to(device).eval()
    info = get_dataset_info(cfg.data_cfg.dataset)
    size = tuple(cfg.data_cfg.crop_size)
    root = ensure_dataset(cfg.data_cfg.dataset, cfg.data_cfg.path, size, cfg.data_cfg.generate_if_missing)
    clips = read_split(root, args.split, info)
    stream = FrameStream(clips, info, size, native_labels=args.resolution == "label")
    loader = DataLoader(stream, batch_size=1, num_workers=args.num_workers, worker_init_fn=worker_init)
    amp = torch.bfloat16 if device.type == "cuda" else None
    scorer = None
    if args.evaluation:
        scorer = FrameScorer(info, clips, device, build_tc(args, info, device), build_vc(args.vc))
    out = run / "results" / args.split
    writer = PredictionWriter(out, info) if args.write_res else None
    side = SideBySideWriter(out / "side_by_side", info) if args.write_res else None

    state = model.init_state()
    for item in tqdm(
        loader, desc=f"{run.name} {args.split}", dynamic_ncols=True, disable=not sys.stderr.isatty()
    ):
        c, t = int(item["clip_index"][0]), int(item["t"][0])
        clip = clips[c]
        if t == 0:
            state = model.init_state()  # each clip starts fresh
        with torch.inference_mode(), autocast(device, amp):
            logits, state = model.step(
                item["image"].to(device), state, pair=clip.pair(t - 1, t) if t else None
            )
        pred = logits[0].float().argmax(0)
        label = item["label"][0] if bool(item["labelled"][0]) else None
        rgb = item["rgb"][0].numpy()
        if scorer is not None:
            scorer.add(c, t, rgb, pred, label, logits[0])
        if writer is not None:
            ids = pred.cpu().numpy().astype("uint8")
            writer.add(clip.name, item["frame"][0], rgb, ids)
            image_ids = model.image_logits(state, size)[0].float().argmax(0).cpu().numpy().astype("uint8")
            gt = None if label is None else label.numpy().astype("uint8")
            if gt is not None and gt.shape != ids.shape:  # --resolution label: show it at the frame's size
                gt = cv2.resize(gt, (ids.shape[1], ids.shape[0]), interpolation=cv2.INTER_NEAREST)
            side.add(clip.name, rgb, image_ids, ids, gt)
    if writer is not None:
        writer.close()
        side.close()
    registration = model.registration
    reg = (
        {"settings": registration.settings(), "stats": registration.stats()}
        if registration is not None
        else None
    )
    if scorer is None:
        print(f"outputs in {out}")
        return None

    sw = software()
    metrics = {
        "split": args.split, "run": str(run), "checkpoint": meta["path"], "epoch": meta.get("epoch"),
        "dataset": info.name, "image_run": meta.get("image_run"),
        **scorer.metrics(size, "recurrent over each clip (video)", sw, args.resolution),
        "registration": reg, "device": device_name(device), "software": sw,
    }  # fmt: skip
    write_metrics(out, metrics, scorer.cm.per_class_rows(info.class_names))
    scorer.write_tc_files(out)
    summary = scorer.cm.summary(info.class_names)
    print(format_table(f"{run.name} on {info.name} {args.split} ({scorer.labelled_frames} labelled frames)",
                       summary, info.class_names))  # fmt: skip
    print(format_scores(metrics))
    print(f"results in {out}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
