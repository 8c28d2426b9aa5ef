"""SSP's reference mode (``ssp_uavid_reference``, ``ssp_rural_reference``): the reference code's loss and
registration inputs, as short deltas on the default configs (``ssp.md`` §5.3, §7.8, §15.1 #7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from config.loader import load, to_dict
from data.catalog import get_dataset_info
from models.build import build_video_model
from models.image.segmentor import build_segmentor
from training.steps.ssp import SSPStep

# What reference mode changes, and to what: each is a reference defect that the default configs correct.
REFERENCE_VALUES = {
    "video_model_cfg.registration.input_norm": "imagenet",
    "video_model_cfg.flow.input_norm": "imagenet",
    "video_model_cfg.flow.pad": "none",
    "video_model_cfg.tc_loss.photometric": "signed_sum",
    "video_model_cfg.tc_loss.grid": "reference",
}


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("default, reference", [("ssp_uavid", "ssp_uavid_reference"),
                                                ("ssp_rural", "ssp_rural_reference")])  # fmt: skip
def test_reference_mode_differs_from_the_default_exactly_in_the_reference_inputs(
    default: str, reference: str
):
    base, ref = _leaves(to_dict(load(default, "video"))), _leaves(to_dict(load(reference, "video")))
    diff = {k: ref[k] for k in base if base[k] != ref[k]}
    assert diff == REFERENCE_VALUES
    # both use the reference's photometric augmentation (reference-valued configs, ssp.md 7.8)
    assert base["data_cfg.photometric"] == ref["data_cfg.photometric"] == "reference"


def test_synthetic_configs_keep_tcsegs_photometry():
    for name in ("ssp_synthetic", "dff_synthetic", "per_frame_synthetic"):
        assert load(name, "video").data_cfg.photometric == "mid_grey", name


def test_reference_mode_builds_its_helpers_with_the_reference_inputs(
    disk_weight_files: tuple[Path, Path], tmp_path: Path
):
    from torchvision.models.optical_flow import raft_large

    raft = tmp_path / "raft_large.pth"
    torch.save(raft_large(weights=None).state_dict(), raft)
    cfg = load("ssp_uavid_reference", "video", [
        f"video_model_cfg.flow.weights={raft}",
        f"video_model_cfg.registration.disk_weights={disk_weight_files[0]}",
        f"video_model_cfg.registration.lightglue_weights={disk_weight_files[1]}",
        f"video_model_cfg.registration.cache_dir={tmp_path / 'cache'}",
    ])  # fmt: skip
    step = SSPStep(cfg, get_dataset_info("uavid"), torch.device("cpu"))
    flow = step.describe()["tc_flow"]
    assert flow["input_norm"] == "imagenet" and flow["pad"] == "none"
    assert step.tc_loss is not None
    assert (step.tc_loss.cfg.photometric, step.tc_loss.cfg.grid) == ("signed_sum", "reference")
    image = build_segmentor("tiny_cnn", "upernet", 5, upsampling="bilinear")
    registration = build_video_model(cfg, image).describe()["helpers"]["registration"]["settings"]
    assert registration["provider"] == "disk" and registration["input_norm"] == "imagenet"
