"""Evaluate and visualise an image-model run: ``python -m eval.vis.image RUN [flags]``.

Streams every clip of the split frame by frame (with ``--skip-frames K``: the frames with ``i mod K in {0, 1}``;
with ``--logits-frames RULE``: the frames of a :class:`data.logits.FrameRule`), computes dataset-level mIoU and
per-class IoU on the labelled frames from one confusion matrix, and writes ``<run>/results/<split>/``
(metrics.json, per_class_iou.csv, pred/color/overlay PNGs, per-clip GIFs). TC counts only truly consecutive pairs.

With ``--save-logits`` it also dumps raw logits (teacher logits for distillation, ``ssp.md`` §6.4) to
``<run>/logits/<split>/`` (or ``--logits-out``): one ``<clip>/<frame>.npy`` (or ``.npz``) per frame, float16 by
default, resized to the student's input size by default, with a ``manifest.json`` that students check. The dump is
resumable (frames on disk are skipped) and refuses a folder holding a different dump. ``--no-evaluation
--save-logits`` is a logits dump and writes no pictures unless ``--write-res`` asks for them. Every combination of
``--[no-]evaluation``, ``--[no-]write-res`` and ``--save-logits`` works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from config.loader import load as load_config
from data.catalog import DatasetInfo, get_dataset_info
from data.image_dataset import FrameStream, collate_stream, worker_init
from data.logits import LOGIT_DTYPES, LOGIT_FORMATS, FrameRule
from eval.evaluate import autocast, device_name, label_map, predict_tta, software
from eval.vis.outputs import LogitsWriter, PredictionWriter, format_scores, format_table, write_metrics
from eval.vis.stream import EvalSetup, FrameScorer, add_common_args, build_tc, build_vc, open_run
from models.runs import load_image_model


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.vis.image", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--skip-frames", type=int, default=1, metavar="K",
                   help="infer only frames with i mod K in {0,1} (each sampled frame and its predecessor; "
                        "K = 1 or 2 means every frame) = --logits-frames kd_pairs(K); TC counts only truly "
                        "consecutive pairs")  # fmt: skip
    p.add_argument("--save-logits", action="store_true",
                   help="dump raw logits (teacher logits for distillation) to --logits-out")  # fmt: skip
    p.add_argument("--logits-frames", default=None, metavar="RULE",
                   help="frames to infer and dump: all, kd_pairs(k) (i mod k in {0,1}: KD-SSP samples and their "
                        "predecessors) or kd_samples(k) (i mod k == 1: image KD); default kd_pairs(--skip-frames)")  # fmt: skip
    p.add_argument("--logits-dtype", default="float16", choices=LOGIT_DTYPES,
                   help="stored dtype (default float16; bfloat16 is stored as its raw 16 bits)")  # fmt: skip
    p.add_argument("--logits-size", default="student", metavar="eval|student|native|HxW",
                   help="'student' (default): the crop_size of --student, else the dataset's reference student "
                        "size; 'native': the head's own output (stride 4, 16x fewer pixels than the input; the "
                        "student's loader upsamples it as the teacher does); 'eval' keeps the model input size; "
                        "HxW resizes (e.g. 736x1280)")  # fmt: skip
    p.add_argument("--student", default=None, metavar="CONFIG",
                   help="image or video config (name or path) of the student, for --logits-size student")  # fmt: skip
    p.add_argument(
        "--logits-stride", type=int, default=1, help="extra downsampling of saved logits (avg-pool)"
    )
    p.add_argument("--logits-format", default="npy", choices=LOGIT_FORMATS,
                   help="npy (default): memory-mappable; npz: compressed (the reference's, slow to read)")  # fmt: skip
    p.add_argument("--logits-out", default=None, metavar="DIR",
                   help="folder of the logits dump (default <run>/logits/<split>)")  # fmt: skip
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


def frame_rule(args: argparse.Namespace) -> FrameRule:
    """``--logits-frames``, or ``kd_pairs(--skip-frames)``; both given and keeping other frames is an error."""
    legacy = FrameRule("kd_pairs", args.skip_frames)
    if args.logits_frames is None:
        return legacy
    rule = FrameRule.parse(args.logits_frames)
    if args.skip_frames != 1 and not (rule.covers(legacy) and legacy.covers(rule)):
        raise ConfigError(f"--skip-frames {args.skip_frames} (= kd_pairs({args.skip_frames})) and --logits-frames "
                          f"{rule} keep different frames; pass only --logits-frames")  # fmt: skip
    return rule


def _logits_size(arg: str) -> str | tuple[int, int]:
    """``eval``, ``student``, ``native`` or (H, W), checked before the model is loaded."""
    if arg.strip().lower() in ("eval", "student", "native"):
        return arg.strip().lower()
    try:
        h, w = (int(v) for v in arg.lower().split("x"))
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise ConfigError(
            f"--logits-size: expected 'eval', 'student', 'native' or HxW like 736x1280, got '{arg}'"
        )
    return h, w


def load_student(name: str) -> tuple[object, str]:
    """The student config ``name`` (a name or path, image or video; a run folder works too) and its kind.

    A path in ``config/video/`` or ``config/image/`` is of that kind; anything else is tried as a video config,
    then as an image config."""
    path = Path(name)
    if path.is_dir() and (path / "config.yaml").is_file():
        path = path / "config.yaml"
        name = str(path)
    kinds = (
        [path.parent.name]
        if path.is_file() and path.parent.name in ("video", "image")
        else ["video", "image"]
    )
    errors = []
    for kind in kinds:
        try:
            return load_config(name, kind), kind
        except ConfigError as err:
            errors.append(f"as {kind}: {err}")
    raise ConfigError(f"--student: cannot load '{name}' ({'; '.join(errors)})")


def resolve_logits_size(args: argparse.Namespace, info: DatasetInfo) -> tuple[tuple[int, int] | None, str]:
    """The size to store logits at (None = the teacher's input size) and where it comes from, for messages."""
    arg = _logits_size(args.logits_size)
    if args.student is not None and arg != "student":
        raise ConfigError(f"--student only sets --logits-size student, not --logits-size {args.logits_size}; "
                          "drop one of them")  # fmt: skip
    if arg == "eval":
        return None, "the teacher's input size (--logits-size eval)"
    if arg == "native":
        return None, "the teacher head's own output, which the student's loader upsamples as the teacher does"
    if arg != "student":
        return arg, f"--logits-size {arg[0]}x{arg[1]}"
    if args.student is not None:
        cfg, kind = load_student(args.student)
        student = get_dataset_info(cfg.data_cfg.dataset)
        if tuple(student.class_names) != tuple(info.class_names):
            raise ConfigError(f"--student {args.student}: its dataset {student.name} has other classes than the "
                              f"teacher's ({info.name}); pass the student config of this dataset")  # fmt: skip
        size = (int(cfg.data_cfg.crop_size[0]), int(cfg.data_cfg.crop_size[1]))
        return size, f"crop_size of the {kind} config --student {args.student}"
    if info.student_size is not None:
        return tuple(info.student_size), f"the reference {info.name} student's crop_size (no --student given)"
    print(f"logits: {info.name} has no reference student size and no --student was given: keeping the teacher's "
          "input size")  # fmt: skip
    return None, f"the teacher's input size (no student size for {info.name})"


def main(argv: list[str] | None = None) -> dict | None:
    args = build_parser().parse_args(argv)
    if args.skip_frames < 1 or args.logits_stride < 1 or args.batch_size < 1:
        raise ConfigError("--skip-frames, --logits-stride and --batch-size must be at least 1")
    rule = frame_rule(args)
    _logits_size(args.logits_size)  # a typo fails before the model loads
    args.write_res = write_pictures(args)
    if not (args.evaluation or args.write_res or args.save_logits):
        print("nothing to do: --no-evaluation and --no-write-res without --save-logits")
        return None
    ev = open_run(args, load_image_model)
    run, model, meta, info, size, clips, device = ev.run, ev.model, ev.meta, ev.info, ev.size, ev.clips, ev.device  # fmt: skip
    stream = FrameStream(clips, info, size, rule, native_labels=args.resolution == "label")
    amp = ev.amp
    tta = "multiscale" if args.multiscale and args.tta == "none" else args.tta
    native = args.save_logits and _logits_size(args.logits_size) == "native"

    out = ev.results.path  # renamed to ev.results.final by commit(), once complete
    writer = PredictionWriter(out, info) if args.write_res else None
    logits_writer = None
    if args.save_logits:
        logits_writer = open_logits(args, ev, rule, tta)
        if not (args.evaluation or args.write_res):  # logits only: frames on disk need no inference
            logits_writer.skipped += stream.drop_done(logits_writer.done)
            if logits_writer.skipped:
                print(
                    f"logits: skipped {logits_writer.skipped} frames already written; {len(stream)} to infer"
                )
    loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.num_workers,
                        worker_init_fn=worker_init, collate_fn=collate_stream)  # fmt: skip
    scorer = None
    if args.evaluation:
        scorer = FrameScorer(info, clips, device, build_tc(args, info, device), build_vc(args.vc))
    for batch in tqdm(
        loader, desc=f"{run.name} {args.split}", dynamic_ncols=True, disable=not sys.stderr.isatty()
    ):
        images = batch["image"].to(device)
        if native:  # the head's logits are stored; the predictions are the model's own upsampling of them
            head = head_logits(model, images, tta, amp)
            logits = model.resize_logits(head, images.shape[-2:])
        else:
            logits = predict_tta(model, images, tta, model.backbone.input_multiple, amp)
        pred = label_map(logits)
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
                logits_writer.add(clip, frame, (head if native else logits)[i])
    if writer is not None:
        writer.close()
    if logits_writer is not None:
        m = logits_writer.close()
        print(f"logits: {m['frames_written']} frames written, skipped {m['frames_skipped']} frames already written; "
              f"{m['bytes_per_frame']} bytes per frame; {m['frames_on_disk']} frames, {m['bytes_on_disk']} bytes "
              f"({m['bytes_on_disk'] / 1e6:.1f} MB) on disk")  # fmt: skip
        print(f"logits folder (data_cfg.logits_folder): {logits_writer.out}")
    if not args.evaluation:
        ev.results.commit()
        print(f"outputs in {ev.results.final}" if args.write_res else "done")
        return None

    sw = software()
    metrics = {
        "split": args.split, "run": str(run), "checkpoint": meta["path"], "epoch": meta.get("epoch"),
        "dataset": info.name, "skip_frames": args.skip_frames, "frames_rule": str(rule),
        **scorer.metrics(size, "per frame (image)", sw, args.resolution),
        "precision": args.precision, "fast_path": ev.fast_path, "device": device_name(device), "software": sw,
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


def head_logits(
    model: torch.nn.Module, images: torch.Tensor, tta: str, amp: torch.dtype | None
) -> torch.Tensor:
    """[B,K,h,w] float32 logits at the head's output stride, averaged with the flipped input's for ``--tta flip``.
    Upsampling is linear and commutes with the flip, so these upsampled equal :func:`predict_tta`'s logits."""
    if tta not in ("none", "flip"):
        raise ConfigError(f"--logits-size native stores one head resolution; --tta {tta} averages several, use "
                          "--logits-size student")  # fmt: skip
    with torch.inference_mode(), autocast(images.device, amp):
        out = model.decode(model.encode(images)).float()
        if tta == "flip":
            out = (out + model.decode(model.encode(images.flip(-1))).float().flip(-1)) / 2
    return out


def open_logits(args: argparse.Namespace, ev: EvalSetup, rule: FrameRule, tta: str) -> LogitsWriter:
    """The logits writer of ``--save-logits`` (which refuses a folder holding another dump, and writes the
    manifest), after printing what it stores."""
    resize, source = resolve_logits_size(args, ev.info)
    extra = {}
    if _logits_size(args.logits_size) == "native":
        model = ev.model
        if model.head.crop_output or model.upsampling == "nearest":
            raise ConfigError(f"--logits-size native: this teacher's head output is {'cropped' if model.head.crop_output else 'upsampled by nearest'} "
                              "to the input size, not interpolated; use --logits-size student")  # fmt: skip
        stride = model.output_stride
        resize = (-(-ev.size[0] // stride), -(-ev.size[1] // stride))
        extra = {"upsampling": model.upsampling, "output_stride": stride}
    folder = Path(args.logits_out) if args.logits_out else ev.run / "logits" / args.split
    manifest = {"teacher_run": str(ev.run.resolve()), "checkpoint": str(Path(ev.meta["path"]).resolve()),
                "epoch": ev.meta.get("epoch"), "split": args.split, "num_classes": ev.info.num_classes,
                "classes": list(ev.info.class_names), "input_size": list(ev.size), "logits_size": args.logits_size,
                "frames_rule": str(rule), "tta": tta, **extra}  # fmt: skip
    w = LogitsWriter(folder, manifest, args.logits_dtype, resize, args.logits_stride, args.logits_format)
    h, wd = w.size_hw
    stride = f", then stride {w.stride}" if w.stride > 1 else ""
    print(f"logits: storing {ev.info.num_classes} x {h} x {wd} {w.dtype} .{w.fmt} per frame ({source}{stride}; "
          f"teacher input {ev.size[0]}x{ev.size[1]}), frames {rule}, in {folder}")  # fmt: skip
    return w


if __name__ == "__main__":
    run_cli(main)
