"""Stage B of online distillation (``other_methods.md`` §3.2): a student learns a video stream from a teacher's labels.

    python -m training.online.run fifo_synthetic                                  # a config in config/online/
    python -m training.online.run fifo_synthetic teacher=gd dataset_size=40      # key=value overrides
    python -m training.online.run fifo_cityscapes_reference --dataset D --teacher segformer --groundtruth gd
    python -m training.online.run --dataset D --numclasses 19 --teacher T --groundtruth G --save S --subfolder X \\
        --onlinedataset fifo                                                     # the reference's flags only

Every reference flag sets its config key (:mod:`training.online.flags`); flags apply after ``key=value``
overrides, which apply after the file. The run writes ``<save>/<subfolder>/experiment_<k>/``
(:mod:`training.online.outputs`): logs per window, the final pass, ``summary.json``, a plot and TensorBoard.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text
from config.loader import dump, from_dict, load, parse_overrides, save
from config.online_sections import OnlineConfig
from eval.evaluate import device_name, resolve_device, software
from training.online import outputs
from training.online.build import (
    StreamInfo,
    buffer_kwargs,
    build_learner,
    check_labels,
    open_stream,
    student_kwargs,
    trainer_kwargs,
)
from training.online.flags import add_flags, alpha_overrides, arguments_text, flag_overrides
from training.online.frames import FrameStore, LabelStore
from training.online.loop import Learner, MaskSink, Protocol, StreamData, WindowRecord, final_pass, run_online


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m training.online.run", description=__doc__.split("\n\n")[0],
                  formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    p.add_argument("config", nargs="?", help="config name in config/online/ or a YAML path (default: none, the "
                   "schema's defaults: the reference's flags)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset_size=40 buffer_cfg.k=4")
    add_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _load(config: str | None, overrides: list[str]) -> OnlineConfig:
    if config is not None:
        return load(config, "online", overrides)
    try:
        return from_dict(parse_overrides(overrides), "online")
    except ConfigError as err:
        raise ConfigError(f"command line: {err}") from None


def resolve_config(argv: list[str] | None = None) -> tuple[OnlineConfig, argparse.Namespace]:
    """The config a command line means: the file, then ``key=value`` overrides, then the reference flags."""
    args = build_parser().parse_intermixed_args(argv)
    if args.config is not None and "=" in args.config:  # no config file, only overrides
        args.overrides, args.config = [args.config, *args.overrides], None
    overrides = [*args.overrides, *flag_overrides(args)]
    cfg = _load(args.config, overrides)
    # --alpha goes where the chosen buffer and trainer read it, so they must be known first
    alpha = alpha_overrides(args, cfg.buffer, cfg.trainer)
    return (_load(args.config, overrides + alpha) if alpha else cfg), args


def reference_arguments(cfg: OnlineConfig, info: StreamInfo) -> dict[str, Any]:
    """The resolved values under the reference's argument names (the ``arguments`` file)."""
    buf = buffer_kwargs(cfg)
    alpha = cfg.buffer_cfg.alpha if cfg.buffer == "prioritized" else cfg.trainer_cfg.alpha
    return {"dataset": cfg.dataset, "numclasses": info.num_classes, "save": cfg.save, "subfolder": cfg.subfolder,
            "teacher": cfg.teacher, "groundtruth": cfg.scored_folder, "start": cfg.start, "stop": cfg.stop,
            "datasetsize": cfg.dataset_size, "numworkers": cfg.num_workers, "batchsize": cfg.batch_size,
            "testingsetsize": cfg.testing_size, "learningrate": cfg.learning_rate, "device": cfg.device,
            "teachersubsample": cfg.teacher_subsample, "studentsubsample": cfg.student_subsample,
            "onlinedataset": cfg.buffer, "trainer": cfg.trainer, "update_freq": cfg.trainer_cfg.update_freq,
            "warmup": cfg.trainer_cfg.warmup, "er_capacity": cfg.buffer_cfg.store_capacity, "alpha": alpha,
            "C": cfg.buffer_cfg.candidates, "k": buf.get("k", cfg.buffer_cfg.k), "reg": cfg.trainer_cfg.reg,
            "decay": cfg.trainer_cfg.decay, "temperature": cfg.trainer_cfg.temperature, "delta_t": None,
            "sequence_length": cfg.sequence_length}  # fmt: skip


