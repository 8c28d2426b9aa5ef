"""DFF (``dff2``): keyframes, feature propagation along the flow, the trainable flow network, needs and builder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import CheckpointError, ConfigError
from config.loader import load
from data.frames import FramePair
from data.transforms import denormalize
from data.video_batch import VideoBatch
from models.flow import DISFlow, GTFlow, RaftFlow
from models.flow.base import FlowProvider
from models.flow.raft import RaftNet
from models.image.segmentor import Segmentor, build_segmentor
from models.registry import VIDEO_MODELS
from models.video.base import StepSide
from models.video.dff import DFF, DFFState, build_dff

K = 5
HW = (64, 64)  # tiny_cnn + upernet: stride-4 features of 16 x 16


class ConstFlow(FlowProvider):
    """A frozen provider returning one constant displacement ``(dx, dy)`` and recording its calls."""

    name = "const"

    def __init__(self, dx: float = 0.0, dy: float = 0.0) -> None:
        self.dx, self.dy = dx, dy
        self.calls: list[tuple[Tensor, Tensor, Sequence[FramePair] | None]] = []

    def settings(self) -> dict[str, Any]:
        return {"model": "const", "dx": self.dx, "dy": self.dy}

    def _compute(self, img1: Tensor, img2: Tensor, pairs: Sequence[FramePair] | None) -> Tensor:
        self.calls.append((img1.clone(), img2.clone(), pairs))
        return const_flow(img1.shape[0], img1.shape[-2:], self.dx, self.dy)


def const_flow(b: int, hw: Sequence[int], dx: float, dy: float) -> Tensor:
    """[b,2,H,W] constant displacement."""
    return torch.tensor([dx, dy]).view(1, 2, 1, 1).expand(b, 2, *hw).clone()


@pytest.fixture
def image_model() -> Segmentor:
    torch.manual_seed(0)
    return build_segmentor("tiny_cnn", "upernet", K, upsampling="bilinear").eval()


def frames(n: int, b: int = 1, hw: tuple[int, int] = HW, seed: int = 1) -> Tensor:
    """[b,n,3,H,W] ImageNet-normalised-looking random frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 3, *hw, generator=g)


def key_feature(im: Segmentor, x: Tensor) -> Tensor:
    return im.decode_last_feature(im.encode(x))


@torch.no_grad()
def test_keyframe_is_the_image_model(image_model: Segmentor) -> None:
    model = DFF(image_model, k_interval=4, flow_provider=ConstFlow()).eval()
    x = frames(1)[:, 0]
    out, state = model.step(x, model.init_state())
    assert torch.allclose(out.logits, image_model(x), atol=1e-6)
    assert out.image_logits is not None
    assert torch.allclose(out.image_logits, image_model.decode(image_model.encode(x)), atol=1e-6)
    assert state.index == 1 and torch.allclose(state.feature, key_feature(image_model, x), atol=1e-6)
    assert torch.allclose(state.frame01, denormalize(x))


@torch.no_grad()
def test_zero_flow_frame_is_the_previous_feature_classified(image_model: Segmentor) -> None:
    provider = ConstFlow()
    model = DFF(image_model, k_interval=4, flow_provider=provider).eval()
    clip = frames(2)
    _, state = model.step(clip[:, 0], model.init_state())
    g0 = state.feature
    out, state = model.step(clip[:, 1], state)
    expected = image_model.resize_logits(image_model.classify(g0), HW)
    assert out.image_logits is None  # the image network did not run on frame 1
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert not torch.allclose(
        out.logits, image_model(clip[:, 1]), atol=1e-3
    )  # frame 1 itself is never encoded
    # the provider computed current -> previous on [0,1] frames
    (img1, img2, pairs) = provider.calls[-1]
    assert torch.allclose(img1, denormalize(clip[:, 1])) and torch.allclose(img2, denormalize(clip[:, 0]))
    assert pairs is None


@torch.no_grad()
def test_integer_translation_moves_the_feature_and_the_prediction(image_model: Segmentor) -> None:
    model = DFF(image_model, k_interval=8, flow_provider=ConstFlow()).eval()  # zero unless side.flow is given
    clip = frames(2)
    _, state = model.step(clip[:, 0], model.init_state())
    g0 = state.feature
    # 8 px right at the input = 2 cells at stride 4: frame 1 at x shows frame 0 at x + 2
    flow = const_flow(1, HW, 8.0, 0.0)
    out, moved = model.step(clip[:, 1], state, StepSide(flow=flow))
    assert torch.allclose(moved.feature[..., :-2], g0[..., 2:], atol=1e-5)
    assert moved.feature[..., -2:].abs().max() == 0  # pulled from outside the frame: zero padding
    assert torch.allclose(
        out.logits, image_model.resize_logits(image_model.classify(moved.feature), HW), atol=1e-6
    )
    still, _ = model.step(clip[:, 1], state)
    assert not torch.allclose(out.logits, still.logits, atol=1e-3)  # the prediction moved with the flow
    # vertical: 4 px up at the input = 1 cell at stride 4
    _, up = model.step(clip[:, 1], state, StepSide(flow=const_flow(1, HW, 0.0, -4.0)))
    assert torch.allclose(up.feature[..., 1:, :], g0[..., :-1, :], atol=1e-5)


