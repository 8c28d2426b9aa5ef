"""The per-frame adapter (``model_name: per_frame``): any image segmentor as a video model with an empty state.

It lets ``eval.vis.video``, ``eval.benchmark`` and the leaderboard treat image runs and video runs on one path
(an image run is streamed through this adapter), and trained with ``train_video`` it is the fair baseline of a
video method: the same image network fine-tuned per frame on the same samples and schedule, cross-entropy only.
"""

from __future__ import annotations

import torch

from config.errors import ConfigError
from config.schema import VideoConfig
from data.video_batch import VideoBatch
from models.image.segmentor import Segmentor
from models.registry import VIDEO_MODELS
from models.video.base import DataNeeds, StepOutput, StepSide, VideoModel, VideoOutput


class PerFrame(VideoModel):
    """``step`` runs the image model on the frame; the state is always None."""

    method = "per_frame"
    per_frame = True
    inference = "per frame (image)"

    def needs(self) -> DataNeeds:
        return DataNeeds(offsets=())  # the labelled frame alone

    def init_state(self) -> None:
        return None

    def step(self, frame: torch.Tensor, state: None, side: StepSide | None = None) -> tuple[StepOutput, None]:
        """``frame`` [B,3,H,W] -> logits [B,K,H,W] (the image model's own forward, stage by stage)."""
        timer = (side or StepSide()).timer
        with timer("backbone"):
            feats = self.image_model.encode(frame)
        with timer("head"):
            logits = self.image_model.decode(feats)
        with timer("upsample"):
            out = self.image_model.resize_logits(logits, frame.shape[-2:])
        return StepOutput(out, image_logits=logits), None

    def forward(self, batch: VideoBatch) -> VideoOutput:
        """Every frame of the batch in one pass of the image network: logits [B,T,K,H,W] (= image logits)."""
        b, t = batch.frames.shape[:2]
        logits = self.image_model(batch.flat_frames()).unflatten(0, (b, t))
        return VideoOutput(logits=logits, image_logits=logits)


@VIDEO_MODELS.register("per_frame")
def build_per_frame(
    cfg: VideoConfig, image_model: Segmentor, *, device: torch.device | str = "cpu", pretrained: bool = True,
    use_caches: bool = True,
) -> PerFrame:  # fmt: skip
    """The adapter around ``image_model``; it reads only ``freeze_image_model`` (nothing else applies)."""
    if cfg.data_cfg.adjacent_frames != [-1]:  # the schema default: per_frame serves the labelled frame alone
        raise ConfigError(
            "data_cfg.adjacent_frames: per_frame trains on the labelled frame alone; leave it at its default [-1]"
        )
    return PerFrame(image_model, freeze_image_model=cfg.video_model_cfg.freeze_image_model)