def cache_in_ram(cfg: OnlineConfig, info: StreamInfo) -> tuple[bool, str]:
    """Whether frames and labels stay in RAM (``frame_cache``; auto: up to ``cache_limit_gb``), and a line saying
    where they are kept and how much they weigh."""
    h, w = info.size_hw
    folders = {p.name for p in [info.teacher, *info.scored]}
    need = FrameStore.nbytes(len(info.frames), info.size_hw) + len(info.frames) * h * w * len(folders)
    ram = cfg.frame_cache == "ram" or (cfg.frame_cache == "auto" and need <= cfg.cache_limit_gb * 1e9)
    where = (
        "RAM" if ram else "a file in the experiment (frames, deleted at the end) and the npz files (labels)"
    )
    return ram, f"frames and labels kept in {where}: about {need / 1e6:.1f} MB"


def label_stores(info: StreamInfo, keep: bool) -> tuple[LabelStore, list[LabelStore]]:
    """The teacher's store and the scored folders' (one store per folder), every label file checked to exist."""
    stores = {p.name: LabelStore(p, info.frames, keep=keep) for p in [info.teacher, *info.scored]}
    check_labels(list(stores.values()))
    return stores[info.teacher.name], [stores[p.name] for p in info.scored]


def mask_sink(exp: Path, info: StreamInfo) -> MaskSink:
    """Write each tested frame's predicted mask (``dump_masks``); a frame tested in several windows keeps the last."""

    def sink(keys: list[int], preds: list[np.ndarray], kind: str) -> None:
        for k, p in zip(keys, preds, strict=True):
            outputs.write_mask(exp, info.frames[k], p, kind)

    return sink


@dataclass
class OnlineResult:
    """A finished run: its folder, its windows and its summary (what ``summary.json`` holds)."""

    experiment: Path
    records: list[WindowRecord]
    summary: dict[str, Any]


def _tensorboard(writer: Any, rec: WindowRecord, names: list[str]) -> None:
    """Per-window scalars at step = the window's position in teacher frames (comparable across s_S)."""
    values: dict[str, float | None] = {"train/loss": rec.train_loss}
    values["speed/train_frames_per_s"] = len(rec.trained) / rec.train_seconds if rec.trained and rec.train_seconds > 0 else None  # fmt: skip
    values["speed/test_frames_per_s"] = rec.scored_frames / rec.test_seconds if rec.test_seconds > 0 else None
    for name in names:
        for which, suffix in (("now", ""), ("bwt", "_bwt"), ("fwt", "_fwt")):
            s = rec.scores[name][which]
            values[f"{name}/miou{suffix}"] = None if s is None else s["miou"]
            values[f"{name}/acc{suffix}"] = None if s is None else s["acc"]
    for tag, v in values.items():
        if v is not None and v == v:  # NaN: nothing to draw
            writer.add_scalar(tag, v, rec.pos)


def _throughput(records: list[WindowRecord], io_s: float, info: StreamInfo, cfg: OnlineConfig) -> dict[str, Any]:  # fmt: skip
    """Speeds of the online pass in stream (teacher) frames per second, training and testing apart, and with the
    decoding and label reading (``io_s``), against the rate the teacher labels at (video fps / s_T)."""
    train_s, test_s = sum(r.train_seconds for r in records), sum(r.test_seconds for r in records)
    n, samples = len(info.frames), sum(len(r.trained) for r in records)
    rate = None if not info.fps else info.fps / cfg.teacher_subsample
    online = n / (train_s + test_s + io_s) if train_s + test_s + io_s > 0 else None

    def per(x: float, s: float) -> float | None:
        return round(x / s, 3) if s > 0 else None

    return {"stream_frames": n, "train_seconds": round(train_s, 3), "test_seconds": round(test_s, 3),
            "io_seconds": round(io_s, 3), "train_samples_per_s": per(samples, train_s),
            "train_stream_frames_per_s": per(n, train_s), "test_frames_per_s": per(sum(r.scored_frames for r in records), test_s),
            "test_stream_frames_per_s": per(n, test_s), "online_stream_frames_per_s": None if online is None else round(online, 3),
            "teacher_rate_frames_per_s": None if rate is None else round(rate, 4),
            "keeps_up": None if rate is None or online is None else online >= rate,
            "realtime_factor": None if rate is None or online is None else round(online / rate, 3)}  # fmt: skip


