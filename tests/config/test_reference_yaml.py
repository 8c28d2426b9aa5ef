"""Reference YAML loads as it is (``ssp.md`` §10): every key the reference spells, and each lands where tcseg keeps it.

The fixtures in ``reference/`` are full reference-style files (reference key spellings, values and layout, no
tcseg key): ``image_*`` for ``config/image``, ``video_*`` for ``config/video``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.errors import ConfigError
from config.loader import dump, from_dict, load, read_yaml, to_dict
from config.schema import DFFCfg, NetWarpCfg, TCBCfg

REFERENCE = Path(__file__).parent / "reference"
FIXTURES = sorted(p.stem for p in REFERENCE.glob("*.yaml"))

# Every key of ssp.md §10.1-10.8, as the reference spells it (section.key; top-level keys bare).
SPEC_KEYS = {
    "save_dir", "pretrained_checkpoint", "resume_training", "no_training",
    *(f"data_cfg.{k}" for k in (
        "dataset", "path", "crop_size", "square_crop", "data_augmentation", "soft_labels", "logit_distillation",
        "logits_folder", "min_vid_len", "labeled_frames_per_vid", "train_skip_frames", "val_skip_frames",
        "adjacent_frames", "opencv_homos", "opencv_model_type")),
    *(f"model_cfg.{k}" for k in ("checkpoint_model", "model_architecture", "frozen_encoder", "upsampling")),
    *(f"image_model_cfg.{k}" for k in ("image_save_dir", "checkpoint_folder", "checkpoint_name", "best_model")),
    *(f"video_model_cfg.{k}" for k in (
        "model_name", "const_loss_lb", "kd_consistent_labels", "last_out_loss_lb", "pred_mixing_op", "sim_op",
        "upsample_before_mixing", "upsampling", "k_registrator_model", "n_mixing_layers", "window_size",
        "low_scale_homo", "features_interp_mode", "train_flow", "flow_iters", "k_interval", "flow_mode",
        "tcb_module")),
    *(f"training_cfg.{k}" for k in (
        "batch_size", "num_epochs", "early_stopping", "num_workers", "lr", "trained_layer", "secondary_lr")),
    *(f"optim_cfg.{k}" for k in (
        "optimizer", "scheduler", "weight_decay", "momentum", "warmup_epochs", "scheduler_power", "start_lr",
        "final_lr")),
    *(f"loss_cfg.{k}" for k in ("loss_func", "class_weights", "softmax_on_target", "temperature")),
}  # fmt: skip


def _kind(name: str) -> str:
    return name.split("_", 1)[0]


def ref(name: str, overrides: list[str] | None = None) -> Any:
    return load(str(REFERENCE / f"{name}.yaml"), _kind(name), overrides)


def _file_keys(name: str) -> set[str]:
    data = read_yaml(REFERENCE / f"{name}.yaml")
    return {k for k, v in data.items() if not isinstance(v, dict)} | {
        f"{k}.{kk}" for k, v in data.items() if isinstance(v, dict) for kk in v
    }


def test_the_fixtures_use_every_reference_key_and_only_those() -> None:
    used = set().union(*(_file_keys(n) for n in FIXTURES))
    assert SPEC_KEYS - used == set(), "keys of ssp.md 10.1-10.8 no fixture uses"
    assert used - SPEC_KEYS == set(), "fixtures must hold reference keys only"
    assert {_kind(n) for n in FIXTURES} == {"image", "video"}


@pytest.mark.parametrize("name", FIXTURES)
def test_reference_file_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    cfg = ref(name)
    stored = to_dict(cfg)
    assert to_dict(from_dict(stored, _kind(name))) == stored  # what a checkpoint stores loads back
    path = tmp_path / "resolved.yaml"
    path.write_text(dump(cfg))
    assert to_dict(load(str(path), _kind(name))) == stored
    # the flat reference keys became section keys: the resolved config has none of them
    assert not {"train_flow", "flow_iters", "k_interval", "flow_mode", "tcb_module"} & set(
        stored.get("video_model_cfg", {})
    )


# ------------------------------------------------------------------------------------------------- values


def test_image_values_land_where_they_should() -> None:
    base = ref("image_base_uavid")
    assert base.save_dir == "./checkpoints" and base.no_training is False
    assert base.training_cfg.lr == pytest.approx(2.5e-5) and base.training_cfg.epochs == 200
    assert base.data_cfg.labeled_frames_per_vid is None and base.data_cfg.crop_size == [736, 1280]
    assert (
        base.model_cfg.model_architecture == "hierasam_upernet" and base.model_cfg.checkpoint_model == "small"
    )
    assert base.model_cfg.frozen_encoder is False and base.model_cfg.upsampling == "bicubic"
    assert base.loss_cfg.temperature == 1.0 and base.loss_cfg.class_weights is None

    teacher = ref("image_teacher_uavid")
    assert teacher.data_cfg.crop_size == [1440, 2560] and teacher.data_cfg.square_crop
    assert teacher.model_cfg.checkpoint_model == "base_plus"

    kd = ref("image_kd_base_rural")
    assert kd.data_cfg.soft_labels and kd.data_cfg.logit_distillation and kd.data_cfg.train_skip_frames == 2
    assert (
        kd.loss_cfg.loss_func == "kldiv" and kd.loss_cfg.softmax_on_target and kd.loss_cfg.temperature == 2.0
    )
    assert (kd.training_cfg.num_epochs, kd.training_cfg.epochs, kd.training_cfg.num_workers) == (30, 25, 16)

    assert ref("image_untrained_uavid").no_training is True
    convnext = ref(
        "image_convnext_rural"
    ).model_cfg  # written "UPerNet": case-insensitive, as in the reference
    assert (convnext.model_architecture, convnext.checkpoint_model) == (
        "upernet",
        "openmmlab/upernet-convnext-small",
    )
    segformer = ref("image_segformer_uavid").model_cfg  # written "Segformer"
    assert (segformer.model_architecture, segformer.checkpoint_model) == ("segformer", "nvidia/mit-b3")


def test_ssp_and_kd_ssp_values() -> None:
    cfg = ref("video_ssp_uavid")
    assert cfg.save_dir == "checkpoints" and cfg.training_cfg.lr == pytest.approx(5e-5)
    img = cfg.image_model_cfg
    assert (img.image_save_dir, img.checkpoint_folder, img.checkpoint_name, img.best_model) == (
        "checkpoints",
        "",
        "",
        False,
    )
    v = cfg.video_model_cfg
    assert (v.model_name, v.const_loss_lb, v.sim_op, v.pred_mixing_op, v.k_registrator_model) == (
        "base",
        0.5,
        "conv",
        "id",
        "disk",
    )
    assert v.upsampling == "bicubic" and v.upsample_before_mixing and v.last_out_loss_lb == 1.0
    assert cfg.data_cfg.opencv_homos is False and cfg.data_cfg.opencv_model_type == "akaze"
    assert cfg.loader_registration_name is None  # opencv_model_type is unused without opencv_homos
    assert (cfg.training_cfg.trained_layer, cfg.training_cfg.secondary_lr) == (None, pytest.approx(1e-4))
    o = cfg.optim_cfg
    assert (o.optimizer, o.scheduler, o.warmup_epochs, o.start_lr, o.final_lr) == (
        "adamw",
        "cosine",
        2.0,
        1e-4,
        1e-4,
    )

    kd = ref("video_kd_ssp_uavid")
    assert kd.data_cfg.soft_labels and kd.data_cfg.logit_distillation and kd.data_cfg.logits_folder is None
    assert kd.video_model_cfg.const_loss_lb == 135000.0 and kd.video_model_cfg.kd_consistent_labels
    assert (
        kd.loss_cfg.loss_func == "kldiv"
        and kd.training_cfg.num_workers == 16
        and kd.training_cfg.epochs == 20
    )


def test_ablation_values() -> None:
    assert ref("video_lambda_0.2").video_model_cfg.const_loss_lb == pytest.approx(0.2)
    assert ref("video_ablation_consistencyloss").video_model_cfg.const_loss_lb == 0.0
    assert ref("video_ablation_cossim").video_model_cfg.sim_op == "cossim"
    assert ref("video_ablation_interpolation").video_model_cfg.sim_op == "constant"
    registration = ref("video_ablation_registration")
    assert registration.video_model_cfg.k_registrator_model == "identity"
    assert registration.loader_registration_name is None
    rural = ref("video_ssp_rural")
    assert rural.data_cfg.dataset == "ruralscapes" and rural.training_cfg.epochs == 75


def test_legacy_keys_and_exponent_string() -> None:
    cfg = ref("video_legacy_ssp")
    assert cfg.training_cfg.lr == pytest.approx(5e-5)  # written 5e-5: a string to YAML
    v = cfg.video_model_cfg
    assert (v.n_mixing_layers, v.window_size, v.low_scale_homo, v.features_interp_mode) == (
        1,
        None,
        False,
        "bilinear",
    )
    assert cfg.data_cfg.opencv_homos and cfg.loader_registration_name == "orb"


def test_method_keys_move_into_the_method_section() -> None:
    dff = ref("video_dff_uavid").video_model_cfg
    assert dff.model_name == "dff2" and dff.netwarp is None and dff.tcb is None
    assert dff.dff == DFFCfg(k_interval=8, flow_iters=8, train_flow=True, flow_mode="bilinear")
    netwarp = ref("video_netwarp_rural").video_model_cfg
    assert (
        netwarp.netwarp == NetWarpCfg(flow_iters=8, train_flow=True, flow_mode="bilinear")
        and netwarp.dff is None
    )
    ppm = ref("video_tcbppm_uavid")
    assert ppm.video_model_cfg.tcb == TCBCfg(module="ppm") and ppm.data_cfg.adjacent_frames == [-1, -2, -3]
    assert ref("video_tcbocr_rural").video_model_cfg.tcb.module == "ocr"
    # non-default values land too, from files and from the command line
    assert ref("video_dff_uavid", ["video_model_cfg.k_interval=4"]).video_model_cfg.dff.k_interval == 4


def _write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def test_flat_and_section_key_must_agree(tmp_path: Path) -> None:
    same = _write(
        tmp_path,
        "same.yaml",
        "video_model_cfg:\n  model_name: dff2\n  k_interval: 4\n  dff:\n    k_interval: 4\n",
    )
    assert load(same, "video").video_model_cfg.dff.k_interval == 4
    both = _write(
        tmp_path,
        "both.yaml",
        "video_model_cfg:\n  model_name: dff2\n  k_interval: 4\n  dff:\n    k_interval: 6\n",
    )
    with pytest.raises(ConfigError) as err:
        load(both, "video")
    assert str(err.value) == (
        "both.yaml: video_model_cfg.k_interval: 4 contradicts video_model_cfg.dff.k_interval: 6 (the same setting); "
        "keep only one of the two"
    )
    # across files the later one wins, as for any key: the base's section, then the file's flat key
    _write(
        tmp_path,
        "dff_base.yaml",
        "video_model_cfg:\n  model_name: dff2\n  dff:\n    k_interval: 6\n    flow: dis\n",
    )
    top = _write(tmp_path, "top.yaml", "base: dff_base\nvideo_model_cfg:\n  k_interval: 3\n")
    dff = load(top, "video").video_model_cfg.dff
    assert (dff.k_interval, dff.flow) == (3, "dis")


def test_flat_key_of_another_method_is_rejected(tmp_path: Path) -> None:
    # no reference file has one (checked), so tcseg rejects it instead of ignoring it as the reference does
    path = _write(tmp_path, "x.yaml", "video_model_cfg:\n  model_name: base\n  k_interval: 8\n")
    with pytest.raises(ConfigError, match=r"^x\.yaml: video_model_cfg\.k_interval: this reference key configures "
                       r"model_name dff2, but model_name is 'base'; remove it$"):  # fmt: skip
        load(path, "video")
    # the method is the one that will be built: a later layer's model_name counts
    with pytest.raises(ConfigError, match=r"tcb_module: this reference key configures model_name tcb, but "
                       r"model_name is 'netwarp'"):  # fmt: skip
        ref("video_tcbppm_uavid", ["video_model_cfg.model_name=netwarp"])
    with pytest.raises(
        ConfigError, match=r"train_flow: this reference key configures model_name dff2, netwarp"
    ):
        load(_write(tmp_path, "y.yaml", "video_model_cfg:\n  train_flow: true\n"), "video")


def test_flat_keys_are_type_checked_under_their_own_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.yaml", "video_model_cfg:\n  model_name: tcb\n  tcb_module: psp\n")
    with pytest.raises(ConfigError, match=r"video_model_cfg\.tcb_module: 'psp' is not one of ocr, ppm"):
        load(path, "video")
    path = _write(tmp_path, "k.yaml", "video_model_cfg:\n  model_name: dff2\n  k_interval: eight\n")
    with pytest.raises(ConfigError, match=r"video_model_cfg\.k_interval: expected an integer, got 'eight'"):
        load(path, "video")


def test_model_architecture_is_case_insensitive() -> None:
    for spelt, arch in (
        ("Segformer", "segformer"),
        ("UPerNet", "upernet"),
        ("HieraSAM_UperNet", "hierasam_upernet"),
    ):
        ckpt = {"segformer": "nvidia/mit-b2", "upernet": "openmmlab/upernet-convnext-small"}.get(
            arch, "small"
        )
        cfg = ref(
            "image_base_uavid",
            [f"model_cfg.model_architecture={spelt}", f"model_cfg.checkpoint_model={ckpt}"],
        )
        assert cfg.model_cfg.model_architecture == arch
    with pytest.raises(ConfigError, match=r"'UPerNett' is not one of .*did you mean"):
        ref("image_base_uavid", ["model_cfg.model_architecture=UPerNett"])


# ------------------------------------------------------------------------------------------ honoured keys


def _ssp(cfg: Any) -> Any:
    from models.build import build_video_model
    from models.image.segmentor import build_segmentor

    return build_video_model(cfg, build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear"))


@pytest.mark.parametrize("kind", ["sift", "akaze", "orb"])
def test_opencv_model_type_is_the_loader_registration(kind: str) -> None:
    cfg = ref("video_ablation_registration", [
        "data_cfg.opencv_homos=true", f"data_cfg.opencv_model_type={kind}", "video_model_cfg.registration.cache=false",
    ])  # fmt: skip
    model = _ssp(cfg)
    assert model.registration.name == "identity"  # k_registrator_model: the model's own (streaming) provider
    needs = model.needs()  # what the data loader is given to run on the augmented training pairs
    assert needs.registration is model.loader_registration and needs.registration.name == kind
    assert not needs.true_homographies
    frame = (np.arange(64 * 96 * 3).reshape(64, 96, 3) % 251).astype(np.uint8)
    assert needs.registration.estimate_np(frame, frame).shape == (3, 3)


def test_one_provider_serves_both_when_they_agree_and_gt_wins() -> None:
    same = _ssp(ref("video_ssp_uavid", [
        "data_cfg.opencv_homos=true", "data_cfg.opencv_model_type=orb", "video_model_cfg.k_registrator_model=orb",
    ]))  # fmt: skip
    assert same.loader_registration is same.registration and same.registration.name == "orb"
    # without opencv_homos the model registers, whatever opencv_model_type says
    cfg = ref("video_ablation_registration", ["data_cfg.opencv_model_type=orb"])
    assert cfg.loader_registration_name is None and _ssp(cfg).needs().registration is None
    # gt (the synthetic set's true homographies) is served by the dataset whatever opencv_homos says
    gt = ref("video_ssp_uavid", ["data_cfg.opencv_homos=true", "video_model_cfg.k_registrator_model=gt"])
    needs = _ssp(gt).needs()
    assert gt.loader_registration_name is None and needs.true_homographies and needs.registration is None


@pytest.mark.parametrize("name", ["video_netwarp_rural", "video_tcbppm_uavid", "video_tcbocr_rural"])
def test_reference_baselines_build_or_say_planned(name: str) -> None:
    """A registered method builds from the reference file (its RAFT from a checkpoint: ``pretrained=False``); a
    planned one loads but building it says so, in one line naming what is available."""
    from models.build import build_video_model
    from models.image.segmentor import build_segmentor
    from models.registry import VIDEO_MODELS

    cfg = ref(name)
    method = cfg.video_model_cfg.model_name
    image = build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear")
    if method in VIDEO_MODELS:
        assert build_video_model(cfg, image, pretrained=False).method == method
        return
    with pytest.raises(ConfigError) as err:
        build_video_model(cfg, image, pretrained=False)
    assert str(err.value).startswith(f"video_model_cfg.model_name: '{method}' (")
    available = ", ".join(VIDEO_MODELS.names())
    assert str(err.value).endswith(f"is planned but not available yet; available: {available}")
    assert "\n" not in str(err.value)


def test_reference_netwarp_builds_netwarp() -> None:
    from models.build import build_video_model
    from models.image.segmentor import build_segmentor
    from models.video.netwarp import NetWarp

    image = build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear")
    model = build_video_model(ref("video_netwarp_rural"), image, pretrained=False)  # RAFT from a checkpoint
    assert isinstance(model, NetWarp) and model.flow_network.iters == 8 and model.flow_mode == "bilinear"


def test_a_stored_run_takes_reference_spelt_overrides() -> None:
    """eval/benchmark --set on a stored DFF run: the flat reference key overrides the stored section key."""
    from data.catalog import get_dataset_info
    from models.build import build_image_model, build_video_model
    from models.runs import _video_from

    image_cfg = load("base_synthetic", "image", ["model_cfg.backbone=tiny_cnn"])
    cfg = load("dff_synthetic", "video")
    image = build_image_model(image_cfg.model_cfg, get_dataset_info("synthetic").num_classes)
    state = build_video_model(cfg, image, pretrained=False).state_dict()
    ckpt = {"config": to_dict(cfg), "image_config": to_dict(image_cfg), "model": state}
    model, loaded, _ = _video_from(ckpt, Path("stored.pth"), overrides=["video_model_cfg.k_interval=3"])
    assert cfg.video_model_cfg.dff.k_interval != 3
    assert loaded.video_model_cfg.dff.k_interval == 3 and model.k_interval == 3
