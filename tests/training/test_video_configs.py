"""Every config in config/video/ loads and builds; one config per distinct method and loss trains 2 steps.

The list of configs is read at collection time, so a new file is covered without editing this module. Every
config builds into the variant it describes (method, similarity, providers). Training is what costs time, so it
runs once per distinct (method, temporal loss on/off, registration provider, flow) combination rather than once
per ablation file: the suite does not grow with ablations. Each trained config keeps its own model variant; only
the data, size, schedule and the local weight files are pointed at tiny stand-ins: random-init DISK, LightGlue
and RAFT files written once per module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from config.loader import CONFIG_ROOT, load, parse_overrides, read_yaml, to_dict
from models.build import build_video_model
from models.image.segmentor import build_segmentor
from models.runs import load_video_model
from models.video.similarity import SIMILARITY
from tests.conftest import TINY_HW
from training import train_video

CONFIGS = sorted(p.stem for p in (CONFIG_ROOT / "video").glob("*.yaml"))


def _training_key(name: str) -> tuple:
    """What makes a config train differently from another: its method, whether the temporal loss is on, the
    helpers' providers (registration, the loss's flow, a method's own flow), and its loss (labels or a teacher)."""
    cfg = load(name, "video")
    v = to_dict(cfg.video_model_cfg)
    tc = v["const_loss_lb"] > 0
    own = {k: x for k, x in v.items() if isinstance(x, dict) and k not in ("registration", "flow", "tc_loss")}
    # the registration provider matters to methods that register (their builder then records it as a helper)
    registration = (v["k_registrator_model"], cfg.loader_registration_name)
    return (
        v["model_name"],
        tc,
        registration,
        v["flow"]["backend"] if tc else None,
        str(own),
        cfg.loss_cfg.loss_func,
    )


def _representatives() -> list[str]:
    """One config per training key (the first in name order)."""
    seen: dict[tuple, str] = {}
    for name in CONFIGS:
        seen.setdefault(_training_key(name), name)
    return sorted(seen.values())


TRAINED = _representatives()


@pytest.fixture(scope="module")
def weight_files(
    tmp_path_factory: pytest.TempPathFactory, disk_weight_files: tuple[Path, Path]
) -> dict[str, Path]:
    """Random-init stand-ins for the local weights the UAVid configs name (DISK, LightGlue-for-DISK, RAFT)."""
    from torchvision.models.optical_flow import raft_large, raft_small

    tmp = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    files = {"disk": disk_weight_files[0], "lightglue": disk_weight_files[1]}
    # plain names: torchvision-style names (<arch>-<sha8>.pth) would have their digest checked
    for arch, build in (("raft_large", raft_large), ("raft_small", raft_small)):
        files[arch] = tmp / f"{arch}.pth"
        torch.save(build(weights=None).state_dict(), files[arch])
    return files


@pytest.fixture(scope="module")
def untrained_image_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (no_training) tiny image run on the tiny set: the start of the untrained-image ablation."""
    from training import train_image

    save = tmp_path_factory.mktemp("untrained_image_runs")
    overrides = [
        f"save_dir={save}", f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]",
        "model_cfg.backbone=tiny_cnn", "training_cfg.num_workers=0",
    ]  # fmt: skip
    return train_image.main([IMAGE_RUN_CONFIG["ablation_untrainedimage"], *overrides])


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _distinguishing(name: str) -> dict[str, Any]:
    """The leaves the config file itself sets with a value other than its base's: what makes it this variant."""
    own = read_yaml(CONFIG_ROOT / "video" / f"{name}.yaml")
    base = own.pop("base", None)
    loaded = _leaves(to_dict(load(name, "video")))
    base_values = _leaves(to_dict(load(base, "video"))) if base else {}
    return {k: loaded[k] for k in _leaves(own) if k not in base_values or base_values[k] != loaded[k]}


# Configs whose every distinguishing key is replaced by the tiny overrides, so that at tiny size they train as
# their base does; they still load and run here. A config missing from this list must keep at least one.
REPLACED_AT_TINY_SIZE = {
    "ssp_rural": "the dataset (ruralscapes -> synthetic) and its schedule (100/75 epochs -> 1 epoch)",
}
# Configs that differ from their base only by the image run they must be given (their file sets no other value):
# they get a tiny run written by that image config (no_training: true -> an untrained, epoch-0 checkpoint).
IMAGE_RUN_CONFIG = {"ablation_untrainedimage": "untrained_synthetic"}


def _weight_overrides(cfg: Any, weight_files: dict[str, Path], tmp_path: Path) -> list[str]:
    """Point every local weight file a config names at the tiny random-init stand-ins: DISK and LightGlue, and in
    any section that chooses a RAFT model (a flow provider or a method's flow network) every ``*weights`` key."""
    out = [
        f"video_model_cfg.registration.disk_weights={weight_files['disk']}",
        f"video_model_cfg.registration.lightglue_weights={weight_files['lightglue']}",
        f"video_model_cfg.registration.cache_dir={tmp_path / 'cache'}",  # not the repository's datasets/.cache
    ]

    def walk(section: dict, prefix: str) -> None:
        arch = next((v for v in section.values() if isinstance(v, str) and v.startswith("raft_")), None)
        for key, value in section.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif arch is not None and key.endswith("weights"):
                out.append(f"{prefix}{key}={weight_files[arch]}")

    walk(to_dict(cfg)["video_model_cfg"], "video_model_cfg.")
    return out


