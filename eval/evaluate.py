"""Inference and metric accumulation shared by training-time validation and the evaluation CLIs.

Evaluation is sharded without padding (``indices[rank::world]``) and the integer confusion matrix is summed once
over ranks, so 1 and N processes give exactly the same matrix (``ecosystem.md`` §8).
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from config.errors import ConfigError
from data.catalog import DatasetInfo
from data.image_dataset import worker_init
from data.transforms import denormalize
from eval.metrics import ConfusionMatrix
from eval.vis.render import overlay, panel


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training_cfg.amp`` on ``device`` (auto = bf16 on CUDA, none on CPU)."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def resolve_device(kind: str, what: str = "--device") -> torch.device:
    """``auto`` -> CUDA when visible, else the CPU; ``cuda`` without a visible device is a ConfigError naming
    ``what`` (the flag or config key the choice came from)."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: cuda requested but no CUDA device is visible; use cpu")
    return torch.device(kind)


def device_name(device: torch.device) -> str:
    """A readable name of the device results were measured on (GPU model, or CPU model and thread count)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    n = torch.get_num_threads()
    return f"CPU {_cpu_model()}, {n} torch thread{'' if n == 1 else 's'}, {os.cpu_count()} cores"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def software() -> dict:
    """Versions and git revision, recorded with every result."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False).stdout.strip() or None  # fmt: skip
    except OSError:
        sha = None
    import torchvision

    return {"tcseg": sha, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}  # fmt: skip


def shard(n: int) -> list[int]:
    """This process's share of ``range(n)``: ``rank::world`` (no padding, no dropping)."""
    if dist.is_available() and dist.is_initialized():
        return list(range(dist.get_rank(), n, dist.get_world_size()))
    return list(range(n))


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits [B,K,H,W] float32 at the input size for images [B,3,H,W] already on the model's device."""
    with autocast(images.device, amp_dtype):
        return model(images).float()


def label_map(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Class ids: the argmax of ``logits`` over ``dim`` (the first maximum, as ``argmax``). ``max(dim).indices``
    gives the same ids several times faster than ``argmax(dim)`` over the class axis on a CPU (3 ms instead of
    16 ms for 9 x 128 x 224 on one thread), and every method's prediction ends with it."""
    return logits.max(dim).indices


Infer = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _image_infer(device: torch.device, amp_dtype: torch.dtype | None) -> Infer:
    def infer(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = batch["image"].to(device)
        return images, predict(model, images, amp_dtype), batch["label"].to(device)

    return infer


def validate(
    model: nn.Module,
    dataset: Dataset,
    info: DatasetInfo,
    device: torch.device,
    *,
    batch_size: int = 4,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    max_samples: int | None = None,
    vis_samples: int = 0,
    infer: Infer | None = None,
    collate_fn: Callable[[list], Any] | None = None,
) -> tuple[ConfusionMatrix, list[np.ndarray]]:
    """mIoU confusion matrix over ``dataset``, summed over ranks.

    ``infer(model, batch) -> (images [B,3,H,W], logits [B,K,H,W], labels [B,H,W])`` on the device; the default
    serves image datasets (items with ``image`` and ``label``). Returns the matrix and up to ``vis_samples``
    panels (frame | prediction | ground truth) from rank 0's share.
    """
    infer = infer or _image_infer(device, amp_dtype)
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    subset = Subset(dataset, shard(n))
    loader = DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, worker_init_fn=worker_init,
        collate_fn=collate_fn,
    )  # fmt: skip
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(info.num_classes, device)
    panels: list[np.ndarray] = []
    for batch in loader:
        images, logits, labels = infer(model, batch)
        pred = label_map(logits)
        cm.update(pred, labels)
        for i in range(min(len(pred), vis_samples - len(panels))):
            rgb = (
                (denormalize(images[i].float().cpu()).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            )
            ids_p = pred[i].cpu().numpy().astype(np.uint8)
            ids_g = labels[i].cpu().numpy().astype(np.uint8)
            panels.append(panel([rgb, overlay(rgb, ids_p, info), overlay(rgb, ids_g, info)]))
    cm.all_reduce()
    model.train(was_training)
    return cm, panels


@torch.inference_mode()
def predict_tta(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "none",
    multiple: int = 1,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits [B,K,H,W] averaged over test-time augmentations (``metrics.md`` §2.5): ``none``, ``flip``
    (horizontal, flipped back), ``multiscale`` (scales 0.75/1/1.5, each rounded to the backbone's input
    multiple, logits resized back bilinearly) or ``flip+multiscale``. Logits, not probabilities, are averaged."""
    if mode == "none":
        return predict(model, images, amp_dtype)
    h, w = images.shape[-2:]
    scales = (0.75, 1.0, 1.5) if "multiscale" in mode else (1.0,)
    flips = (False, True) if "flip" in mode else (False,)
    total = None
    for s in scales:
        size = (
            max(multiple, round(h * s / multiple) * multiple),
            max(multiple, round(w * s / multiple) * multiple),
        )
        x = (
            images
            if size == (h, w)
            else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        )
        for flip in flips:
            y = predict(model, x.flip(-1) if flip else x, amp_dtype)
            y = y.flip(-1) if flip else y
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            total = y if total is None else total + y
    return total / (len(scales) * len(flips))
