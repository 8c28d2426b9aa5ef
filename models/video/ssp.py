"""SSP: semantic similarity propagation (``ssp.md`` §1, §3) around a trained image segmentor.

For each frame ``t`` the image network gives stride-4 logits ``y_t`` and stage-1 features ``f_t``. The previous
fused output ``o_{t-1}`` and features ``f_{t-1}`` are registered into frame ``t`` with one homography ``H``;
a similarity module turns ``[warp(f_{t-1}), f_t]`` into a weight ``s`` and ``o_t = s * warp(o_{t-1}) +
(1 - s) * y_t``. The first frame of a clip is the image prediction.

Streaming (the contract of :mod:`models.video.base`): ``state = model.init_state()``, then
``out, state = model.step(frame, state, side)`` per frame. The clip forward :meth:`SSP.forward` runs the same
recurrence over a :class:`VideoBatch`; for a (t-1, t) pair it is exactly the reference training forward (the past
is the raw image prediction of t-1, because ``o_0 = y_0``). Its training step is ``ssp`` (cross-entropy plus the
temporal-consistency loss, :mod:`training.steps.ssp`).

The registration provider is a frozen helper built by :func:`build_ssp`: it is kept outside the module tree, so it
is never in the state dict, the optimizer or the DDP-wrapped module (``ssp.md`` §3.8, §15.1 #20). When the data
loader registers the (augmented) training frames, :meth:`SSP.needs` says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import ConfigError
from config.schema import VideoConfig
from data.frames import FramePair
from data.transforms import denormalize
from data.video_batch import VideoBatch
from models.flow.base import to_uint8_rgb
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, Timer, VideoModel, VideoOutput, no_timer
from models.video.similarity import MIXING, SIMILARITY
from models.warp import homography_warp


@dataclass
class SSPState:
    """Streaming state: what the next frame needs from the previous one (all None before the first frame).

    ``fused`` [B,K,h,w] the previous fused logits (full size, or stride 4 without ``upsample_before_mixing``);
    ``feats`` [B,E,H/4,W/4] the previous stage-1 features; ``frame01`` [B,3,H,W] the previous frame in [0,1]
    (for the registration); ``raw`` [B,K,H/4,W/4] the frame's plain image logits, before fusion and
    upsampling (brought to the input size only when someone looks at them); ``frame_u8`` [B,H,W,3] the previous
    frame as uint8 RGB, kept when registration runs in the background thread (its numpy input).
    """

    fused: Tensor | None = None
    feats: Tensor | None = None
    frame01: Tensor | None = None
    raw: Tensor | None = None
    frame_u8: np.ndarray | None = None


class SSP(VideoModel):
    """The SSP video model.

    Args:
        image_model: the image segmentor (fine-tuned unless ``freeze_image_model``).
        sim_op: a registered similarity op (``conv``, ``convbase``, ``cossim``, ``constant``, ``reuse``, ``avg``).
        pred_mixing_op: ``id`` or ``conv``; ``mixing_layers`` blocks for ``conv``.
        upsample_before_mixing: warp and fuse full-size logits (reference) or stride-4 logits.
        upsampling: interpolation of logits to the input size.
        registration: a homography provider (``estimate(prev01, cur01, pairs) -> [B,3,3]``), or None when every
            call passes homographies.
        scaling: ``reference`` (``S H S^-1``) or ``centered`` homography scaling for stride-4 maps.
        features_interp_mode: sampling mode when warping features.
        freeze_image_model: keep the image network fixed (and in eval mode); train the fusion only.
        overlap_registration: in :meth:`step`, run a CPU provider in a background thread while the image network
            runs, when a core is free for it (same result; the fusion waits for it).
        loader_registration: training: a CPU provider the data loader runs on the augmented frames
            (``data_cfg.opencv_homos``); homographies then come with each batch. ``registration`` still serves
            streaming and batches without homographies.
    """

    method = "base"
    train_step = "ssp"

    def __init__(
        self,
        image_model: Segmentor,
        *,
        sim_op: str = "conv",
        pred_mixing_op: str = "id",
        mixing_layers: int = 1,
        upsample_before_mixing: bool = True,
        upsampling: str = "bilinear",
        registration: Any | None = None,
        scaling: str = "reference",
        features_interp_mode: str = "bilinear",
        freeze_image_model: bool = False,
        overlap_registration: bool = True,
        loader_registration: Any | None = None,
    ) -> None:
        super().__init__(image_model, freeze_image_model)
        channels = image_model.feature_info.channels[0]
        self.feature_stride = image_model.feature_info.strides[0]
        self.sim = SIMILARITY.build(sim_op, channels=channels)
        self.mix = MIXING.build(pred_mixing_op, num_classes=image_model.num_classes, layers=mixing_layers)
        self.sim_op, self.upsample_before_mixing, self.upsampling = sim_op, upsample_before_mixing, upsampling
        self.scaling, self.features_interp_mode = scaling, features_interp_mode
        self.add_helper("registration", registration)  # not a submodule: never saved or trained
        self.add_helper("loader_registration", loader_registration)
        self.overlap_registration = overlap_registration
        object.__setattr__(self, "_executor", None)

    def stream_registration(self) -> Any | None:
        """The streaming provider when it is a CPU one the frame loader can run (OpenCV; not ``disk``, which
        runs on the model's device, nor ``gt``, which reads the set's files), unless overlapping is switched
        off."""
        reg = self.registration
        if not (self.overlap_registration and getattr(reg, "runs_in_loader", False)):
            return None
        return None if getattr(reg, "needs_pairs", False) else reg

    def needs(self) -> DataNeeds:
        """(t-1, t) pairs; true homographies from the dataset when the provider reads stored ones (``gt``),
        else the loader's provider when there is one."""
        stored = bool(getattr(self.registration, "needs_pairs", False))
        return DataNeeds(true_homographies=stored, registration=None if stored else self.loader_registration)

    # ------------------------------------------------------------------------------------------- helpers
    def _up(self, x: Tensor, size: Sequence[int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        align = None if self.upsampling == "nearest" else False
        return F.interpolate(x, size=tuple(size), mode=self.upsampling, align_corners=align)

    def register(self, prev01: Tensor, cur01: Tensor, pairs: Sequence[FramePair] | None = None) -> Tensor:
        """``H_{prev -> cur}`` [B,3,3] from the provider (no gradient)."""
        if self.registration is None:
            raise ConfigError(
                "this SSP model has no registration provider: pass homographies (data_cfg.opencv_homos) or "
                "set video_model_cfg.k_registrator_model"
            )
        with torch.no_grad():
            return self.registration.estimate(prev01.float(), cur01.float(), pairs).to(prev01.device)

    def warp_past(
        self, past: Tensor, past_feats: Tensor, h: Tensor, size: Sequence[int], timer: Timer = no_timer
    ) -> tuple[Tensor, Tensor]:
        """The previous fused logits ``past`` [B,K,h,w] and stride-4 features ``past_feats`` [B,E,h4,w4] registered
        into the current frame with ``h`` [B,3,3] (input pixels). ``past`` is already at the size the fusion runs at
        (full size with ``upsample_before_mixing``, else stride 4): it is never resized again."""
        scale = past.shape[-1] / size[-1]
        with timer("warp"):
            warped = homography_warp(past, h, scale, scaling=self.scaling)
            warped_feats = homography_warp(
                past_feats, h, 1.0 / self.feature_stride, mode=self.features_interp_mode, scaling=self.scaling
            )
        return warped, warped_feats

    def blend(
        self, warped: Tensor, warped_feats: Tensor, logits: Tensor, feats: Tensor, size: Sequence[int],
        timer: Timer = no_timer,
    ) -> Tensor:  # fmt: skip
        """``o_t = s * warped + (1 - s) * y_t`` with ``s = sim(warped_feats, feats)``: ``logits`` [B,K,h4,w4] current
        stride-4 logits (brought to ``size`` with ``upsample_before_mixing``), ``feats`` [B,E,h4,w4]."""
        if self.upsample_before_mixing:
            with timer("upsample"):
                logits = self._up(logits, size)
        with timer("fusion"):
            warped, cur = self.mix(warped, logits)
            s = self.sim(warped_feats, feats)
            if s.shape[-2:] != cur.shape[-2:]:
                s = F.interpolate(s, size=cur.shape[-2:], mode="bilinear", align_corners=False)
            return torch.lerp(cur, warped, s)  # = s * warped + (1 - s) * cur, in one full-size pass

    def fuse(
        self, past: Tensor, past_feats: Tensor, logits: Tensor, feats: Tensor, h: Tensor, size: Sequence[int],
        timer: Timer = no_timer,
    ) -> Tensor:  # fmt: skip
        """One fusion step (:meth:`warp_past` then :meth:`blend`): ``past`` [B,K,h,w] previous fused logits,
        ``logits`` [B,K,h4,w4] current stride-4 logits, ``feats``/``past_feats`` [B,E,h4,w4], ``h`` [B,3,3] in input
        pixels; returns ``o_t`` (full size with ``upsample_before_mixing``, else stride 4)."""
        warped, warped_feats = self.warp_past(past, past_feats, h, size, timer)
        return self.blend(warped, warped_feats, logits, feats, size, timer)

    # ------------------------------------------------------------------------------------------ streaming
    def init_state(self) -> SSPState:
        """The state before the first frame of a clip."""
        return SSPState()

    def step(
        self, frame: Tensor, state: SSPState, side: StepSide | None = None
    ) -> tuple[StepOutput, SSPState]:
        """One frame: ``frame`` [B,3,H,W] (ImageNet-normalised) -> (fused logits [B,K,H,W] with the plain stride-4
        image logits, new state).

        ``side.homography`` [B,3,3] maps the previous frame onto this one; without it the provider estimates it
        (``side.pair`` lets stored or cached results be found). ``side.timer(name)`` wraps the stages.
        """
        side = side or StepSide()
        timer, homography = side.timer, side.homography
        size = frame.shape[-2:]
        # The frames the registration reads, kept for the next step too; not made when the homographies come with
        # the frames (the frame loader registers them), since then the next one comes with its own as well.
        overlap = self._overlap_registration(frame.device)
        register = self.registration is not None and homography is None
        frame01 = denormalize(frame) if register else None
        frame_u8 = to_uint8_rgb(frame01) if register and overlap else None
        pending = None
        if state.fused is not None and homography is None:
            pairs = None if side.pair is None else [side.pair]
            if state.frame01 is None and self.registration is not None:
                raise ValueError(
                    "SSP.step: the previous frame came with its homography and this one without; pass homographies "
                    "for every frame after a clip's first, or for none"
                )
            if overlap and state.frame_u8 is not None:
                # Registration needs only the two frames: OpenCV runs it on another core while the network runs on
                # this one. Only numpy and OpenCV work goes to that thread: torch work there was measured to
                # serialise with the network's (docs/benchmarks.md), so the warps stay here.
                pending = self._pool().submit(self._register_np, state.frame_u8, frame_u8, pairs)
            else:
                with timer("registration"):
                    homography = self.register(state.frame01, frame01, pairs)
        with timer("backbone"):
            feats = self.image_model.encode(frame)
        with timer("head"):
            logits = self.image_model.decode(feats)
        if state.fused is None:
            fused = self._up(logits, size) if self.upsample_before_mixing else logits
        else:
            if pending is not None:
                with timer("registration"):  # with overlap: only the time the fusion waited for it
                    homography = pending.result().to(frame.device)
            fused = self.fuse(state.fused, state.feats, logits, feats[0], homography, size, timer)
        with timer("upsample"):
            out = self._up(fused, size)
        return StepOutput(out, image_logits=logits), SSPState(
            fused=fused, feats=feats[0], frame01=frame01, raw=logits, frame_u8=frame_u8
        )

    def _register_np(self, prev: np.ndarray, cur: np.ndarray, pairs: list[FramePair] | None) -> Tensor:
        """``H`` [B,3,3] float32 from uint8 frames [B,H,W,3] with the provider's numpy path (the data loader's)."""
        hs = [
            self.registration.estimate_np(prev[i], cur[i], None if pairs is None else pairs[i])
            for i in range(len(prev))
        ]
        return torch.from_numpy(np.stack(hs)).float()

    def _overlap_registration(self, device: torch.device) -> bool:
        """Whether streaming runs the provider in a background thread: CPU (OpenCV) providers with
        ``overlap_registration``, when a core is free for it (the network on a GPU, or fewer torch threads than
        cores; on a CPU whose cores torch already uses, the thread only competes with it: measured slower).
        GPU providers (disk) queue on the device anyway."""
        if not (self.overlap_registration and getattr(self.registration, "runs_in_loader", False)):
            return False
        return device.type != "cpu" or torch.get_num_threads() < (os.cpu_count() or 1)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            object.__setattr__(
                self, "_executor", ThreadPoolExecutor(1, thread_name_prefix="ssp-registration")
            )
        return self._executor

    # -------------------------------------------------------------------------------------------- clips
    def forward(self, batch: VideoBatch) -> VideoOutput:
        """The recurrence over a clip ``batch.frames`` [B,T,3,H,W] (ImageNet-normalised), as in training.

        ``batch.homographies`` [B,T-1,3,3]: entry i maps frame i onto frame i+1 (estimated by the provider when
        None). Returns the fused logits and the plain image logits (``ssp.md`` §5.3 needs those of t-1), both
        [B,T,K,H,W] at the input size with SSP's own upsampling. Each frame is a separate encoder pass, as in the
        reference (separate BatchNorm batch statistics).
        """
        frames, homs = batch.frames, batch.homographies
        size = frames.shape[-2:]
        state, fused, image = self.init_state(), [], []
        for i in range(frames.shape[1]):
            h = None if homs is None or i == 0 else homs[:, i - 1]
            if i > 0 and h is None:
                h = self.register(denormalize(frames[:, i - 1]), denormalize(frames[:, i]))
            out, state = self.step(frames[:, i], state, StepSide(homography=h))
            fused.append(out.logits)
            image.append(self._up(out.image_logits, size))
        return VideoOutput(logits=torch.stack(fused, 1), image_logits=torch.stack(image, 1))


@VIDEO_MODELS.register("base")
def build_ssp(
    cfg: VideoConfig, image_model: Segmentor, *, device: torch.device | str = "cpu", pretrained: bool = True,
    use_caches: bool = True,
) -> SSP:  # fmt: skip
    """SSP from a video config (the one place its keys become constructor arguments), with its registration
    providers: ``k_registrator_model`` in the model, and with ``data_cfg.opencv_homos`` the OpenCV provider
    ``data_cfg.opencv_model_type`` in the data loader for training (``cfg.loader_registration_name``).
    ``use_caches=False`` bypasses the on-disk registration cache (the benchmark times the estimate)."""
    from models.registration import build_registration  # OpenCV and kornia only when SSP is built

    vcfg, dcfg = cfg.video_model_cfg, cfg.data_cfg
    if vcfg.low_scale_homo:
        raise ConfigError(
            "video_model_cfg.low_scale_homo: the reference's low-scale registration scales homographies "
            "inconsistently (ssp.md 15.1 #9); it is not offered; set it to false"
        )
    if list(dcfg.adjacent_frames) != [-1]:
        raise ConfigError(
            f"data_cfg.adjacent_frames: SSP trains on (t-1, t) pairs; use [-1], got {dcfg.adjacent_frames}"
        )
    settings = vcfg.registration if use_caches else dataclasses.replace(vcfg.registration, cache=False)
    registration = build_registration(vcfg.k_registrator_model, settings)
    loader_name = cfg.loader_registration_name
    loader = None
    if loader_name is not None:  # one provider (and cache) when both name the same one
        loader = (
            registration
            if loader_name == vcfg.k_registrator_model
            else build_registration(loader_name, settings)
        )
    return SSP(
        image_model,
        sim_op=vcfg.sim_op,
        pred_mixing_op=vcfg.pred_mixing_op,
        mixing_layers=vcfg.n_mixing_layers,
        upsample_before_mixing=vcfg.upsample_before_mixing,
        upsampling=vcfg.upsampling,
        registration=registration,
        scaling=vcfg.registration.scaling,
        features_interp_mode=vcfg.features_interp_mode,
        freeze_image_model=vcfg.freeze_image_model,
        loader_registration=loader,
    )
