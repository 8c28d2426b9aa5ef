"""NetWarp: the FlowCNN, per-level fusion with widths from feature_info, flow resizing, recurrence, the flow network
(trainable or frozen), needs and builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import CheckpointError, ConfigError
from config.loader import load
from data.video_batch import VideoBatch
from models.flow import DISFlow, GTFlow
from models.flow.raft import RaftNet
from models.image.segmentor import Segmentor, build_segmentor
from models.registry import VIDEO_MODELS
from models.video.base import StepSide
from models.video.netwarp import FlowCNN, NetWarp, NetWarpState, build_netwarp
from models.warp import flow_warp
from tests.models.video.test_dff import ConstFlow, const_flow, frames

K = 5
HW = (64, 64)  # tiny_cnn: maps of 16, 8, 4, 2 cells


@pytest.fixture
def image_model() -> Segmentor:
    torch.manual_seed(0)
    return build_segmentor("tiny_cnn", "upernet", K, upsampling="bilinear").eval()


def pair_batch(b: int = 2, hw: tuple[int, int] = HW) -> VideoBatch:
    clip = frames(2, b=b, hw=hw)
    labels = torch.randint(0, K, (b, 2, *hw), generator=torch.Generator().manual_seed(3))
    return VideoBatch(frames=clip, labels=labels, label_valid=torch.ones(b, 2, dtype=torch.bool), current=1)


def randomise_fusion(model: NetWarp) -> None:
    """Non-trivial a_l, b_l (as after training), so the warped maps count."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for a, b in zip(model.a, model.b, strict=True):
            a.copy_(torch.rand(a.shape, generator=g) + 0.5)
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def test_flow_cnn_has_the_reference_size_and_shapes() -> None:
    cnn = FlowCNN()
    assert sum(p.numel() for p in cnn.parameters()) == 6892
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (11, 16, (3, 3)), (16, 32, (3, 3)), (32, 2, (3, 3)), (4, 2, (3, 3)),
    ]  # fmt: skip
    out = cnn(torch.randn(2, 2, 20, 24), torch.randn(2, 3, 20, 24), torch.randn(2, 3, 20, 24))
    assert out.shape == (2, 2, 20, 24)


def test_untrained_fusion_is_the_image_model(image_model: Segmentor) -> None:
    model = NetWarp(image_model, flow_provider=ConstFlow(dx=3.0, dy=-2.0)).train()
    image_model.eval()  # no BatchNorm batch statistics: compare like for like
    batch = pair_batch()
    out = model(batch)
    assert out.logits.shape == (2, 2, K, *HW)
    for i in range(2):
        assert torch.allclose(out.logits[:, i], image_model(batch.frames[:, i]), atol=1e-5)
    assert out.image_logits is None  # frame 1 is a mix, not the plain image network
    # b_l = 0 at init: only b_l receive a gradient through the warped maps
    F.cross_entropy(out.logits[:, 1], batch.labels[:, 1]).backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in model.b)
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in model.a)


