"""Knowledge distillation: consistent teacher targets, KL reductions, the student data, offline = online, clean errors,
and KD image / KD-SSP training end to end on the tiny synthetic set (ssp.md 5.2, 5.4, 5.5, 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import ConfigError, DataError
from config.loader import load
from data.augment import VideoTrainAugment
from data.catalog import get_dataset_info
from data.frames import open_split
from data.image_dataset import load_frame
from data.logits import FrameRule, TeacherLogits
from data.teacher import SavedLogits
from data.transforms import to_tensor
from data.video_batch import collate_video
from data.video_dataset import FramePairs
from eval.vis import image as vis_image
from models.runs import load_image_model
from tests.conftest import TINY_HW
from training import train_image, train_video
from training.kd_consistency import consistent_targets
from training.losses import kl_distillation
from training.steps import step_name
from training.teacher import build_teacher


# --------------------------------------------------------------------------------------------- unit tests
def test_kl_reductions_differ_by_the_pixel_count() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 4, 6, 5, generator=g), torch.randn(2, 4, 6, 5, generator=g)
    ref = kl_distillation(logits, target, 2.0, True, "batchmean_reference")
    per_pixel = kl_distillation(logits, target, 2.0, True, "mean_per_pixel")
    assert ref > 0
    assert torch.allclose(ref, per_pixel * 30, rtol=1e-5)
    assert kl_distillation(target, target, 2.0, True, "mean_per_pixel").abs() < 1e-6


def _shift_flow(dx: float, h: int = 4, w: int = 5) -> torch.Tensor:
    f = torch.zeros(1, 2, h, w)
    f[:, 0] = dx
    return f


def test_consistency_reference_mode_by_hand() -> None:
    """Frame t-1 moved one pixel left into t: f_a = +1 (t -> t-1), f_b = -1. Visible pixels average the two
    teachers' logits, the out-of-frame column keeps zeros averaged in (the reference), off returns the inputs."""
    t_cur = torch.arange(20.0).view(1, 1, 4, 5)
    t_prev = torch.full((1, 1, 4, 5), 100.0)
    f_a, f_b = _shift_flow(1.0), _shift_flow(-1.0)
    new_cur, new_prev = consistent_targets(t_cur, t_prev, f_a, f_b, "reference")
    # |f_a + f_b|^2 = 0 everywhere: nothing occluded; t_prev warped by +1 is 100 except the last column (zeros)
    expect_cur = (t_cur + torch.cat([torch.full((1, 1, 4, 4), 100.0), torch.zeros(1, 1, 4, 1)], -1)) / 2
    rows = (..., slice(0, 3), slice(None))
    assert torch.allclose(new_cur[rows], expect_cur[rows])
    # the reference grid (2 p / (H - 1) - 1 with align_corners=False) reads the last row half a pixel outside the
    # frame: zeros averaged in (metrics.md 3.4), which proper mode does not do
    assert torch.allclose(new_cur[..., 3, :], t_cur[..., 3, :] / 2)
    warped_cur = torch.cat([torch.zeros(1, 1, 4, 1), t_cur[..., :4]], -1)  # t_cur pulled by -1
    assert torch.allclose(new_prev[rows], ((t_prev + warped_cur) / 2)[rows])
    same = consistent_targets(t_cur, t_prev, f_a, f_b, "off")
    assert same[0] is t_cur and same[1] is t_prev


def test_consistency_proper_mode_occludes_out_of_frame_and_inconsistent_flow() -> None:
    t_cur = torch.arange(20.0).view(1, 1, 4, 5)
    t_prev = torch.full((1, 1, 4, 5), 100.0)
    new_cur, new_prev = consistent_targets(t_cur, t_prev, _shift_flow(1.0), _shift_flow(-1.0), "proper")
    assert torch.allclose(new_cur[..., :4], (t_cur[..., :4] + 100) / 2)
    assert torch.equal(new_cur[..., 4], t_cur[..., 4])  # sample left the frame: kept, not averaged with zeros
    assert torch.equal(new_prev[..., 0], t_prev[..., 0])
    # flows that disagree (f_b = +1 as well): every pixel fails the forward-backward test, targets unchanged
    kept_cur, kept_prev = consistent_targets(t_cur, t_prev, _shift_flow(1.0), _shift_flow(1.0), "proper")
    assert torch.equal(kept_cur, t_cur) and torch.equal(kept_prev, t_prev)


