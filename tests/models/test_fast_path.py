"""The inference fast path: the same outputs as the plain model, and each of its pieces on its own."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from config.errors import ConfigError
from models.fast_path import TOLERANCE, FastPath, describe, fold_batchnorm, prepare_inference
from models.image.heads.upsampled_conv import conv3x3_of_upsampled
from models.image.segmentor import build_segmentor
from models.video.base import StepSide
from models.video.ssp import SSP


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Trained-looking BatchNorm statistics (fresh ones are the identity, which would hide folding errors)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


@pytest.mark.parametrize(
    ("size", "coarse", "layout"),
    [((64, 112), (32, 56), "nchw"), ((64, 112), (8, 14), "cl"), ((13, 21), (7, 11), "nchw"),
     ((13, 21), (4, 6), "cl"), ((10, 14), (1, 1), "cl"), ((9, 12), (9, 12), "nchw"), ((6, 8), (3, 3), "cl")],
)  # fmt: skip
def test_conv_of_an_upsampled_map_at_its_own_resolution(size: tuple, coarse: tuple, layout: str) -> None:
    """Integer and fractional factors, a 1x1 map (a PPM bin), no resize at all, both layouts, batch 2."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, *coarse, generator=g)
    w = torch.randn(5, 6, 3, 3, generator=g)
    start = torch.randn(2, 5, *size, generator=g)
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    want = start + F.conv2d(up, w, padding=1)
    out = start.clone()
    if layout == "cl":
        out, x = (
            out.contiguous(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    got = conv3x3_of_upsampled(out, x, w)
    assert got is out and _close(got, want) < 1e-5
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "cl")


@pytest.mark.parametrize("backbone", ["resnet18", "tiny_cnn", "sam2_hiera_tiny"])
def test_the_fast_path_leaves_the_image_model_output_unchanged(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_segmentor(backbone, "upernet", 6, head_width=32, upsampling="bilinear").eval()
    _randomise_batchnorms(model)
    x = torch.randn(1, 3, 96, 160)
    with torch.inference_mode():
        plain = model(x)
    fast = copy.deepcopy(model)
    report = prepare_inference(fast, "cpu")
    with torch.inference_mode():
        out = fast(x)
    assert _close(out, plain) < TOLERANCE and report["probe_diff"] < TOLERANCE
    # every BatchNorm of the head went into its conv; the head computes its coarse convs at their own resolutions
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.head.modules())
    head_bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.head.modules())
    assert report["bn_folded"] >= head_bns > 0 and fast.head.fast_fuse
    assert any("UperNetHead" in s for s in report["switched"])
    assert "BatchNorms folded, channels_last" in describe(report)
    # with autograd on (training), the plain computation runs, and gives the same result
    with torch.enable_grad():
        assert _close(fast(x).detach(), plain) < TOLERANCE


def test_hiera_reuses_its_position_embedding_until_the_weights_change() -> None:
    torch.manual_seed(0)
    model = build_segmentor("sam2_hiera_tiny", "upernet", 4, head_width=32).eval()
    x = torch.randn(1, 3, 64, 96)
    prepare_inference(model, "cpu", FastPath(fold_bn=False, channels_last=False, fast_modules=True))
    trunk = model.backbone.body.model
    with torch.inference_mode():
        first = model(x)
        assert torch.equal(model(x), first)
    with torch.no_grad():
        trunk.pos_embed.add_(1.0)  # new weights: a new embedding, not the cached one
    with torch.inference_mode():
        changed = model(x)
    model.backbone.fast_inference(False)
    with torch.inference_mode():
        assert torch.allclose(changed, model(x), atol=1e-5) and not torch.allclose(changed, first, atol=1e-3)


