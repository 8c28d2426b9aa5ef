"""The contract every video method keeps, so that training, evaluation and the benchmark never ask which it is.

A video model is an ``nn.Module`` around an image segmentor (``self.image_model``) with:

- ``init_state()`` and ``step(frame, state, side) -> (StepOutput, state)``: streaming inference, one frame at a
  time, state explicit (reset at every clip start);
- ``forward(batch: VideoBatch) -> VideoOutput``: the same computation over a training clip ``[B,T,...]``;
- ``needs() -> DataNeeds``: what the data side must serve (frame offsets, a random key offset, homographies,
  true flows, teacher logits, a registration provider to run in the loader);
- ``describe() -> dict``: the method and its frozen helpers' settings and counters (recorded in ``metrics.json``
  and benchmark reports);
- ``train_step``: the name of its training step in :data:`training.steps.VIDEO_STEPS` (default ``supervised``:
  cross-entropy on the current frame).

Frozen helpers (registration, flow providers, teachers) are built by the method's builder and kept outside the
module tree (:meth:`VideoModel.add_helper`), so they never reach the state dict, the optimizer or DDP.

A builder is registered in :data:`models.registry.VIDEO_MODELS` under ``video_model_cfg.model_name`` and called
as ``builder(cfg, image_model, *, device, pretrained, use_caches)`` (see :func:`models.build.build_video_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError
from data.frames import FramePair
from data.video_batch import DataNeeds, VideoBatch
from models.image.segmentor import Segmentor

__all__ = [
    "DataNeeds",
    "StepOutput",
    "batch_side",
    "StepSide",
    "Timer",
    "VideoModel",
    "VideoOutput",
    "no_timer",
]

Timer = Callable[[str], AbstractContextManager]


def no_timer(name: str) -> AbstractContextManager:
    """The default stage timer: times nothing (the benchmark passes a real one)."""
    return nullcontext()


def option_value(name: str, value: Any, kind: type) -> Any:
    """A runtime option's value as ``kind`` (int, float or bool); anything else is a one-line ConfigError (a
    typo such as ``use_edge=flase`` must not silently mean False, nor ``interval=1.5`` mean 1)."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
    else:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if kind is float and math.isfinite(number):
            return number
        if kind is int and math.isfinite(number) and number == int(number):
            return int(number)
    raise ConfigError(
        f"runtime option {name}: expected {'a whole number' if kind is int else kind.__name__}, got {value!r}"
    )


@dataclass
class StepSide:
    """Side data for one streaming step (all optional).

    Attributes:
        pair: the previous -> current frame pair on disk (None at a clip start, or for frames not read from
            files as they are); providers that read stored results (``gt``) or caches need it.
        homography: [B,3,3] previous -> current, when known in advance.
        flow: [B,2,H,W] backward flow of the current frame onto the previous one, when known in advance.
        timer: ``timer(stage)`` context manager wrapping each stage (``backbone``, ``head``, ``flow``, ...).
    """

    pair: FramePair | None = None
    homography: Tensor | None = None
    flow: Tensor | None = None
    timer: Timer = no_timer


def batch_side(batch: VideoBatch, i: int) -> StepSide:
    """The side data of frame ``i`` of a clip batch: the homography and flow linking it to frame ``i - 1``."""
    return StepSide(
        homography=None if batch.homographies is None or i == 0 else batch.homographies[:, i - 1],
        flow=None if batch.flows is None or i == 0 else batch.flows[:, i - 1],
    )


@dataclass
class StepOutput:
    """One streamed frame.

    Attributes:
        logits: [B,K,H,W] the method's prediction at the input size.
        image_logits: [B,K,h,w] the plain image network's logits for this frame at its head's output stride
            (resize with ``image_model.resize_logits``), or None when the method did not run it on this frame.
        extras: named tensors a method exposes (for its losses or diagnostics).
        key_distance: keyframe methods: frames since the last keyframe (0 on a keyframe), which the evaluation
            groups its scores by; None for methods without keyframes.
    """

    logits: Tensor
    image_logits: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    key_distance: int | None = None


@dataclass
class VideoOutput:
    """A clip forward.

    Attributes:
        logits: [B,T,K,H,W] the method's prediction for every frame, at the input size.
        image_logits: [B,T,K,H,W] the plain image predictions at the input size, or None when the method does not
            compute them for every frame.
        extras: named tensors for the method's losses (e.g. SSP's nothing, KD's teacher targets).
    """

    logits: Tensor
    image_logits: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