@torch.no_grad()
def test_recursion_over_k_interval(image_model: Segmentor) -> None:
    k = 3
    model = DFF(image_model, k_interval=k, flow_provider=ConstFlow(dx=4.0)).eval()  # 1 cell per frame
    clip = frames(7)
    state = model.init_state()
    keys, last_key = [], None
    for i in range(7):
        out, new = model.step(clip[:, i], state)
        if out.image_logits is not None:
            keys.append(i)
            last_key = key_feature(image_model, clip[:, i])
            assert torch.allclose(out.logits, image_model(clip[:, i]), atol=1e-6)
        else:
            # frame to frame: the kept feature is the key's, shifted once per propagated frame
            d = i - keys[-1]
            assert torch.allclose(new.feature[..., :-d], last_key[..., d:], atol=1e-5)
            assert torch.allclose(new.feature[..., :-1], state.feature[..., 1:], atol=1e-5)
        state = new
    assert keys == [0, 3, 6]


def test_forward_equals_streaming_steps(image_model: Segmentor) -> None:
    model = DFF(image_model, k_interval=2, flow_provider=ConstFlow(dx=-4.0)).eval()
    clip = frames(3, b=2)
    flows = torch.randn(2, 2, 2, *HW) * 3
    results = []
    for batch_flows in (None, flows):
        batch = VideoBatch(
            frames=clip,
            labels=torch.zeros(2, 3, *HW, dtype=torch.long),
            label_valid=torch.ones(2, 3, dtype=torch.bool),
            current=1,
            flows=batch_flows,
        )
        with torch.no_grad():
            out = model(batch)
            state: DFFState = model.init_state()
            for i in range(3):
                side = StepSide(flow=None if batch_flows is None or i == 0 else batch_flows[:, i - 1])
                step, state = model.step(clip[:, i], state, side)
                assert torch.allclose(out.logits[:, i], step.logits, atol=1e-6)
        assert out.logits.shape == (2, 3, K, *HW)
        assert out.image_logits is None  # frame 1 is propagated
        results.append(out.logits)
    assert torch.allclose(results[0][:, 2], results[1][:, 2])  # frame 2 is a key either way
    assert not torch.allclose(results[0][:, 1], results[1][:, 1], atol=1e-3)  # the batch's flows are used


def test_provider_gets_the_reversed_pair(image_model: Segmentor) -> None:
    provider = ConstFlow()
    model = DFF(image_model, k_interval=8, flow_provider=provider).eval()
    clip = frames(2)
    pair = FramePair(Path("c/origin/004.png"), Path("c/origin/005.png"), 4, 5)  # previous -> current
    with torch.no_grad():
        _, state = model.step(clip[:, 0], model.init_state())
        model.step(clip[:, 1], state, StepSide(pair=pair))
    assert provider.calls[-1][2] == [FramePair(pair.second_path, pair.first_path, 5, 4)]


def test_trainable_raft_gets_gradients_and_is_saved(image_model: Segmentor) -> None:
    torch.manual_seed(0)
    net = RaftNet("raft_small", None, iters=2, load_weights=False)
    model = DFF(image_model, k_interval=8, flow_network=net).train()
    assert net.training and image_model.training
    clip = frames(2, b=2, hw=(128, 128))
    labels = torch.randint(0, K, (2, 2, 128, 128))
    batch = VideoBatch(frames=clip, labels=labels, label_valid=torch.ones(2, 2, dtype=torch.bool), current=1)
    out = model(batch)
    F.cross_entropy(out.logits[:, 1], labels[:, 1]).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads) and all(torch.isfinite(g).all() for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in image_model.parameters())
    keys = model.state_dict().keys()
    assert any(k.startswith("flow_network.net.") for k in keys)
    assert {id(p) for p in net.parameters()} <= {id(p) for p in model.parameters()}
    model.eval()  # evaluated in eval mode (ssp.md 4.5), unlike the reference
    assert not net.training and not net.net.training
    assert model.describe()["flow_network"]["model"] == "raft_small"
    frozen = DFF(image_model, k_interval=8, flow_network=net, freeze_image_model=True).train()
    assert net.training and not image_model.training  # only the flow network trains
    assert not any(p.requires_grad for p in image_model.parameters())
    assert all(p.requires_grad for p in frozen.flow_network.parameters())


