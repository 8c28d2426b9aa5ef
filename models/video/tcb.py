"""TCB: temporal context blocks on the stride-32 map (``model_name: tcb``, ``ssp.md`` §4.3-4.4).

The current frame and the three previous **raw** frames are encoded in one batch; a context block (OCR or PPM,
:mod:`models.video.tcb_blocks`) reads the four coarsest maps ``F4`` and ``tcb_conv`` (1x1, ``2 C4 -> C4``) fuses its
output with the current ``F4_t``; the image model's decoder then runs on ``[f_1, f_2, f_3, F4_t']`` of the current
frame. No flow, no alignment. ``C4`` is the width of the image model's coarsest (stride-32) map, read from its
``feature_info``.

Inference (:meth:`TCB.step`): frames 0-2 of a clip use the plain image model (there is no full window yet); from
frame 3 on, the state's three previous normalised frames are re-encoded with the current one. Training
(``supervised`` step, cross-entropy on the current frame) is fed quadruples ``t-3 .. t`` (``needs().offsets``).

``tcb.module: ppm`` builds the PPM block (the reference's configs say ``ppm`` but its code tests for ``psp``, so its
"TCB-PPM" runs built OCR, ``ssp.md`` §15 #1); :meth:`TCB.describe` records which block was built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from config.schema import TCBCfg, VideoConfig
from data.video_batch import VideoBatch
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, VideoModel, VideoOutput
from models.video.tcb_blocks import OCRBlock, PPMBlock

PAST = 3  # previous raw frames in the window (the reference's adjacent_frames [-1, -2, -3])
MODULES = ("ocr", "ppm")


@dataclass
class TCBState:
    """Streaming state (reset at every clip start).

    Attributes:
        past: up to :data:`PAST` previous ImageNet-normalised frames [B,3,H,W], the most recent first.
    """

    past: tuple[Tensor, ...] = ()


class TCB(VideoModel):
    """Temporal context block on the stride-32 map, around an image segmentor.

    Args:
        image_model: the image segmentor (``encode``, ``decode``, ``resize_logits``, ``feature_info``).
        module: ``ocr`` or ``ppm``.
        ocr_channels: OCR width of ``Z`` (None = C4, the reference).
        ocr_key_channels: OCR attention width (None = half the OCR width, the reference).
        ppm_channels: width of each PPM branch (reference: 512).
        ppm_weight_order: ``aligned`` or ``reference`` (the reference's misaligned frame weights).
        ppm_reduce: ``mean`` (reference) or ``sum`` of the weighted pooled maps.
        freeze_image_model: keep the image network fixed (train the block and ``tcb_conv`` only).
    """

    method = "tcb"
    inference = "window of the current and 3 previous raw frames, re-encoded each frame (video)"

    def __init__(
        self,
        image_model: Segmentor,
        module: str = "ocr",
        ocr_channels: int | None = None,
        ocr_key_channels: int | None = None,
        ppm_channels: int = 512,
        ppm_weight_order: str = "aligned",
        ppm_reduce: str = "mean",
        freeze_image_model: bool = False,
    ) -> None:
        super().__init__(image_model, freeze_image_model)
        if module not in MODULES:
            raise ConfigError(f"video_model_cfg.tcb.module: '{module}' is not one of {', '.join(MODULES)}")
        c4 = int(image_model.feature_info.channels[-1])  # the coarsest (stride-32) map; never hard-coded
        self.module, self.c4 = module, c4
        if module == "ocr":
            width = int(ocr_channels) if ocr_channels is not None else c4
            key = int(ocr_key_channels) if ocr_key_channels is not None else max(width // 2, 1)
            self.widths = {"in": c4, "ocr": width, "key": key}
            self.block: nn.Module = OCRBlock(c4, image_model.num_classes, width, key)
        else:
            self.widths = {"in": c4, "ppm": int(ppm_channels)}
            self.block = PPMBlock(c4, int(ppm_channels), weight_order=ppm_weight_order, reduce=ppm_reduce)
        self.ppm_weight_order, self.ppm_reduce = ppm_weight_order, ppm_reduce
        self.tcb_conv = nn.Conv2d(2 * c4, c4, 1)  # fuses the context into the current stride-32 map

    # -- the contract -------------------------------------------------------------------------------------
    def needs(self) -> DataNeeds:
        """Quadruples: the current frame with the three previous raw frames."""
        return DataNeeds(offsets=tuple(-d for d in range(1, PAST + 1)))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["module"] = self.module  # which block was built: result rows say it (ssp.md 4.4)
        out["widths"] = dict(self.widths)
        if self.module == "ppm":
            out["ppm_weight_order"], out["ppm_reduce"] = self.ppm_weight_order, self.ppm_reduce
        return out

    def init_state(self) -> TCBState:
        return TCBState()

    def fuse(self, feats: list[Tensor], f4_window: Tensor) -> Tensor:
        """Logits [B,K,h/o,w/o] of the current frame from its maps ``feats`` (f_1 .. f_4) and the window's
        stride-32 maps ``f4_window`` [B,1+PAST,C4,h,w] (frame 0 = current, frame j = j steps back)."""
        ctx = self.block(f4_window)
        f4 = self.tcb_conv(torch.cat([feats[-1], ctx], 1))
        return self.image_model.decode([*feats[:-1], f4])

    def step(
        self, frame: Tensor, state: TCBState, side: StepSide | None = None
    ) -> tuple[StepOutput, TCBState]:
        """One frame ``frame`` [B,3,H,W] (ImageNet-normalised) -> (logits [B,K,H,W], new state)."""
        side = side if side is not None else StepSide()
        im = self.image_model
        past = (frame, *state.past)[: PAST + 1]  # [t, t-1, t-2, t-3] once full
        if len(past) <= PAST:  # frames 0-2 of a clip: the plain image model
            with side.timer("backbone"):
                feats = im.encode(frame)
            with side.timer("head"):
                logits = im.decode(feats)
            image_logits: Tensor | None = logits
        else:
            b = frame.shape[0]
            with side.timer("backbone"):  # the window in one batch, frame-major: [t; t-1; t-2; t-3]
                window = [f.unflatten(0, (len(past), b)) for f in im.encode(torch.cat(past, 0))]
            with side.timer("head"):
                logits = self.fuse([f[0] for f in window], window[-1].transpose(0, 1))
            image_logits = None  # the plain image network's decoder did not run on this frame
        with side.timer("upsample"):
            out = im.resize_logits(logits, frame.shape[-2:])
        return StepOutput(logits=out, image_logits=image_logits), TCBState(past[:PAST])

    def forward(self, batch: VideoBatch) -> VideoOutput:
        """The clip [B,T,...] as :meth:`step` would stream it: every frame encoded once in one batch, frames 0-2
        decoded plainly, frame ``i >= 3`` fused with the maps of ``i-1 .. i-3``. Logits [B,T,K,H,W]."""
        b, t = batch.frames.shape[:2]
        size = batch.frames.shape[-2:]
        im = self.image_model
        feats = [f.unflatten(0, (b, t)) for f in im.encode(batch.flat_frames())]  # each [B,T,C,h,w]
        logits = []
        n_plain = min(t, PAST)
        if n_plain:
            plain = im.decode([f[:, :n_plain].flatten(0, 1) for f in feats]).unflatten(0, (b, n_plain))
            logits.extend(plain.unbind(1))
        if t > PAST:
            # every full window at once, frame-major like step: [B*(T-3), 4, C4, h, w], frame 0 = current
            idx = torch.arange(PAST, t, device=batch.frames.device)
            window = torch.stack([feats[-1][:, idx - d] for d in range(PAST + 1)], 2).flatten(0, 1)
            current = [f[:, PAST:].flatten(0, 1) for f in feats]
            fused = self.fuse(current, window).unflatten(0, (b, t - PAST))
            logits.extend(fused.unbind(1))
        out = torch.stack([im.resize_logits(x, size) for x in logits], 1)
        return VideoOutput(logits=out, image_logits=out if t <= PAST else None)


@VIDEO_MODELS.register("tcb")
def build_tcb(
    cfg: VideoConfig,
    image_model: Segmentor,
    *,
    device: torch.device | str = "cpu",
    pretrained: bool = True,
    use_caches: bool = True,
) -> TCB:
    """TCB from a video config (``video_model_cfg.tcb``; unset = the defaults: OCR). It loads no weight file and
    caches nothing, so ``device``, ``pretrained`` and ``use_caches`` have no effect."""
    vcfg = cfg.video_model_cfg
    tcfg = vcfg.tcb if vcfg.tcb is not None else TCBCfg()
    want = [-d for d in range(1, PAST + 1)]
    if sorted(cfg.data_cfg.adjacent_frames, reverse=True) != want:
        raise ConfigError(
            f"data_cfg.adjacent_frames: TCB trains on the current and 3 previous frames; use {want}, "
            f"got {cfg.data_cfg.adjacent_frames}"
        )
    return TCB(
        image_model,
        module=tcfg.module,
        ocr_channels=tcfg.ocr_channels,
        ocr_key_channels=tcfg.ocr_key_channels,
        ppm_channels=tcfg.ppm_channels,
        ppm_weight_order=tcfg.ppm_weight_order,
        ppm_reduce=tcfg.ppm_reduce,
        freeze_image_model=vcfg.freeze_image_model,
    )
