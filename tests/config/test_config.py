"""The config system: every shipped YAML validates; strict errors; base inheritance; overrides; docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import docs
from config.errors import ConfigError
from config.loader import CONFIG_ROOT, dump, from_dict, load, parse_overrides, to_dict

REPO = CONFIG_ROOT.parent
IMAGE_CONFIGS = sorted((CONFIG_ROOT / "image").glob("*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_image_config_loads(path: Path) -> None:
    cfg = load(path.stem, "image")
    assert cfg.training_cfg.epochs >= 0
    assert len(cfg.data_cfg.crop_size) == 2
    # the resolved config round-trips through its dict form (what a checkpoint stores)
    assert to_dict(from_dict(to_dict(cfg))) == to_dict(cfg)


def test_reference_values_of_base_uavid() -> None:
    cfg = load("base_uavid.yaml")
    assert cfg.data_cfg.dataset == "uavid" and cfg.data_cfg.crop_size == [736, 1280]
    assert cfg.training_cfg.lr == pytest.approx(2.5e-5)  # written 2.5e-5: YAML reads a string, coerced
    assert cfg.training_cfg.num_epochs == 250 and cfg.training_cfg.epochs == 200
    assert cfg.model_cfg.checkpoint_model == "small"


def test_base_inheritance_overrides_only_what_differs() -> None:
    teacher = load("teacher_rural")
    assert teacher.data_cfg.dataset == "ruralscapes"  # from base_rural
    assert teacher.data_cfg.crop_size == [1440, 2560] and teacher.data_cfg.square_crop
    assert teacher.training_cfg.epochs == 75
    assert teacher.optim_cfg.weight_decay == 0.05  # untouched keys keep the base_rural values


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "training_cfg:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: training_cfg\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load(str(path))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("training_cfg:\n  batch_size: four\n", r"training_cfg\.batch_size: expected an integer, got 'four'"),
        ("training_cfg:\n  batch_size: 2.5\n", r"training_cfg\.batch_size: expected an integer"),
        (
            "optim_cfg:\n  scheduler: cosin\n",
            r"optim_cfg\.scheduler: 'cosin' is not one of .*did you mean 'cosine'",
        ),
        ("data_cfg:\n  crop_size: [64]\n", r"data_cfg\.crop_size: expected 2 values, got 1"),
        ("training_cfg:\n  lr: -1.0\n", r"training_cfg\.lr: must be at least 0"),
        ("data_cfg: 3\n", r"data_cfg: expected a section"),
        ("training_cfg:\n  lr: 0.1\n  lr: 0.2\n", r"key 'lr' is written twice"),
        (
            "training_cfg:\n  early_stopping: 2\n  epochs_to_run: 3\n",
            r"epochs_to_run or early_stopping, not both",
        ),
        ("data_cfg: [1, 2\n", r"not valid YAML"),
        ("- a\n- b\n", r"top level must be a mapping"),
    ],
)
def test_bad_values_are_one_clear_error(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=pattern):
        load(str(path))


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "training_cfg:\n  lr: 5e-5\n")
    assert load(str(path)).training_cfg.lr == pytest.approx(5e-5)


def test_one_level_of_base_only(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "base: base_uavid\n")
    b = write(tmp_path, "b.yaml", "base: a\n")
    with pytest.raises(ConfigError, match="only one level of inheritance"):
        load(str(b))


def test_overrides_apply_after_the_file_and_are_checked() -> None:
    cfg = load(
        "base_uavid", overrides=["training_cfg.lr=1e-3", "data_cfg.crop_size=[64, 96]", "data_cfg.path=null"]
    )
    assert cfg.training_cfg.lr == pytest.approx(1e-3) and cfg.data_cfg.crop_size == [64, 96]
    with pytest.raises(
        ConfigError, match=r"command line: training_cfg\.lrr: unknown key \(did you mean 'lr'\?\)"
    ):
        load("base_uavid", overrides=["training_cfg.lrr=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["training_cfg.lr"])


def test_unknown_config_name_suggests_a_file() -> None:
    with pytest.raises(ConfigError, match=r"config 'base_uavd' not found.*did you mean 'base_uavid'"):
        load("base_uavd")


def test_dump_is_loadable_yaml(tmp_path: Path) -> None:
    cfg = load("base_rural")
    path = write(tmp_path, "resolved.yaml", dump(cfg))
    assert to_dict(load(str(path))) == to_dict(cfg)


def test_cli_config_error_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "typo.yaml", "training_cfg:\n  lrr: 0.1\n")
    proc = subprocess.run([sys.executable, "-m", "training.train_image", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "config error: typo.yaml: training_cfg.lrr: unknown key (did you mean 'lr'?)"
    ]
    assert "Traceback" not in proc.stderr


def test_docs_configs_md_is_up_to_date() -> None:
    assert docs.DOC_PATH.read_text() == docs.render(), "run: python -m config.docs --write"


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_image_config_builds_its_model(path: Path) -> None:
    from data.catalog import get_dataset_info
    from models.build import build_image_model

    cfg = load(path.stem, "image")
    if cfg.model_cfg.model_architecture == "segformer":
        pytest.importorskip("transformers")  # an optional extra (requirements-extra.txt)
    info = get_dataset_info(cfg.data_cfg.dataset)
    # weights files are user-provided, so build without them; the input size must suit the backbone
    model = build_image_model(cfg.model_cfg, info.num_classes, load_backbone_weights=False)
    model.check_input_size(*cfg.data_cfg.crop_size)
    assert model.num_classes == info.num_classes


def _registry_fields(cls: type, prefix: str = "") -> list[tuple[str, set, dict]]:
    """(key path, Literal choices, metadata) of every schema key that names a registry, recursively."""
    import dataclasses
    import typing

    from config.loader import section_type

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = section_type(hints[f.name])
        if nested is not None:
            out += _registry_fields(nested, f"{prefix}{f.name}.")
        elif "registry" in f.metadata:
            out.append((f"{prefix}{f.name}", set(typing.get_args(hints[f.name])), dict(f.metadata)))
    return out


def test_every_schema_list_of_names_equals_its_registry() -> None:
    """A name the schema accepts builds, and a registered component is reachable from a config."""
    import models  # noqa: F401  (registers everything)
    import training.semi  # noqa: F401  (registers the losses on unlabelled frames)
    from config.schema import KINDS
    from models.registry import Registry

    fields = [f for schema in KINDS.values() for f in _registry_fields(schema)]
    for key, choices, meta in fields:
        registry = Registry.ALL[meta["registry"]]
        assert choices - set(meta.get("registry_extra", ())) == set(registry.names()), key
    named = {meta["registry"] for _, _, meta in fields}
    assert {
        "video model",
        "flow provider",
        "registration provider",
        "head",
        "similarity op",
        "unlabelled loss",
    } <= named


def test_a_method_section_must_match_model_name(tmp_path: Path) -> None:
    cfg = load("dff_synthetic", "video")
    assert cfg.video_model_cfg.dff is not None and cfg.video_model_cfg.dff.flow == "dis"
    assert load("ssp_synthetic", "video").video_model_cfg.dff is None  # a section not set stays null
    with pytest.raises(ConfigError, match="video_model_cfg.dff: this section configures model_name 'dff2'"):
        load("ssp_synthetic", "video", ["video_model_cfg.dff.k_interval=4"])
    with pytest.raises(ConfigError, match="dff"):
        load("dff_synthetic", "video", ["video_model_cfg.model_name=base"])
    # a resolved config (as stored in a run) loads back: unset sections are written as null
    path = tmp_path / "stored.yaml"
    path.write_text(dump(load("ssp_synthetic", "video")))
    assert load(str(path), "video").video_model_cfg.dff is None