class VideoModel(nn.Module):
    """Base class of every video method; subclasses implement :meth:`step` and usually :meth:`forward`.

    Args:
        image_model: the image segmentor the method wraps.
        freeze_image_model: keep the image network fixed and in eval mode (train the method's own layers only).
    """

    method: str = ""  # the registry name, set by subclasses
    train_step: str = "supervised"  # the training step in training.steps.VIDEO_STEPS
    per_frame: bool = False  # True only for the per-frame adapter (the model *is* its image network)
    inference: str = "recurrent over each clip (video)"  # how step() treats a clip, for the TC protocol card

    def __init__(self, image_model: Segmentor, freeze_image_model: bool = False) -> None:
        super().__init__()
        self.image_model = image_model
        self.freeze_image_model = freeze_image_model
        if freeze_image_model:
            image_model.requires_grad_(False)
        object.__setattr__(self, "_helpers", {})

    # -- runtime options ------------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Settings that may change after training without touching the weights, with their current values
        (keyframe methods: ``interval``, ``eval_scale``, ...). The evaluation CLIs and the benchmark set them by
        name (``--interval``, ``--eval-scale``, ``--option NAME=VALUE``) through :meth:`set_options`."""
        return {}

    def set_options(self, **values: Any) -> None:
        """Apply runtime options; a name the method does not offer is a one-line :class:`ConfigError`."""
        offered = self.options()
        unknown = [k for k in values if k not in offered]
        if unknown:
            have = ", ".join(offered) if offered else "none"
            raise ConfigError(
                f"method '{self.method}' has no runtime option {', '.join(unknown)} (it offers: {have})"
            )
        for k, v in values.items():
            self._set_option(k, v)

    def _set_option(self, name: str, value: Any) -> None:
        raise NotImplementedError  # only reached for an offered option

    def eval_variants(self) -> dict[str, dict[str, Any]]:
        """Named option sets the evaluation also reports (a keyframe method's 'without edge'); default none."""
        return {}

    # -- frozen helpers -----------------------------------------------------------------------------------
    def add_helper(self, name: str, helper: Any) -> None:
        """Keep ``helper`` (a provider; an ``nn.Module`` too) outside the module tree: not in the state dict,
        ``parameters()``, the optimizer or DDP. Reachable as ``self.<name>`` and listed by :meth:`helpers`."""
        self._helpers[name] = helper
        object.__setattr__(self, name, helper)

    def helpers(self) -> dict[str, Any]:
        """The frozen helpers by name (None entries included: "none configured")."""
        return dict(self._helpers)

    def describe(self) -> dict[str, Any]:
        """The method and its helpers' settings and counters (JSON-ready)."""
        out: dict[str, Any] = {"method": self.method, "inference": self.inference, "helpers": {}}
        for name, helper in self._helpers.items():
            if helper is None:
                out["helpers"][name] = None
                continue
            entry = {"settings": helper.settings() if hasattr(helper, "settings") else repr(helper)}
            if hasattr(helper, "precision"):
                entry["precision"] = helper.precision
            if hasattr(helper, "stats"):
                entry["stats"] = helper.stats()
            out["helpers"][name] = entry
        return out

    # -- the contract -------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.image_model.num_classes

    def train(self, mode: bool = True) -> VideoModel:
        super().train(mode)
        if self.freeze_image_model:
            self.image_model.eval()  # frozen BatchNorm statistics too
        return self

    def needs(self) -> DataNeeds:
        """What the data side serves for training (default: ``t-1, t`` pairs, nothing else)."""
        return DataNeeds()

    def stream_registration(self) -> Any | None:
        """A CPU registration provider (``estimate_np``) the frame loader of a streamed evaluation may run on each
        frame and its predecessor, so that the homography arrives with the frame (``StepSide.homography``) and
        is computed in the loader's worker processes, ahead of the network; None (default): the method needs none
        or registers itself."""
        return None

    def init_state(self) -> Any:
        """The state before the first frame of a clip."""
        raise NotImplementedError

    def step(self, frame: Tensor, state: Any, side: StepSide | None = None) -> tuple[StepOutput, Any]:
        """One frame ``frame`` [B,3,H,W] (ImageNet-normalised) -> (output, new state)."""
        raise NotImplementedError

    def forward(self, batch: VideoBatch) -> VideoOutput:
        """Default clip forward: :meth:`step` over the frames in order from a fresh state, with the batch's
        homographies and flows as side data. Image logits are returned when every step produced them."""
        state, logits, image = self.init_state(), [], []
        size = batch.frames.shape[-2:]
        for i in range(batch.num_frames):
            out, state = self.step(batch.frames[:, i], state, batch_side(batch, i))
            logits.append(out.logits)
            if out.image_logits is not None:
                image.append(self.image_model.resize_logits(out.image_logits, size))
        stacked = torch.stack(image, 1) if len(image) == len(logits) else None
        return VideoOutput(logits=torch.stack(logits, 1), image_logits=stacked)
