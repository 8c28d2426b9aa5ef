"""The one plain training loop, shared by image and video training. Read it top to bottom.

``fit`` runs epochs ``[start, epochs)``: per optimizer step it accumulates ``grad_accum_steps`` micro-batches
(``step_fn`` turns a batch into a loss), clips, steps and sets the scheduled lr; after each epoch it validates
(``validate_fn``), writes ``best.pth`` when the validation score ``training_cfg.selection_metric`` improves and
``last.pth`` always (atomically), appends to ``metrics.json`` and ``log.txt``, and logs scalars and overlays to
TensorBoard. Rank 0 alone writes. Resuming restores model, optimizer, scaler, epoch, step, best metric, history and
RNG state; the data order of an epoch (a dataset's own ``epoch_order(seed, epoch)`` when it has one, e.g. a
weighted compound set) depends only on (seed, epoch), so a resumed run sees the same batches it would have seen.

A :class:`SideStream` (semi-supervised training: unlabelled frames) adds a second stream of batches: its loss joins
each micro-batch's loss (``joint``) or takes its own optimizer step after each step of the main stream
(``alternating``); its order depends only on (seed, optimizer step).

``training_cfg.channels_last`` and ``compile`` are applied by :mod:`training.throughput` (as in the step benchmark); each epoch
reports the time its steps spent blocked in the data loader (``loader_wait_ms``, ``loader_wait_share``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config.errors import ConfigError, UserError, writing
from config.files import atomic_write_text
from config.loader import dump
from data.catalog import DatasetInfo
from data.compound import epoch_permutation
from data.frames import more_samples_hint
from data.image_dataset import worker_init
from eval.evaluate import amp_dtype, autocast, device_name
from eval.vis.render import write_png
from training import distributed as D
from training import throughput
from training.checkpoint import SAVE_FIX, rng_state, save_checkpoint, set_rng_state
from training.optim import LRSchedule, build_optimizer

# step_fn(model, batch) -> (loss, named parts); the batch is what the loader collates (a dict or a VideoBatch)
StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict]]
# validate_fn(model) -> (confusion matrix, overlay panels) or (..., extra scalars for the "val" entry)
ValidateFn = Callable[[nn.Module], tuple]


class TrainingDiverged(UserError):
    prefix = "training error"


@dataclass
class SideStream:
    """A second stream of batches trained with the main one (semi-supervised training: unlabelled frames).

    Attributes:
        dataset: its samples; ``step_fn(model, batch) -> (loss, parts)`` turns a batch of ``batch_size`` into a loss.
        mode: ``joint`` adds its loss to every micro-batch's loss (one optimizer step); ``alternating`` takes an
            optimizer step of its own (same optimizer, scaler, clipping and lr) after each step of the main stream.
        start_step: the optimizer step it starts at.
        panels_fn: pictures of the stream (``[H,W,3]`` uint8) at each validation, to TensorBoard and PNG files.
    """

    dataset: Dataset
    step_fn: StepFn
    batch_size: int
    mode: str = "alternating"
    start_step: int = 0
    panels_fn: Callable[[nn.Module], list[np.ndarray]] | None = None

    def per_step(self, grad_accum_steps: int) -> int:
        """Samples one process consumes per optimizer step."""
        return self.batch_size * (grad_accum_steps if self.mode == "joint" else 1)


def stream_indices(n: int, seed: int, first_step: int, steps: int, per_step: int) -> list[int]:
    """This rank's samples for optimizer steps ``[first_step, first_step + steps)`` of an endless stream over ``n``
    items: consecutive permutations (cycle ``c`` seeded by ``(seed, c)``), ``per_step`` samples per step and rank.
    The order depends only on (seed, step), so a resumed run continues the stream where it stopped."""
    world, rank = D.world_size(), D.rank()
    cycles: dict[int, list[int]] = {}
    out = []
    for s in range(first_step, first_step + steps):
        base = (s * world + rank) * per_step
        for j in range(base, base + per_step):
            c, k = divmod(j, n)
            if c not in cycles:
                g = torch.Generator().manual_seed(seed * 1_000_003 + c)
                cycles[c] = torch.randperm(n, generator=g).tolist()
            out.append(cycles[c][k])
    return out


def epoch_indices(n: int, seed: int, epoch: int, per_step: int, order: list[int] | None = None) -> list[int]:
    """This rank's sample order for an epoch, cut to whole steps: ``order`` (a dataset's own ``epoch_order``) or a
    permutation of ``n`` seeded by (seed, epoch).

    ``per_step`` is the number of samples one process consumes per optimizer step (batch x accumulation).
    """
    perm = epoch_permutation(n, seed, epoch) if order is None else order
    world = D.world_size()
    usable = (len(perm) // (per_step * world)) * per_step * world  # every rank gets as many whole steps
    return perm[:usable][D.rank() :: world]


def selection_score(val: dict, metric: str) -> float:
    """The validation scalar (``training_cfg.selection_metric``) that picks best.pth; -inf when undefined."""
    value = val[metric]  # the metric names are summary keys: miou (nan_exclude), miou_zero, fitness
    return -math.inf if value is None else value


def _too_few_samples(cfg: Any, samples: int) -> str:
    """The message when one optimizer step needs more samples than the train split has: the largest batch size
    that fits, and (synthetic set) the generator command that makes enough."""
    tcfg, dcfg = cfg.training_cfg, cfg.data_cfg
    per_batch = tcfg.grad_accum_steps * D.world_size()  # samples one step takes per unit of batch size
    need = tcfg.batch_size * per_batch
    fix = (f"set training_cfg.batch_size <= {samples // per_batch}" if samples >= per_batch
           else "lower training_cfg.grad_accum_steps or the number of processes")  # fmt: skip
    return (
        f"training_cfg.batch_size: one step needs {need} samples (batch {tcfg.batch_size} x accumulation "
        f"{tcfg.grad_accum_steps} x {D.world_size()} processes) but the train split has {samples}; "
        f"{fix}{more_samples_hint(dcfg.dataset, dcfg.path, need)}"
    )


def fit(
    *,
    model: nn.Module,
    cfg: Any,
    kind: str,
    info: DatasetInfo,
    run: Path,
    train_set: Dataset,
    step_fn: StepFn,
    validate_fn: ValidateFn,
    device: torch.device,
    resume: dict | None = None,
    checkpoint_extra: dict | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    run_info: dict | None = None,
    side: SideStream | None = None,
) -> dict:
    """Train ``model`` (on ``device``, not yet wrapped) and return the final history entry.

    ``checkpoint_extra`` goes into every checkpoint (a video run stores its image model's config there, so the
    checkpoint alone rebuilds the model). ``collate_fn`` builds the batches (video: a typed ``VideoBatch``).
    ``run_info`` goes into ``metrics.json`` (a video run: its method and training step, with their helpers' settings
    and the precision they ran in). ``side`` is a second stream of batches (see :class:`SideStream`)."""
    tcfg = cfg.training_cfg
    per_step = tcfg.batch_size * tcfg.grad_accum_steps
    full_steps = len(train_set) // (per_step * D.world_size())
    if full_steps == 0:
        raise ConfigError(_too_few_samples(cfg, len(train_set)))
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and tcfg.batch_size < 2:
        raise ConfigError(
            "training_cfg.batch_size: BatchNorm layers (e.g. UperNet's 1x1 pooling branch) need at least 2 samples "
            "per process in training; use batch_size >= 2"
        )
    steps_per_epoch = min(full_steps, tcfg.max_steps_per_epoch or full_steps)
    dtype = amp_dtype(tcfg.amp, device)
    settings = throughput.settings(tcfg, device)  # precision, channels_last, compile (in metrics.json)
    if settings["channels_last"]:  # in place, before the optimizer and the resumed state are loaded
        throughput.to_channels_last(model)
    optimizer = build_optimizer(model, tcfg, cfg.optim_cfg)
    schedule = LRSchedule.from_config(cfg.optim_cfg, tcfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, step, best, history = 0, 0, -math.inf, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        start_epoch, step, best, history = (resume[k] for k in ("epoch", "step", "best_metric", "history"))
    schedule.apply(optimizer, step)

    train_model = DistributedDataParallel(model) if D.is_distributed() else model
    forward_model = throughput.compile_model(train_model, device) if tcfg.compile else train_model
    writer = _tensorboard(run, cfg) if D.is_main() else None
    if D.is_main():
        print("== training: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    show_bar = D.is_main() and sys.stderr.isatty()
    for epoch in range(start_epoch, tcfg.epochs):
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train_set.epoch = epoch  # per-sample augmentation seeds depend on it
        own = getattr(train_set, "epoch_order", None)  # e.g. a weighted compound set
        own_order = None if own is None else own(tcfg.seed, epoch)
        order = epoch_indices(len(train_set), tcfg.seed, epoch, per_step, own_order)
        order = order[: steps_per_epoch * per_step]
        loader = DataLoader(train_set, batch_size=tcfg.batch_size, sampler=order, num_workers=tcfg.num_workers,
                            pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=worker_init,
                            collate_fn=collate_fn)  # fmt: skip
        waited, steps_s = [0.0], 0.0  # host seconds blocked in the loaders' next(), and in optimizer steps
        batches = throughput.timed(iter(loader), waited)
        side_batches = _side_batches(side, tcfg, step, steps_per_epoch, device, waited) if side else None
        model.train()
        loss_sum, parts_sum = 0.0, {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not show_bar,
                   dynamic_ncols=True, leave=False)  # fmt: skip
        # a torch.compile failure at any step (a new shape compiles): one line, never a silent fallback
        with throughput.compile_errors(tcfg.compile, device):
            for _ in bar:
                step_start, wait_start = time.perf_counter(), waited[0]
                side_on = side is not None and step >= side.start_step
                for micro in range(tcfg.grad_accum_steps):
                    last = micro == tcfg.grad_accum_steps - 1
                    sync = last or not isinstance(train_model, DistributedDataParallel)
                    with nullcontext() if sync else train_model.no_sync():
                        with autocast(device, dtype):
                            loss, parts = step_fn(forward_model, next(batches))
                            if side_on and side.mode == "joint":
                                side_loss, side_parts = side.step_fn(forward_model, next(side_batches))
                                loss, parts = loss + side_loss, {**parts, **side_parts}
                        _check_finite(loss, step)
                        scaler.scale(loss / tcfg.grad_accum_steps).backward()
                    loss_sum += loss.item() / tcfg.grad_accum_steps
                    for k, v in parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / tcfg.grad_accum_steps
                _optimizer_step(model, optimizer, scaler, tcfg.grad_clip)
                if side_on and side.mode == "alternating":  # the side stream's own step, after the main one
                    with autocast(device, dtype):
                        side_loss, side_parts = side.step_fn(forward_model, next(side_batches))
                    _check_finite(side_loss, step)
                    scaler.scale(side_loss).backward()
                    _optimizer_step(model, optimizer, scaler, tcfg.grad_clip)
                    parts = {**parts, **side_parts}
                    for k, v in side_parts.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + float(v)
                step += 1
                lr_factor = schedule.apply(optimizer, step)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                steps_s += time.perf_counter() - step_start
                if writer is not None and step % tcfg.log_interval == 0:
                    writer.add_scalar("train/loss", loss.item(), step)
                    for k, v in parts.items():
                        writer.add_scalar(f"train/{k}", float(v), step)
                    writer.add_scalar("train/lr", tcfg.lr * lr_factor, step)
                    writer.add_scalar("train/loader_wait_ms", 1000 * (waited[0] - wait_start), step)
        bar.close()
        train_time = time.time() - t0

        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": D.all_reduce_mean(loss_sum / steps_per_epoch, device),
            **{f"train_{k}": D.all_reduce_mean(v / steps_per_epoch, device) for k, v in parts_sum.items()},
            "lr": tcfg.lr * schedule.factor(step),
            # throughput of the training part of the epoch (data loading included), per process
            "step_time_s": round(train_time / steps_per_epoch, 4),
            "images_per_s": round(steps_per_epoch * per_step / train_time, 2),
            # host time per optimizer step blocked in the data loader(s), and its share of the steps' time
            "loader_wait_ms": round(1000 * waited[0] / steps_per_epoch, 3),
            "loader_wait_share": round(waited[0] / max(steps_s, 1e-9), 4),
            "peak_memory_mb": throughput.peak_memory_mb(device),
        }
        last_epoch = epoch + 1 == tcfg.epochs
        D.sync_buffers(model)  # every rank validates (and rank 0 saves) the same model
        if (epoch + 1) % tcfg.val_interval == 0 or last_epoch:
            # optionally a third item: extra scalars (KD: KL to the teacher)
            cm, panels, *more = validate_fn(model)
            entry["val"] = {"protocol": "training_validation", **cm.summary(info.class_names)}
            if more:
                entry["val"]["scalars"] = more[0]
            if side is not None and side.panels_fn is not None:
                side_panels = side.panels_fn(model)
                panels = [*panels, *side_panels]
                if D.is_main():
                    for i, img in enumerate(side_panels):
                        write_png(run / "vis" / f"unlabelled_epoch{epoch + 1:03d}_{i}.png", img)
            score = selection_score(entry["val"], tcfg.selection_metric)
            improved = score > best
            best = max(best, score)
        else:
            improved, panels = False, []
        entry["epoch_time_s"] = round(time.time() - t0, 2)
        history.append(entry)

        if D.is_main():
            state = {"epoch": epoch + 1, "step": step, "best_metric": best, "history": history,
                     **(checkpoint_extra or {})}  # fmt: skip
            if improved:
                save_checkpoint(run / "best.pth", model, cfg, kind, **state, finished=last_epoch)
            save_checkpoint(
                run / "last.pth", model, cfg, kind, **state, finished=last_epoch,
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=rng_state(),
            )  # fmt: skip
            _write_metrics(run, history, device_name(device), {"selection_metric": tcfg.selection_metric,
                                                                **settings, **(run_info or {})})  # fmt: skip
            _log_epoch(run, entry, info, improved, tcfg.selection_metric)
            if writer is not None:
                _tensorboard_epoch(writer, entry, panels, info)
        D.barrier()
    if writer is not None:
        writer.close()
    return history[-1] if history else {}


def _side_batches(
    side: SideStream, tcfg: Any, step: int, steps: int, device: torch.device, waited: list[float]
) -> Any:
    """An iterator over the side stream's batches of optimizer steps ``[max(step, start_step), step + steps)``; the
    time its ``next()`` blocks adds to ``waited[0]``."""
    first = max(step, side.start_step)
    per_step = side.per_step(tcfg.grad_accum_steps)
    order = stream_indices(len(side.dataset), tcfg.seed, first, max(0, step + steps - first), per_step)
    loader = DataLoader(side.dataset, batch_size=side.batch_size, sampler=order, num_workers=tcfg.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True, worker_init_fn=worker_init)  # fmt: skip
    return throughput.timed(iter(loader), waited)


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"the loss is {loss.item()} at step {step + 1}: training diverged; "
            "lower training_cfg.lr or set training_cfg.grad_clip"
        )


def _optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, grad_clip: float | None
) -> None:
    """Clip (when set), step through the scaler, clear the gradients."""
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _tensorboard(run: Path, cfg: Any) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: heavy, and only rank 0 needs it

    writer = SummaryWriter(log_dir=str(run / "tensorboard"))
    writer.add_text("config", "```yaml\n" + dump(cfg) + "\n```", 0)
    return writer


def _tensorboard_epoch(writer: Any, entry: dict, panels: list[np.ndarray], info: DatasetInfo) -> None:
    e = entry["epoch"]
    writer.add_scalar("epoch/train_loss", entry["train_loss"], e)
    writer.add_scalar("epoch/loader_wait_share", entry["loader_wait_share"], e)
    if "val" in entry:
        val = entry["val"]
        if val["miou"] is not None:
            writer.add_scalar("val/mIoU", val["miou"], e)
        writer.add_scalar("val/pixel_acc", val["pixel_acc"] or 0.0, e)
        writer.add_scalar("val/mIoU_zero", val["miou_zero"] or 0.0, e)
        writer.add_scalar("val/fitness", val["fitness"] or 0.0, e)
        for name, value in val.get("scalars", {}).items():
            writer.add_scalar(f"val/{name}", value, e)
        for name, iou in val["per_class"].items():
            if iou is not None:
                writer.add_scalar(f"val_iou/{name}", iou, e)
    for i, img in enumerate(panels):
        writer.add_image(f"val/overlay_{i}", img, e, dataformats="HWC")
    writer.flush()


def _write_metrics(run: Path, history: list[dict], device: str, run_info: dict) -> None:
    info = {"device": device, "world_size": D.world_size(), **run_info, "epochs": history}
    atomic_write_text(run / "metrics.json", json.dumps(info, indent=1), fix=SAVE_FIX)


def _log_epoch(run: Path, entry: dict, info: DatasetInfo, improved: bool, selection: str = "miou") -> None:
    parts = [time.strftime("%Y-%m-%d %H:%M:%S"), f"epoch {entry['epoch']}", f"step {entry['step']}",
             f"train loss {entry['train_loss']:.4f}", f"lr {entry['lr']:.3g}",
             f"{entry['images_per_s']:.1f} img/s", f"loader wait {entry['loader_wait_ms']:.1f} ms/step "
             f"({100 * entry['loader_wait_share']:.0f} %)"]  # fmt: skip
    if "val" in entry:
        miou = entry["val"]["miou"]
        parts.append(f"val mIoU {miou:.4f}" if miou is not None else "val mIoU n/a")
        if selection != "miou":  # the score best.pth is selected on
            value = entry["val"][selection]
            parts.append(f"val {selection} {value:.4f}" if value is not None else f"val {selection} n/a")
        parts.append("(best)" if improved else "")
    line = "  ".join(p for p in parts if p)
    tqdm.write(line)
    with writing(run / "log.txt", fix=SAVE_FIX), open(run / "log.txt", "a") as fh:
        fh.write(line + "\n")
        if "val" in entry:
            ious = ", ".join(
                f"{n} {v:.3f}" if v is not None else f"{n} n/a" for n, v in entry["val"]["per_class"].items()
            )
            fh.write(f"    per-class IoU: {ious}\n")