def test_methods_without_a_distillation_step_get_one_line() -> None:
    assert step_name("ssp", "kldiv") == "ssp:kldiv"
    assert step_name("supervised", "crossentropy") == "supervised"
    with pytest.raises(ConfigError, match="loss_func: 'kldiv'.*use crossentropy"):
        step_name("supervised", "kldiv")


def test_kd_keys_must_agree() -> None:
    info = get_dataset_info("synthetic")
    cfg = load("kd_base_synthetic", "image", ["data_cfg.logit_distillation=false"])
    with pytest.raises(ConfigError, match="logit_distillation"):
        build_teacher(cfg, info, torch.device("cpu"), with_previous=False)
    cfg = load("kd_base_synthetic", "image", ["loss_cfg.softmax_on_target=false"])
    with pytest.raises(ConfigError, match="softmax_on_target"):
        build_teacher(cfg, info, torch.device("cpu"), with_previous=False)
    cfg = load("kd_base_synthetic", "image", [])
    with pytest.raises(ConfigError, match="data_cfg.logits_folder"):
        build_teacher(cfg, info, torch.device("cpu"), with_previous=False)
    assert (
        build_teacher(load("base_synthetic", "image", []), info, torch.device("cpu"), with_previous=False)
        is None
    )


# ------------------------------------------------------------------------------------------ with a dump
@pytest.fixture(scope="module")
def dump(tiny_image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny image run's logits of every train frame at its own input size (the teacher of these tests), and of
    the val frames in the sibling folder (so validation also logs the KL to the teacher)."""
    root = tmp_path_factory.mktemp("logits")
    for split in ("train", "val"):
        vis_image.main([str(tiny_image_run), "--save-logits", "--split", split, "--no-evaluation", "--logits-frames",
                        "all", "--logits-size", "eval", "--logits-out", str(root / split), "--num-workers", "0"])  # fmt: skip
    return root / "train"


def _copy_dump(dump: Path, tmp_path: Path) -> Path:
    out = tmp_path / "dump"
    shutil.copytree(dump, out)
    return out


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_manifest_mismatches_are_one_line(dump: Path, tmp_path: Path) -> None:
    info = get_dataset_info("synthetic")
    store = TeacherLogits(dump)
    store.check(classes=info.class_names, size_hw=TINY_HW, rule=FrameRule("kd_pairs", 2))  # fits
    with pytest.raises(
        ConfigError, match=r"frames_rule kd_samples\(2\) in the dump, the student needs kd_pairs\(2\)"
    ):
        narrow = _copy_dump(dump, tmp_path)
        _edit_manifest(narrow, frames_rule="kd_samples(2)")
        TeacherLogits(narrow).check(classes=info.class_names, size_hw=TINY_HW, rule=FrameRule("kd_pairs", 2))
    other = _copy_dump(dump, tmp_path / "b")
    _edit_manifest(other, classes=list(info.class_names)[::-1])
    with pytest.raises(ConfigError, match="class order differs"):
        TeacherLogits(other).check(classes=info.class_names, size_hw=TINY_HW, rule=FrameRule())
    _edit_manifest(other, classes=list(info.class_names)[:5])
    with pytest.raises(ConfigError, match="num_classes 5 in the dump, the student has 8"):
        TeacherLogits(other).check(classes=info.class_names, size_hw=TINY_HW, rule=FrameRule())
    with pytest.raises(ConfigError, match="another aspect ratio"):
        store.check(classes=info.class_names, size_hw=(64, 64), rule=FrameRule())
    with pytest.raises(DataError, match="manifest.json not found"):
        TeacherLogits(tmp_path / "nowhere")


def test_native_dump_upsampled_on_read_is_the_teacher_forward(tiny_image_run: Path, tmp_path: Path) -> None:
    """--logits-size native stores the head's stride-4 output (16x fewer pixels); the reader upsamples it as the
    teacher's forward does, so a student of the teacher's size reads the teacher's logits up to float16."""
    out = tmp_path / "native"
    vis_image.main([str(tiny_image_run), "--save-logits", "--split", "val", "--no-evaluation", "--logits-frames", "all",
                    "--logits-size", "native", "--logits-out", str(out), "--num-workers", "0"])  # fmt: skip
    store = TeacherLogits(out)
    stride = store.manifest["output_stride"]
    assert stride > 1 and store.size_hw == (TINY_HW[0] // stride, TINY_HW[1] // stride)
    model, cfg, _ = load_image_model(tiny_image_run)
    info = get_dataset_info("synthetic")
    _, _, clips = open_split(cfg.data_cfg, "val", 0)
    frame, _ = load_frame(clips[0], 2, info, TINY_HW)
    with torch.no_grad():
        full = model(to_tensor([frame]))[0]
    read = torch.from_numpy(store.load(clips[0].name, clips[0].frames[2].stem, TINY_HW)).float()
    assert read.shape == full.shape
    assert (read - full).abs().max() <= 1e-3 * full.abs().max()


def test_missing_logit_file_names_the_frame(dump: Path, tmp_path: Path, tiny_synthetic: Path) -> None:
    folder = _copy_dump(dump, tmp_path)
    victim = sorted(folder.glob("*/*.npy"))[1]
    victim.unlink()
    store = TeacherLogits(folder)
    with pytest.raises(DataError, match=f"frame {victim.stem} of clip {victim.parent.name}"):
        store.load(victim.parent.name, victim.stem)


def _pairs(tiny_synthetic: Path, teacher_source: object, augment: VideoTrainAugment) -> FramePairs:
    info = get_dataset_info("synthetic")
    cfg = load("ssp_synthetic", "video", [f"data_cfg.path={tiny_synthetic}"])
    _, _, clips = open_split(cfg.data_cfg, "train", 0)
    return FramePairs(
        clips, info, TINY_HW, train=True, augment=augment, skip=2, teacher=teacher_source, gt_flow=True
    )


def test_student_samples_every_1_plus_kn_frame_with_the_same_draw(dump: Path, tiny_synthetic: Path) -> None:
    store = TeacherLogits(dump)
    pairs = _pairs(
        tiny_synthetic, SavedLogits(store), VideoTrainAugment(square_crop=False, p_flip=1.0, p_scale=0.0)
    )
    # 4 train clips of 4 frames, labelled or not: samples at indices 1 and 3 of each, with their predecessors
    assert sorted({s.index for s in pairs.samples}) == [1, 3] and len(pairs) == 8
    item = pairs[0]
    clip = pairs.clips[pairs.samples[0].clip]
    raw = store.load(clip.name, clip.frames[item["indices"][1]].stem)
    assert item["teacher_logits"].shape == (2, 8, *TINY_HW)
    assert item["flows"].shape == (1, 2, *TINY_HW)  # the flow still rides along, split back out
    assert np.array_equal(item["teacher_logits"][1].numpy(), raw[:, :, ::-1])  # flipped with the frames


def test_online_teacher_equals_the_offline_dump(
    dump: Path, tiny_synthetic: Path, tiny_image_run: Path
) -> None:
    """The same samples with the same draws: saved logits vs the teacher run in the step (flip + scale-crop)."""
    info = get_dataset_info("synthetic")
    base = [f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]",
            f"data_cfg.teacher_run={tiny_image_run}", "data_cfg.train_skip_frames=2"]  # fmt: skip
    offline = build_teacher(load("kd_ssp_synthetic", "video", [*base, f"data_cfg.logits_folder={dump}"]), info,
                            torch.device("cpu"), with_previous=True)  # fmt: skip
    online = build_teacher(load("kd_ssp_synthetic", "video", [*base, "data_cfg.teacher_mode=online"]), info,
                           torch.device("cpu"), with_previous=True)  # fmt: skip
    # flips: float16 rounding alone (relative half-ulp 4.9e-4); scale-crop: plus OpenCV's 1/32-pixel weights
    for p_scale, tol in ((0.0, 5e-4), (1.0, 2e-3)):
        augment = VideoTrainAugment(square_crop=False, p_scale=p_scale)
        a = collate_video([_pairs(tiny_synthetic, offline.source, augment)[i] for i in range(4)])
        b = collate_video([_pairs(tiny_synthetic, online.source, augment)[i] for i in range(4)])
        assert torch.equal(a.frames, b.frames)
        t_off, t_on = offline.targets(a, TINY_HW), online.targets(b, TINY_HW)
        assert t_off.shape == t_on.shape == (4, 2, 8, *TINY_HW)
        inner = (slice(None),) * 3 + (slice(2, -2), slice(2, -2))  # the rim differs by the border rule
        err = (t_off - t_on)[inner].abs().max()
        assert err <= tol * t_off.abs().max(), (p_scale, float(err))
        assert t_off.abs().max() > 0.1  # the targets are not trivially zero


def test_online_teacher_of_another_dataset_is_one_line(tiny_image_run: Path, tiny_synthetic: Path) -> None:
    cfg = load(
        "kd_base_synthetic",
        "image",
        [f"data_cfg.teacher_run={tiny_image_run}", "data_cfg.teacher_mode=online"],
    )
    with pytest.raises(ConfigError, match=r"predicts 8 classes .* the student 12"):
        build_teacher(cfg, get_dataset_info("ruralscapes"), torch.device("cpu"), with_previous=False)


# -------------------------------------------------------------------------------------- training end to end
def test_kd_image_and_kd_ssp_train(
    dump: Path, tiny_overrides: list[str], tiny_video_overrides: list[str], tiny_image_run: Path
) -> None:
    run = train_image.main(["kd_base_synthetic", *tiny_overrides, f"data_cfg.logits_folder={dump}",
                            "training_cfg.num_epochs=1"])  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher"]["mode"] == "offline"
    last = metrics["epochs"][-1]
    assert last["train_kl"] > 0 and 0 <= last["val"]["miou"] <= 1
    assert last["val"]["scalars"]["kl_teacher"] > 0  # the val dump beside the train dump
    video = train_video.main(["kd_ssp_synthetic", *tiny_video_overrides, f"data_cfg.logits_folder={dump}",
                              "training_cfg.num_epochs=1"])  # fmt: skip
    last = json.loads((video / "metrics.json").read_text())["epochs"][-1]
    assert {"train_kl", "train_kl_prev", "train_tc"} <= set(last) and last["train_kl"] > 0
    assert last["val"]["scalars"]["kl_teacher"] > 0


def test_kd_ssp_online_trains_without_a_dump(tiny_video_overrides: list[str], tiny_image_run: Path) -> None:
    video = train_video.main(["kd_ssp_synthetic", *tiny_video_overrides, f"data_cfg.teacher_run={tiny_image_run}",
                              "data_cfg.teacher_mode=online", "training_cfg.num_epochs=1"])  # fmt: skip
    metrics = json.loads((video / "metrics.json").read_text())
    assert metrics["training_step"]["teacher"]["mode"] == "online"
    assert "scalars" not in metrics["epochs"][-1]["val"]  # no saved val logits to compare with online
    assert not list(video.glob("**/*.npy"))