@pytest.mark.parametrize(
    "backbone, widths", [("tiny_cnn", (16, 32, 64, 128)), ("resnet18", (64, 128, 256, 512))]
)
def test_fusion_widths_come_from_feature_info(backbone: str, widths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    image = build_segmentor(backbone, "upernet", K, upsampling="bilinear").eval()
    assert image.feature_info.channels == widths
    model = NetWarp(image, flow_provider=ConstFlow(dx=4.0)).eval()
    assert [tuple(a.shape) for a in model.a] == [(c,) for c in widths] == [tuple(b.shape) for b in model.b]
    assert all(torch.all(a == 1) for a in model.a) and all(torch.all(b == 0) for b in model.b)
    assert model.describe()["levels"] == list(widths)
    randomise_fusion(model)
    with torch.no_grad():
        clip = frames(2)
        _, state = model.step(clip[:, 0], model.init_state())
        out, state = model.step(clip[:, 1], state)
    assert out.logits.shape == (1, K, *HW)
    assert [f.shape[1] for f in state.feats] == list(widths)


def test_flow_is_resized_and_scaled_per_level(image_model: Segmentor) -> None:
    model = NetWarp(image_model, flow_provider=ConstFlow()).eval()
    randomise_fusion(model)
    clip = frames(2)
    with torch.no_grad():
        _, state = model.step(clip[:, 0], model.init_state())
        prev = state.feats
        cur = image_model.encode(clip[:, 1])
        # 16 px right at the input: 4 cells at stride 4, 2 at stride 8, 1 at stride 16, 0.5 at stride 32
        flow = const_flow(1, HW, 16.0, 0.0)
        mixed = [model._fuse(i, c, p, flow) for i, (c, p) in enumerate(zip(cur, prev, strict=True))]
        for level, (cells, c, p, m) in enumerate(zip((4, 2, 1), cur[:3], prev[:3], mixed[:3], strict=True)):
            a, b = model.a[level].view(1, -1, 1, 1), model.b[level].view(1, -1, 1, 1)
            shifted = torch.zeros_like(p)
            shifted[..., :-cells] = p[..., cells:]  # zero padding from outside the frame
            assert torch.allclose(m, a * c + b * shifted, atol=1e-5), level
        half = flow_warp(prev[3], const_flow(1, prev[3].shape[-2:], 0.5, 0.0), mode="bilinear")[0]
        a3, b3 = model.a[3].view(1, -1, 1, 1), model.b[3].view(1, -1, 1, 1)
        assert torch.allclose(mixed[3], a3 * cur[3] + b3 * half, atol=1e-5)


def test_flow_cnn_refines_the_flow_on_normalised_frames(image_model: Segmentor) -> None:
    provider = ConstFlow(dx=2.0)
    model = NetWarp(image_model, flow_provider=provider).eval()
    randomise_fusion(model)
    clip = frames(2)
    seen: list[tuple[Tensor, ...]] = []
    model.flow_cnn.register_forward_hook(lambda m, args, out: seen.append((*args, out)))
    with torch.no_grad():
        _, state = model.step(clip[:, 0], model.init_state())
        out, _ = model.step(clip[:, 1], state)
        flow0, prev, cur, refined = seen[-1]
        assert torch.allclose(flow0, const_flow(1, HW, 2.0, 0.0))
        assert torch.equal(prev, clip[:, 0]) and torch.equal(cur, clip[:, 1])  # normalised, not [0,1]
        expected = [model._fuse(i, c, p, refined) for i, (c, p) in
                    enumerate(zip(image_model.encode(clip[:, 1]), state.feats, strict=True))]  # fmt: skip
        assert torch.allclose(
            out.logits, image_model.resize_logits(image_model.decode(expected), HW), atol=1e-5
        )
        # a batch flow replaces flow0 (the FlowCNN still refines it)
        given = const_flow(1, HW, -5.0, 1.0)
        model.step(clip[:, 1], state, StepSide(flow=given))
        assert torch.equal(seen[-1][0], given) and len(provider.calls) == 1


def test_recurrence_uses_the_combined_features(image_model: Segmentor) -> None:
    model = NetWarp(image_model, flow_provider=ConstFlow(dx=4.0)).eval()
    randomise_fusion(model)
    clip = frames(3)
    with torch.no_grad():
        first, s0 = model.step(clip[:, 0], model.init_state())
        assert first.image_logits is not None and torch.allclose(
            first.logits, image_model(clip[:, 0]), atol=1e-6
        )
        assert all(
            torch.equal(f, g) for f, g in zip(s0.feats, image_model.encode(clip[:, 0]), strict=True)
        )  # frame 0: raw
        _, s1 = model.step(clip[:, 1], s0)
        raw1 = image_model.encode(clip[:, 1])
        assert not any(
            torch.allclose(f, g, atol=1e-4) for f, g in zip(s1.feats, raw1, strict=True)
        )  # the mix is kept
        out2, _ = model.step(clip[:, 2], s1)
        # the third frame mixes with frame 1's combined maps, not with its raw encoding
        from_raw, _ = model.step(clip[:, 2], NetWarpState(feats=raw1, frame=clip[:, 1]))
        assert not torch.allclose(out2.logits, from_raw.logits, atol=1e-4)
        # ... and the clip forward is the same recursion
        batch = VideoBatch(frames=clip, labels=torch.zeros(1, 3, *HW, dtype=torch.long),
                           label_valid=torch.ones(1, 3, dtype=torch.bool), current=2)  # fmt: skip
        assert torch.allclose(model(batch).logits[:, 2], out2.logits, atol=1e-5)


def test_trainable_raft_is_in_the_state_dict_and_gets_gradients(image_model: Segmentor) -> None:
    torch.manual_seed(0)
    net = RaftNet("raft_small", None, iters=2, load_weights=False)
    model = NetWarp(image_model, flow_network=net).train()
    randomise_fusion(model)  # b_l = 0 would block every gradient into the flow
    assert net.training
    batch = pair_batch(hw=(128, 128))
    F.cross_entropy(model(batch).logits[:, 1], batch.labels[:, 1]).backward()
    for module in (net, model.flow_cnn):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads) and all(torch.isfinite(g).all() for g in grads)
    keys = model.state_dict().keys()
    assert any(k.startswith("flow_network.net.") for k in keys)
    assert {"flow_cnn.combine.weight", "a.0", "b.3"} <= set(keys)
    model.eval()  # evaluated in eval mode (ssp.md 4.5), unlike the reference
    assert not net.training and not net.net.training
    assert model.describe()["flow_network"]["model"] == "raft_small"


