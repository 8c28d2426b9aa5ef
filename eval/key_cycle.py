"""mIoU by position in the key cycle, for any method whose frames report ``key_distance`` (``other_methods.md``
§4.6; DFF and keyframe propagation).

The distance ``l`` of a frame is how many frames ago its keyframe was (0 = the keyframe). Scores are kept per
distance; **avg** mIoU pools the confusion matrices of every distance ``0 .. interval`` (every position of the
cycle, keyframes included), **min** mIoU is the last distance ``l = interval`` alone (the frame just before the
next keyframe, the worst case). On a set labelled on one frame per clip (Cityscapes: frame 19) a single pass would
score each clip at one distance only, so :func:`key_phases` asks for one pass per phase of the schedule: pass
``p`` puts the keyframes at ``t = p, p + interval + 1, ...``, and the labelled frame is seen at every distance
once. Where every frame is labelled one pass already covers every distance equally.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config.errors import ConfigError
from data.catalog import DatasetInfo
from data.frames import Clip
from data.image_dataset import FrameStream, worker_init
from eval.evaluate import autocast, label_map
from eval.metrics import ConfusionMatrix
from eval.vis.stream import scored_prediction
from models.video.base import StepSide, VideoModel

PHASE_MODES = ("auto", "all", "first")


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


class KeyCycleScores:
    """Confusion matrices by key distance; ``add(distance, pred [H,W], label [H,W])``."""

    def __init__(self, num_classes: int, interval: int, device: torch.device | str = "cpu") -> None:
        self.num_classes, self.interval, self.device = num_classes, int(interval), device
        self.cms: dict[int, ConfusionMatrix] = {}
        self.frames: dict[int, int] = {}

    def add(self, distance: int, pred: torch.Tensor, label: torch.Tensor) -> None:
        if distance not in self.cms:
            self.cms[distance] = ConfusionMatrix(self.num_classes, self.device)
            self.frames[distance] = 0
        self.cms[distance].update(pred, label.to(pred.device))
        self.frames[distance] += 1

    def result(self) -> dict[str, Any]:
        """``{interval, per_distance: [{distance, miou, pixel_acc, frames}], avg_miou, avg_pixel_acc, min_miou}``
        (mIoU in [0, 1], NaN-excluding classes absent from a distance; None where a distance has no frame)."""
        pooled = ConfusionMatrix(self.num_classes, self.device)
        rows = []
        for d in sorted(self.cms):
            cm = self.cms[d]
            pooled.mat += cm.mat
            rows.append({"distance": d, "miou": _num(cm.miou()), "pixel_acc": _num(cm.pixel_acc()),
                         "frames": self.frames[d]})  # fmt: skip
        last = self.cms.get(self.interval)
        return {
            "interval": self.interval,
            "per_distance": rows,
            "avg_miou": _num(pooled.miou()) if self.cms else None,
            "avg_pixel_acc": _num(pooled.pixel_acc()) if self.cms else None,
            "min_miou": None if last is None else _num(last.miou()),
        }


def key_phases(model: VideoModel, clips: list[Clip], mode: str = "auto") -> list[int]:
    """The schedule phases to run: ``first`` = [0]; ``all`` = 0 .. interval; ``auto`` = all when some frame of the
    clips has no label (sparse labels), else [0]. A model without ``interval`` has the single phase 0."""
    if mode not in PHASE_MODES:
        raise ConfigError(f"--key-phases must be one of {', '.join(PHASE_MODES)}, got '{mode}'")
    interval = model.options().get("interval")
    if interval is None or "key_phase" not in model.options() or mode == "first" or interval == 0:
        return [0]
    sparse = any(len(c.labelled) < len(c) for c in clips)  # Clip.labelled is a property
    return list(range(interval + 1)) if mode == "all" or sparse else [0]


def score_key_cycle(
    model: VideoModel, clips: list[Clip], info: DatasetInfo, size: tuple[int, int], device: torch.device,
    amp: torch.dtype | None = None, num_workers: int = 0, phases: list[int] | None = None, desc: str = "",
    native_labels: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Stream every clip through ``model`` once per phase and score its labelled frames by key distance.

    ``native_labels``: score at each mask's own size (``--resolution label``: logits resized bilinearly, then
    argmax), as the main mIoU does; else at the input ``size``. Returns :meth:`KeyCycleScores.result` plus
    ``phases``. The model's ``key_phase`` option is restored after.
    """
    opts = model.options()
    interval = int(opts.get("interval", 0))
    phases = phases if phases is not None else [0]
    scores = KeyCycleScores(info.num_classes, interval, device)
    stream = FrameStream(clips, info, size, native_labels=native_labels)
    start_phase = opts.get("key_phase")
    try:
        for phase in phases:
            if start_phase is not None:
                model.set_options(key_phase=phase)
            loader = DataLoader(stream, batch_size=1, num_workers=num_workers, worker_init_fn=worker_init)
            state = None
            for item in tqdm(loader, desc=f"{desc} interval {interval} phase {phase}".strip(), dynamic_ncols=True,
                             disable=not sys.stderr.isatty()):  # fmt: skip
                c, t = int(item["clip_index"][0]), int(item["t"][0])
                if t == 0:
                    state = model.init_state()
                side = StepSide(pair=clips[c].pair(t - 1, t) if t else None)
                with torch.inference_mode(), autocast(device, amp):
                    out, state = model.step(item["image"].to(device), state, side)
                if bool(item["labelled"][0]):
                    distance = 0 if out.key_distance is None else int(out.key_distance)
                    logits = out.logits[0].float()
                    label = item["label"][0]
                    scores.add(distance, scored_prediction(label_map(logits, 0), label, logits), label)
    finally:
        if start_phase is not None:
            model.set_options(key_phase=start_phase)
    return {**scores.result(), "phases": list(phases)}


def format_key_cycle(result: dict[str, Any], title: str = "") -> str:
    """One log line per distance, then avg and min (the reference's per-distance lines)."""

    def pct(v: float | None) -> str:
        return "  n/a" if v is None else f"{100 * v:5.2f}"

    lines = [f"{title}key cycle, interval {result['interval']} (phases {result.get('phases', [0])}):"]
    for r in result["per_distance"]:
        lines.append(f"  l={r['distance']}: mIoU {pct(r['miou'])}  pixel acc {pct(r['pixel_acc'])}  "
                     f"({r['frames']} frames)")  # fmt: skip
    lines.append(
        f"  avg mIoU {pct(result['avg_miou'])}  min mIoU (l={result['interval']}) {pct(result['min_miou'])}"
    )
    return "\n".join(lines)
