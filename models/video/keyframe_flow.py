"""Keyframes + optical-flow propagation (``model_name: keyframe``; ``other_methods.md`` §4, the GSVNet lineage).

A frozen image model (SwiftNet-R18 in the reference; any image run here) segments keyframes only, at
``eval_scale`` of the input. Its logits are resized to the propagation resolution ``P = input / resolution_div``.
Each following frame until the next keyframe gets the previous frame's refined logits warped along the flow
between the two frames at ``P`` (:func:`models.video.gsv.propagate`, ``flow / flow_scale_div``), refined by GSV
filtering with the current frame (:class:`models.video.gsv.GSVRefiner`) and upsampled bilinearly to the input.
Propagation is recursive, frame to frame, and warps logits, not features. Which frames are keyframes is the shared
:class:`models.video.keyframe.KeySchedule` (``interval`` non-keyframes between keyframes; 0 = per-frame model).

Training (the ``keyframe`` step, :mod:`training.steps.keyframe`): a sample holds frames ``t - L .. t`` (``L`` the
largest of ``train_steps``); for every ``l`` in ``train_steps`` the keyframe is ``t - l`` and the prediction of
``t`` is scored, so every labelled frame is seen at every distance in each (shuffled) epoch. The flow (the
``light`` net) and the refiner are trained; the keyframe model never is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from config.schema import KeyframeCfg, VideoConfig
from data.transforms import denormalize
from data.video_batch import VideoBatch
from models.flow import build_flow, flow_to_previous
from models.flow.base import FlowProvider
from models.image.heads.common import resize_bilinear
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, VideoModel, VideoOutput, option_value
from models.video.gsv import GSVRefiner, LightFlowNet, propagate, to_net_units
from models.video.keyframe import KeySchedule


@dataclass
class KeyframeState:
    """Streaming state (reset at every clip start).

    Attributes:
        index: clip index of the next frame.
        since_key: frames since the last keyframe (None before the first).
        logits: [B,K,h,w] the previous frame's logits at ``P`` (keyframe logits resized, or refined ones).
        frame: [B,3,h,w] the previous frame at ``P`` (ImageNet-normalised).
    """

    index: int = 0
    since_key: int | None = None
    logits: Tensor | None = None
    frame: Tensor | None = None


class KeyframePropagation(VideoModel):
    """Keyframe model on keyframes, flow propagation + GSV refinement in between.

    Args:
        image_model: the keyframe model (kept frozen).
        schedule: which frames are keyframes.
        eval_scale: the keyframe model sees the frame resized by this factor.
        resolution_div: propagation at ``input / resolution_div``.
        flow_network: the trainable ``light`` net, or None with ``flow_provider`` (a frozen provider).
        flow_scale_div: logits move by ``flow / flow_scale_div`` pixels of ``P``.
        refiner: the GSV refiner, or None (plain warping).
        train_steps: training keyframe distances.
        key_full_scale_in_training: the reference mismatch (keyframe not downscaled while training).
        guide_lr, flow_lr: learning rates of the guide net and the light flow net (:meth:`param_groups`).
    """

    method = "keyframe"
    train_step = "keyframe"
    inference = "keyframes + recurrent flow propagation over each clip (video)"
    flow: FlowProvider | None

    def __init__(
        self, image_model: Segmentor, schedule: KeySchedule, *, eval_scale: float = 0.75, resolution_div: int = 8,
        flow_network: nn.Module | None = None, flow_provider: FlowProvider | None = None,
        flow_scale_div: float = 4.0, refiner: GSVRefiner | None = None, train_steps: tuple[int, ...] = (1, 2),
        key_full_scale_in_training: bool = False, guide_lr: float = 2e-2, flow_lr: float = 2e-2,
    ) -> None:  # fmt: skip
        super().__init__(image_model, freeze_image_model=True)  # the keyframe model is never trained here
        if (flow_network is None) == (flow_provider is None):
            raise ValueError("keyframe propagation needs exactly one of flow_network and flow_provider")
        steps = tuple(sorted({int(s) for s in train_steps}))
        if not steps or steps[0] < 1:
            raise ConfigError(
                f"video_model_cfg.keyframe.train_steps must be distances >= 1, got {list(train_steps)}"
            )
        if not 0 < eval_scale <= 4 or flow_scale_div <= 0:
            raise ConfigError(
                f"video_model_cfg.keyframe: eval_scale must be in (0, 4] and flow_scale_div > 0, got {eval_scale} "
                f"and {flow_scale_div}"
            )
        self.schedule = schedule
        self.eval_scale, self.resolution_div = float(eval_scale), int(resolution_div)
        self.flow_scale_div, self.train_steps = float(flow_scale_div), steps
        self.key_full_scale_in_training = bool(key_full_scale_in_training)
        self.guide_lr, self.flow_lr = float(guide_lr), float(flow_lr)
        self.flow_network = flow_network  # trained, saved
        self.refiner = refiner
        self.add_helper("flow", flow_provider)  # frozen, outside the state dict

    # -- runtime options ------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interval": self.schedule.interval, "key_phase": self.schedule.phase,
                               "eval_scale": self.eval_scale}  # fmt: skip
        if self.refiner is not None:
            out["use_edge"] = self.refiner.use_edge
        return out

    def _set_option(self, name: str, value: Any) -> None:
        if name == "interval":
            self.schedule.set(interval=option_value(name, value, int))
        elif name == "key_phase":
            self.schedule.set(phase=option_value(name, value, int))
        elif name == "eval_scale":
            scale = option_value(name, value, float)
            if not 0 < scale <= 4:
                raise ConfigError(f"--eval-scale must be in (0, 4], got {value}")
            self.eval_scale = scale
        else:
            self.refiner.use_edge = option_value(name, value, bool)

    def eval_variants(self) -> dict[str, dict[str, Any]]:
        """'without edge' for a GSV refiner trained with the edge map (§4.8 reports min mIoU w/ and w/o edge)."""
        return (
            {"without edge": {"use_edge": False}}
            if self.refiner is not None and self.refiner.use_edge
            else {}
        )

    def param_groups(self, lr: float) -> list[dict]:
        """Learning-rate groups (§4.5): intra net and shift filters at ``lr``, guide net at ``guide_lr``, flow net
        at ``flow_lr``; empty groups are left out."""
        groups: list[dict] = []
        if self.refiner is not None:
            groups.append({"params": [*self.refiner.intra.parameters(), self.refiner.shifts], "lr": lr})
            groups.append({"params": list(self.refiner.guide.parameters()), "lr": self.guide_lr})
        if self.flow_network is not None:
            groups.append({"params": list(self.flow_network.parameters()), "lr": self.flow_lr})
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        return [g for g in groups if g["params"]]

    # -- the contract ---------------------------------------------------------------------------------------
    def needs(self) -> DataNeeds:
        """Frames ``t - L .. t`` (``L = max(train_steps)``), with the stored true flows for a provider that reads
        them (it cannot follow augmented frames)."""
        true_flows = self.flow is not None and self.flow.needs_pairs
        return DataNeeds(offsets=tuple(range(-self.train_steps[-1], 0)), true_flows=true_flows)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(self.options())
        out.update(resolution_div=self.resolution_div, flow_scale_div=self.flow_scale_div,
                   refine="gsv" if self.refiner is not None else "none", train_steps=list(self.train_steps),
                   gsv_width=None if self.refiner is None else self.refiner.width,
                   key_full_scale_in_training=self.key_full_scale_in_training)  # fmt: skip
        out["flow_network"] = None if self.flow_network is None else self.flow_network.settings()
        return out

    def init_state(self) -> KeyframeState:
        return KeyframeState()

    def prop_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``P`` for an input of ``size``."""
        return max(1, round(size[0] / self.resolution_div)), max(1, round(size[1] / self.resolution_div))

    def key_logits(self, frame: Tensor, training: bool = False) -> Tensor:
        """The frozen keyframe model on ``frame`` [B,3,H,W] resized by ``eval_scale``: logits at its head's stride."""
        scale = 1.0 if training and self.key_full_scale_in_training else self.eval_scale
        h, w = frame.shape[-2:]
        x = resize_bilinear(frame, (max(1, round(h * scale)), max(1, round(w * scale))))
        im = self.image_model
        return im.decode(im.encode(x))

    def flow_at(self, cur: Tensor, prev: Tensor, side: StepSide) -> Tensor:
        """[B,2,h,w] flow-net units at ``P``: the current frame's pixels pointing into the previous one.
        ``cur``, ``prev``: [B,3,h,w] normalised frames at ``P``; ``side.flow`` (full-size pixels) wins."""
        size = tuple(cur.shape[-2:])
        if side.flow is not None:
            return to_net_units(side.flow, size, self.flow_scale_div)
        if self.flow_network is not None:
            return self.flow_network(cur, prev)
        flow = flow_to_previous(None, self.flow, denormalize(cur), denormalize(prev), side.pair)
        return to_net_units(flow, size, self.flow_scale_div)

    def propagate_step(self, logits: Tensor, prev: Tensor, cur: Tensor, side: StepSide) -> Tensor:
        """One non-keyframe at ``P``: warp ``logits`` [B,K,h,w] of ``prev`` onto ``cur`` and refine."""
        with side.timer("flow"):
            flow = self.flow_at(cur, prev, side)
        with side.timer("warp"):
            warped = propagate(logits, flow, self.flow_scale_div)
        if self.refiner is None:
            return warped
        with side.timer("refine"):
            return self.refiner(warped, cur)

    def step(
        self, frame: Tensor, state: KeyframeState, side: StepSide | None = None
    ) -> tuple[StepOutput, KeyframeState]:
        """One frame ``frame`` [B,3,H,W] (ImageNet-normalised) -> (logits [B,K,H,W], new state)."""
        side = side if side is not None else StepSide()
        size = tuple(frame.shape[-2:])
        p = self.prop_size(size)
        key = self.schedule.is_key(state.index, None if state.logits is None else state.since_key)
        with side.timer("resize"):
            cur = resize_bilinear(frame, p)
        if key:
            with side.timer("keyframe"):
                z = self.key_logits(frame)
            with side.timer("upsample"):
                out = resize_bilinear(z, size)  # the keyframe's own prediction, not through P
                y = resize_bilinear(z, p)
            image_logits: Tensor | None = z
        else:
            y = self.propagate_step(state.logits, state.frame, cur, side)
            with side.timer("upsample"):
                out = resize_bilinear(y, size)
            image_logits = None
        since = 0 if key else state.since_key + 1
        return (StepOutput(out, image_logits=image_logits, key_distance=since),
                KeyframeState(state.index + 1, since, y, cur))  # fmt: skip

    def forward(self, batch: VideoBatch) -> VideoOutput:
        """Evaluation mode: the streaming recurrence over the clip (the keyframe is the clip's first frame).
        Training mode: :meth:`train_outputs` in ``extras`` (``distance_<l>`` [B,K,H,W] for every ``l``, and
        ``key_target`` [B,K,H,W]); ``logits`` [B,T,K,H,W] then repeats the farthest distance's prediction of the
        current frame in every slot (a view), so that a caller reading ``logits[:, current]`` gets it."""
        if not self.training:
            return super().forward(batch)
        per_step, target = self.train_outputs(batch)
        far = per_step[self.train_steps[-1]]
        extras = {f"distance_{d}": y for d, y in per_step.items()}
        extras["key_target"] = target
        return VideoOutput(logits=far.unsqueeze(1).expand(-1, batch.num_frames, -1, -1, -1), extras=extras)

    def train_outputs(self, batch: VideoBatch) -> tuple[dict[int, Tensor], Tensor]:
        """Training: ``({l: logits of the current frame [B,K,H,W] with the keyframe l frames back}, the keyframe
        model's logits of the current frame [B,K,H,W])``; the keyframe model runs without gradients."""
        frames, cur = batch.frames, batch.current
        size = tuple(frames.shape[-2:])
        p = self.prop_size(size)
        small = resize_bilinear(frames.flatten(0, 1), p).unflatten(0, frames.shape[:2])  # [B,T,3,h,w]
        with torch.no_grad():
            target = resize_bilinear(self.key_logits(frames[:, cur], training=True), size)
        flows: dict[int, Tensor] = {}
        out: dict[int, Tensor] = {}
        for dist in self.train_steps:
            key = cur - dist
            with torch.no_grad():
                y = resize_bilinear(self.key_logits(frames[:, key], training=True), p)
            for t in range(key + 1, cur + 1):
                if t not in flows:  # the flows between consecutive frames serve every distance
                    side = StepSide(flow=None if batch.flows is None else batch.flows[:, t - 1])
                    flows[t] = self.flow_at(small[:, t], small[:, t - 1], side)
                y = propagate(y, flows[t], self.flow_scale_div)
                if self.refiner is not None:
                    y = self.refiner(y, small[:, t])
            out[dist] = resize_bilinear(y, size)
        return out, target


