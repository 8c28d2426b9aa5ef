"""SSP: similarity ops, homography warps, the recurrence, and streaming == clip forward (ssp.md §3, §14)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data.video_batch import VideoBatch
from models.image.segmentor import build_segmentor
from models.video.base import StepSide
from models.video.similarity import SIMILARITY, ConvSimilarity
from models.video.ssp import SSP
from models.warp import homography_warp, scale_homography

K = 5


def _image_model(backbone: str = "tiny_cnn") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentor(backbone, "upernet", K, upsampling="bilinear")


def _batch(frames: torch.Tensor, homs: torch.Tensor | None = None) -> VideoBatch:
    """A VideoBatch of ``frames`` [B,T,3,H,W] (labels unused by the model)."""
    b, t, _, h, w = frames.shape
    return VideoBatch(frames=frames, labels=torch.full((b, t, h, w), 255), label_valid=torch.zeros(b, t, dtype=torch.bool),
                      current=t - 1, homographies=homs)  # fmt: skip


def _translation(b: int, dx: float, dy: float) -> torch.Tensor:
    h = torch.eye(3).repeat(b, 1, 1)
    h[:, 0, 2], h[:, 1, 2] = dx, dy
    return h


def test_conv_similarity_has_the_reference_parameter_count() -> None:
    assert sum(p.numel() for p in ConvSimilarity(96).parameters()) == 207_841


def test_homography_warp_identity_and_integer_translation() -> None:
    x = torch.randn(2, 4, 16, 20)
    assert torch.equal(homography_warp(x, torch.eye(3).repeat(2, 1, 1)), x)
    y = homography_warp(x, _translation(2, 3, 2))  # content moves right by 3, down by 2
    assert torch.allclose(y[:, :, 2:, 3:], x[:, :, :-2, :-3], atol=1e-5)
    assert y[:, :, :2].abs().max() < 1e-5 and y[:, :, :, :3].abs().max() < 1e-5  # zero-filled


def test_quarter_scale_warp_matches_full_warp_then_pooling() -> None:
    """S H S^-1 at s = 1/4 ~ warp at full resolution, then average-pool (up to borders and interpolation)."""
    torch.manual_seed(0)
    smooth = F.interpolate(torch.randn(1, 3, 8, 10), size=(64, 80), mode="bilinear", align_corners=False)
    h = _translation(1, 8.0, -4.0)
    full = F.avg_pool2d(homography_warp(smooth, h), 4)
    quarter = homography_warp(F.avg_pool2d(smooth, 4), h, 0.25)
    inner = (slice(None), slice(None), slice(2, -2), slice(4, -2))
    assert (full[inner] - quarter[inner]).abs().mean() < 0.05 * smooth.abs().mean()
    assert torch.allclose(scale_homography(h.double(), 0.25)[0, :2, 2], torch.tensor([2.0, -1.0]).double())


@pytest.mark.parametrize("sim_op", SIMILARITY.names())
def test_every_similarity_op_trains(sim_op: str) -> None:
    model = SSP(_image_model(), sim_op=sim_op).train()
    out = model(_batch(torch.randn(2, 2, 3, 64, 96), _translation(2, 1.0, 0.0)[:, None]))
    assert out.logits.shape == (2, 2, K, 64, 96)
    out.logits[:, 1].sum().backward()
    assert model.image_model.head.classifier.weight.grad is not None


def test_constant_is_the_current_prediction_and_reuse_the_warped_past() -> None:
    frames, h = torch.randn(1, 2, 3, 64, 96), _translation(1, 2.0, 1.0)
    const = SSP(_image_model(), sim_op="constant").eval()
    with torch.no_grad():
        out = const(_batch(frames, h[:, None]))
    assert torch.allclose(out.logits[:, 1], out.image_logits[:, 1], atol=1e-6)
    reuse = SSP(_image_model(), sim_op="reuse").eval()
    with torch.no_grad():
        out = reuse(_batch(frames, h[:, None]))
    assert torch.allclose(out.logits[:, 1], homography_warp(out.image_logits[:, 0], h), atol=1e-6)


@pytest.mark.parametrize("before", [True, False])
def test_streaming_equals_the_clip_forward(before: bool) -> None:
    model = SSP(_image_model(), sim_op="conv", upsample_before_mixing=before).eval()
    frames = torch.randn(2, 4, 3, 64, 96)
    homs = torch.stack([_translation(2, float(i), 0.5 * i) for i in range(3)], 1)
    with torch.no_grad():
        clip = model(_batch(frames, homs)).logits
        state, streamed = model.init_state(), []
        for t in range(4):
            out, state = model.step(
                frames[:, t], state, StepSide(homography=None if t == 0 else homs[:, t - 1])
            )
            streamed.append(out.logits)
    assert torch.equal(torch.stack(streamed, 1), clip)
    if before:  # the first frame of a clip is the image prediction
        assert torch.allclose(clip[:, 0], model.image_model(frames[:, 0]), atol=1e-6)


def test_pair_step_equals_training_forward_with_raw_previous_prediction() -> None:
    """ssp.md §3.7: step over a pair == the training forward when the state holds y_{t-1}."""
    model = SSP(_image_model(), sim_op="conv").eval()
    frames, h = torch.randn(1, 2, 3, 64, 96), _translation(1, 1.5, -0.5)
    with torch.no_grad():
        pair = model(_batch(frames, h[:, None]))
        y_prev = model.image_model(frames[:, 0])
        feats = model.image_model.encode(frames[:, 1])
        logits = model.image_model.decode(feats)
        prev_feats = model.image_model.encode(frames[:, 0])[0]
        manual = model.fuse(y_prev, prev_feats, logits, feats[0], h, (64, 96))
    assert torch.allclose(pair.logits[:, 1], manual, atol=1e-6)


def test_widths_come_from_the_backbone() -> None:
    for backbone in ("tiny_cnn", "resnet18"):
        image = _image_model(backbone)
        model = SSP(image, sim_op="conv")
        e = image.feature_info.channels[0]
        assert model.sim.net[0].in_channels == 2 * e


def test_frozen_image_model_trains_fusion_only_and_stays_in_eval_mode() -> None:
    model = SSP(_image_model(), sim_op="conv", freeze_image_model=True).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("sim.") for n in trainable)
    assert not model.image_model.training and model.sim.training


def test_registration_provider_is_not_part_of_the_state() -> None:
    class Fixed:
        def estimate(self, prev, cur, pairs=None):  # noqa: ANN001, ANN201
            return _translation(prev.shape[0], 1.0, 0.0)

    model = SSP(_image_model(), registration=Fixed()).eval()
    assert not any(k.startswith("registration") for k in model.state_dict())
    frames = torch.randn(1, 2, 3, 64, 96)
    with torch.no_grad():
        asked = model(_batch(frames)).logits  # no homographies: the provider is asked
        given = model(_batch(frames, _translation(1, 1.0, 0.0)[:, None])).logits
        identity = model(_batch(frames, torch.eye(3)[None, None])).logits
    assert torch.equal(asked, given) and not torch.equal(asked, identity)


def test_the_scalar_similarity_cannot_get_stuck() -> None:
    """``avg``: s = sigmoid(w) starts at 0.5 and keeps a gradient however far w moves (the reference's clamp had
    none outside [0, 1])."""
    sim = SIMILARITY.build("avg", channels=4)
    f = torch.randn(1, 4, 8, 8)
    assert torch.allclose(sim(f, f), torch.full((1, 1, 8, 8), 0.5))
    for w in (-3.0, 1.5, 4.0):
        with torch.no_grad():
            sim.weight.fill_(w)
        sim.weight.grad = None
        s = sim(f, f)
        assert 0.0 < float(s.detach().min()) and float(s.detach().max()) < 1.0
        s.sum().backward()
        assert float(sim.weight.grad.abs()) > 0.0


def test_warps_keep_float32_geometry_under_bf16_autocast() -> None:
    """bf16 has 8 mantissa bits: pixel positions near x = 1000 would be off by 4 px. Warps compute and sample in
    float32 whatever the autocast, and hand back the input's dtype."""
    from models.warp import flow_warp

    torch.manual_seed(0)
    x = F.interpolate(torch.randn(1, 3, 4, 80), size=(16, 1280), mode="bilinear", align_corners=False)
    h = _translation(1, 300.37, 0.0)
    flow = torch.zeros(1, 2, 16, 1280)
    flow[:, 0] = -300.37
    exact_h, exact_f = homography_warp(x, h), flow_warp(x, flow, mode="bilinear")[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_h, got_f = homography_warp(x, h), flow_warp(x, flow, mode="bilinear")[0]
        got_b = homography_warp(x.bfloat16(), h)
    assert torch.allclose(got_h, exact_h, atol=1e-5) and torch.allclose(got_f, exact_f, atol=1e-5)
    assert got_b.dtype == torch.bfloat16 and (got_b.float() - exact_h).abs().max() < 0.05
