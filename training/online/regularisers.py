"""Continual-learning regularisers of the online loop (``other_methods.md`` §3.6): ``none``, ``lwf``, ``mas``.

Call sequence (the loop; ``batches`` re-yields the window's training images)::

    reg = build_regulariser("mas", reg=1.0, decay=0.5)
    for each window:
        for images [B,3,H,W], targets [B,H,W] in the window's batches:
            logits = student(images)                                       # [B,C,H,W]
            loss = ce(logits, targets) + reg.penalty(student, images, logits, targets)
            loss.backward(); optimiser.step()
        reg.end_window(student, batches)       # after the window's epoch: snapshot / importance, when due

Task boundaries are simulated as in the reference: the first update comes after ``warmup + 1`` windows, the
next ones every ``update_freq`` windows. A window that trained on no image (the reference's first one) does not
count. Before the first update every penalty is 0.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError
from models.registry import Registry
from training.online.students import build_checked

REGULARISERS = Registry("online regulariser")


def _number(name: str, value: Any, minimum: float = 0.0, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"online regulariser: {name} must be a number {bound}, got {value!r}")
    return float(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"online regulariser: {name} must be an integer >= {minimum}, got {value!r}")
    return value


@REGULARISERS.register("none")
class Regulariser:
    """No regularisation (plain CE), and the common part: the window schedule of updates.

    Args:
        warmup: windows before the first update (the first update follows window ``warmup + 1``).
        update_freq: windows between two updates (>= 1).
    """

    def __init__(self, warmup: int = 0, update_freq: int = 1) -> None:
        self.warmup = _count("warmup", warmup, 0)
        self.update_freq = _count("update_freq", update_freq, 1)
        self.windows = 0  # windows counted so far (windows with at least one batch)
        self.updates = 0  # snapshots / importance updates so far

    def penalty(
        self, model: nn.Module, images: Tensor, logits: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        """The term added to the loss of the batch ``images [B,3,H,W]`` with the student's ``logits [B,C,H,W]``
        (``targets [B,H,W]``: the teacher masks, used by LwF to record the classes seen). A scalar tensor."""
        return logits.new_zeros(())

    def due(self) -> bool:
        """Whether the window just counted ends with an update."""
        w = self.windows
        return w > self.warmup and (w - self.warmup - 1) % self.update_freq == 0

    def end_window(self, model: nn.Module, images_seen: Iterable[Tensor]) -> bool:
        """Count the window and update (snapshot / importance) when due; ``images_seen`` yields the window's
        training images ``[B,3,H,W]`` (MAS measures its importance on them). Returns whether it updated."""
        batches = iter(images_seen)
        first = next(batches, None)
        if first is None:
            return False  # nothing was learnt: not a window of the schedule
        self.windows += 1
        if not self.due():
            return False
        self.update(model, chain([first], batches))
        self.updates += 1
        return True

    def update(self, model: nn.Module, batches: Iterator[Tensor]) -> None:
        """Snapshot / importance update at a task boundary (nothing for ``none``)."""


@REGULARISERS.register("lwf")
class LwF(Regulariser):
    """Learning without Forgetting: ``alpha · KL(q_prev ‖ p_cur)`` at temperature ``T`` per pixel, over the classes
    seen before the last snapshot, where ``q_prev`` comes from a frozen copy of the student taken at the last
    update (so from before the current window).

    Args:
        alpha: weight of the term.
        temperature: T > 0 (both softmaxes; no T² factor, as the reference).
        reduction: ``pixel_mean`` (KL averaged over B·H·W pixels, independent of the image size) or
            ``batchmean`` (summed over pixels, divided by B: the reference's ``kl_div(reduction='batchmean')``
            on [B,C,H,W], which grows with H·W).
        warmup, update_freq: see :class:`Regulariser`.

    The frozen copy runs in eval mode (no dropout; a ``batch_stats`` TinyNet still uses batch statistics).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 2.0,
        reduction: Literal["pixel_mean", "batchmean"] = "pixel_mean",
        warmup: int = 0,
        update_freq: int = 1,
    ) -> None:
        super().__init__(warmup, update_freq)
        self.alpha = _number("alpha", alpha)
        self.temperature = _number("temperature", temperature, strict=True)
        if reduction not in ("pixel_mean", "batchmean"):
            raise ConfigError(
                f"online regulariser: reduction '{reduction}' is unknown; use pixel_mean or batchmean"
            )
        self.reduction = reduction
        self.frozen: nn.Module | None = None
        self.seen: set[int] = set()  # classes in the targets so far
        self.frozen_classes: list[int] = []  # classes seen when the frozen copy was taken

    def observe(self, targets: Tensor, num_classes: int) -> None:
        """Record the classes of ``targets [B,H,W]`` (values outside 0 … C−1, e.g. ignore labels, are skipped)."""
        values = torch.unique(targets.detach()).tolist()
        self.seen.update(int(v) for v in values if 0 <= v < num_classes)

    def penalty(
        self, model: nn.Module, images: Tensor, logits: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        if targets is not None:
            self.observe(targets, logits.shape[1])
        if self.frozen is None or not self.frozen_classes:
            return logits.new_zeros(())
        with torch.no_grad():
            prev = self.frozen(images)
        idx = torch.tensor(self.frozen_classes, device=logits.device)
        log_p = F.log_softmax(logits.index_select(1, idx) / self.temperature, dim=1)
        q = F.softmax(prev.index_select(1, idx).to(logits.dtype) / self.temperature, dim=1)
        kl = F.kl_div(log_p, q, reduction="none").sum(dim=1)  # [B,H,W]
        loss = kl.mean() if self.reduction == "pixel_mean" else kl.sum() / logits.shape[0]
        return self.alpha * loss

    def update(self, model: nn.Module, batches: Iterator[Tensor]) -> None:
        """Freeze a copy of the student and the classes seen so far."""
        self.snapshot(model)

    def snapshot(self, model: nn.Module) -> None:
        """Take the frozen copy now (also usable outside the schedule)."""
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.frozen_classes = sorted(self.seen)


@REGULARISERS.register("mas")
class MAS(Regulariser):
    """Memory Aware Synapses: ``reg · Σ_i Ω_i (θ_i − θ*_i)²``, θ* = the parameters at the last update.

    Importance, as the spec writes it: ``Ω = E |∂‖f(x)‖₂ / ∂θ|`` with the plain (not squared) L2 norm of each
    sample's logits over (C,H,W), averaged over the batch; the expectation is the mean over the window's
    batches of the absolute gradient of each batch (as the reference: per-sample gradients would need
    batch-of-one forwards, which change a ``batch_stats`` student's outputs). The first update sets Ω; later
    ones blend ``Ω ← decay · Ω + (1 − decay) · Ω_new``. Ω is measured in eval mode (no dropout noise, no
    BatchNorm running-statistics update).

    Args:
        reg: weight of the penalty.
        decay: EMA decay of Ω, in [0, 1].
        warmup, update_freq: see :class:`Regulariser`.
    """

    def __init__(self, reg: float = 1.0, decay: float = 0.5, warmup: int = 0, update_freq: int = 1) -> None:
        super().__init__(warmup, update_freq)
        self.reg = _number("reg", reg)
        self.decay = _number("decay", decay)
        if self.decay > 1:
            raise ConfigError(f"online regulariser: decay must be in [0, 1], got {decay!r}")
        self.omega: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    @staticmethod
    def importance(model: nn.Module, batches: Iterable[Tensor]) -> dict[str, Tensor]:
        """Ω_new per trainable parameter name (same shapes): mean over ``batches`` of
        ``|∂ mean_b ‖f(x_b)‖₂ / ∂θ|``. ``model(x)`` must return ``[B, ...]``."""
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                for x in batches:
                    out = model(x)
                    norm = torch.linalg.vector_norm(out.flatten(1).float(), ord=2, dim=1).mean()
                    grads = torch.autograd.grad(norm, list(params.values()), allow_unused=True)
                    for (n, _), g in zip(params.items(), grads, strict=True):
                        if g is not None:
                            total[n] += g.detach().abs()
                    count += 1
        finally:
            model.train(was_training)
        return {n: t / max(count, 1) for n, t in total.items()}

    def update(self, model: nn.Module, batches: Iterator[Tensor]) -> None:
        new = self.importance(model, batches)
        if not self.omega:
            self.omega = new
        else:
            d = self.decay
            self.omega = {
                n: d * self.omega[n] + (1 - d) * w if n in self.omega else w for n, w in new.items()
            }
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.omega}

    def penalty(
        self, model: nn.Module, images: Tensor, logits: Tensor, targets: Tensor | None = None
    ) -> Tensor:
        if not self.omega:
            return logits.new_zeros(())
        terms = [
            (self.omega[n] * (p - self.anchor[n]) ** 2).sum()
            for n, p in model.named_parameters()
            if n in self.omega
        ]
        return self.reg * torch.stack(terms).sum() if terms else logits.new_zeros(())


def build_regulariser(name: str, **kwargs: Any) -> Regulariser:
    """The regulariser ``name`` (``none``, ``lwf``, ``mas``) with its keyword arguments (``warmup``,
    ``update_freq``; lwf: ``alpha``, ``temperature``, ``reduction``; mas: ``reg``, ``decay``)."""
    return build_checked(REGULARISERS, name, kwargs)


__all__ = ["LwF", "MAS", "REGULARISERS", "Regulariser", "build_regulariser"]