class _SharedConvOutput(nn.Module):
    """A conv whose output feeds a BatchNorm and also a residual: folding the BatchNorm would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_would_change_the_output_is_undone() -> None:
    model = _SharedConvOutput().eval()
    _randomise_batchnorms(model)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
    report = prepare_inference(model, "cpu", FastPath(fold_bn=True, channels_last=False, fast_modules=False))
    with torch.no_grad():
        assert torch.allclose(model(x), plain, atol=1e-6)
    assert report["bn_folded"] == 0 and "undone" in report["fold"] and isinstance(model.bn, nn.BatchNorm2d)


def test_sequential_pairs_fold_without_a_probe() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    _randomise_batchnorms(seq)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = seq(x)
        undo = fold_batchnorm(seq)
        assert len(undo) == 1 and isinstance(seq[1], nn.Identity) and _close(seq(x), plain) < 1e-5


def _ssp_pair(**kw: object) -> tuple[SSP, SSP]:
    torch.manual_seed(0)
    image = build_segmentor("resnet18", "upernet", 5, head_width=32, upsampling="bilinear")
    model = SSP(image, **kw).eval()
    _randomise_batchnorms(model, seed=3)
    return model, copy.deepcopy(model)


def test_the_fast_path_leaves_ssp_streaming_unchanged() -> None:
    plain, fast = _ssp_pair()
    prepare_inference(fast, "cpu")
    frames = torch.randn(4, 1, 3, 64, 96)
    h = torch.tensor([[[1.0, 0.0, 1.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]]])
    outs = []
    for model in (plain, fast):
        state, seq = model.init_state(), []
        with torch.inference_mode():
            for i, x in enumerate(frames):
                out, state = model.step(x, state, StepSide(homography=h if i else None))
                seq.append(out.logits)
        outs.append(torch.stack(seq))
    assert _close(outs[1], outs[0]) < TOLERANCE
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.sim.modules())  # the similarity's own BNs too


class _Translation:
    """A CPU provider (numpy path) registering every pair as a 2-pixel shift to the right."""

    runs_in_loader = True

    def estimate(self, prev, cur, pairs=None):  # noqa: ANN001, ANN201
        return self._h().repeat(prev.shape[0], 1, 1)

    def estimate_np(self, prev, cur, pair=None):  # noqa: ANN001, ANN201
        assert prev.dtype == np.uint8 and prev.shape[-1] == 3  # uint8 RGB frames, HxWx3
        return self._h()[0].double().numpy()

    @staticmethod
    def _h() -> torch.Tensor:
        return torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def test_registration_in_the_background_thread_gives_the_serial_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overlapped, serial = _ssp_pair(registration=_Translation())
    serial.overlap_registration = False
    monkeypatch.setattr("models.video.ssp.os.cpu_count", lambda: torch.get_num_threads() + 1)  # a free core
    assert overlapped._overlap_registration(torch.device("cpu")) and not serial._overlap_registration(
        torch.device("cpu")
    )
    frames = torch.rand(3, 1, 3, 64, 96)
    outs = []
    for model in (overlapped, serial):
        state, seq = model.init_state(), []
        with torch.inference_mode():
            for x in frames:
                out, state = model.step(x, state)
                seq.append(out.logits)
        outs.append(torch.stack(seq))
    assert torch.equal(outs[0], outs[1])


def test_compile_needs_a_compiler_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    model = build_segmentor("tiny_cnn", "upernet", 3).eval()
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        prepare_inference(model, "cpu", FastPath(compile=True))


def test_off_changes_nothing() -> None:
    model = build_segmentor("tiny_cnn", "upernet", 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = prepare_inference(model, "cpu", FastPath.off())
    after = model.state_dict()
    assert report["bn_folded"] == 0 and not report["switched"] and not model.head.fast_fuse
    assert all(torch.equal(before[k], after[k]) for k in before) and "off" in describe(report)


def test_frames_are_kept_for_registration_only_when_the_homography_is_not_given() -> None:
    """With homographies from the frame loader the registration's frames are never made; a stream that then stops
    giving them is a clear error (no previous frame to register)."""
    model, _ = _ssp_pair(registration=_Translation())
    frames = torch.rand(3, 1, 3, 64, 96)
    with torch.inference_mode():
        _, state = model.step(frames[0], model.init_state())
        assert state.frame01 is not None  # the clip's first frame: the next one may need it
        _, state = model.step(frames[1], state, StepSide(homography=_Translation._h()))
        assert state.frame01 is None and state.frame_u8 is None
        with pytest.raises(ValueError, match="homograph"):
            model.step(frames[2], state)
