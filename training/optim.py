"""Optimizers and learning-rate schedules (``ssp.md`` §8).

The schedule is a pure function of the global optimizer step, ``lr(n) = lr * m(n)``, applied to every parameter
group before each step. Its only state is the step, so resuming needs nothing but the step count. Warm-up and
floors are *multipliers* of the peak lr (``start_lr``, ``final_lr``), as in the reference configs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from config.schema import OptimCfg, TrainingCfg


def build_optimizer(model: nn.Module, tcfg: TrainingCfg, ocfg: OptimCfg) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters; with ``trained_layer``, two groups (``lr``/``secondary_lr``);
    a model with a ``param_groups(lr)`` method (keyframe propagation's guide and flow nets) gives its own groups."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # a method's own lr groups (through a DDP wrapper too)
    own = getattr(getattr(model, "module", model), "param_groups", None)
    if own is not None and not tcfg.trained_layer:
        groups = own(tcfg.lr)
        grouped = {id(p) for g in groups for p in g["params"]}
        if grouped != {id(p) for _, p in named}:
            raise ValueError(f"{type(model).__name__}.param_groups must cover each trainable parameter once")
    elif tcfg.trained_layer:
        main = [p for n, p in named if tcfg.trained_layer in n]
        rest = [p for n, p in named if tcfg.trained_layer not in n]
        groups = [{"params": main, "lr": tcfg.lr}, {"params": rest, "lr": tcfg.secondary_lr}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for _, p in named], "lr": tcfg.lr}]
    for g in groups:
        g["peak_lr"] = g["lr"]  # the schedule multiplies this, never the current lr
    wd = ocfg.weight_decay
    if ocfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd)
    if ocfg.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=wd)
    if ocfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=ocfg.momentum, nesterov=ocfg.nesterov, weight_decay=wd)
    return torch.optim.RMSprop(groups, momentum=ocfg.momentum, weight_decay=wd)


class LRSchedule:
    """``m(n)`` for the named schedule with linear warm-up over ``warmup_steps`` from ``start`` to 1.

    - cosine: ``max(b, b + (1 - b) * (1 + cos(pi * p)) / 2)`` with ``p`` the progress after warm-up;
    - constant: 1 after warm-up;
    - poly: ``b + (1 - b) * (1 - p) ** power`` (with ``final_lr: 0`` and no warm-up this is the reference
      ``PolynomialLR``).
    """

    def __init__(
        self, kind: str, total_steps: int, warmup_steps: int, start: float, final: float, power: float = 0.9
    ) -> None:
        self.kind, self.total, self.warmup = kind, max(1, total_steps), max(0, warmup_steps)
        self.start, self.final, self.power = start, final, power

    @classmethod
    def from_config(cls, ocfg: OptimCfg, tcfg: TrainingCfg, steps_per_epoch: int) -> LRSchedule:
        """Schedule over ``num_epochs`` (the whole schedule, even when fewer epochs are run)."""
        return cls(
            ocfg.scheduler,
            total_steps=tcfg.num_epochs * steps_per_epoch,
            warmup_steps=round(ocfg.warmup_epochs * steps_per_epoch),
            start=ocfg.start_lr,
            final=ocfg.final_lr,
            power=ocfg.scheduler_power,
        )

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        if self.kind == "constant":
            return 1.0
        p = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        b = self.final
        if self.kind == "cosine":
            return max(b, b + (1.0 - b) * 0.5 * (1.0 + math.cos(math.pi * p)))
        if self.kind == "poly":
            return b + (1.0 - b) * (1.0 - p) ** self.power
        raise ValueError(f"unknown schedule '{self.kind}'")

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step``; return the factor."""
        m = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g["peak_lr"] * m
        return m
