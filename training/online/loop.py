"""The online-distillation loop (``other_methods.md`` §3.2), a plain loop to read top to bottom::

    for pos in 0, s_S, 2 s_S, ... while pos < n:             # n teacher frames in stream order; key = index
        buffer.add(frames[pos - s_S : pos])                    # the frames that arrived since the last window
        one epoch over buffer.train_keys(): batches of B in order, no shuffle, + buffer.replay_for(batch) each;
            loss = CE(student(x), teacher masks) + regulariser penalty
        regulariser.end_window(...)
        test = frames[pos : pos + M]                           # scored BEFORE the student ever trains on them
        bwt  = frames[pos - L s_S : pos - L s_S + M]           # None (NaN) unless wholly inside the stream
        fwt  = frames[pos + L s_S : pos + L s_S + M]
    final pass: the final student scores every test window again

At ``pos = 0`` nothing has been trained on, so the first window is scored by the untrained student (the
reference; ``first_window: skip`` leaves it out). Each window is scored against every label folder of
:class:`StreamData` (``scored[0]`` is ``groundtruth``) with one C x C confusion matrix per window and folder
(labels outside 0..C-1 dropped) and the ``present_union`` mIoU (``metrics.md`` §5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from data.catalog import IGNORE_INDEX
from data.transforms import resize_label, to_tensor
from eval.metrics import ConfusionMatrix
from training.online.frames import FrameStore, LabelStore
from training.online.regularisers import Regulariser
from training.online.replay import LossFn, ReplayBuffer

# (stream indices, predictions uint8 [h, w] at the first scored folder's label size, "online" or "final")
MaskSink = Callable[[list[int], list[np.ndarray], str], None]


@dataclass
class StreamData:
    """What the loop reads: the teacher frames (``images``), the training targets (``teacher``), the label folders
    it is scored against (``scored``; the first one is ``groundtruth``) and the number of classes C."""

    images: FrameStore
    teacher: LabelStore
    scored: list[LabelStore]
    num_classes: int

    @property
    def n(self) -> int:
        return len(self.images.frames)

    def io_seconds(self) -> float:
        """Time spent decoding frames and reading label files so far."""
        stores = {id(s): s for s in (self.teacher, *self.scored)}.values()
        return self.images.decode_seconds + sum(s.read_seconds for s in stores)


@dataclass
class Protocol:
    """The window arithmetic: s_S (``step``), M (``test_size``), L (``sequence_length``), B (``batch_size``)."""

    step: int
    test_size: int
    sequence_length: int
    batch_size: int
    first_window: str = "untrained"

    def positions(self, n: int) -> list[int]:
        """Window positions whose test window is scored (``pos = 0`` left out by ``first_window: skip``)."""
        return [p for p in range(0, n, self.step) if p > 0 or self.first_window == "untrained"]

    def side(self, pos: int, sign: int, n: int) -> list[int] | None:
        """The BWT (``sign = -1``) or FWT (``+1``) window of ``pos``, or None when it is not wholly in the stream
        (the reference's rule: ``start >= 0 and end <= n``)."""
        start = pos + sign * self.sequence_length * self.step
        end = start + self.test_size
        return list(range(start, end)) if start >= 0 and end <= n else None


@dataclass
class Learner:
    """The student and what updates it. ``steps`` counts optimiser steps (0 = untrained)."""

    student: nn.Module
    optimizer: torch.optim.Optimizer
    buffer: ReplayBuffer
    regulariser: Regulariser
    device: torch.device
    steps: int = 0


@dataclass
class WindowRecord:
    """One window: where it is, what the student trained on, and its scores.

    ``scores[folder][which]`` (which = ``now``, ``bwt``, ``fwt``) and ``final[folder]`` are
    :meth:`ConfusionMatrix.window_summary` dicts (``acc``, ``miou``, ``iou`` [C]) or None (window outside the
    stream); ``matrices[folder]`` is the test window's matrix (pooled mIoU). ``trained`` lists the stream index of
    every training sample of the window's epoch, in order (replay included); ``steps_before_test`` is the number
    of optimiser steps the student had taken when the test window was scored.
    """

    index: int
    pos: int
    test: list[int]
    bwt: list[int] | None
    fwt: list[int] | None
    trained: list[int] = field(default_factory=list)
    steps_before_test: int = 0
    train_loss: float | None = None
    train_seconds: float = 0.0
    test_seconds: float = 0.0
    scored_frames: int = 0
    scores: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    matrices: dict[str, ConfusionMatrix] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)


