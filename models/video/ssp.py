"""SSP: semantic similarity propagation (``ssp.md`` §1, §3) around a trained image segmentor.

For each frame ``t`` the image network gives stride-4 logits ``y_t`` and stage-1 features ``f_t``. The previous
fused output ``o_{t-1}`` and features ``f_{t-1}`` are registered into frame ``t`` with one homography ``H``;
a similarity module turns ``[warp(f_{t-1}), f_t]`` into a weight ``s`` and ``o_t = s * warp(o_{t-1}) +
(1 - s) * y_t``. The first frame of a clip is the image prediction.

Streaming: ``state = model.init_state()``, then ``logits, state = model.step(frame, state)`` per frame. The clip
forward :meth:`SSP.forward` runs the same recurrence over ``[B,T,...]``; for a (t-1, t) pair it is exactly the
reference training forward (the past is the raw image prediction of t-1, because ``o_0 = y_0``).

The registration provider is a frozen auxiliary component: it is kept outside the module tree, so it is never in
the state dict, the optimizer or the DDP-wrapped module (``ssp.md`` §3.8, §15.1 #20).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError
from config.schema import VideoModelCfg
from data.frames import FramePair
from data.transforms import denormalize
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.similarity import MIXING, SIMILARITY
from models.warp import homography_warp

Timer = Callable[[str], AbstractContextManager]


def _no_timer(name: str) -> AbstractContextManager:
    return nullcontext()


@dataclass
class SSPState:
    """Streaming state: what the next frame needs from the previous one (all None before the first frame).

    ``fused`` [B,K,h,w] the previous fused logits (full size, or stride 4 without ``upsample_before_mixing``);
    ``feats`` [B,E,H/4,W/4] the previous stage-1 features; ``frame01`` [B,3,H,W] the previous frame in [0,1]
    (for the registration); ``raw`` [B,K,H/4,W/4] the frame's plain image logits, before fusion and
    upsampling (:meth:`SSP.image_logits` brings them to the input size only when someone looks at them).
    """

    fused: Tensor | None = None
    feats: Tensor | None = None
    frame01: Tensor | None = None
    raw: Tensor | None = None


class SSP(nn.Module):
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
    """

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
    ) -> None:
        super().__init__()
        self.image_model = image_model
        channels = image_model.feature_info.channels[0]
        self.feature_stride = image_model.feature_info.strides[0]
        self.sim = SIMILARITY.build(sim_op, channels=channels)
        self.mix = MIXING.build(pred_mixing_op, num_classes=image_model.num_classes, layers=mixing_layers)
        self.sim_op, self.upsample_before_mixing, self.upsampling = sim_op, upsample_before_mixing, upsampling
        self.scaling, self.features_interp_mode = scaling, features_interp_mode
        self.freeze_image_model = freeze_image_model
        if freeze_image_model:
            image_model.requires_grad_(False)
        object.__setattr__(self, "registration", registration)  # not a submodule: never saved or trained
        self.overlap_registration = overlap_registration
        object.__setattr__(self, "_executor", None)

    @property
    def num_classes(self) -> int:
        return self.image_model.num_classes

    def train(self, mode: bool = True) -> SSP:
        super().train(mode)
        if self.freeze_image_model:
            self.image_model.eval()  # frozen BatchNorm statistics too
        return self

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

    def fuse(
        self, past: Tensor, past_feats: Tensor, logits: Tensor, feats: Tensor, h: Tensor, size: Sequence[int],
        timer: Timer = _no_timer,
    ) -> Tensor:  # fmt: skip
        """One fusion step. ``past`` [B,K,h,w] previous fused logits, ``logits`` [B,K,h4,w4] current stride-4
        logits, ``feats``/``past_feats`` [B,E,h4,w4], ``h`` [B,3,3] in input pixels; returns ``o_t`` (full size with
        ``upsample_before_mixing``, else stride 4)."""
        if self.upsample_before_mixing:
            with timer("upsample"):
                cur, past = self._up(logits, size), self._up(past, size)
            scale = 1.0
        else:
            cur, scale = logits, logits.shape[-1] / size[-1]
        with timer("warp"):
            warped = homography_warp(past, h, scale, scaling=self.scaling)
            warped_feats = homography_warp(
                past_feats, h, 1.0 / self.feature_stride, mode=self.features_interp_mode, scaling=self.scaling
            )
        with timer("fusion"):
            warped, cur = self.mix(warped, cur)
            s = self.sim(warped_feats, feats)
            if s.shape[-2:] != cur.shape[-2:]:
                s = F.interpolate(s, size=cur.shape[-2:], mode="bilinear", align_corners=False)
            return cur + s * (warped - cur)  # = s * warped + (1 - s) * cur, with fewer full-size passes

    # ------------------------------------------------------------------------------------------ streaming
    def init_state(self) -> SSPState:
        """The state before the first frame of a clip."""
        return SSPState()

    def step(
        self,
        frame: Tensor,
        state: SSPState,
        homography: Tensor | None = None,
        pair: FramePair | None = None,
        timer: Timer = _no_timer,
    ) -> tuple[Tensor, SSPState]:
        """One frame: ``frame`` [B,3,H,W] (ImageNet-normalised) -> (fused logits [B,K,H,W], new state).

        ``homography`` [B,3,3] maps the previous frame onto this one; without it the provider estimates it
        (``pair`` lets stored or cached results be found). ``timer(name)`` wraps the stages for benchmarks.
        """
        size = frame.shape[-2:]
        frame01 = denormalize(frame) if self.registration is not None else None
        pending = None
        if state.fused is not None and homography is None:
            pairs = None if pair is None else [pair]
            if self._overlap_registration(frame.device):
                # OpenCV registration needs only the two frames: it runs on another core while the network runs
                pending = self._pool().submit(self.register, state.frame01, frame01, pairs)
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
                    homography = pending.result()
            fused = self.fuse(state.fused, state.feats, logits, feats[0], homography, size, timer)
        with timer("upsample"):
            out = self._up(fused, size)
        return out, SSPState(fused=fused, feats=feats[0], frame01=frame01, raw=logits)

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

    def image_logits(self, state: SSPState, size: Sequence[int]) -> Tensor:
        """The last frame's plain image prediction [B,K,*size] (what the image network alone would output)."""
        return self._up(state.raw, size)

    # -------------------------------------------------------------------------------------------- clips
    def forward(
        self,
        frames: Tensor,
        homographies: Tensor | None = None,
        pairs: Sequence[Sequence[FramePair]] | None = None,
    ) -> dict[str, Tensor]:
        """The recurrence over a clip ``frames`` [B,T,3,H,W] (ImageNet-normalised), as in training.

        ``homographies`` [B,T-1,3,3]: entry i maps frame i onto frame i+1 (estimated by the provider when None).
        Returns ``fused`` and ``image`` logits, both [B,T,K,H,W] at the input size; ``image`` is the plain image
        prediction of each frame (the temporal loss needs that of t-1). Each frame is a separate encoder pass,
        as in the reference (separate BatchNorm batch statistics).
        """
        b, t = frames.shape[:2]
        state, fused, image = self.init_state(), [], []
        for i in range(t):
            h = None if homographies is None or i == 0 else homographies[:, i - 1]
            if i > 0 and h is None:
                prev01, cur01 = denormalize(frames[:, i - 1]), denormalize(frames[:, i])
                step_pairs = None if pairs is None else [p[i - 1] for p in pairs]
                h = self.register(prev01, cur01, step_pairs)
            out, state = self.step(frames[:, i], state, homography=h)
            fused.append(out)
            image.append(self.image_logits(state, frames.shape[-2:]))
        return {"fused": torch.stack(fused, 1), "image": torch.stack(image, 1)}


@VIDEO_MODELS.register("base")
def build_ssp(vcfg: VideoModelCfg, image_model: Segmentor, registration: Any | None) -> SSP:
    """SSP from ``video_model_cfg`` (the one place its keys become constructor arguments)."""
    if vcfg.low_scale_homo:
        raise ConfigError(
            "video_model_cfg.low_scale_homo: the reference's low-scale registration scales homographies "
            "inconsistently (ssp.md 15.1 #9); it is not offered; set it to false"
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
    )
