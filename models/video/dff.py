"""DFF: deep feature flow, the ``dff2`` variant (``ssp.md`` §4.1, §4.5) around a trained image segmentor.

A keyframe (clip index ``i`` with ``i mod k_interval == 0``, decided by the shared
:class:`~models.video.keyframe.KeySchedule`) runs the whole image network and keeps its last
feature ``g`` ``[B,C,H/f,W/f]`` (the head's pre-classifier feature, ``f = image_model.feature_stride``). Any other
frame is never encoded: the flow from it to the previous frame (at its pixels, pointing into ``t-1``) is resized
to stride ``f`` (values scaled), the previous feature is pulled along it and only the classifier runs on the
warped feature. Propagation is recursive, frame to frame: the state keeps the warped feature.

Training (``supervised`` step, cross-entropy on the current frame) feeds ``(t-1, t)`` pairs: frame 0 is the key
and the prediction of ``t`` comes only from the warped ``g_{t-1}``. The flow is either a trainable network
(``train_flow``: a submodule, saved, optimised and following ``train()``/``eval()``) or a frozen provider kept
outside the module tree (:meth:`VideoModel.add_helper`). Unlike the reference, whose RAFT stays in train mode
during validation, the flow network is evaluated in eval mode (``ssp.md`` §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from config.schema import DFFCfg, VideoConfig
from data.frames import FramePair
from data.transforms import denormalize
from models.flow import build_feature_flow, flow_to_previous
from models.flow.base import FlowProvider
from models.flow.gt import resize_flow
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, VideoModel, option_value
from models.video.keyframe import KeySchedule
from models.warp import flow_warp

FLOW_MODES = ("bilinear", "nearest")


@dataclass
class DFFState:
    """Streaming state (reset at every clip start).

    Attributes:
        index: index in the clip of the next frame (decides the keyframes).
        feature: [B,C,H/f,W/f] the previous frame's last feature (computed on a keyframe, else warped), or None.
        frame01: [B,3,H,W] the previous frame, RGB in [0,1] (what the flow is computed on), or None.
        since_key: frames since the last keyframe, or None before the first.
    """

    index: int = 0
    feature: Tensor | None = None
    frame01: Tensor | None = None
    since_key: int | None = None


class DFF(VideoModel):
    """Deep feature flow (``dff2``): keyframes through the image network, other frames by warping features.

    Args:
        image_model: the image segmentor (``encode``, ``decode_last_feature``, ``classify``, ``resize_logits``).
        k_interval: clip index ``i`` is a keyframe when ``i mod k_interval == 0`` (1 = every frame).
        flow_network: a trainable ``nn.Module`` ``(img1, img2 [B,3,H,W] in [0,1]) -> flow [B,2,H,W]`` (img1's
            pixels into img2), or None.
        flow_provider: a frozen :class:`FlowProvider`, or None. Exactly one of the two is given.
        flow_mode: ``bilinear`` or ``nearest`` sampling when warping features.
        max_key_offset: training: the key frame is ``d`` frames before the current one, ``d`` in ``[1, max]``.
        freeze_image_model: keep the image network fixed (train the flow network only).
    """

    method = "dff2"
    flow: FlowProvider | None  # the frozen provider (a helper), or None with a flow network

    def __init__(
        self,
        image_model: Segmentor,
        k_interval: int = 8,
        flow_network: nn.Module | None = None,
        flow_provider: FlowProvider | None = None,
        flow_mode: str = "bilinear",
        max_key_offset: int = 1,
        freeze_image_model: bool = False,
    ) -> None:
        super().__init__(image_model, freeze_image_model)
        if (flow_network is None) == (flow_provider is None):
            raise ValueError("DFF needs exactly one of flow_network (trainable) and flow_provider (frozen)")
        if k_interval < 1:
            raise ConfigError(f"video_model_cfg.dff.k_interval must be at least 1, got {k_interval}")
        if max_key_offset < 1:
            raise ConfigError(f"video_model_cfg.dff.max_key_offset must be at least 1, got {max_key_offset}")
        if flow_mode not in FLOW_MODES:
            raise ConfigError(
                f"video_model_cfg.dff.flow_mode '{flow_mode}' is not one of {', '.join(FLOW_MODES)}"
            )
        if flow_provider is not None and flow_provider.needs_pairs and max_key_offset > 1:
            raise ConfigError(
                f"video_model_cfg.dff.max_key_offset={max_key_offset}: the stored flow of '{flow_provider.name}' "
                "links neighbouring frames only; set max_key_offset: 1 or use another flow"
            )
        self.flow_mode, self.max_key_offset = flow_mode, int(max_key_offset)
        self.schedule = KeySchedule(interval=int(k_interval) - 1)  # the cycle is k_interval frames long
        self.flow_network = flow_network  # a submodule: in the state dict and the optimizer
        self.add_helper("flow", flow_provider)  # frozen: outside the state dict, the optimizer and DDP

    # -- the contract -------------------------------------------------------------------------------------
    def needs(self) -> DataNeeds:
        """``(t-1, t)`` pairs (the earlier one ``d`` frames back in training), and the stored true flows when the
        provider reads stored results (it cannot follow augmented frames; the loader carries them instead)."""
        true_flows = self.flow is not None and self.flow.needs_pairs
        return DataNeeds(offsets=(-1,), max_key_offset=self.max_key_offset, true_flows=true_flows)

    @property
    def k_interval(self) -> int:
        """Frames per key cycle (the reference's ``k_interval`` = ``interval + 1``)."""
        return self.schedule.period

    def options(self) -> dict[str, Any]:
        """``interval``: non-keyframes between keyframes (``k_interval - 1``); ``key_phase``: see
        :class:`~models.video.keyframe.KeySchedule`."""
        return {"interval": self.schedule.interval, "key_phase": self.schedule.phase}

    def _set_option(self, name: str, value: Any) -> None:
        self.schedule.set(**{"interval" if name == "interval" else "phase": option_value(name, value, int)})

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["k_interval"], out["flow_mode"] = self.k_interval, self.flow_mode
        out["max_key_offset"] = self.max_key_offset
        net = self.flow_network
        out["flow_network"] = None if net is None else getattr(net, "settings", lambda: repr(net))()
        return out

    def train(self, mode: bool = True) -> DFF:
        super().train(mode)
        if self.flow_network is not None:
            # Explicit on purpose: the reference keeps RAFT in train mode while validating (BatchNorm on batch
            # statistics); tcseg evaluates the flow network in eval mode (ssp.md 4.5).
            self.flow_network.train(mode)
        return self

    def init_state(self) -> DFFState:
        return DFFState()

    def step(
        self, frame: Tensor, state: DFFState, side: StepSide | None = None
    ) -> tuple[StepOutput, DFFState]:
        """One frame ``frame`` [B,3,H,W] (ImageNet-normalised) -> (logits [B,K,H,W], new state).

        ``side.flow`` [B,2,H,W] (the backward flow of this frame onto the previous one) replaces the flow
        computation when given; ``side.pair`` (previous -> current on disk) is handed, reversed, to a provider.
        """
        side = side if side is not None else StepSide()
        im = self.image_model
        cur01 = denormalize(frame)  # flow networks and providers take RGB in [0,1]
        key = self.schedule.is_key(state.index, None if state.feature is None else state.since_key)
        if key:
            with side.timer("keyframe"):
                g = im.decode_last_feature(im.encode(frame))
                logits = im.classify(g)
            image_logits: Tensor | None = logits
        else:
            flow = side.flow
            if flow is None:
                with side.timer("flow"):
                    flow = self._flow(cur01, state.frame01, side.pair)
            with side.timer("warp"):
                flow_s = resize_flow(flow.float(), tuple(state.feature.shape[-2:]))  # px need fp32
                g = flow_warp(state.feature, flow_s, mode=self.flow_mode, grid="exact")[0]
            with side.timer("head"):
                logits = im.classify(g)
            image_logits = None  # the image network did not run on this frame
        with side.timer("upsample"):
            out = im.resize_logits(logits, frame.shape[-2:])
        since = 0 if key else state.since_key + 1
        return (StepOutput(logits=out, image_logits=image_logits, key_distance=since),
                DFFState(state.index + 1, g, cur01, since))  # fmt: skip

    def _flow(self, cur01: Tensor, prev01: Tensor, pair: FramePair | None) -> Tensor:
        """[B,2,H,W]: the displacement at the current frame's pixels pointing into the previous frame."""
        return flow_to_previous(self.flow_network, self.flow, cur01, prev01, pair)


@VIDEO_MODELS.register("dff2")
def build_dff(
    cfg: VideoConfig,
    image_model: Segmentor,
    *,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    use_caches: bool = True,
) -> DFF:
    """DFF from a video config (``video_model_cfg.dff``; unset = the defaults), with its flow.

    The flow comes from :func:`models.flow.build_feature_flow`: with ``train_flow`` a trainable network (start
    weights from the local file unless ``pretrained=False``: a DFF checkpoint, holding the trained network, is
    loaded right after), otherwise a frozen provider (its weights are always needed: it is not in checkpoints).
    ``use_caches`` has no effect (DFF caches nothing).
    """
    vcfg = cfg.video_model_cfg
    dcfg = vcfg.dff if vcfg.dff is not None else DFFCfg()
    if list(cfg.data_cfg.adjacent_frames) != [-1]:
        raise ConfigError(
            f"data_cfg.adjacent_frames: DFF trains on (t-1, t) pairs; use [-1], got {cfg.data_cfg.adjacent_frames}"
        )
    network, provider = build_feature_flow(dcfg, "video_model_cfg.dff", device, pretrained)
    return DFF(
        image_model,
        k_interval=dcfg.k_interval,
        flow_network=network,
        flow_provider=provider,
        flow_mode=dcfg.flow_mode,
        max_key_offset=dcfg.max_key_offset,
        freeze_image_model=vcfg.freeze_image_model,
    )