def chunks(keys: Sequence[int], size: int) -> Iterator[list[int]]:
    """``keys`` in consecutive batches of ``size`` (the last one shorter), in order."""
    for i in range(0, len(keys), size):
        yield list(keys[i : i + size])


def images(data: StreamData, keys: Sequence[int], device: torch.device) -> Tensor:
    """Frames ``[b,3,H,W]`` of the stream indices ``keys`` at the input size, ImageNet-normalised."""
    return to_tensor(list(data.images.images(keys))).to(device)


def batch(data: StreamData, keys: Sequence[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Images ``[b,3,H,W]`` and teacher targets ``[b,H,W]`` int64 at the input size (nearest resize); label
    values outside 0..C-1 become :data:`IGNORE_INDEX` (the reference's CE ignores -1; a teacher's void)."""
    x = images(data, keys, device)
    size = tuple(x.shape[-2:])
    y = np.stack([resize_label(data.teacher.get(k), size) for k in keys]).astype(np.int64)
    y[y >= data.num_classes] = IGNORE_INDEX
    return x, torch.from_numpy(y).to(device)


def per_sample_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy ``[b]``: mean over each sample's labelled pixels (0 for a sample without any). Their mean is
    the reference's batch CE when every sample has as many labelled pixels (teacher masks have no void)."""
    ce = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="none")  # [b,H,W]
    valid = (targets != IGNORE_INDEX).flatten(1)
    return (ce.flatten(1) * valid).sum(1) / valid.sum(1).clamp(min=1)


def make_loss_fn(data: StreamData, device: torch.device, batch_size: int) -> LossFn:
    """``loss_fn(model, keys) -> [len(keys)]`` for MIR: per-sample losses, in batches of B (many candidates at
    once would not fit in memory, and batch-statistics BatchNorm should see batches like the training ones)."""

    def loss_fn(model: nn.Module, keys: Sequence[int]) -> Tensor:
        out = []
        for part in chunks(keys, batch_size):
            x, y = batch(data, part, device)
            out.append(per_sample_loss(model(x), y))
        return torch.cat(out) if out else torch.zeros(0, device=device)

    return loss_fn


def train_window(learner: Learner, data: StreamData, keys: list[int], batch_size: int) -> tuple[float | None, list[int]]:  # fmt: skip
    """One epoch over ``keys`` (no shuffle), with the buffer's replay; returns the mean training loss (None when
    nothing was trained on) and the stream index of every sample trained on, in order."""
    student, buffer, reg = learner.student, learner.buffer, learner.regulariser
    student.train()
    loss_fn = make_loss_fn(data, learner.device, batch_size)
    losses, trained = [], []
    for part in chunks(keys, batch_size):
        extra = buffer.replay_for(part, model=student, loss_fn=loss_fn)
        x, y = batch(data, part + extra, learner.device)
        logits = student(x)
        per = per_sample_loss(logits, y)
        loss = per.mean() + reg.penalty(student, x, logits, y)
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        learner.optimizer.step()
        learner.steps += 1
        buffer.update_losses(part + extra, per.detach())
        losses.append(float(loss.detach()))
        trained += part + extra
    reg.end_window(student, (images(data, part, learner.device) for part in chunks(keys, batch_size)))
    return (float(np.mean(losses)) if losses else None), trained


@torch.inference_mode()
def evaluate(learner: Learner, data: StreamData, keys: list[int], batch_size: int, sink: MaskSink | None = None,
             kind: str = "online") -> dict[str, ConfusionMatrix]:  # fmt: skip
    """One confusion matrix per scored folder for the frames ``keys``, predicted in batches of B in order (a
    ``batch_stats`` student's outputs depend on the batch). Logits are resized (bilinear) to each label map's size
    before the argmax; ``sink`` receives the predictions at the first folder's label size."""
    cms = {s.name: ConfusionMatrix(data.num_classes) for s in data.scored}
    learner.student.eval()
    for part in chunks(keys, batch_size):
        logits = learner.student(images(data, part, learner.device)).float()
        first: list[np.ndarray] = []
        for j, key in enumerate(part):
            preds: dict[tuple[int, ...], Tensor] = {}  # label size -> prediction (folders usually share one)
            for store in data.scored:
                target = store.get(key)
                if target.shape not in preds:
                    lg = logits[j : j + 1]
                    if tuple(lg.shape[-2:]) != target.shape:
                        lg = F.interpolate(lg, size=target.shape, mode="bilinear", align_corners=False)
                    preds[target.shape] = lg.argmax(1)[0].cpu()
                cms[store.name].update(preds[target.shape], torch.from_numpy(target), out_of_range="drop")
            first.append(next(iter(preds.values())).numpy().astype(np.uint8))
        if sink is not None:
            sink(part, first, kind)
    return cms


def _timed(data: StreamData, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its seconds without the decoding and label reading it caused (reported apart as I/O)."""
    io, start = data.io_seconds(), time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start - (data.io_seconds() - io)


def _score_window(learner: Learner, data: StreamData, rec: WindowRecord, batch_size: int,
                  sink: MaskSink | None) -> list[dict[str, ConfusionMatrix] | None]:  # fmt: skip
    """The matrices of the test, BWT and FWT windows of ``rec`` (None for a side window outside the stream)."""
    return [evaluate(learner, data, rec.test, batch_size, sink, "online")] + [
        None if keys is None else evaluate(learner, data, keys, batch_size) for keys in (rec.bwt, rec.fwt)
    ]


def _summaries(cms: dict[str, ConfusionMatrix] | None, names: list[str]) -> dict[str, dict[str, Any] | None]:
    return {n: None if cms is None else cms[n].window_summary() for n in names}


def run_online(learner: Learner, data: StreamData, proto: Protocol, on_window: Callable[[WindowRecord], None],
               sink: MaskSink | None = None, progress: bool = True) -> list[WindowRecord]:  # fmt: skip
    """The online pass: train on the buffer, then score the next M frames (and the BWT/FWT windows), window after
    window; ``on_window`` receives each record as soon as it is complete (logs, TensorBoard)."""
    n, names, b = data.n, [s.name for s in data.scored], proto.batch_size
    records: list[WindowRecord] = []
    bar = tqdm(
        range(0, n, proto.step), desc="online", unit="window", disable=not progress, dynamic_ncols=True
    )
    for pos in bar:
        learner.buffer.add(list(range(max(0, pos - proto.step), pos)))  # the frames since the last window
        keys = learner.buffer.train_keys()
        (loss, trained), train_s = _timed(data, train_window, learner, data, keys, b)
        if pos == 0 and proto.first_window == "skip":
            continue
        rec = WindowRecord(len(records), pos, list(range(pos, min(pos + proto.test_size, n))),
                           proto.side(pos, -1, n), proto.side(pos, +1, n), trained, learner.steps, loss, train_s)  # fmt: skip
        matrices, rec.test_seconds = _timed(data, _score_window, learner, data, rec, b, sink)
        rec.matrices = matrices[0]
        rec.scored_frames = sum(len(k) for k in (rec.test, rec.bwt or [], rec.fwt or []))
        now, bwt, fwt = (_summaries(c, names) for c in matrices)
        rec.scores = {name: {"now": now[name], "bwt": bwt[name], "fwt": fwt[name]} for name in names}
        records.append(rec)
        on_window(rec)
        miou = now[names[0]]["miou"] if now[names[0]] else float("nan")
        bar.set_postfix(miou=f"{miou:.3f}", loss="-" if loss is None else f"{loss:.3f}")
    bar.close()
    return records


def final_pass(learner: Learner, data: StreamData, records: list[WindowRecord], batch_size: int,
               sink: MaskSink | None = None, progress: bool = True) -> float:  # fmt: skip
    """Score the final student on every window's test frames (fills ``record.final``); returns the seconds."""
    names, start = [s.name for s in data.scored], time.perf_counter()
    for rec in tqdm(records, desc="final pass", unit="window", disable=not progress, dynamic_ncols=True):
        rec.final = _summaries(evaluate(learner, data, rec.test, batch_size, sink, "final"), names)  # type: ignore[assignment]
    return time.perf_counter() - start


__all__ = ["Learner", "MaskSink", "Protocol", "StreamData", "WindowRecord", "batch", "chunks", "evaluate",
           "final_pass", "per_sample_loss", "run_online", "train_window"]  # fmt: skip
