"""The reference's command-line flags (``Benchmark/arguments.py``, ``other_methods.md`` §3.2) on the online config.

Every flag of the reference is a flag of ``python -m training.online.run`` that sets one config key (``--datasetsize
67`` is ``dataset_size=67``). ``--alpha`` is shared in the reference by the prioritized buffer and LwF: here it
sets whichever of ``buffer_cfg.alpha`` and ``trainer_cfg.alpha`` the chosen buffer and trainer read.
``--delta-t`` is RWalk's, which tcseg does not offer: it is refused with a one-line error. The experiment's
``arguments`` file lists the resolved values under the reference's names, as the reference writes it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from config.errors import ConfigError


def _name(text: str) -> str:
    """A buffer or trainer name as the reference writes it (``LWF``, ``MAS``, ``''`` = plain CE) -> tcseg's."""
    return text.strip().lower() or "none"


# (flag, reference argument name, config key, argparse type, help); key None: refused (not offered)
FLAGS: tuple[tuple[str, str, str | None, Callable[[str], Any], str], ...] = (
    ("--dataset", "dataset", "dataset", str, "stream folder (videos/*.mp4, pseudo_groundtruth_seg/)"),
    ("--numclasses", "numclasses", "num_classes", int, "number of classes C"),
    ("--save", "save", "save", str, "output root"),
    ("--subfolder", "subfolder", "subfolder", str, "folder under --save"),
    ("--teacher", "teacher", "teacher", str, "pseudo-GT folder used as training targets"),
    ("--groundtruth", "groundtruth", "groundtruth", str, "pseudo-GT folder scored against (performance.log)"),
    ("--start", "start", "start", int, "first video of the naturally sorted list"),
    ("--stop", "stop", "stop", int, "end of the video slice, exclusive"),
    ("--datasetsize", "datasetsize", "dataset_size", int, "N: fifo training window, in teacher frames"),
    (
        "--numworkers",
        "numworkers",
        "num_workers",
        int,
        "recorded only (frames are decoded sequentially here)",
    ),
    ("--batchsize", "batchsize", "batch_size", int, "B: training and evaluation batch"),
    ("--testingsetsize", "testingsetsize", "testing_size", int, "M: teacher frames tested per window"),
    ("--learningrate", "learningrate", "learning_rate", float, "Adam learning rate"),
    ("--device", "device", "device", str, "auto, cpu or cuda"),
    ("--teachersubsample", "teachersubsample", "teacher_subsample", int, "s_T of the teacher labels"),
    (
        "--studentsubsample",
        "studentsubsample",
        "student_subsample",
        int,
        "s_S: window step, in teacher frames",
    ),
    ("--onlinedataset", "onlinedataset", "buffer", _name, "fifo, uniform, prioritized, er, efifo or mir"),
    ("--trainer", "trainer", "trainer", _name, "none (or ''), lwf or mas"),
    ("--update-freq", "update_freq", "trainer_cfg.update_freq", int, "lwf, mas: windows between updates"),
    ("--warmup", "warmup", "trainer_cfg.warmup", int, "lwf, mas: windows before the first update"),
    ("--er-capacity", "er_capacity", "buffer_cfg.store_capacity", int, "er, efifo, mir: store size"),
    ("--alpha", "alpha", "alpha", float, "prioritized: eviction exponent; lwf: weight of the KL term"),
    ("-C", "C", "buffer_cfg.candidates", int, "mir: candidates drawn from the store"),
    ("-k", "k", "buffer_cfg.k", int, "mir: most interfered candidates replayed"),
    ("--reg", "reg", "trainer_cfg.reg", float, "mas: weight of the penalty"),
    ("--decay", "decay", "trainer_cfg.decay", float, "mas: EMA decay of the importance"),
    ("--temperature", "temperature", "trainer_cfg.temperature", float, "lwf: softmax temperature"),
    ("--delta-t", "delta_t", None, int, "RWalk only; not offered by tcseg (refused)"),
    ("--sequence-length", "sequence_length", "sequence_length", int, "L: BWT/FWT offset in windows"),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add every reference flag to ``parser`` (destination: the reference's argument name; default None)."""
    group = parser.add_argument_group("reference flags (each sets the config key named in its help)")
    for flag, dest, key, kind, text in FLAGS:
        where = (
            "refused" if key is None else key if key != "alpha" else "buffer_cfg.alpha / trainer_cfg.alpha"
        )
        group.add_argument(
            flag, dest=f"ref_{dest}", metavar=dest.upper(), type=kind, default=None, help=f"{text} [{where}]"
        )


def _value(value: Any) -> str:
    # JSON is YAML: a string stays a string ("123" would otherwise become a number), numbers stay numbers.
    return json.dumps(value)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """``key=value`` overrides of the flags given (every one but ``--alpha``, see :func:`alpha_overrides`)."""
    out = []
    for flag, dest, key, _, _ in FLAGS:
        value = getattr(args, f"ref_{dest}")
        if value is None or key == "alpha":
            continue
        if key is None:
            raise ConfigError(
                f"{flag}: the RWalk regulariser's option; tcseg offers --trainer none, lwf or mas"
            )
        out.append(f"{key}={_value(value)}")
    return out


def alpha_overrides(args: argparse.Namespace, buffer: str, trainer: str) -> list[str]:
    """``--alpha`` on the keys of the chosen buffer (prioritized) and trainer (lwf); none chosen: an error."""
    if args.ref_alpha is None:
        return []
    keys = ["buffer_cfg.alpha"] * (buffer == "prioritized") + ["trainer_cfg.alpha"] * (trainer == "lwf")
    if not keys:
        raise ConfigError(f"--alpha: read by the prioritized buffer and the lwf trainer only, but the buffer is "
                          f"'{buffer}' and the trainer '{trainer}'")  # fmt: skip
    return [f"{k}={_value(args.ref_alpha)}" for k in keys]


def arguments_text(resolved: dict[str, Any]) -> str:
    """The ``arguments`` file: ``name = value`` per reference argument, from ``resolved`` (reference name ->
    resolved value; None is written ``None``, as the reference does)."""
    return "".join(f"{dest} = {resolved.get(dest)}\n" for _, dest, _, _, _ in FLAGS)


__all__ = ["FLAGS", "add_flags", "alpha_overrides", "arguments_text", "flag_overrides"]
