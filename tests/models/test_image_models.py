"""Image models: backbones x heads forward/backward, widths, parameter counts, weight loading, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from config.errors import CheckpointError, ConfigError
from models.image import build_backbone, build_segmentor, load_backbone_weights
from models.image.heads.fcn8s import FCN8sHead, bilinear_kernel
from models.image.pretrained import load_fcn8s_classifier_weights
from models.image.segmentor import Segmentor
from models.registry import BACKBONES, HEADS


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ forward/backward

COMBOS = [
    ("tiny_cnn", "upernet", (64, 64), {"head_width": 32}),
    ("tiny_cnn", "swiftnet", (64, 96), {"head_width": 32}),
    ("tiny_cnn", "fcn8s", (64, 64), {"head_width": 32}),
    ("tiny_cnn", "fcn8s", (50, 70), {"head_width": 32}),  # aligned FCN-8s on an odd size: resized
    ("resnet18", "upernet", (64, 64), {"head_width": 32}),
    ("resnet18", "swiftnet", (64, 64), {}),
    ("sam2_hiera_tiny", "upernet", (64, 64), {}),
    ("vgg16", "fcn8s", (32, 48), {"head_width": 16}),
]


@pytest.mark.parametrize(
    ("backbone", "head", "size", "kw"), COMBOS, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in COMBOS]
)
def test_forward_backward(backbone: str, head: str, size: tuple[int, int], kw: dict) -> None:
    torch.manual_seed(0)
    model = build_segmentor(backbone, head, num_classes=5, **kw)
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 5, *size)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), "no gradient reached the backbone"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("head", ["upernet", "swiftnet", "fcn8s"])
def test_interface_pieces_agree(head: str) -> None:
    """decode == classify(decode_last_feature) and forward == resize_logits(decode(encode))."""
    torch.manual_seed(0)
    model = build_segmentor("tiny_cnn", head, 4, head_width=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.encode(x)
        assert [f.shape[1] for f in feats] == list(model.feature_info.channels)
        assert [64 // f.shape[-1] for f in feats] == list(model.feature_info.strides)
        g = model.decode_last_feature(feats)
        assert g.shape[1] == model.feature_channels and g.shape[-1] == 64 // model.feature_stride
        logits = model.decode(feats)
        assert logits.shape[-1] == 64 // model.output_stride
        torch.testing.assert_close(model.classify(g), logits)
        torch.testing.assert_close(model(x), model.resize_logits(logits, (64, 64)))
    assert model.num_classes == 4


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
def test_upsampling_modes(mode: str) -> None:
    model = build_segmentor("tiny_cnn", "upernet", 3, head_width=16, upsampling=mode).eval()
    assert model(torch.randn(1, 3, 32, 64)).shape == (1, 3, 32, 64)


def test_bad_upsampling_and_num_classes() -> None:
    with pytest.raises(ConfigError, match="bicubic"):
        build_segmentor("tiny_cnn", "upernet", 3, upsampling="cubic")
    with pytest.raises(ConfigError, match="num_classes"):
        build_segmentor("tiny_cnn", "upernet", 0)


# ------------------------------------------------------------------------------------------ widths, counts


def test_widths_come_from_the_backbone() -> None:
    bb = build_backbone("sam2_hiera_base_plus")
    assert bb.channels == [112, 224, 448, 896] and bb.strides == [4, 8, 16, 32]
    head = HEADS.build("upernet", in_channels=bb.channels, in_strides=bb.strides, num_classes=8, width=512)
    assert [lat[0].in_channels for lat in head.laterals] == [112, 224, 448]
    assert head.ppm_bottleneck[0].in_channels == 896 + 4 * 512
    for name in ("swiftnet", "fcn8s"):
        HEADS.build(name, in_channels=bb.channels, in_strides=bb.strides, num_classes=8, width=64)
    tiny = build_backbone("tiny_cnn", widths=(8, 12, 20, 24))
    seg = build_segmentor("tiny_cnn", "upernet", 3, backbone_kwargs={"widths": (8, 12, 20, 24)})
    assert tiny.channels == [8, 12, 20, 24] and seg.feature_info.channels == (8, 12, 20, 24)


def test_parameter_counts() -> None:
    model = build_segmentor("sam2_hiera_small", "upernet", 8)  # default width 256 for Hiera-S
    assert model.head.width == 256
    trunk, head = _n_params(model.backbone), _n_params(model.head)
    assert trunk == pytest.approx(33.9e6, rel=0.02)
    assert head == pytest.approx(9.2e6, rel=0.02)


def test_default_widths() -> None:
    assert build_segmentor("sam2_hiera_tiny", "upernet", 8).head.width == 128
    assert build_segmentor("tiny_cnn", "swiftnet", 8).head.width == 128
    assert build_segmentor("tiny_cnn", "upernet", 8).head.width == 64


# ------------------------------------------------------------------------------------------ FCN-8s geometry


def test_fcn8s_reference_output_equals_input_size() -> None:
    torch.manual_seed(0)
    model = build_segmentor("vgg16", "fcn8s", 3, head_width=8).eval()
    assert model.backbone.geometry == "fcn_reference" and model.head.geometry == "reference"
    assert model.backbone.features[0].padding == (100, 100) and model.backbone.features[4].ceil_mode
    with torch.no_grad():
        for h, w in [(16, 16), (33, 47), (64, 40), (81, 96)]:
            assert model(torch.randn(1, 3, h, w)).shape == (1, 3, h, w)


def test_fcn8s_reference_needs_padded_vgg() -> None:
    with pytest.raises(ConfigError, match="fcn_reference"):
        build_segmentor("tiny_cnn", "fcn8s", 3, head_width=8, head_kwargs={"geometry": "reference"})
    with pytest.raises(ConfigError, match="fcn_reference"):
        build_segmentor("vgg16", "upernet", 3, backbone_kwargs={"fcn_reference": True})


def test_bilinear_kernel_upsamples_constant() -> None:
    up = torch.nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2, 4))
        y = up(torch.ones(1, 2, 6, 6))
    # away from the border: gain 1 and no cross-talk between channels
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.ones(1, 2, 10, 10))


# ------------------------------------------------------------------------------------------ input sizes, names


def test_hiera_input_size_check() -> None:
    bb = build_backbone("sam2_hiera_tiny")
    with pytest.raises(ConfigError, match="multiple of 32") as err:
        bb.check_input_size(720, 1280)
    assert "736, 1280" in str(err.value)
    bb.check_input_size(736, 1280)
    with pytest.raises(ConfigError, match="multiple of 32"):
        bb(torch.randn(1, 3, 72, 64))
    build_backbone("tiny_cnn").check_input_size(720, 1281)  # any size is fine for plain CNNs


def test_unknown_names_suggest_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_segmentor("resnet19", "upernet", 3)
    with pytest.raises(ConfigError, match="did you mean 'upernet'"):
        build_segmentor("tiny_cnn", "uppernet", 3)
    assert {
        "sam2_hiera_tiny",
        "sam2_hiera_small",
        "sam2_hiera_base_plus",
        "resnet18",
        "vgg16",
        "tiny_cnn",
    } <= set(BACKBONES.names())
    assert {"upernet", "fcn8s", "swiftnet"} <= set(HEADS.names())


def test_resnet_preact_features() -> None:
    torch.manual_seed(0)
    bb = build_backbone("resnet18", preact_features=True).eval()
    for m in bb.modules():  # timm zero-initialises each block's last BN, which hides the residual branch
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pre = bb(x)
        bb.preact_features = False
        post = bb(x)
    assert any((f < 0).any() for f in pre)
    for a, b in zip(pre, post, strict=True):
        torch.testing.assert_close(a.clamp(min=0), b)
    assert build_segmentor("resnet18", "swiftnet", 3).backbone.preact_features


# ------------------------------------------------------------------------------------------ SAM2 weights


def _sam2_file(path: Path, variant: str = "tiny", drop: str | None = None) -> dict[str, torch.Tensor]:
    """A fabricated SAM2 checkpoint: trunk of a fresh random timm model in SAM2 key layout, plus non-trunk keys."""
    trunk = build_backbone(f"sam2_hiera_{variant}").weights_module().state_dict()
    sd = {}
    for k, v in trunk.items():
        k = k.replace("mlp.fc1", "mlp.layers.0").replace("mlp.fc2", "mlp.layers.1")
        sd[f"image_encoder.trunk.{k}"] = v.clone()
    sd["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 96, 1, 1)
    sd["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    sd["memory_encoder.out_proj.weight"] = torch.randn(64, 256, 1, 1)
    if drop is not None:
        del sd[drop]
    torch.save({"model": sd}, path)
    return trunk


@pytest.mark.parametrize("name", ["sam2_hiera_tiny.pt", "sam2.1_hiera_tiny.pt"])
def test_sam2_loading(tmp_path: Path, name: str) -> None:
    torch.manual_seed(1)
    file_trunk = _sam2_file(tmp_path / name)
    torch.manual_seed(2)
    bb = build_backbone("sam2_hiera_tiny")
    key = "blocks.3.mlp.fc1.weight"
    assert not torch.equal(bb.weights_module().state_dict()[key], file_trunk[key])
    load_backbone_weights(bb, tmp_path / name)
    loaded = bb.weights_module().state_dict()
    assert loaded.keys() == file_trunk.keys()
    assert all(torch.equal(loaded[k], file_trunk[k]) for k in file_trunk)
    # and through build_segmentor, on the wrapper's real parameters
    seg = build_segmentor("sam2_hiera_tiny", "upernet", 3, pretrained_backbone=tmp_path / name)
    assert torch.equal(seg.backbone.body.model.blocks[3].mlp.fc1.weight, file_trunk[key])


def test_sam2_missing_trunk_key(tmp_path: Path) -> None:
    _sam2_file(tmp_path / "sam2_hiera_tiny.pt", drop="image_encoder.trunk.blocks.2.attn.qkv.weight")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(blocks\.2\.attn\.qkv\.weight\)"):
        load_backbone_weights(build_backbone("sam2_hiera_tiny"), tmp_path / "sam2_hiera_tiny.pt")


def test_sam2_wrong_model_size(tmp_path: Path) -> None:
    _sam2_file(tmp_path / "sam2_hiera_tiny.pt", variant="tiny")
    with pytest.raises(CheckpointError, match="missing keys .*blocks.1[0-5]") as err:
        load_backbone_weights(build_backbone("sam2_hiera_small"), tmp_path / "sam2_hiera_tiny.pt")
    assert "sam2_hiera_small.pt" in str(err.value)


def test_weights_file_missing_or_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "base_checkpoints" / "sam2_hiera_tiny.pt"
    with pytest.raises(CheckpointError, match="not found") as err:
        load_backbone_weights(build_backbone("sam2_hiera_tiny"), missing)
    assert str(missing) in str(err.value) and "base_checkpoints/" in str(err.value)
    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_backbone_weights(build_backbone("resnet18"), bad)
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no SAM2 image-encoder trunk keys"):
        load_backbone_weights(build_backbone("sam2_hiera_tiny"), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no pretrained weights"):
        load_backbone_weights(build_backbone("tiny_cnn"), tmp_path / "other.pt")


# ------------------------------------------------------------------------------------------ ImageNet weights


def test_resnet18_torchvision_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_backbone("resnet18").weights_module().state_dict()
    # torchvision layout: same names, plus the classifier; old files lack num_batches_tracked
    sd = {k: v.clone() for k, v in src.items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(sd, tmp_path / "resnet18-f37072fd.pth")
    torch.manual_seed(2)
    bb = build_backbone("resnet18")
    load_backbone_weights(bb, tmp_path / "resnet18-f37072fd.pth")
    loaded = bb.weights_module().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items() if not k.startswith("fc."))
    torch.testing.assert_close(bb.body.layer4[1].conv2.weight, src["layer4.1.conv2.weight"])
    sd["layer5.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \(layer5\.weight\)"):
        load_backbone_weights(bb, tmp_path / "bad.pth")


def test_vgg16_torchvision_layout_and_fcn_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd = {k: v.clone() for k, v in build_backbone("vgg16").state_dict().items()}
    assert sorted({k.split(".")[1] for k in sd}, key=int) == [
        str(i) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    ]
    fc = 32  # a narrow stand-in for the 4096-wide ImageNet classifier
    sd.update({
        "classifier.0.weight": torch.randn(fc, 512 * 7 * 7), "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc), "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc), "classifier.6.bias": torch.randn(1000),
    })  # fmt: skip
    torch.save(sd, tmp_path / "vgg16-397923af.pth")
    model = build_segmentor(
        "vgg16", "fcn8s", 5, head_width=fc, pretrained_backbone=tmp_path / "vgg16-397923af.pth"
    )
    assert torch.equal(model.backbone.features[28].weight, sd["features.28.weight"])
    assert torch.equal(model.head.fc6.weight.flatten(1), sd["classifier.0.weight"])
    assert torch.equal(model.head.score_fr.bias, sd["classifier.6.bias"][:5])
    narrow = FCN8sHead([256, 512, 512], [8, 16, 32], 5, fc_width=16)
    with pytest.warns(UserWarning, match="random initialisation"):
        assert not load_fcn8s_classifier_weights(narrow, tmp_path / "vgg16-397923af.pth")


def test_segmentor_is_plain_module() -> None:
    model = build_segmentor("tiny_cnn", "upernet", 3, head_width=16)
    assert isinstance(model, Segmentor)
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()} | {
        k for k, _ in model.named_buffers()
    }
