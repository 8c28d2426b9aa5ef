"""The video-model contract, checked for every registered method (``models/video/base.py``).

Each method is built from its shipped CPU config (``config/video/*_synthetic.yaml`` with its ``model_name``) around
a tiny image network, then: forward and backward on a typed batch that serves what ``needs()`` asks for; streaming
``step`` equals the clip forward; frozen helpers stay out of the state dict and the parameters; and a trained
checkpoint reloads in ``eval.vis.video``. A newly registered method is covered without editing this file, and
fails here until it ships a synthetic config.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from config.loader import CONFIG_ROOT, load
from data.video_batch import VideoBatch
from eval.vis import video as eval_video
from models.build import build_video_model
from models.image.segmentor import build_segmentor
from models.registry import VIDEO_MODELS
from models.video.base import VideoModel, batch_side
from training import train_video

K = 5


def _synthetic_config(method: str) -> str:
    names = sorted(p.stem for p in (CONFIG_ROOT / "video").glob("*_synthetic.yaml"))
    configs = {n: load(n, "video") for n in names}
    matching = [n for n, c in configs.items() if c.video_model_cfg.model_name == method]
    assert matching, f"video model '{method}' ships no config/video/*_synthetic.yaml (its CPU config)"
    # the method's own config trains on labels; a distillation variant (kd_ssp_synthetic) also needs a teacher
    return sorted(matching, key=lambda n: configs[n].loss_cfg.loss_func != "crossentropy")[0]


# Every shipped CPU config: a method with several variants (e.g. TCB's OCR and PPM blocks) ships one per variant,
# and the forward and streaming checks run on each.
SYNTHETIC_CONFIGS = sorted(p.stem for p in (CONFIG_ROOT / "video").glob("*_synthetic.yaml"))


def _build(method: str, config: str | None = None) -> VideoModel:
    """The method built from ``config`` (default: its first synthetic config) around a tiny image network."""
    torch.manual_seed(0)
    image = build_segmentor("tiny_cnn", "upernet", K, upsampling="bilinear")
    return build_video_model(load(config or _synthetic_config(method), "video"), image)


def _build_config(config: str) -> VideoModel:
    return _build(load(config, "video").video_model_cfg.model_name, config)


def _batch(model: VideoModel, b: int = 2, h: int = 64, w: int = 96) -> VideoBatch:
    """Smooth random frames (so that OpenCV flow and registration find structure) and what ``needs()`` asks."""
    needs = model.needs()
    t = len(needs.offsets) + 1
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.randn(b, 3, h // 8, w // 8, generator=g), size=(h, w),
                                           mode="bilinear", align_corners=False)  # fmt: skip
    frames = torch.stack([torch.roll(base, shifts=i, dims=-1) for i in range(t)], 1)  # moves 1 px per frame
    shift = torch.eye(3).repeat(b, max(t - 1, 0), 1, 1)
    shift[..., 0, 2] = 1.0
    flows = torch.zeros(b, max(t - 1, 0), 2, h, w)
    flows[:, :, 0] = -1.0  # frame i+1 at p shows frame i at p - (1, 0)
    return VideoBatch(
        frames=frames,
        labels=torch.randint(0, K, (b, t, h, w), generator=g),
        label_valid=torch.ones(b, t, dtype=torch.bool),
        current=t - 1,
        homographies=shift if (needs.true_homographies or needs.registration is not None) else None,
        flows=flows if needs.true_flows else None,
    )


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS)
def test_forward_and_backward(config: str) -> None:
    model = _build_config(config).train()
    batch = _batch(model)
    out = model(batch)
    b, t, _, h, w = batch.frames.shape
    assert out.logits.shape == (b, t, K, h, w)
    assert out.image_logits is None or out.image_logits.shape == out.logits.shape
    loss = nn.functional.cross_entropy(out.logits[:, batch.current], batch.labels[:, batch.current])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS)
def test_streaming_equals_the_clip_forward(config: str) -> None:
    model = _build_config(config).eval()
    batch = _batch(model, b=1)
    with torch.no_grad():
        clip = model(batch).logits
        state, streamed = model.init_state(), []
        for i in range(batch.num_frames):
            out, state = model.step(batch.frames[:, i], state, batch_side(batch, i))
            streamed.append(out.logits)
    assert torch.allclose(torch.stack(streamed, 1), clip, atol=1e-5)


@pytest.mark.parametrize("method", VIDEO_MODELS.names())
def test_frozen_helpers_stay_out_of_the_state_and_the_parameters(method: str) -> None:
    model = _build(method)
    helpers = model.helpers()
    keys = list(model.state_dict())
    params = {id(p) for p in model.parameters()}
    for name, helper in helpers.items():
        assert not any(k == name or k.startswith(f"{name}.") for k in keys), name
        inner = [m for m in vars(helper).values() if isinstance(m, nn.Module)] if helper is not None else []
        for module in [helper, *inner]:
            if isinstance(module, nn.Module):
                assert not any(id(p) in params for p in module.parameters()), name
    described = model.describe()
    assert described["method"] == method and set(described["helpers"]) == set(helpers)


@pytest.mark.parametrize("method", VIDEO_MODELS.names())
def test_a_trained_checkpoint_reloads_in_eval_vis_video(method: str, tiny_video_overrides: list[str]) -> None:
    overrides = [*tiny_video_overrides, "training_cfg.num_epochs=1", "training_cfg.max_steps_per_epoch=1",
                 "training_cfg.max_val_samples=2", "training_cfg.vis_samples=0"]  # fmt: skip
    run = train_video.main([_synthetic_config(method), *overrides])
    metrics = eval_video.main([str(run), "--num-workers", "0", "--no-write-res"])
    assert metrics is not None and metrics["video_model"]["method"] == method
    assert 0.0 <= metrics["miou"]["value"] <= 1.0 and metrics["miou"]["frames"] > 0
    assert all(0.0 <= e["value"] <= 1.0 for e in metrics["tc"].values())
    assert Path(metrics["checkpoint"]).parent == run
