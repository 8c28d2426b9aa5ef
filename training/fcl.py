"""The flow-consistency loss (FCL) of semi-supervised training from unlabelled video (``other_methods.md`` §1.3).

Only one frame's prediction is involved: the flow from frame ``t`` to ``t+1`` decides which neighbouring pixels
*move differently*, and the loss pushes those pixels towards different classes (a spatial regulariser at motion
discontinuities, not a warp between frames). With the softmax ``P`` [B,C,H,W] of frame ``t`` and its flow ``F``
[B,2,H,W] (pixels, same resolution), for every neighbour offset ``delta`` with ``|delta|_inf = l <= max_shift``
(ring ``l`` holds ``8 l`` pixels; outside the image ``P`` and ``F`` are zero)::

    d(x, delta) = |F(x) - F(x + delta)|_2
    repulsive:  w = d * 1[d > threshold] * 1[|F(x + delta)| != 0]          (threshold null: every d counts)
    attractive: w = max(0, (threshold - d) / threshold) * 1[|F(x + delta)| != 0]
    Q(x)        = sum_delta w / (8 l) * stopgrad(P(x + delta))
    L           = +weight * sum_{b,x,c} Q_c(x) log(P_c(x) + eps)     (repulsive: no minus sign)
                  -weight * ...                                        (attractive: a soft cross-entropy)

``reduction: mean`` divides the sum by ``B x H x W`` (the weight must then be rescaled: a config states its
reduction next to its weight). :data:`FCL_PRESETS` holds the reference's final and January-2019 settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError

# The reference's two published settings; every other option keeps its default (repulsive, ring norm 8l, zero-flow
# neighbours ignored, detached neighbours, summed, eps 1e-10).
FCL_PRESETS: dict[str, dict[str, float | int | None]] = {
    "final": {"weight": 0.01, "max_shift": 1, "threshold": 0.2},
    "jan2019": {"weight": 10.0, "max_shift": 2, "threshold": None},
}


def shift_map(x: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., i, j] = x[..., i + dy, j + dx]`` for ``x`` [B,C,H,W], zero where that falls outside the map."""
    h, w = x.shape[-2:]
    pad = (max(0, -dx), max(0, dx), max(0, -dy), max(0, dy))  # left, right, top, bottom
    padded = F.pad(x, pad)
    # in the padded map, pixel (i, j) of x sits at (i + pad_top, j + pad_left); we read (i + dy, j + dx)
    top, left = pad[2] + dy, pad[0] + dx
    return padded[..., top : top + h, left : left + w]


