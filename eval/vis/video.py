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

Runtime options (:meth:`VideoModel.options`) are set after loading, in one ``set_options`` call: ``--interval I``
(non-keyframes between keyframes), ``--eval-scale S`` (the keyframe model's input scale) and ``--option
NAME=VALUE`` (any offered option, VALUE read as a YAML scalar: ``use_edge=false``); a method that does not offer
one is a one-line error. metrics.json records them (``runtime_options``). A method with keyframes (one that offers
``interval``: DFF, keyframe propagation) is also scored by key distance (:mod:`eval.key_cycle`): ``key_cycle``
holds mIoU per distance ``l = 0 .. interval``, avg mIoU (all distances pooled) and min mIoU (``l = interval``);
on sparsely labelled sets (``--key-phases auto``, or ``all``) one extra pass per phase of the schedule sees each
labelled frame at every distance. ``key_cycle_variants`` holds the same for the method's named option sets
(keyframe propagation: ``without edge``). TC is always that of the main pass.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import cv2
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from data.image_dataset import FrameStream, worker_init
from eval.evaluate import autocast, device_name, label_map, software
from eval.key_cycle import PHASE_MODES, KeyCycleScores, format_key_cycle, key_phases, score_key_cycle
from eval.vis.outputs import PredictionWriter, SideBySideWriter, format_scores, format_table, write_metrics
from eval.vis.stream import (
    EvalSetup,
    FrameScorer,
    add_common_args,
    build_tc,
    build_vc,
    open_run,
    scored_prediction,
)
from models.runs import load_streaming_model
from models.video.base import StepSide, VideoModel


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.vis.video", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--interval", type=at_least(0), default=None, metavar="I",
                   help="keyframe methods: non-keyframes between keyframes (0 = every frame a keyframe); default: "
                        "the run's")  # fmt: skip
    p.add_argument("--eval-scale", type=float, default=None, metavar="S",
                   help="keyframe propagation: scale of the keyframe model's input; default: the run's")  # fmt: skip
    p.add_argument("--option", action="append", default=[], type=parse_option, metavar="NAME=VALUE",
                   help="set any runtime option the method offers (repeatable; VALUE is a YAML scalar: "
                        "use_edge=false, key_phase=1)")  # fmt: skip
    p.add_argument("--key-phases", default="auto", choices=PHASE_MODES,
                   help="key-cycle scores: one pass per phase of the key schedule (all), the first only (first), "
                        "or all when some frames are unlabelled (auto, default)")  # fmt: skip
    return p


def parse_option(text: str) -> tuple[str, Any]:
    """An argparse ``type`` for ``--option NAME=VALUE``: ``(name, value)``, the value read as a YAML scalar."""
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name or not raw:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. use_edge=false), got '{text}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"'{raw}' is not a YAML scalar (in '{text}')") from None
    if isinstance(value, (dict, list)) or value is None:
        raise argparse.ArgumentTypeError(f"expected a single value (number, true/false, word), got '{raw}'")
    return name, value


