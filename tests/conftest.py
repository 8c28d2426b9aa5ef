"""Shared fixtures: a tiny synthetic dataset (generated once per session) and tiny-config overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from data.synthetic import SyntheticParams, generate

TINY_HW = (64, 96)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription stalls
    (seconds per call when another process is busy) and costs little at these sizes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def disk_weight_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Random-init local weights for the disk provider: DISK (``extractor`` entry) and LightGlue-for-DISK, the
    latter with the released file's old key names (so the loader's renaming is exercised)."""
    import kornia.feature as kf

    tmp = tmp_path_factory.mktemp("disk")
    torch.manual_seed(0)
    torch.save({"extractor": kf.DISK().state_dict()}, tmp / "depth-save.pth")
    sd = kf.LightGlue(None, input_dim=128).state_dict()
    sd.pop("confidence_thresholds")
    old = {re.sub(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.", r"\2.\1.", k): v for k, v in sd.items()}
    torch.save(old, tmp / "disk_lightglue.pth")
    return tmp / "depth-save.pth", tmp / "disk_lightglue.pth"


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic set: 4 train clips (last frame labelled) and 2 densely labelled val clips at 64x96."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    params = SyntheticParams(height=TINY_HW[0], width=TINY_HW[1], train_videos=2, val_videos=1, clips_per_video=2,
                             train_clip_len=4, val_clip_len=5)  # fmt: skip
    generate(root, params, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_coarse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny coarse-taxonomy stand-in (label-space KD): 2 train clips of other videos than tiny_synthetic, labelled
    on their last frame in 5 coarse classes, with the fine labels kept in hidden_fine/."""
    from data.synthetic.coarse import ensure_coarse

    out = tmp_path_factory.mktemp("extra") / "coarse"
    params = SyntheticParams(seed=7, height=TINY_HW[0], width=TINY_HW[1], train_videos=1, val_videos=1,
                             clips_per_video=2, train_clip_len=4, val_clip_len=5)  # fmt: skip
    return ensure_coarse(out, params, workers=1, progress=False)


@pytest.fixture
def tiny_overrides(tiny_synthetic: Path, tmp_path: Path) -> list[str]:
    """Overrides that turn base_synthetic into a seconds-long CPU run writing into tmp_path/checkpoints."""
    return [
        f"save_dir={tmp_path / 'checkpoints'}",
        f"data_cfg.path={tiny_synthetic}",
        f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]",
        "model_cfg.backbone=tiny_cnn",
        "training_cfg.batch_size=2",
        "training_cfg.num_epochs=2",
        "training_cfg.num_workers=0",
        "training_cfg.vis_samples=2",
        "training_cfg.val_interval=1",
        "optim_cfg.warmup_epochs=0",
    ]


@pytest.fixture(scope="session")
def tiny_image_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch tiny image run on the tiny synthetic set (the start of every video-training test)."""
    from training import train_image

    save = tmp_path_factory.mktemp("image_runs")
    overrides = [
        f"save_dir={save}", f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]",
        "model_cfg.backbone=tiny_cnn", "training_cfg.batch_size=2", "training_cfg.num_epochs=1",
        "training_cfg.num_workers=0", "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
    ]  # fmt: skip
    return train_image.main(["base_synthetic", *overrides])


@pytest.fixture
def tiny_video_overrides(tiny_synthetic: Path, tiny_image_run: Path, tmp_path: Path) -> list[str]:
    """Overrides that turn a video config into a seconds-long CPU run on the tiny set (true flow for the loss)."""
    return [
        f"save_dir={tmp_path / 'checkpoints'}",
        "data_cfg.dataset=synthetic",
        f"data_cfg.path={tiny_synthetic}",
        f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]",
        f"image_model_cfg.checkpoint_name={tiny_image_run}",
        "training_cfg.batch_size=2",
        "training_cfg.num_epochs=2",
        "training_cfg.early_stopping=null",
        "training_cfg.num_workers=0",
        "training_cfg.vis_samples=1",
        "training_cfg.val_interval=1",
        "optim_cfg.warmup_epochs=0",
    ]


@pytest.fixture
def tiny_dff_run(tiny_synthetic: Path, tiny_image_run: Path, tmp_path: Path) -> Path:
    """A one-step DFF run (frozen DIS flow, ``k_interval`` 3 = interval 2) on the tiny set."""
    from training import train_video

    h, w = TINY_HW
    return train_video.main([
        "dff_synthetic", f"save_dir={tmp_path}", f"data_cfg.path={tiny_synthetic}",
        f"data_cfg.crop_size=[{h}, {w}]", f"image_model_cfg.checkpoint_name={tiny_image_run}",
        "video_model_cfg.dff.k_interval=3", "training_cfg.batch_size=2", "training_cfg.num_epochs=1",
        "training_cfg.max_steps_per_epoch=1", "training_cfg.max_val_samples=2", "training_cfg.num_workers=0",
        "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
    ])  # fmt: skip
