"""``semi_cfg``: semi-supervised image training from unlabelled video (``other_methods.md`` §1), and its sub-sections.

An image config without ``semi_cfg`` trains on its labels only. With it, every optimizer step of the labelled
stream is paired with a batch of unlabelled frames (the training frames with their labels hidden), each with the
optical flow to its partner frame ``t + pair_offset``, and a loss on them (``loss``; the flow-consistency loss,
:mod:`training.fcl`). Kept apart from :mod:`config.schema`, which imports and re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from config.errors import ConfigError
from config.fields import opt


@dataclass
class PairFlowCfg:
    """`semi_cfg.flow`: the flow of each unlabelled frame to its partner, computed at data_cfg.crop_size."""

    backend: Literal["raft_large", "raft_small", "dis", "farneback", "gt"] = opt(
        "dis",
        "flow provider (the reference's pyflow is a CPU variational method: dis is the CPU stand-in; gt = the "
        "synthetic set's true flow)",
        registry="flow provider",
    )
    weights: str | None = opt(None, "local RAFT weights; null = base_checkpoints/raft_*.pth")
    iters: int = opt(20, "RAFT refinement iterations", min=1)
    pair_offset: int = opt(
        1, "the partner frame is t + pair_offset (reference +1; -1 where the annotated frame ends its clip)"
    )
    mask_bottom: float = opt(
        0.0,
        "fraction of the bottom rows whose flow is zeroed (ego-vehicle hood; reference Cityscapes 0.25); zero-flow "
        "neighbours are ignored by the loss, so this masks them",
        min=0,
    )
    cache_dir: str | None = opt(
        "datasets/.cache",
        "root of the flow cache (python -m data.flow_cache CONFIG fills it); missing flows are computed on the fly "
        "and stored; null = no cache",
    )

    def __post_init__(self) -> None:
        if self.pair_offset == 0:
            raise ConfigError(
                "semi_cfg.flow.pair_offset: 0 pairs a frame with itself; use 1 (reference) or -1"
            )
        if self.mask_bottom >= 1:
            raise ConfigError(
                f"semi_cfg.flow.mask_bottom must be below 1 (a fraction of rows), got {self.mask_bottom}"
            )


@dataclass
class FCLCfg:
    """`semi_cfg.fcl`: the flow-consistency loss (``other_methods.md`` §1.3). Keys left null take the preset's value."""

    preset: Literal["final", "jan2019"] = opt(
        "final",
        "reference settings: final (weight 0.01, max_shift 1, threshold 0.2) or jan2019 (10, 2, none)",
    )
    weight: float | None = opt(
        None, "lambda; with reduction sum it multiplies a sum over B x H x W x C (state both together)", min=0
    )
    max_shift: int | None = opt(None, "K: neighbours up to K pixels away (1: the 8 neighbours)", min=1)
    threshold: float | None = opt(
        None,
        "tau in pixels: repulsive counts motion differences above it (0 = every difference, as jan2019's none); "
        "attractive uses it as tau' (reference 0.5)",
        min=0,
    )
    sign: Literal["repulsive", "attractive"] = opt(
        "repulsive", "repulsive (final: different motion -> different class) or attractive (the unused v2)"
    )
    ring_norm: Literal["8l", "none"] = opt("8l", "divide ring l's weights by its 8 l pixels")
    ignore_zero_flow: bool = opt(True, "ignore neighbours whose flow is exactly zero (outside, masked rows)")
    stopgrad_neighbors: bool = opt(True, "the neighbours' probabilities get no gradient")
    reduction: Literal["sum", "mean"] = opt(
        "sum", "sum over batch, pixels and classes (reference) or mean (/ B x H x W: rescale the weight)"
    )
    eps: float = opt(1e-10, "added inside the log", min=0)

    def resolved(self) -> dict[str, Any]:
        """The keyword arguments of :class:`training.fcl.FlowConsistencyLoss`: the preset under the keys set here."""
        from training.fcl import FCL_PRESETS  # lazily: the config layer does not import torch

        own = {k: getattr(self, k) for k in ("weight", "max_shift", "threshold")}
        out = {**FCL_PRESETS[self.preset], **{k: v for k, v in own.items() if v is not None}}
        out.update(sign=self.sign, ring_norm=self.ring_norm, ignore_zero_flow=self.ignore_zero_flow,
                   stopgrad_neighbors=self.stopgrad_neighbors, reduction=self.reduction, eps=self.eps)  # fmt: skip
        return out


@dataclass
class SemiCfg:
    """`semi_cfg`: semi-supervised training on unlabelled frames (image configs; null = labels only)."""

    loss: Literal["fcl"] = opt(
        "fcl",
        "the loss on unlabelled frames: fcl = flow consistency (semi_cfg.fcl)",
        registry="unlabelled loss",
    )
    step_mode: Literal["alternating", "joint"] = opt(
        "alternating",
        "alternating: an optimizer step on the labelled batch, then one on the unlabelled batch (reference); "
        "joint: one step on the sum of both losses",
    )
    zero_weight_unsup_step: bool = opt(
        False,
        "with loss weight 0, still take the unlabelled optimizer step on a zero loss (the reference baseline's "
        "quirk: weight decay and momentum still act); false: weight 0 trains on the labels alone",
    )
    batch_size: int = opt(2, "unlabelled frames per optimizer step and process (reference 2)", min=1)
    start_step: int = opt(0, "optimizer step at which the unlabelled stream starts (start_semi_iter)", min=0)
    pool: Literal["annotated", "all"] = opt(
        "annotated",
        "unlabelled frames t: the training split's annotated frames, labels hidden (reference: the annotated frame "
        "of each snippet), or every frame of its clips that has a partner",
    )
    flow: PairFlowCfg = field(default_factory=PairFlowCfg, metadata={"doc": "flow to the partner frame"})
    fcl: FCLCfg = field(default_factory=FCLCfg, metadata={"doc": "flow-consistency loss"})
