"""The reference's other image baselines: UperNet on timm's ConvNeXt, and SegFormer through the optional transformers.

SegFormer tests build tiny random models from a ``SegformerConfig`` saved to a temporary folder and skip when
transformers is not installed; the message for a missing transformers is tested without it (import blocked).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

from config.errors import CheckpointError, ConfigError
from config.loader import CONFIG_ROOT, load
from models.build import build_image_model
from models.image import build_backbone, load_backbone_weights

TINY_MIT = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32], "decoder_hidden_size": 16}


# ---------------------------------------------------------------------------------------------- ConvNeXt


def test_convnext_backbones_are_registered_with_their_widths() -> None:
    bb = build_backbone("convnext_tiny")
    assert bb.feature_info.channels == (96, 192, 384, 768) and bb.feature_info.strides == (4, 8, 16, 32)
    feats = bb(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, 96, 16, 24),
        (1, 192, 8, 12),
        (1, 384, 4, 6),
        (1, 768, 2, 3),
    ]
    with pytest.raises(ConfigError, match=r"input size 100x100 is not a multiple of 32.*ConvNeXt"):
        bb.check_input_size(100, 100)


def test_upernet_convnext_id_builds_a_512_wide_upernet_on_convnext() -> None:
    cfg = load("convnext_uavid", "image", ["model_cfg.checkpoint_model=openmmlab/upernet-convnext-tiny"])
    model = build_image_model(cfg.model_cfg, 5, load_backbone_weights=False)
    assert (
        model.backbone.name == "convnext_tiny" and model.feature_channels == 512
    )  # as HF's upernet-convnext
    y = model(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 5, 64, 64) and torch.isfinite(y).all()


def test_convnext_loads_timm_imagenet_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = timm.create_model("convnext_tiny", pretrained=False)  # the layout of timm's ImageNet files
    path = tmp_path / "convnext_tiny.pth"
    torch.save(full.state_dict(), path)
    bb = build_backbone("convnext_tiny")
    load_backbone_weights(bb, path)
    assert torch.equal(bb.body.stem_0.weight, full.stem[0].weight)
    assert torch.equal(bb.body.stages_3.blocks[2].mlp.fc2.weight, full.stages[3].blocks[2].mlp.fc2.weight)
    # the classifier is dropped; a file of another size does not fit
    with pytest.raises(CheckpointError, match=r"does not fit backbone convnext_base.*wrong shape"):
        load_backbone_weights(build_backbone("convnext_base"), path)


def test_convnext_missing_weights_file_says_where_to_get_it(tmp_path: Path) -> None:
    cfg = load("convnext_rural", "image", [f"model_cfg.pretrained_backbone={tmp_path / 'nope.safetensors'}"])
    with pytest.raises(CheckpointError, match=r"nope\.safetensors' not found: get timm's ImageNet weights of "
                       r"convnext_small .*base_checkpoints/ \(tcseg never downloads weights\)"):  # fmt: skip
        build_image_model(cfg.model_cfg, 5)


def test_swin_is_not_offered() -> None:
    with pytest.raises(
        ConfigError, match=r"Swin backbones are not offered; use openmmlab/upernet-convnext-small"
    ):
        load("convnext_uavid", "image", ["model_cfg.checkpoint_model=openmmlab/upernet-swin-small"])


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["model_cfg.checkpoint_model=nvidia/mit-b2"], r"'nvidia/mit-b2' is not a SAM2 Hiera size"),
        (["model_cfg.model_architecture=segformer"], r"segformer needs an nvidia/\* model"),
        (["model_cfg.model_architecture=fcn8s", "model_cfg.checkpoint_model=openmmlab/upernet-convnext-small"],
         r"is an UperNet model; set model_architecture: upernet"),
        (["model_cfg.model_architecture=upernet", "model_cfg.checkpoint_model=nvidia/mit-b3"],
         r"is a SegFormer model; set model_architecture: segformer"),
    ],
)  # fmt: skip
def test_architecture_and_checkpoint_model_must_agree(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load("base_uavid", "image", overrides)
    with pytest.raises(ConfigError, match=r"backbone: 'resnet18' contradicts checkpoint_model"):
        load("convnext_uavid", "image", ["model_cfg.backbone=resnet18"])


# ---------------------------------------------------------------------------------------------- SegFormer


def test_segformer_without_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.image.segformer import build_segformer

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the optional Hugging Face transformers package: pip install "
                       r"transformers"):  # fmt: skip
        build_segformer("nvidia/mit-b2", 5)
    cfg = load("segformerb2_uavid", "image")
    with pytest.raises(ConfigError, match="pip install transformers"):
        build_image_model(cfg.model_cfg, 5, load_backbone_weights=False)


def _save_tiny(folder: Path, cls_name: str, num_labels: int) -> torch.nn.Module:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = getattr(tf, cls_name)(tf.SegformerConfig(**TINY_MIT, num_labels=num_labels)).eval()
    model.save_pretrained(str(folder))
    return model


@pytest.mark.parametrize("cls_name", ["SegformerForSemanticSegmentation", "SegformerForImageClassification"])
def test_segformer_from_a_local_folder_gets_a_new_classifier(tmp_path: Path, cls_name: str) -> None:
    from models.image.segformer import segformer_from_folder

    saved = _save_tiny(tmp_path / "tiny", cls_name, num_labels=19)
    model = segformer_from_folder(tmp_path / "tiny", 5, upsampling="bilinear").eval()
    assert model.num_classes == 5 and model.head.decode_head.classifier.out_channels == 5
    assert model.feature_info.channels == (8, 16, 24, 32) and model.feature_channels == 16
    mine = model.backbone.encoder.state_dict()
    theirs = {
        k.removeprefix("segformer."): v for k, v in saved.state_dict().items() if k.startswith("segformer.")
    }
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.encode(x)
        assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
        logits = model.decode(feats)
        assert logits.shape == (2, 5, 16, 24)  # stride 4, not upsampled
        assert torch.equal(model.classify(model.decode_last_feature(feats)), logits)
        assert torch.allclose(
            model(x), torch.nn.functional.interpolate(logits, size=(64, 96), mode="bilinear")
        )


def test_segformer_decoder_split_equals_the_hf_decoder(tmp_path: Path) -> None:
    from models.image.segformer import segformer_from_folder

    hf = _save_tiny(tmp_path / "tiny", "SegformerForSemanticSegmentation", num_labels=5)
    model = segformer_from_folder(tmp_path / "tiny", 5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.decode(model.encode(x)), hf(x).logits, atol=1e-6)


def test_segformer_folder_must_hold_the_named_model(tmp_path: Path) -> None:
    from models.image.segformer import build_segformer

    _save_tiny(tmp_path / "mit-b2", "SegformerForImageClassification", num_labels=10)
    with pytest.raises(
        CheckpointError, match=r"holds depths \[1, 1, 1, 1\].*not nvidia/mit-b2 \(depths \[3, 4, 6, 3\]"
    ):
        build_segformer("nvidia/mit-b2", 5, folder=tmp_path / "mit-b2")
    with pytest.raises(CheckpointError, match=r"SegFormer folder '.*missing' not found.*download nvidia/mit-b3 by "
                       r"hand"):  # fmt: skip
        build_segformer("nvidia/mit-b3", 5, folder=tmp_path / "missing")


SEGFORMER_CONFIGS = sorted(p.stem for p in (CONFIG_ROOT / "image").glob("segformer*.yaml"))


@pytest.mark.parametrize("name", SEGFORMER_CONFIGS)
def test_segformer_config_names_match_their_model(name: str) -> None:
    size = name.removeprefix("segformer").split("_")[0]  # "b2"
    cfg = load(name, "image").model_cfg
    assert cfg.model_architecture == "segformer"
    assert cfg.checkpoint_model == f"nvidia/mit-{size}" and cfg.pretrained_backbone.endswith(f"mit-{size}")
    pytest.importorskip("transformers")
    from models.image.segformer import SEGFORMER_ARCHS

    model = build_image_model(cfg, 5, load_backbone_weights=False)
    assert list(model.backbone.encoder.config.depths) == SEGFORMER_ARCHS[f"nvidia/mit-{size}"]["depths"]
    assert {"b2": [3, 4, 6, 3], "b3": [3, 4, 18, 3]}[size] == list(model.backbone.encoder.config.depths)


def test_shipped_segformer_and_convnext_configs() -> None:
    assert set(SEGFORMER_CONFIGS) == {f"segformer{b}_{d}" for b in ("b2", "b3") for d in ("uavid", "rural")}
    for name in ("convnext_uavid", "convnext_rural"):
        cfg = load(name, "image")
        assert cfg.model_cfg.model_architecture == "upernet"
        assert cfg.model_cfg.checkpoint_model == "openmmlab/upernet-convnext-small"


def test_run_descriptions_name_the_model() -> None:
    from config.loader import to_dict
    from models.runs import architecture_of

    described = architecture_of(to_dict(load("segformerb2_uavid", "image")), "image")
    assert described == "image model segformer on nvidia/mit-b2"
    described = architecture_of(to_dict(load("convnext_rural", "image")), "image")
    assert described == "image model upernet on openmmlab/upernet-convnext-small"


def test_a_segformer_image_model_streams_through_ssp(tmp_path: Path) -> None:
    """The video wrappers need only the segmentor interface: SSP runs on a (tiny) SegFormer as on any backbone."""
    from models.build import build_video_model
    from models.image.segformer import segformer_from_folder

    _save_tiny(tmp_path / "tiny", "SegformerForSemanticSegmentation", num_labels=5)
    image = segformer_from_folder(tmp_path / "tiny", 5, upsampling="bilinear")
    # ablation_registration: identity registration, no weights file needed
    cfg = load("ablation_registration", "video", ["video_model_cfg.upsampling=bilinear"])
    model = build_video_model(cfg, image).eval()
    state = model.init_state()
    with torch.no_grad():
        for _ in range(2):
            out, state = model.step(torch.randn(1, 3, 64, 96), state)
    assert out.logits.shape == (1, 5, 64, 96) and torch.isfinite(out.logits).all()