def test_frozen_provider_is_not_in_the_state_dict(image_model: Segmentor) -> None:
    model = NetWarp(image_model, flow_provider=DISFlow())
    own = ("image_model.", "flow_cnn.", "a.", "b.")
    assert all(k.startswith(own) for k in model.state_dict())
    widths = sum(image_model.feature_info.channels)
    n_image = sum(p.numel() for p in image_model.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_image + 6892 + 2 * widths
    assert isinstance(model.helpers()["flow"], DISFlow)
    assert model.describe()["helpers"]["flow"]["settings"]["model"] == "dis"


def test_needs_and_errors(image_model: Segmentor) -> None:
    gt = NetWarp(image_model, flow_provider=GTFlow()).needs()
    assert gt.offsets == (-1,) and gt.true_flows and gt.max_key_offset == 1
    assert not NetWarp(image_model, flow_provider=DISFlow()).needs().true_flows
    with pytest.raises(ValueError, match="exactly one"):
        NetWarp(image_model)
    with pytest.raises(ConfigError, match="netwarp.flow_mode"):
        NetWarp(image_model, flow_provider=DISFlow(), flow_mode="bicubic")


def test_build_netwarp_synthetic_needs_no_weights(image_model: Segmentor) -> None:
    model = VIDEO_MODELS.get("netwarp")(load("netwarp_synthetic", "video"), image_model, device="cpu",
                                        pretrained=True, use_caches=True)  # fmt: skip
    assert isinstance(model, NetWarp) and model.method == "netwarp" and model.train_step == "supervised"
    assert isinstance(model.flow, DISFlow) and model.flow_network is None and model.flow_mode == "bilinear"
    with torch.no_grad():
        out, _ = model.step(frames(1, hw=(128, 224))[:, 0], model.init_state())
    assert out.logits.shape == (1, K, 128, 224)


def test_build_netwarp_errors_and_trainable_flow(image_model: Segmentor, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="netwarp.train_flow: false"):
        build_netwarp(
            load("netwarp_synthetic", "video", ["video_model_cfg.netwarp.train_flow=true"]), image_model
        )
    with pytest.raises(ConfigError, match="data_cfg.adjacent_frames"):
        build_netwarp(load("netwarp_synthetic", "video", ["data_cfg.adjacent_frames=[-2]"]), image_model)
    small = ["video_model_cfg.netwarp.flow=raft_small",
             f"video_model_cfg.netwarp.flow_weights={tmp_path / 'no.pth'}"]  # fmt: skip
    with pytest.raises(CheckpointError, match="set video_model_cfg.netwarp.flow_weights"):
        build_netwarp(load("netwarp_uavid", "video", small), image_model)
    model = build_netwarp(load("netwarp_uavid", "video", small), image_model, pretrained=False)
    assert isinstance(model.flow_network, RaftNet) and model.flow is None
    assert model.flow_network.iters == 8 and model.flow_network.arch == "raft_small"