class FlowConsistencyLoss(nn.Module):
    """``loss(logits [B,C,H,W], flow [B,2,H,W]) -> scalar`` (§1.3); see the module docstring for the formula.

    Args:
        weight: lambda.
        max_shift: K, the largest ring of neighbours (1: the 8 neighbours).
        threshold: tau in pixels (repulsive: motion differences above it count; null: all); the attractive form
            uses it as its tau' (reference 0.5) and needs it positive.
        sign: ``repulsive`` (the reference's final form) or ``attractive`` (its unused "v2").
        ring_norm: ``8l`` divides ring ``l``'s weights by its ``8 l`` pixels; ``none`` does not.
        ignore_zero_flow: drop neighbours whose flow is exactly zero (outside the image, masked rows).
        stopgrad_neighbors: the neighbours' probabilities are constants (only the centre gets gradient).
        reduction: ``sum`` over batch, pixels and classes (reference) or ``mean`` (the sum / (B x H x W)).
        eps: inside the log.
    """

    def __init__(
        self, weight: float = 0.01, max_shift: int = 1, threshold: float | None = 0.2,
        sign: Literal["repulsive", "attractive"] = "repulsive", ring_norm: Literal["8l", "none"] = "8l",
        ignore_zero_flow: bool = True, stopgrad_neighbors: bool = True, reduction: Literal["sum", "mean"] = "sum",
        eps: float = 1e-10,
    ) -> None:  # fmt: skip
        super().__init__()
        if max_shift < 1:
            raise ConfigError(f"fcl.max_shift must be at least 1, got {max_shift}")
        if sign not in ("repulsive", "attractive") or ring_norm not in ("8l", "none"):
            raise ConfigError(
                f"fcl.sign must be repulsive|attractive and ring_norm 8l|none, got {sign}, {ring_norm}"
            )
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"fcl.reduction must be sum or mean, got {reduction}")
        if sign == "attractive" and (threshold is None or threshold <= 0):
            raise ConfigError(
                f"fcl.threshold: the attractive form needs a threshold > 0 (reference 0.5), got {threshold}"
            )
        self.weight, self.max_shift, self.threshold = float(weight), int(max_shift), threshold
        self.sign, self.ring_norm, self.reduction, self.eps = sign, ring_norm, reduction, float(eps)
        self.ignore_zero_flow, self.stopgrad_neighbors = bool(ignore_zero_flow), bool(stopgrad_neighbors)

    @classmethod
    def preset(cls, name: str, **changes: object) -> FlowConsistencyLoss:
        """The reference's ``final`` or ``jan2019`` settings, with ``changes`` on top."""
        if name not in FCL_PRESETS:
            raise ConfigError(f"fcl preset '{name}' is unknown; use one of {', '.join(FCL_PRESETS)}")
        return cls(**{**FCL_PRESETS[name], **changes})  # type: ignore[arg-type]

    def neighbour_weight(self, flow: Tensor, shifted: Tensor) -> Tensor:
        """``w`` [B,1,H,W] of one offset from ``flow`` and the neighbours' flow ``shifted`` (both [B,2,H,W])."""
        d = (flow - shifted).norm(dim=1, keepdim=True)
        if self.sign == "repulsive":
            w = d if self.threshold is None else d * (d > self.threshold)
        else:
            w = ((self.threshold - d) / self.threshold).clamp(min=0)
        if self.ignore_zero_flow:
            w = w * (shifted.norm(dim=1, keepdim=True) != 0)
        return w

    def offset_weights(self, flow: Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """``(dy, dx, w / (8 l))`` [B,1,H,W] for every neighbour offset (``w`` alone with ``ring_norm: none``)."""
        for dy in range(-self.max_shift, self.max_shift + 1):
            for dx in range(-self.max_shift, self.max_shift + 1):
                ring = max(abs(dy), abs(dx))
                if ring:
                    w = self.neighbour_weight(flow, shift_map(flow, dy, dx))
                    yield dy, dx, (w / (8 * ring) if self.ring_norm == "8l" else w)

    def weight_map(self, flow: Tensor) -> Tensor:
        """``[B,1,H,W]``: each pixel's total neighbour weight ``sum_delta w / (8 l)`` (where, and how hard, the loss
        acts; the picture of the FCL weight map)."""
        return sum((w for _, _, w in self.offset_weights(flow)), torch.zeros_like(flow[:, :1]))

    def targets(self, probs: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        """``Q`` [B,C,H,W], the weighted, ring-normalised neighbour probabilities (not a distribution), and the
        weight map [B,1,H,W] (:meth:`weight_map`) it was built with."""
        neighbours = probs.detach() if self.stopgrad_neighbors else probs
        q, total = torch.zeros_like(probs), torch.zeros_like(flow[:, :1])
        for dy, dx, w in self.offset_weights(flow):
            q = q + w * shift_map(neighbours, dy, dx)
            total = total + w
        return q, total

    def terms(self, logits: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        """The loss and the weight map [B,1,H,W] it used (where the loss acts), from one pass."""
        if flow.shape[-2:] != logits.shape[-2:] or flow.shape[1] != 2:
            raise ValueError(
                f"flow {tuple(flow.shape)} must be [B,2,H,W] at the logits' size {tuple(logits.shape)}"
            )
        probs = logits.float().softmax(1)
        q, weights = self.targets(probs, flow.float())
        total = (q * torch.log(probs + self.eps)).sum()
        if self.reduction == "mean":
            total = total / (logits.shape[0] * logits.shape[-2] * logits.shape[-1])
        return (self.weight * total if self.sign == "repulsive" else -self.weight * total), weights

    def forward(self, logits: Tensor, flow: Tensor) -> Tensor:
        return self.terms(logits, flow)[0]
