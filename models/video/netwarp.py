"""NetWarp (``ssp.md`` §4.2, §4.5) around a trained image segmentor: encoder features warped along a refined flow.

Every frame after the first of a clip is encoded. The flow ``flow0`` [B,2,H,W] from it to the previous frame (at
its pixels, pointing into ``t-1``) is refined by a small :class:`FlowCNN` that also sees both normalised frames.
For each encoder level ``l`` (widths and sizes from ``image_model.feature_info`` and the maps themselves, never
hard-coded) the refined flow is resized to the level (values scaled by the size ratio), the previous frame's map
is pulled along it, and the two are mixed per channel: ``f'_l = a_l * f_{t,l} + b_l * w_l`` (``a_l`` starts at 1,
``b_l`` at 0, so an untrained NetWarp is the image model). The full decoder then runs on ``f'``.

Training (``supervised`` step, cross-entropy on the current frame) feeds ``(t-1, t)`` pairs: frame 0 of the pair
is the plain image model, so the current frame combines with the *raw* ``t-1`` features. Inference is recurrent:
the combined ``f'`` become the next step's previous features; frame 0 of a clip is the plain image model.

The flow is either a trainable network (``train_flow``: a submodule, saved, optimised and following
``train()``/``eval()``) or a frozen provider kept outside the module tree (:meth:`VideoModel.add_helper`); the
FlowCNN and the fusion weights are always trained. Unlike the reference, whose RAFT stays in train mode during
validation, the flow network is evaluated in eval mode (``ssp.md`` §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from config.schema import NetWarpCfg, VideoConfig
from data.frames import FramePair
from data.transforms import denormalize
from models.flow import build_feature_flow, flow_to_previous
from models.flow.base import FlowProvider
from models.flow.gt import resize_flow
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, VideoModel
from models.video.dff import FLOW_MODES
from models.warp import flow_warp


class FlowCNN(nn.Module):
    """The NetWarp flow refinement (6,892 parameters, as the reference).

    ``forward(flow0 [B,2,H,W], prev [B,3,H,W], cur [B,3,H,W]) -> flow [B,2,H,W]`` with ImageNet-normalised frames:
    ``z = convs(concat[flow0, prev, cur, prev - cur])`` (11 -> 16 -> 32 -> 2, 3x3, ReLU between) and
    ``flow = conv3x3(concat[z, flow0])`` (4 -> 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(11, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 2, 3, padding=1),
        )
        self.combine = nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, flow0: Tensor, prev: Tensor, cur: Tensor) -> Tensor:
        z = self.convs(torch.cat([flow0, prev, cur, prev - cur], 1))
        return self.combine(torch.cat([z, flow0], 1))


@dataclass
class NetWarpState:
    """Streaming state (reset at every clip start).

    Attributes:
        feats: the previous frame's (combined) encoder maps ``[B,c_l,H/s_l,W/s_l]``, finest first, or None.
        frame: [B,3,H,W] the previous frame, ImageNet-normalised (the FlowCNN input; the flow sees it in [0,1]).
    """

    feats: list[Tensor] | None = None
    frame: Tensor | None = None