def test_raft_net_and_provider_share_the_computation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"  # plain name: no digest check
    torch.save(RaftNet("raft_small", None, iters=2, load_weights=False).net.state_dict(), path)
    net = RaftNet("raft_small", path, iters=2).eval()
    provider = RaftFlow("raft_small", path, iters=2)
    img1, img2 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)  # padded to 128 x 128 and cropped back
    with torch.no_grad():
        flow = net(img1, img2)
    assert flow.shape == (1, 2, 64, 96)
    assert torch.allclose(flow, provider(img1, img2), atol=1e-5)
    assert net.settings()["sha256"] == provider.settings()["sha256"]
    with pytest.raises(CheckpointError, match="dff.flow_weights"):
        RaftNet(
            "raft_small",
            tmp_path / "missing.pth",
            iters=2,
            weights_setting="video_model_cfg.dff.flow_weights",
        )


def test_frozen_provider_is_not_in_the_state_dict(image_model: Segmentor) -> None:
    model = DFF(image_model, k_interval=8, flow_provider=DISFlow())
    assert all(k.startswith("image_model.") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in image_model.parameters())
    assert isinstance(model.helpers()["flow"], DISFlow)
    assert model.describe()["helpers"]["flow"]["settings"]["model"] == "dis"


def test_needs(image_model: Segmentor) -> None:
    gt = DFF(image_model, flow_provider=GTFlow()).needs()
    assert gt.offsets == (-1,) and gt.true_flows and gt.max_key_offset == 1
    dis = DFF(image_model, flow_provider=DISFlow(), max_key_offset=3).needs()
    assert not dis.true_flows and dis.max_key_offset == 3
    net = DFF(image_model, flow_network=RaftNet("raft_small", None, iters=1, load_weights=False)).needs()
    assert not net.true_flows
    with pytest.raises(ConfigError, match="max_key_offset"):
        DFF(image_model, flow_provider=GTFlow(), max_key_offset=2)
    with pytest.raises(ValueError, match="exactly one"):
        DFF(image_model)


def test_build_dff_synthetic_needs_no_weights(image_model: Segmentor) -> None:
    cfg = load("dff_synthetic", "video")
    model = VIDEO_MODELS.get("dff2")(cfg, image_model, device="cpu", pretrained=True, use_caches=True)
    assert isinstance(model, DFF) and model.method == "dff2" and model.train_step == "supervised"
    assert isinstance(model.flow, DISFlow) and model.flow_network is None
    assert model.k_interval == 8 and model.flow_mode == "bilinear"
    with torch.no_grad():
        out, state = model.step(frames(1, hw=(128, 224))[:, 0], model.init_state())
    assert out.logits.shape == (1, K, 128, 224)


def test_build_dff_errors_and_trainable_flow(image_model: Segmentor, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_flow: false"):
        build_dff(load("dff_synthetic", "video", ["video_model_cfg.dff.train_flow=true"]), image_model)
    with pytest.raises(ConfigError, match="data_cfg.adjacent_frames"):
        build_dff(load("dff_synthetic", "video", ["data_cfg.adjacent_frames=[-2]"]), image_model)
    small = ["video_model_cfg.dff.flow=raft_small", f"video_model_cfg.dff.flow_weights={tmp_path / 'no.pth'}"]
    with pytest.raises(CheckpointError, match="not found"):
        build_dff(load("dff_uavid", "video", small), image_model)
    model = build_dff(
        load("dff_uavid", "video", small), image_model, pretrained=False
    )  # a checkpoint follows
    assert isinstance(model.flow_network, RaftNet) and model.flow is None
    assert model.flow_network.iters == 8 and model.flow_network.arch == "raft_small"


def test_a_missing_raft_file_names_the_dff_key(tmp_path: Path) -> None:
    from config.loader import load
    from models.build import build_video_model

    image = build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear")
    for trainable in ("true", "false"):
        cfg = load("dff_uavid", "video", [f"video_model_cfg.dff.flow_weights={tmp_path / 'none.pth'}",
                                          f"video_model_cfg.dff.train_flow={trainable}"])  # fmt: skip
        with pytest.raises(CheckpointError, match="set video_model_cfg.dff.flow_weights"):
            build_video_model(cfg, image)
