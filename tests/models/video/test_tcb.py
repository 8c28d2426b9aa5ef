"""TCB (``model_name: tcb``): the OCR and PPM blocks, widths from ``feature_info``, streaming, needs and builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from config.errors import ConfigError
from config.loader import load
from data.video_batch import VideoBatch
from models.build import build_video_model
from models.image.segmentor import Segmentor, build_segmentor
from models.video.tcb import TCB, TCBState, build_tcb
from models.video.tcb_blocks import OCRBlock, PPMBlock

K = 5
HW = (64, 96)  # tiny_cnn: stride-32 maps of 2 x 3
REFERENCE = Path(__file__).parents[2] / "config" / "reference"


@pytest.fixture
def image_model() -> Segmentor:
    torch.manual_seed(0)
    return build_segmentor("tiny_cnn", "upernet", K, upsampling="bilinear").eval()


def frames(n: int, b: int = 1, seed: int = 1) -> Tensor:
    """[b,n,3,H,W] ImageNet-normalised-looking random frames."""
    return torch.randn(b, n, 3, *HW, generator=torch.Generator().manual_seed(seed))


def clip_batch(x: Tensor) -> VideoBatch:
    b, t = x.shape[:2]
    return VideoBatch(frames=x, labels=torch.zeros(b, t, *HW, dtype=torch.long),
                      label_valid=torch.ones(b, t, dtype=torch.bool), current=t - 1)  # fmt: skip


def test_each_module_holds_only_its_own_weights(image_model: Segmentor) -> None:
    ppm = TCB(image_model, "ppm").state_dict()
    ocr = TCB(image_model, "ocr").state_dict()
    own = lambda sd: {k for k in sd if not k.startswith("image_model.")}  # noqa: E731
    assert {k.split(".")[1] for k in own(ppm) if k.startswith("block.")} == {"score", "stages", "bottleneck"}
    assert {k.split(".")[1] for k in own(ocr) if k.startswith("block.")} == {
        "aux",
        "feat",
        "attention",
        "fuse",
        "head",
    }
    assert not any(s in k for k in own(ppm) for s in ("attention", "aux", "f_pixel"))
    assert not any(s in k for k in own(ocr) for s in ("stages", "bottleneck", "score"))
    assert {"tcb_conv.weight", "tcb_conv.bias"} <= own(ppm) & own(ocr)
    assert TCB(image_model, "ppm").describe()["module"] == "ppm"
    assert TCB(image_model, "ocr").describe()["module"] == "ocr"


def test_ppm_weight_order_switch_changes_which_frame_each_weight_multiplies() -> None:
    torch.manual_seed(0)
    aligned = PPMBlock(8, channels=4, bins=(1,), reduce="sum").eval()
    shifted = PPMBlock(8, channels=4, bins=(1,), weight_order="reference", reduce="sum").eval()
    shifted.load_state_dict(aligned.state_dict())
    values = torch.tensor([0.0, 1.0, 2.0, 3.0])  # frame j (j steps back) is the constant value j
    f4 = values.view(1, 4, 1, 1, 1).expand(1, 4, 8, 2, 3).clone()
    w = aligned.frame_weights(f4)
    assert torch.allclose(w.sum(1), torch.ones(1)) and not torch.allclose(w, w.roll(1, 1))  # distinct weights
    # reference: frame j gets the weight computed from frame j+1, the current frame's goes to t-3
    assert torch.allclose(shifted.frame_weights(f4), w[:, [1, 2, 3, 0]])
    seen: dict[str, Tensor] = {}
    for name, block in (("aligned", aligned), ("reference", shifted)):
        block.stages[0].register_forward_pre_hook(lambda m, a, n=name: seen.__setitem__(n, a[0]))
        block(f4)
    assert torch.allclose(seen["aligned"], (w * values).sum().expand(1, 8, 1, 1))  # sum_j w_j * F4_j
    assert torch.allclose(seen["reference"], (w[:, [1, 2, 3, 0]] * values).sum().expand(1, 8, 1, 1))
    mean = PPMBlock(8, channels=4, bins=(1,), reduce="mean").eval()
    mean.load_state_dict(aligned.state_dict())
    mean.stages[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("mean", a[0]))
    mean(f4)
    assert torch.allclose(seen["mean"], seen["aligned"] / 4)  # the reference's mean over the 4 frames


@pytest.mark.parametrize("backbone", ["tiny_cnn", "resnet18"])
def test_widths_derive_from_feature_info(backbone: str) -> None:
    image = build_segmentor(backbone, "upernet", K, upsampling="bilinear")
    c4 = image.feature_info.channels[-1]
    assert c4 == {"tiny_cnn": 128, "resnet18": 512}[backbone]
    ocr = TCB(image, "ocr")
    assert isinstance(ocr.block, OCRBlock) and ocr.widths == {"in": c4, "ocr": c4, "key": c4 // 2}
    assert ocr.block.feat[0].in_channels == c4 and ocr.block.feat[0].out_channels == c4
    assert ocr.block.attention.f_pixel[0][0].out_channels == c4 // 2
    assert ocr.block.aux[-1].out_channels == K  # one soft object region per class
    assert (
        ocr.block.head.out_channels == c4
        and ocr.tcb_conv.in_channels == 2 * c4 == 2 * ocr.tcb_conv.out_channels
    )
    narrow = TCB(image, "ocr", ocr_channels=32, ocr_key_channels=8)
    assert narrow.block.feat[0].out_channels == 32 and narrow.block.attention.f_pixel[0][0].out_channels == 8
    ppm = TCB(image, "ppm", ppm_channels=16)
    assert isinstance(ppm.block, PPMBlock) and ppm.block.score.in_channels == c4
    assert (
        ppm.block.bottleneck[0][0].in_channels == c4 + 4 * 16 and ppm.block.bottleneck[-1].out_channels == c4
    )
    x = torch.randn(1, 4, 3, *HW)
    with torch.no_grad():
        for model in (ocr.eval(), ppm.eval()):
            assert model(clip_batch(x)).logits.shape == (1, 4, K, *HW)


@pytest.mark.parametrize("module", ["ocr", "ppm"])
@torch.no_grad()
def test_frames_0_to_2_are_the_image_model(image_model: Segmentor, module: str) -> None:
    model = TCB(image_model, module).eval()
    clip = frames(5)
    state = model.init_state()
    for i in range(5):
        out, state = model.step(clip[:, i], state)
        if i < 3:
            assert torch.allclose(out.logits, image_model(clip[:, i]), atol=1e-6)
            assert out.image_logits is not None
        else:
            assert out.image_logits is None
            assert not torch.allclose(out.logits, image_model(clip[:, i]), atol=1e-3)
        # the state keeps the last 3 raw frames, the most recent first
        assert len(state.past) == min(i + 1, 3) and torch.equal(state.past[0], clip[:, i])
    assert torch.equal(state.past[2], clip[:, 2])


@pytest.mark.parametrize("module", ["ocr", "ppm"])
@torch.no_grad()
def test_quadruple_forward_equals_stepping(image_model: Segmentor, module: str) -> None:
    model = TCB(image_model, module).eval()
    windows: list[Tensor] = []  # what the block reads: [B,4,C4,h,w], frame 0 = current, frame j = j back
    model.block.register_forward_pre_hook(lambda m, a: windows.append(a[0]))
    clip = frames(4, b=2)
    out = model(clip_batch(clip))
    state = TCBState()
    for i in range(4):
        step, state = model.step(clip[:, i], state)
        assert torch.allclose(out.logits[:, i], step.logits, atol=1e-5)
    assert out.image_logits is None  # frame 3 is fused
    assert len(windows) == 2 and torch.allclose(windows[0], windows[1], atol=1e-6)  # forward, then step 3
    for j in range(4):  # the window holds the raw frames t, t-1, t-2, t-3 in that order
        assert torch.allclose(windows[0][:, j], image_model.encode(clip[:, 3 - j])[-1], atol=1e-6)


@pytest.mark.parametrize("module", ["ocr", "ppm"])
def test_training_gradients_reach_every_frame(image_model: Segmentor, module: str) -> None:
    model = TCB(image_model, module).train()
    clip = frames(4, b=2).requires_grad_(True)
    labels = torch.randint(0, K, (2, *HW))
    F.cross_entropy(model(clip_batch(clip)).logits[:, 3], labels).backward()
    assert clip.grad is not None and all(clip.grad[:, j].abs().sum() > 0 for j in range(4))  # all 4 encoded
    assert model.tcb_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.block.parameters())


def test_needs_builder_and_configs(image_model: Segmentor) -> None:
    model = build_tcb(load("tcbppm_synthetic", "video"), image_model)
    assert model.needs().offsets == (-1, -2, -3) and model.train_step == "supervised"
    assert model.describe()["module"] == "ppm" and model.describe()["ppm_weight_order"] == "aligned"
    ref = build_tcb(load("tcbppm_uavid", "video", ["video_model_cfg.tcb.ppm_weight_order=reference",
                                                   "video_model_cfg.tcb.ppm_reduce=sum"]), image_model)  # fmt: skip
    assert ref.block.weight_order == "reference" and ref.block.reduce == "sum" and ref.widths["ppm"] == 512
    assert build_tcb(load("tcbocr_rural", "video"), image_model).describe()["module"] == "ocr"
    with pytest.raises(ConfigError, match=r"^data_cfg\.adjacent_frames: .*use \[-1, -2, -3\]") as err:
        build_tcb(load("tcbocr_synthetic", "video", ["data_cfg.adjacent_frames=[-1]"]), image_model)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="video_model_cfg.tcb.module"):
        TCB(image_model, "psp")


@pytest.mark.parametrize(("name", "module"), [("video_tcbppm_uavid", "ppm"), ("video_tcbocr_rural", "ocr")])
def test_reference_files_build_the_block_they_name(image_model: Segmentor, name: str, module: str) -> None:
    cfg = load(str(REFERENCE / f"{name}.yaml"), "video")  # the reference spelling: flat tcb_module
    model = build_video_model(cfg, image_model)
    assert (
        isinstance(model, TCB) and model.describe()["module"] == module
    )  # ppm really builds PPM (ssp.md 15 #1)