def runtime_options(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime options the user gave, in the order they are applied: ``--interval`` first (a key schedule
    resets its phase when the interval moves, so ``key_phase`` must come after), ``--eval-scale``, then each
    ``--option`` in the order given."""
    opts: dict[str, Any] = {}
    if args.interval is not None:
        opts["interval"] = args.interval
    if args.eval_scale is not None:
        opts["eval_scale"] = args.eval_scale
    flags = {"interval": "--interval", "eval_scale": "--eval-scale"}
    for name, value in args.option:
        if name in opts:
            given = flags.get(name, f"--option {name}=")
            raise ConfigError(f"--option {name}= repeats {given}: give it once")
        opts[name] = value
    return opts


def cycle_phases(model: VideoModel, ev: EvalSetup, mode: str) -> list[int]:
    """The key-schedule phases to score: :func:`key_phases`, or, where one pass is enough (dense labels,
    ``--key-phases first``), the model's current phase (what the main pass runs, ``--option key_phase=P``)."""
    phases = key_phases(model, ev.clips, mode)
    return phases if len(phases) > 1 else [int(model.options().get("key_phase", 0))]


def score_phases(
    model: VideoModel, ev: EvalSetup, args: argparse.Namespace, phases: list[int], name: str
) -> dict:
    """:func:`score_key_cycle` over ``phases`` at the resolution of the main mIoU, with the options it ran with."""
    result = score_key_cycle(model, ev.clips, ev.info, ev.size, ev.device, ev.amp, args.num_workers, phases,
                             desc=f"{ev.run.name} {name}", native_labels=args.resolution == "label")  # fmt: skip
    return {**result, "options": model.options()}


def score_variants(model: VideoModel, ev: EvalSetup, args: argparse.Namespace, phases: list[int]) -> dict:
    """Key-cycle scores under each of the method's :meth:`~VideoModel.eval_variants` (one more pass per phase
    each), every option restored after each."""
    out = {}
    for name, values in model.eval_variants().items():
        before = model.options()
        try:
            model.set_options(**values)
            out[name] = score_phases(model, ev, args, phases, name)
        finally:
            model.set_options(**before)  # in options() order: the interval before the phase it would reset
    return out


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
    opts = runtime_options(args)
    if opts:
        model.set_options(**opts)  # a method that does not offer one says so, in one line
    # methods with keyframes are also scored by key distance; one pass is enough where every frame is labelled
    keyed = args.evaluation and "interval" in model.options()
    phases = cycle_phases(model, ev, args.key_phases) if keyed else []
    one_pass = len(phases) == 1  # the main pass collects the key-cycle scores too
    cycle = KeyCycleScores(info.num_classes, model.options()["interval"], device) if one_pass else None
    # a CPU registration runs in the loader's workers, ahead of the network (in the main process it would not)
    registration = model.stream_registration() if args.num_workers > 0 else None
    stream = FrameStream(
        clips, info, size, native_labels=args.resolution == "label", registration=registration
    )
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
            h = item["homography"].to(device) if bool(item.get("registered", False)) else None
            out, state = model.step(
                frame, state, StepSide(pair=clip.pair(t - 1, t) if t else None, homography=h)
            )
        logits = out.logits
        pred = label_map(logits[0].float(), 0)
        label = item["label"][0] if bool(item["labelled"][0]) else None
        rgb = item["rgb"][0].numpy()
        if scorer is not None:
            scorer.add(c, t, rgb, pred, label, logits[0])
        if cycle is not None and label is not None:
            distance = 0 if out.key_distance is None else int(out.key_distance)
            cycle.add(distance, scored_prediction(pred, label, logits[0]), label)
        if writer is not None:
            ids = pred.cpu().numpy().astype("uint8")
            writer.add(clip.name, item["frame"][0], rgb, ids)
            with torch.inference_mode(), autocast(device, ev.amp):
                # methods that skip the image network on some frames (DFF) get it run here, for the panel only
                image = model.image_model(frame) if out.image_logits is None else out.image_logits
                image = model.image_model.resize_logits(image, size)
            image_ids = label_map(image[0].float(), 0).cpu().numpy().astype("uint8")
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
        "video_model": model.describe(), "precision": args.precision, "fast_path": ev.fast_path,
        # where the registration ran: in the loader's workers, its counters stay there (describe() shows the rest)
        "registration_in_loader_workers": args.num_workers if registration is not None else 0,
        "device": device_name(device), "software": sw,
    }  # fmt: skip
    if model.options():
        metrics["runtime_options"] = model.options()
    if phases:
        metrics["key_cycle"] = (
            {**cycle.result(), "phases": phases, "options": model.options()}
            if cycle is not None
            else score_phases(model, ev, args, phases, "key cycle")  # sparse labels: one pass per phase
        )
        metrics["key_cycle_variants"] = score_variants(model, ev, args, phases)
    write_metrics(results, metrics, scorer.cm.per_class_rows(info.class_names))
    scorer.write_tc_files(results)
    ev.results.commit()
    summary = scorer.cm.summary(info.class_names)
    print(format_table(f"{ev.run.name} on {info.name} {args.split} ({scorer.labelled_frames} labelled frames)",
                       summary, info.class_names))  # fmt: skip
    print(format_scores(metrics))
    if phases:
        print(format_key_cycle(metrics["key_cycle"]))
        for name, result in metrics["key_cycle_variants"].items():
            print(format_key_cycle(result, title=f"{name}: "))
    print(f"results in {ev.results.final}")
    return metrics


if __name__ == "__main__":
    run_cli(main)