def run(cfg: OnlineConfig, progress: bool = True) -> OnlineResult:
    """Check the stream, create the experiment folder, run the online pass and the final pass, write everything."""
    cfg.check()
    device = resolve_device(cfg.device, "device")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    info = open_stream(cfg)
    ram, cache_line = cache_in_ram(cfg, info)
    # checked before the experiment folder is made: a missing label file leaves nothing behind
    teacher, scored = label_stores(info, keep=ram)
    exp = outputs.new_experiment(cfg.save, cfg.subfolder)
    save(cfg, exp / "config.yaml")
    atomic_write_text(exp / "arguments", arguments_text(reference_arguments(cfg, info)), fix=outputs.FIX)
    print(dump(cfg), end="")
    names = [s.name for s in scored]
    print(f"== {exp}: {len(info.videos)} videos, {len(info.frames)} teacher frames (s_T {cfg.teacher_subsample}) at "
          f"{info.size_hw[0]}x{info.size_hw[1]}, C {info.num_classes}; trains on {cfg.teacher}, scored against "
          f"{', '.join(names)}; {cache_line}; {device_name(device)}")  # fmt: skip
    for note in info.notes:
        print(f"== note: {note}")
    from torch.utils.tensorboard import SummaryWriter  # heavy: imported when a run starts

    writer = SummaryWriter(log_dir=str(exp / "tensorboard"))
    logs = outputs.Logs(exp, names, info.num_classes)
    sink = mask_sink(exp, info) if cfg.dump_masks else None
    learner = build_learner(cfg, info.num_classes, device)
    proto = Protocol(
        cfg.student_subsample, cfg.testing_size, cfg.sequence_length, cfg.batch_size, cfg.first_window
    )

    def on_window(rec: WindowRecord) -> None:
        logs.add(rec)
        _tensorboard(writer, rec, names)

    images = FrameStore(info.videos, info.frames, info.size_hw, None if ram else exp / ".frames.cache")
    data = StreamData(images, teacher, scored, info.num_classes)
    start = time.perf_counter()
    try:
        records = run_online(learner, data, proto, on_window, sink, progress)
        online_io = data.io_seconds()  # the final pass is an analysis, not part of keeping up with the stream
        final_s = final_pass(learner, data, records, cfg.batch_size, sink, progress)
    finally:
        images.close()
        writer.flush()
    for rec in records:
        logs.add(rec, final=True)
        for name in names:
            if rec.final[name]["miou"] == rec.final[name]["miou"]:  # NaN: nothing to draw
                writer.add_scalar(f"{name}/final_miou", rec.final[name]["miou"], rec.pos)
    writer.close()
    seconds = time.perf_counter() - start
    summary = _summary(cfg, info, data, learner, records, device, seconds, final_s, online_io)
    outputs.write_json(exp / "summary.json", summary)
    outputs.write_json(exp / "windows.json", _windows(info, records))
    if records:
        to_min = 1.0 / (info.fps or 1.0) / 60  # without an fps the x axis counts frames / 60
        blocks = [(b["start"] * to_min, b["stop"] * to_min, b["look"]) for b in info.blocks or []]
        outputs.plot(exp / "miou.png", records, names, [info.stream_index[r.test[0]] * to_min for r in records],
                     blocks, f"{exp.name}: buffer {cfg.buffer}, trainer {cfg.trainer}, N {cfg.dataset_size}, M "
                     f"{cfg.testing_size}, s_S {cfg.student_subsample}, L {cfg.sequence_length}")  # fmt: skip
    _report(exp, summary, names)
    return OnlineResult(exp, records, summary)


