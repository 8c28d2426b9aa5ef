"""Streaming segmentation metrics: one confusion matrix, exact, on the device, reduced once under DDP.

Definitions follow ``metrics.md`` §2: rows = ground truth, columns = prediction; 255 = ignore; ``IoU_c`` is
undefined when class c is absent from both (union 0). Named mIoU modes:

- ``nan_exclude`` (default; torchmetrics ``average="macro"``): mean over classes with a non-empty union;
- ``zero``: absent classes count as 0, mean over all C classes;
- ``present_union``: ``nan_exclude`` on a per-window matrix (the online-distillation rule, ``metrics.md`` §5): the
  same formula, named apart because its aggregation unit is one test window, not the dataset.

``fitness = 0.8 * mIoU_zero + 0.2 * pixel_acc`` (§2.4) is the data-priors model-selection score.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from data.catalog import IGNORE_INDEX


class ConfusionMatrix:
    """A C x C int64 confusion matrix updated batch by batch (``torch.bincount``, no per-class loops)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        *,
        out_of_range: str = "raise",
    ) -> None:
        """Add predictions ``pred`` [...] (ids 0..C-1) against ``target`` [...] (ids or 255), same shape.

        ``out_of_range="raise"`` (default): a target outside 0..C-1 other than 255 is a bug and raises.
        ``out_of_range="drop"``: every target outside 0..C-1 is dropped (the online-distillation rule, whose
        label files are another program's, e.g. a teacher with a void class). A prediction outside 0..C-1 raises.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if out_of_range not in ("raise", "drop"):
            raise ValueError(f"out_of_range must be 'raise' or 'drop', got '{out_of_range}'")
        c = self.num_classes
        keep = target != IGNORE_INDEX
        if out_of_range == "drop":
            keep &= (target >= 0) & (target < c)
        if valid is not None:
            keep &= valid
        t = target[keep].long()
        p = pred[keep].long()
        if t.numel() and (t.min() < 0 or t.max() >= c):
            raise ValueError(
                f"target values outside 0..{c - 1} and 255: {torch.unique(t[(t < 0) | (t >= c)])[:5]}"
            )
        if p.numel() and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"prediction values outside 0..{c - 1}")
        self.mat += torch.bincount(t * c + p, minlength=c * c).view(c, c).to(self.mat.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.mat.zero_()

    # -------------------------------------------------------------------------------------------- scores

    def stats(self) -> dict[str, torch.Tensor]:
        """Per-class ``tp``, ``fp``, ``fn`` (float64) from the matrix."""
        m = self.mat.double().cpu()
        tp = m.diag()
        return {"tp": tp, "fp": m.sum(0) - tp, "fn": m.sum(1) - tp}

    def iou(self) -> torch.Tensor:
        """Per-class IoU [C] float64; NaN where the union is empty."""
        s = self.stats()
        union = s["tp"] + s["fp"] + s["fn"]
        return torch.where(union > 0, s["tp"] / union.clamp(min=1), torch.full_like(union, math.nan))

    def miou(self, mode: str = "nan_exclude") -> float:
        """mIoU in the named mode (``nan_exclude``, ``present_union`` or ``zero``); NaN when no class is present at
        all (``zero``: when the matrix is empty, 0)."""
        iou = self.iou()
        if mode == "zero":
            return float(torch.nan_to_num(iou, nan=0.0).mean())
        if mode not in ("nan_exclude", "present_union"):
            raise ValueError(f"unknown miou mode '{mode}'")
        present = ~iou.isnan()
        return float(iou[present].mean()) if present.any() else math.nan

    def window_summary(self) -> dict[str, float | list[float]]:
        """The per-window scores of online distillation (``metrics.md`` §5): ``acc`` (trace / total), ``miou``
        (``present_union``: mean over the classes with a non-empty union in this matrix; NaN when none) and
        ``iou`` [C] (NaN where the union is empty). Every value is NaN for an empty matrix."""
        return {"acc": self.pixel_acc(), "miou": self.miou("present_union"), "iou": self.iou().tolist()}

    def pixel_acc(self) -> float:
        total = self.mat.sum().item()
        return self.mat.diag().sum().item() / total if total else math.nan

    def fitness(self) -> float:
        """``0.8 * miou("zero") + 0.2 * pixel_acc()`` (data-priors model selection); NaN for an empty matrix."""
        return 0.8 * self.miou("zero") + 0.2 * self.pixel_acc()

    def mean_class_acc(self) -> float:
        """Mean over classes with ground-truth pixels of TP / (TP + FN)."""
        s = self.stats()
        gt = s["tp"] + s["fn"]
        return float((s["tp"][gt > 0] / gt[gt > 0]).mean()) if (gt > 0).any() else math.nan

    def fw_iou(self) -> float:
        """Frequency-weighted IoU: sum_c GT_c / sum(GT) * IoU_c (absent classes contribute 0)."""
        s = self.stats()
        gt = s["tp"] + s["fn"]
        return float((gt / gt.sum().clamp(min=1) * torch.nan_to_num(self.iou(), nan=0.0)).sum())

    def summary(self, class_names: list[str] | tuple[str, ...]) -> dict:
        """All scores as a JSON-ready dict (NaN -> None), with the matrix itself for exact comparisons."""
        iou = self.iou()
        return {
            "miou": _num(self.miou("nan_exclude")),
            "miou_zero": _num(self.miou("zero")),
            "pixel_acc": _num(self.pixel_acc()),
            "fitness": _num(self.fitness()),
            "mean_class_acc": _num(self.mean_class_acc()),
            "fwiou": _num(self.fw_iou()),
            "per_class": {n: _num(float(v)) for n, v in zip(class_names, iou, strict=True)},
            "labelled_pixels": int(self.mat.sum()),
            "confusion_matrix": self.mat.cpu().tolist(),
        }

    def per_class_rows(self, class_names: list[str] | tuple[str, ...]) -> list[dict]:
        """Rows of ``per_class_iou.csv`` (``metrics.md`` §2.3)."""
        s, iou = self.stats(), self.iou()
        rows = []
        for c, name in enumerate(class_names):
            tp, fp, fn = (int(s[k][c]) for k in ("tp", "fp", "fn"))
            rows.append(
                {
                    "id": c,
                    "name": name,
                    "iou": "" if math.isnan(iou[c]) else f"{float(iou[c]):.6f}",
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "gt_pixels": tp + fn,
                    "pred_pixels": tp + fp,
                    "present_in_gt": tp + fn > 0,
                }
            )
        return rows


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)