@VIDEO_MODELS.register("keyframe")
def build_keyframe(
    cfg: VideoConfig, image_model: Segmentor, *, device: torch.device | str = "cpu", pretrained: bool = True,
    use_caches: bool = True,
) -> KeyframePropagation:  # fmt: skip
    """Keyframe propagation from ``video_model_cfg.keyframe`` (unset = the reference defaults) with its flow: the
    trainable ``light`` net, or a frozen provider from the flow registry. ``pretrained`` and ``use_caches`` have
    no effect (the light net starts from random weights; nothing is cached)."""
    kcfg = cfg.video_model_cfg.keyframe if cfg.video_model_cfg.keyframe is not None else KeyframeCfg()
    if list(cfg.data_cfg.adjacent_frames) != [-1]:  # the schema default; the frames come from train_steps
        raise ConfigError(
            "data_cfg.adjacent_frames: keyframe propagation takes its frames from video_model_cfg.keyframe.train_steps;"
            f" leave it at its default [-1], got {cfg.data_cfg.adjacent_frames}"
        )
    schedule = KeySchedule(interval=kcfg.interval)
    network = LightFlowNet(kcfg.flow_width) if kcfg.flow == "light" else None
    provider = None
    if network is None:
        provider = build_flow(kcfg.flow, kcfg.flow_weights, kcfg.flow_iters, device=device,
                              weights_setting="video_model_cfg.keyframe.flow_weights")  # fmt: skip
    refiner = None
    if kcfg.refine == "gsv":
        refiner = GSVRefiner(image_model.num_classes, kcfg.use_edge, kcfg.train_ideal_delay, kcfg.gsv_width)
    return KeyframePropagation(
        image_model, schedule, eval_scale=kcfg.eval_scale, resolution_div=kcfg.resolution_div,
        flow_network=network, flow_provider=provider, flow_scale_div=kcfg.flow_scale_div, refiner=refiner,
        train_steps=tuple(kcfg.train_steps), key_full_scale_in_training=kcfg.key_full_scale_in_training,
        guide_lr=kcfg.guide_lr, flow_lr=kcfg.flow_lr,
    )  # fmt: skip