@pytest.mark.parametrize("name", CONFIGS)
def test_video_config_loads_and_builds_its_variant(
    name: str, weight_files: dict[str, Path], tmp_path: Path
) -> None:
    cfg = load(name, "video", _weight_overrides(load(name, "video"), weight_files, tmp_path))
    vcfg = cfg.video_model_cfg
    image = build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear")
    model = build_video_model(cfg, image)
    assert model.method == vcfg.model_name and model.image_model is image
    described = model.describe()
    assert described["method"] == vcfg.model_name
    helper_names = {n for n, _ in model.helpers().items()}
    assert not any(k.split(".")[0] in helper_names for k in model.state_dict())  # frozen helpers stay outside
    if hasattr(model, "sim"):  # SSP: the similarity and the registration provider of the file
        assert isinstance(model.sim, SIMILARITY.get(vcfg.sim_op)), (name, type(model.sim))
        assert described["helpers"]["registration"]["settings"]["provider"] == vcfg.k_registrator_model
        loader = model.helpers()["loader_registration"]  # opencv_homos: opencv_model_type in the loader
        assert (loader and loader.name) == cfg.loader_registration_name


def test_training_covers_every_method_and_loss() -> None:
    """The trained subset has one config per training key, and every registered method is among them."""
    from models.registry import VIDEO_MODELS

    assert (
        len({_training_key(n) for n in TRAINED}) == len(TRAINED) == len({_training_key(n) for n in CONFIGS})
    )
    trained_methods = {load(n, "video").video_model_cfg.model_name for n in TRAINED}
    assert trained_methods == set(VIDEO_MODELS.names())


@pytest.mark.parametrize("name", TRAINED)
def test_video_config_trains_two_steps(
    name: str,
    tiny_video_overrides: list[str],
    weight_files: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cfg = load(name, "video")  # the file loads as it is (no override)
    vcfg = cfg.video_model_cfg
    tiny = [
        "training_cfg.num_epochs=1",
        "training_cfg.early_stopping=null",
        "training_cfg.max_steps_per_epoch=2",
        "training_cfg.max_val_samples=2",
        "training_cfg.vis_samples=0",
        *_weight_overrides(cfg, weight_files, tmp_path),
    ]
    image_run = None
    if name in IMAGE_RUN_CONFIG:
        image_run = request.getfixturevalue("untrained_image_run")
        tiny.append(f"image_model_cfg.checkpoint_name={image_run}")
    if cfg.loss_cfg.loss_func == "kldiv":  # distillation: the tiny image run as an online teacher (no dump)
        teacher = request.getfixturevalue("tiny_image_run")
        tiny += ["data_cfg.teacher_mode=online", f"data_cfg.teacher_run={teacher}"]
    overrides = [*tiny_video_overrides, *tiny]

    run = train_video.main([name, *overrides])

    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["kind"] == "video" and last["finished"] and last["epoch"] == 1
    assert last["step"] == 2
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 1 and epochs[-1]["step"] == 2
    assert "val" in epochs[-1] and 0.0 <= epochs[-1]["val"]["miou"] <= 1.0

    # the stored config is the file's config: every key not overridden keeps the value the file gives it
    overridden = set(_leaves(parse_overrides(overrides)))
    expected = {k: v for k, v in _leaves(to_dict(cfg)).items() if k not in overridden}
    for stored in (_leaves(last["config"]), _leaves(read_yaml(run / "config.yaml"))):
        diff = {k: (v, stored.get(k)) for k, v in expected.items() if stored.get(k) != v}
        assert not diff, f"{name}: stored config lost the file's values (file, stored): {diff}"
    kept = {k: v for k, v in _distinguishing(name).items() if k not in overridden}
    if name in REPLACED_AT_TINY_SIZE:
        assert not kept, f"{name} keeps {kept} at tiny size: remove it from REPLACED_AT_TINY_SIZE"
    elif name in IMAGE_RUN_CONFIG:  # the variant is the image run: an untrained one, trained from here on
        assert Path(last["image_run"]) == image_run and last["image_config"]["no_training"]
        assert torch.load(image_run / "last.pth", map_location="cpu", weights_only=True)["epoch"] == 0
    else:
        assert kept, (
            f"{name}: every value distinguishing it from its base is overridden: the test ran its base"
        )
    stored = _leaves(last["config"])
    assert {k: stored[k] for k in kept} == kept

    # ... and the variant is the one that ran: the run rebuilds into that model, and the loss it trained with
    model, run_cfg, _ = load_video_model(run)
    assert model.method == vcfg.model_name
    if hasattr(model, "sim"):
        assert isinstance(model.sim, SIMILARITY.get(vcfg.sim_op)), (name, type(model.sim))
        assert model.registration is not None and model.registration.name == vcfg.k_registrator_model
    assert run_cfg.data_cfg.opencv_homos == cfg.data_cfg.opencv_homos
    tc = epochs[-1].get("train_tc")
    if vcfg.const_loss_lb > 0:
        assert tc is not None and tc > 0, f"{name}: lambda {vcfg.const_loss_lb} but no temporal loss"
    else:
        assert not tc, f"{name}: lambda 0 but a temporal loss {tc}"