class NetWarp(VideoModel):
    """NetWarp: the current encoder maps mixed per channel with the previous ones warped along a refined flow.

    Args:
        image_model: the image segmentor (``encode``, ``decode``, ``resize_logits``, ``feature_info``).
        flow_network: a trainable ``nn.Module`` ``(img1, img2 [B,3,H,W] in [0,1]) -> flow [B,2,H,W]`` (img1's
            pixels into img2), or None.
        flow_provider: a frozen :class:`FlowProvider`, or None. Exactly one of the two is given.
        flow_mode: ``bilinear`` or ``nearest`` sampling when warping features.
        freeze_image_model: keep the image network fixed (train the flow, FlowCNN and fusion weights only).
    """

    method = "netwarp"
    flow: FlowProvider | None  # the frozen provider (a helper), or None with a flow network

    def __init__(
        self,
        image_model: Segmentor,
        flow_network: nn.Module | None = None,
        flow_provider: FlowProvider | None = None,
        flow_mode: str = "bilinear",
        freeze_image_model: bool = False,
    ) -> None:
        super().__init__(image_model, freeze_image_model)
        if (flow_network is None) == (flow_provider is None):
            raise ValueError(
                "NetWarp needs exactly one of flow_network (trainable) and flow_provider (frozen)"
            )
        if flow_mode not in FLOW_MODES:
            raise ConfigError(
                f"video_model_cfg.netwarp.flow_mode '{flow_mode}' is not one of {', '.join(FLOW_MODES)}"
            )
        self.flow_mode = flow_mode
        self.flow_network = flow_network  # a submodule: in the state dict and the optimizer
        self.add_helper("flow", flow_provider)  # frozen: outside the state dict, the optimizer and DDP
        self.flow_cnn = FlowCNN()
        widths = image_model.feature_info.channels  # never hard-coded (the reference's 96/192/384/768)
        # Per-channel fusion weights [c_l]: a_l = 1, b_l = 0 start NetWarp as the image model it wraps.
        self.a = nn.ParameterList([nn.Parameter(torch.ones(c)) for c in widths])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in widths])

    # -- the contract -------------------------------------------------------------------------------------
    def needs(self) -> DataNeeds:
        """``(t-1, t)`` pairs, and the stored true flows when the provider reads stored results (it cannot follow
        augmented frames; the loader carries them instead)."""
        return DataNeeds(offsets=(-1,), true_flows=self.flow is not None and self.flow.needs_pairs)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["flow_mode"] = self.flow_mode
        net = self.flow_network
        out["flow_network"] = None if net is None else getattr(net, "settings", lambda: repr(net))()
        out["levels"] = list(self.image_model.feature_info.channels)
        # How much each level leans on the warped map (0 at init): a one-glance check that fusion trained.
        out["mean_abs_b"] = [round(float(b.detach().abs().mean()), 6) for b in self.b]
        return out

    def train(self, mode: bool = True) -> NetWarp:
        super().train(mode)
        if self.flow_network is not None:
            # Explicit on purpose: the reference keeps RAFT in train mode while validating (BatchNorm on batch
            # statistics); tcseg evaluates the flow network in eval mode (ssp.md 4.5).
            self.flow_network.train(mode)
        return self

    def init_state(self) -> NetWarpState:
        return NetWarpState()

    def step(
        self, frame: Tensor, state: NetWarpState, side: StepSide | None = None
    ) -> tuple[StepOutput, NetWarpState]:
        """One frame ``frame`` [B,3,H,W] (ImageNet-normalised) -> (logits [B,K,H,W], new state).

        ``side.flow`` [B,2,H,W] (the backward flow of this frame onto the previous one) replaces ``flow0`` when
        given (the FlowCNN still refines it); ``side.pair`` (previous -> current on disk) is handed, reversed, to a
        provider.
        """
        side = side if side is not None else StepSide()
        im = self.image_model
        with side.timer("backbone"):
            feats = im.encode(frame)
        first = state.feats is None
        if first:  # clip start: the plain image model
            combined = list(feats)
        else:
            flow0 = side.flow
            if flow0 is None:
                with side.timer("flow"):
                    flow0 = self._flow(denormalize(frame), denormalize(state.frame), side.pair)
            with side.timer("flow_cnn"), torch.autocast(frame.device.type, enabled=False):
                # fp32 whatever the autocast: a bf16 flow of tens of pixels is off by a pixel (6.9 k weights only)
                flow = self.flow_cnn(flow0.float(), state.frame.float(), frame.float())
            with side.timer("warp"):
                combined = [
                    self._fuse(i, f, p, flow) for i, (f, p) in enumerate(zip(feats, state.feats, strict=True))
                ]
        with side.timer("head"):
            logits = im.decode(combined)
        with side.timer("upsample"):
            out = im.resize_logits(logits, frame.shape[-2:])
        # Only at a clip start are these the image network's own logits (nothing was mixed in).
        return StepOutput(logits=out, image_logits=logits if first else None), NetWarpState(combined, frame)

    def _fuse(self, level: int, cur: Tensor, prev: Tensor, flow: Tensor) -> Tensor:
        """``a_l * cur + b_l * warp(prev)`` for level ``level`` ([B,c_l,h_l,w_l] each; ``flow`` [B,2,H,W])."""
        flow_l = resize_flow(flow, tuple(cur.shape[-2:]))  # size and values scaled to the level
        warped = flow_warp(prev, flow_l, mode=self.flow_mode, grid="exact")[0]
        a, b = self.a[level].view(1, -1, 1, 1), self.b[level].view(1, -1, 1, 1)
        return a * cur + b * warped

    def _flow(self, cur01: Tensor, prev01: Tensor, pair: FramePair | None) -> Tensor:
        """[B,2,H,W]: the displacement at the current frame's pixels pointing into the previous frame."""
        return flow_to_previous(self.flow_network, self.flow, cur01, prev01, pair)


@VIDEO_MODELS.register("netwarp")
def build_netwarp(
    cfg: VideoConfig,
    image_model: Segmentor,
    *,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    use_caches: bool = True,
) -> NetWarp:
    """NetWarp from a video config (``video_model_cfg.netwarp``; unset = the defaults), with its flow.

    The flow comes from :func:`models.flow.build_feature_flow`: with ``train_flow`` a trainable network (start
    weights from the local file unless ``pretrained=False``: a NetWarp checkpoint, holding the trained network, is
    loaded right after), otherwise a frozen provider (its weights are always needed: it is not in checkpoints).
    ``use_caches`` has no effect (NetWarp caches nothing).
    """
    vcfg = cfg.video_model_cfg
    ncfg = vcfg.netwarp if vcfg.netwarp is not None else NetWarpCfg()
    if list(cfg.data_cfg.adjacent_frames) != [-1]:
        raise ConfigError(
            "data_cfg.adjacent_frames: NetWarp trains on (t-1, t) pairs; use [-1], got "
            f"{cfg.data_cfg.adjacent_frames}"
        )
    network, provider = build_feature_flow(ncfg, "video_model_cfg.netwarp", device, pretrained)
    return NetWarp(
        image_model,
        flow_network=network,
        flow_provider=provider,
        flow_mode=ncfg.flow_mode,
        freeze_image_model=vcfg.freeze_image_model,
    )
