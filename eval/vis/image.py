"""Evaluate and visualise an image-model run: ``python -m eval.vis.image RUN [flags]``.

Streams every clip of the split frame by frame (with ``--skip-frames K``: the frames with ``i mod K in {0, 1}``),
computes dataset-level mIoU and per-class IoU on the labelled frames from one confusion matrix, and writes
``<run>/results/<split>/`` (metrics.json, per_class_iou.csv, pred/color/overlay PNGs, per-clip GIFs). With
``--save-logits`` it also dumps raw logits (teacher logits for distillation) to ``<run>/logits/<split>/``;
``--no-evaluation --save-logits`` is a logits dump and writes no pictures unless ``--write-res`` asks for them.
Every combination of ``--[no-]evaluation``, ``--[no-]write-res`` and ``--save-logits`` works.
"""

from __future__ import annotations

import argparse
import sys

from torch.utils.data import DataLoader
from tqdm import tqdm

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from data.image_dataset import FrameStream, collate_stream, worker_init
from eval.evaluate import device_name, predict_tta, software
from eval.vis.outputs import LogitsWriter, PredictionWriter, format_scores, format_table, write_metrics
from eval.vis.stream import FrameScorer, add_common_args, build_tc, build_vc, open_run
from models.runs import load_image_model


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.vis.image", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--skip-frames", type=int, default=1, metavar="K",
                   help="infer only frames with i mod K in {0,1} (each sampled frame and its predecessor; "
                        "K = 1 or 2 means every frame); TC counts only truly consecutive pairs")  # fmt: skip
    p.add_argument("--save-logits", action="store_true", help="dump raw logits to <run>/logits/<split>/")
    p.add_argument("--logits-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--logits-size", default="eval", metavar="eval|HxW",
                   help="'eval' keeps the model input size; HxW resizes (e.g. 736x1280 for a student)")  # fmt: skip
    p.add_argument(
        "--logits-stride", type=int, default=1, help="extra downsampling of saved logits (avg-pool)"
    )
    p.add_argument("--logits-format", default="npz", choices=["npz", "npy"], help="npz = compressed")
    p.add_argument("--tta", default="none", choices=["none", "flip", "multiscale", "flip+multiscale"],
                   help="test-time augmentation: average logits over flips / scales 0.75, 1, 1.5")  # fmt: skip
    p.add_argument("--multiscale", action="store_true", help="reference flag: same as --tta multiscale")
    p.add_argument("--batch-size", type=int, default=4)
    # None = not given: pictures unless this is a logits dump (see write_pictures)
    p.set_defaults(write_res=None)
    return p


def write_pictures(args: argparse.Namespace) -> bool:
    """``--write-res`` / ``--no-write-res`` when given; otherwise pictures, except for a logits dump
    (``--no-evaluation --save-logits``), which would otherwise bury the logits under PNGs and GIFs."""
    if args.write_res is not None:
        return args.write_res
    return args.evaluation or not args.save_logits


def _logits_size(arg: str) -> tuple[int, int] | None:
    if arg == "eval":
        return None
    try:
        h, w = (int(v) for v in arg.lower().split("x"))
        return h, w
    except ValueError:
        raise ConfigError(f"--logits-size: expected 'eval' or HxW like 736x1280, got '{arg}'") from None


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if args.skip_frames < 1 or args.logits_stride < 1 or args.batch_size < 1:
        raise ConfigError("--skip-frames, --logits-stride and --batch-size must be at least 1")
    args.write_res = write_pictures(args)
    if not (args.evaluation or args.write_res or args.save_logits):
        print("nothing to do: --no-evaluation and --no-write-res without --save-logits")
        return None
    ev = open_run(args, load_image_model)
    run, model, meta, info, size, clips, device = ev.run, ev.model, ev.meta, ev.info, ev.size, ev.clips, ev.device  # fmt: skip
    stream = FrameStream(clips, info, size, args.skip_frames, native_labels=args.resolution == "label")
    loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.num_workers,
                        worker_init_fn=worker_init, collate_fn=collate_stream)  # fmt: skip
    amp = ev.amp
    tta = "multiscale" if args.multiscale and args.tta == "none" else args.tta

    out = ev.results.path  # renamed to ev.results.final by commit(), once complete
    writer = PredictionWriter(out, info) if args.write_res else None
    manifest = {"teacher_run": str(run), "checkpoint": meta["path"], "epoch": meta.get("epoch"), "split": args.split,
                "num_classes": info.num_classes, "classes": list(info.class_names), "input_size": list(size),
                "frames_rule": f"i mod {args.skip_frames} in {{0,1}}", "tta": tta}  # fmt: skip
    logits_writer = None
    if args.save_logits:
        logits_writer = LogitsWriter(run / "logits" / args.split, manifest, args.logits_dtype,
                                     _logits_size(args.logits_size), args.logits_stride, args.logits_format)  # fmt: skip
    scorer = None
    if args.evaluation:
        scorer = FrameScorer(info, clips, device, build_tc(args, info, device), build_vc(args.vc))
    for batch in tqdm(
        loader, desc=f"{run.name} {args.split}", dynamic_ncols=True, disable=not sys.stderr.isatty()
    ):
        logits = predict_tta(model, batch["image"].to(device), tta, model.backbone.input_multiple, amp)
        pred = logits.argmax(1)
        for i in range(len(pred)):
            clip, frame = batch["clip"][i], batch["frame"][i]
            if scorer is not None:
                label = batch["label"][i] if bool(batch["labelled"][i]) else None
                scorer.add(
                    int(batch["clip_index"][i]), int(batch["t"][i]), batch["rgb"][i].numpy(), pred[i], label
                )
            if writer is not None:
                writer.add(clip, frame, batch["rgb"][i].numpy(), pred[i].cpu().numpy().astype("uint8"))
            if logits_writer is not None:
                logits_writer.add(clip, frame, logits[i])
    if writer is not None:
        writer.close()
    if logits_writer is not None:
        logits_writer.close()
        print(f"logits: {logits_writer.frames} frames in {logits_writer.out}")
    if not args.evaluation:
        ev.results.commit()
        print(f"outputs in {ev.results.final}" if args.write_res else "done")
        return None

    sw = software()
    metrics = {
        "split": args.split, "run": str(run), "checkpoint": meta["path"], "epoch": meta.get("epoch"),
        "dataset": info.name, "skip_frames": args.skip_frames,
        **scorer.metrics(size, "per frame (image)", sw, args.resolution),
        "precision": args.precision, "device": device_name(device), "software": sw,
    }  # fmt: skip
    metrics["miou"]["tta"] = tta
    write_metrics(out, metrics, scorer.cm.per_class_rows(info.class_names))
    scorer.write_tc_files(out)
    ev.results.commit()
    print(format_table(f"{run.name} on {info.name} {args.split} ({scorer.labelled_frames} labelled frames)",
                       scorer.cm.summary(info.class_names), info.class_names))  # fmt: skip
    print(format_scores(metrics))
    print(f"results in {ev.results.final}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