def _looks(info: StreamInfo, records: list[WindowRecord]) -> list[str | None]:
    """The look (domain) of each window's first test frame, from the stream's blocks."""
    out: list[str | None] = []
    for r in records:
        g = info.stream_index[r.test[0]]
        out.append(next((b["look"] for b in info.blocks or [] if b["start"] <= g < b["stop"]), None))
    return out


def _summary(cfg: OnlineConfig, info: StreamInfo, data: StreamData, learner: Learner, records: list[WindowRecord],
             device: Any, seconds: float, final_s: float, io_s: float) -> dict[str, Any]:  # fmt: skip
    looks = _looks(info, records)
    scores = {}
    for i, s in enumerate(data.scored):
        scores[s.name] = {**outputs.folder_scores(records, s.name, i == 0), "by_look": outputs.by_look(records, s.name, looks)}  # fmt: skip
    params = sum(p.numel() for p in learner.student.parameters())
    return {
        "protocol": {"teacher_subsample": cfg.teacher_subsample, "dataset_size": cfg.dataset_size,
                     "testing_size": cfg.testing_size, "student_subsample": cfg.student_subsample,
                     "sequence_length": cfg.sequence_length, "batch_size": cfg.batch_size,
                     "evaluation_batch_size": cfg.batch_size, "first_window": cfg.first_window,
                     "learning_rate": cfg.learning_rate, "buffer": cfg.buffer, "buffer_args": buffer_kwargs(cfg),
                     "trainer": cfg.trainer, "trainer_args": trainer_kwargs(cfg), "student": cfg.student,
                     "student_args": {k: v for k, v in student_kwargs(cfg).items() if k != "model_cfg"},
                     "student_parameters": params, "input_size": list(info.size_hw),
                     "miou_mode": "present_union", "aggregation": "per_window", "seed": cfg.seed},
        "stream": {"dataset": str(info.dataset), "videos": list(info.videos), "teacher_frames": len(info.frames),
                   "video_fps": info.fps, "num_classes": info.num_classes, "class_names": info.class_names,
                   "teacher": info.teacher.name, "scored_against": [s.name for s in data.scored]},
        "windows": len(records), "scores": scores, "throughput": _throughput(records, io_s, info, cfg),
        "final_pass_seconds": round(final_s, 3), "seconds": round(seconds, 3), "device": device_name(device),
        "software": software(), "notes": info.notes,
    }  # fmt: skip


def _windows(info: StreamInfo, records: list[WindowRecord]) -> dict[str, Any]:
    return {"frames": [list(f) for f in info.frames], "windows": [
        {"index": r.index, "pos": r.pos, "test": [r.test[0], r.test[-1] + 1],
         "bwt": None if r.bwt is None else [r.bwt[0], r.bwt[-1] + 1], "fwt": None if r.fwt is None else [r.fwt[0], r.fwt[-1] + 1],
         "trained": r.trained, "steps_before_test": r.steps_before_test, "train_loss": r.train_loss,
         "train_seconds": round(r.train_seconds, 4), "test_seconds": round(r.test_seconds, 4)} for r in records]}  # fmt: skip


def _report(exp: Path, summary: dict[str, Any], names: list[str]) -> None:
    t = summary["throughput"]
    for name in names:
        s = summary["scores"][name]
        print(f"== vs {name}: mean per-window mIoU {s['miou_mean']}, BWT {s['bwt_miou_mean']}, FWT {s['fwt_miou_mean']}, "
              f"final pass {s['final_miou_mean']}, forgetting (final - online) {s['forgetting']} ({s['log']})")  # fmt: skip
    print(f"== speed: train {t['train_stream_frames_per_s']} stream frames/s ({t['train_samples_per_s']} samples/s), test "
          f"{t['test_stream_frames_per_s']} stream frames/s, whole loop {t['online_stream_frames_per_s']} vs the "
          f"teacher's {t['teacher_rate_frames_per_s']} frames/s (keeps up: {t['keeps_up']}); results in {exp}")  # fmt: skip


def main(argv: list[str] | None = None) -> OnlineResult:
    cfg, args = resolve_config(argv)
    return run(cfg, progress=not args.quiet)


if __name__ == "__main__":
    run_cli(main)
