"""Semi-supervised image training (``semi_cfg``): the unlabelled pool and its flow, the side stream of the training
loop (alternating / joint, the zero-weight step), held-out model selection and the sum-reduced cross-entropy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from config.errors import ConfigError
from config.loader import load
from data.fractions import HELD_OUT_NAME, LIST_NAME, held_out_subset, labelled_keys, labelled_subset
from data.frames import open_split
from data.unlabelled import UnlabelledPairs, partner_pairs
from models.flow import build_flow
from models.flow.cache import CachedFlow
from tests.conftest import TINY_HW
from training import train_image
from training.loop import stream_indices
from training.losses import SegmentationCE

FCL = "fcn8s+fcl_synthetic"


def _tiny(tiny_synthetic: Path, tmp_path: Path, *extra: str) -> list[str]:
    """The FCL config as a seconds-long run on the tiny set (4 train clips of 4 frames, the last one labelled)."""
    return [
        f"save_dir={tmp_path / 'runs'}", f"data_cfg.path={tiny_synthetic}",
        f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]", "model_cfg.backbone=tiny_cnn", "model_cfg.head_width=16",
        "data_cfg.labeled_fraction=0.5", "training_cfg.num_epochs=1", "training_cfg.val_interval=1",
        "training_cfg.vis_samples=1", "optim_cfg.warmup_epochs=0", f"semi_cfg.flow.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]  # fmt: skip


def _optimizer_steps(run: Path) -> int:
    """How many optimizer steps the run took (AdamW counts them per parameter)."""
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


def test_partner_pairs_follow_pool_offset_and_exclusions(tiny_synthetic: Path) -> None:
    cfg = load("base_synthetic", "image", [f"data_cfg.path={tiny_synthetic}"])
    clips = open_split(cfg.data_cfg, "train")[2]
    assert partner_pairs(clips, "annotated", 1) == []  # the annotated frame ends each tiny clip
    back = partner_pairs(clips, "annotated", -1)
    assert [(p.first, p.second) for p in back] == [(3, 2)] * 4
    every = partner_pairs(clips, "all", 1)
    assert len(every) == 4 * 3 and all(p.second == p.first + 1 for p in every)
    first = clips[0]
    excluded = partner_pairs(clips, "all", 1, exclude={(first.name, first.frames[0].stem)})
    assert len(excluded) == 11 and (first.frames[0], first.frames[1]) not in {
        (p.first_path, p.second_path) for p in excluded
    }


def test_unlabelled_pairs_read_the_cache_and_mask_the_bottom_rows(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    cfg = load("base_synthetic", "image", [f"data_cfg.path={tiny_synthetic}"])
    pairs = partner_pairs(open_split(cfg.data_cfg, "train")[2], "all", 1)[:3]
    cached = CachedFlow(build_flow("gt"), tmp_path)
    data = UnlabelledPairs(pairs, TINY_HW, cached, mask_bottom=0.25)
    assert data.missing() == 3
    item = data[0]
    assert item["image"].shape == (3, *TINY_HW) and item["flow"].shape == (2, *TINY_HW) and item["index"] == 0
    assert data.missing() == 2  # computed on the fly, and stored
    true = build_flow("gt")(torch.zeros(1, 3, *TINY_HW), torch.zeros(1, 3, *TINY_HW), pairs[:1])[0]
    rows = TINY_HW[0] // 4
    assert torch.equal(item["flow"][:, :-rows], true[:, :-rows]) and item["flow"][:, -rows:].eq(0).all()
    assert true[:, -rows:].abs().sum() > 0  # the masked rows did move


def test_stream_order_depends_only_on_seed_and_step() -> None:
    whole = stream_indices(5, seed=3, first_step=0, steps=6, per_step=2)
    assert stream_indices(5, 3, 2, 4, 2) == whole[4:]  # a resumed run continues the stream
    assert sorted(whole[:5]) == list(range(5)) and sorted(whole[5:10]) == list(
        range(5)
    )  # each cycle: all once
    assert stream_indices(5, 4, 0, 6, 2) != whole


def test_held_out_frames_are_outside_the_labelled_subset(tiny_synthetic: Path) -> None:
    cfg = load("base_synthetic", "image", [f"data_cfg.path={tiny_synthetic}"])
    clips = open_split(cfg.data_cfg, "train")[2]
    keep = labelled_subset(clips, 0.5, 0, None)
    held = held_out_subset(clips, 0.25, 0, keep)
    assert len(held) == 1 and not set(held) & set(keep) and held == held_out_subset(clips, 0.25, 0, keep)
    assert held_out_subset(clips, None, 0, keep) is None
    assert len(held_out_subset(clips, 0.5, 0, None)) == 2 <= len(labelled_keys(clips))
    with pytest.raises(ConfigError, match="held_out_fraction: 3 held-out frames, but only 2"):
        held_out_subset(clips, 0.75, 0, keep)


def test_fcl_config_presets_and_checks() -> None:
    semi = load(FCL, "image").semi_cfg
    assert semi.fcl.resolved()["max_shift"] == 1 and semi.fcl.resolved()["threshold"] == 0.2
    jan = load(
        FCL, "image", ["semi_cfg.fcl.preset=jan2019", "semi_cfg.fcl.weight=null"]
    ).semi_cfg.fcl.resolved()
    assert (jan["weight"], jan["max_shift"], jan["threshold"], jan["reduction"]) == (10.0, 2, None, "mean")
    assert load(FCL, "image", ["semi_cfg.fcl.max_shift=3"]).semi_cfg.fcl.resolved()["max_shift"] == 3
    assert load("fcn8s_synthetic", "image").semi_cfg is None
    with pytest.raises(ConfigError, match="pair_offset: 0"):
        load(FCL, "image", ["semi_cfg.flow.pair_offset=0"])
    with pytest.raises(ConfigError, match="mask_bottom must be below 1"):
        load(FCL, "image", ["semi_cfg.flow.mask_bottom=1.0"])


def test_sum_reduced_cross_entropy_is_the_mean_times_the_labelled_pixels() -> None:
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    total, mean = SegmentationCE(reduction="sum")(logits, labels), SegmentationCE()(logits, labels)
    torch.testing.assert_close(total, mean * (labels != 255).sum())


def test_alternating_training_takes_two_steps_and_a_rerun_computes_no_flow(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    run = train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path)])
    metrics = json.loads((run / "metrics.json").read_text())
    semi = metrics["semi"]
    assert semi["unlabelled_step"] and semi["pairs"] == 12 and semi["flow_pairs_computed_on_the_fly"] == 12
    assert _optimizer_steps(run) == 2 * metrics["epochs"][-1]["step"] == 2  # 2 labelled frames, batch 2
    epoch = metrics["epochs"][-1]
    assert epoch["train_fcl"] <= 0 and 0 < epoch["train_fcl_active"] < 1  # repulsive: sum Q log P <= 0
    assert metrics["model_selection"].startswith("best_on_val")
    assert (run / "vis" / "unlabelled_epoch001_0.png").is_file()
    assert len((run / LIST_NAME).read_text().splitlines()) == 1 + 2
    # the flows read in the first run are stored; filling the rest ahead, a second run computes none
    from data import flow_cache

    flow_cache.main([str(run / "config.yaml"), "--cache-dir", str(tmp_path / "cache"), "--preview", "0"])
    again = train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path)])
    assert json.loads((again / "metrics.json").read_text())["semi"]["flow_pairs_computed_on_the_fly"] == 0


def test_joint_mode_takes_one_step_and_weight_zero_takes_none_unless_asked(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    joint = train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path, "semi_cfg.step_mode=joint")])
    assert _optimizer_steps(joint) == 1
    zero = ["semi_cfg.fcl.weight=0"]
    plain = train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path, *zero)])
    assert (
        _optimizer_steps(plain) == 1
        and not json.loads((plain / "metrics.json").read_text())["semi"]["unlabelled_step"]
    )
    quirk = train_image.main(
        [FCL, *_tiny(tiny_synthetic, tmp_path, *zero, "semi_cfg.zero_weight_unsup_step=true")]
    )
    assert _optimizer_steps(quirk) == 2
    epoch = json.loads((quirk / "metrics.json").read_text())["epochs"][-1]
    assert epoch["train_fcl"] == 0.0


def test_a_held_out_split_selects_best_pth(tiny_synthetic: Path, tmp_path: Path) -> None:
    run = train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path, "data_cfg.held_out_fraction=0.25")])
    held = (run / HELD_OUT_NAME).read_text().splitlines()[1:]
    labelled = (run / LIST_NAME).read_text().splitlines()[1:]
    assert len(held) == 1 and not set(held) & set(labelled)
    metrics = json.loads((run / "metrics.json").read_text())
    # the held-out frames end their clips: no pool frame is left out with them
    assert metrics["model_selection"] == "held_out" and metrics["semi"]["pairs"] == 12
    assert metrics["epochs"][-1]["val"]["labelled_pixels"] <= TINY_HW[0] * TINY_HW[1]  # one frame validates


def test_a_pool_without_partners_is_a_one_line_error(tiny_synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="semi_cfg.pool: no annotated training frame t has a frame t\\+1"):
        train_image.main([FCL, *_tiny(tiny_synthetic, tmp_path, "semi_cfg.pool=annotated")])


@pytest.mark.parametrize("pct", [1, 10, 50, 100])
def test_cityscapes_recipes_keep_the_reference_values(pct: int) -> None:
    base, fcl = load(f"fcn8s_{pct}", "image"), load(f"fcn8s+fcl_{pct}", "image")
    assert base.semi_cfg is None and base.data_cfg.labeled_fraction == (None if pct == 100 else pct / 100)
    assert (base.training_cfg.lr, base.optim_cfg.momentum, base.optim_cfg.weight_decay) == (1e-10, 0.99, 5e-4)
    assert base.loss_cfg.ce_reduction == "sum" and not base.data_cfg.data_augmentation
    assert base.model_cfg.backbone == "vgg16" and base.model_cfg.head_width == 4096
    labelled = {1: 30, 10: 298, 50: 1488, 100: 2975}[pct]  # ceil(f x 2975)
    iterations = base.training_cfg.num_epochs * (labelled // base.training_cfg.batch_size)
    assert 300_000 <= iterations < 300_000 + labelled  # the reference's 300,000 iterations, in whole epochs
    resolved = fcl.semi_cfg.fcl.resolved()
    assert resolved == {
        **resolved,
        "weight": 0.01,
        "max_shift": 1,
        "threshold": 0.2,
        "reduction": "sum",
        "sign": "repulsive",
    }
    assert (fcl.semi_cfg.flow.pair_offset, fcl.semi_cfg.flow.mask_bottom, fcl.semi_cfg.batch_size) == (
        1,
        0.25,
        2,
    )
    assert fcl.semi_cfg.step_mode == "alternating" and fcl.semi_cfg.pool == "annotated"


def test_an_interrupted_semi_supervised_run_resumes_to_the_same_weights(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    """The unlabelled stream continues where it stopped: stopped after epoch 1 and resumed equals uninterrupted."""
    # validating every epoch, as both runs then do (a validation draws from the global RNG)
    common = [FCL, *_tiny(tiny_synthetic, tmp_path, "training_cfg.num_epochs=3")]
    reference = train_image.main([*common, "training_cfg.epochs_to_run=3"])
    stopped = train_image.main([*common, "training_cfg.epochs_to_run=1"])
    stored = stopped / "config.yaml"
    stored.write_text(stored.read_text().replace("epochs_to_run: 1", "epochs_to_run: 3"))
    train_image.main([FCL, f"resume_training={stopped}", f"save_dir={stopped.parent}"])
    want = torch.load(reference / "last.pth", map_location="cpu", weights_only=True)
    got = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)
    assert got["step"] == want["step"] == 3 and _optimizer_steps(stopped) == 6
    for k, v in want["model"].items():
        assert torch.allclose(v.float(), got["model"][k].float(), atol=1e-5), k


def test_the_cityscapes_recipe_trains_on_prepared_snippets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fcn8s+fcl_10 end to end on tiny Cityscapes snippets as process_dataset.sh prepares them: the annotated frame of
    each snippet and the next one, the hood rows masked, the summed cross-entropy (a CPU stand-in network and DIS
    flow instead of VGG-16 and RAFT, whose weights are user-provided)."""
    from data.prepare import cityscapes
    from tests.data.prepare import test_cityscapes as cs

    monkeypatch.setattr(cityscapes, "LABEL_INDEX", cs.LABEL_INDEX)
    monkeypatch.setattr(cityscapes, "SNIPPET_LEN", cs.SNIPPET_LEN)
    (tmp_path / "datasets").mkdir()
    ctx = cs.context(tmp_path, cs.make_archives(tmp_path / "datasets"))
    cityscapes.CONVERTER.build(ctx)
    run = train_image.main([
        "fcn8s+fcl_10", f"save_dir={tmp_path / 'runs'}", f"data_cfg.path={ctx.out}", f"data_cfg.crop_size=[{cs.H}, {cs.W}]",
        "model_cfg.backbone=tiny_cnn", "model_cfg.head_width=16", "model_cfg.pretrained_backbone=null",
        "data_cfg.labeled_fraction=0.5", "training_cfg.num_epochs=1", "training_cfg.num_workers=0",
        "training_cfg.vis_samples=0", "semi_cfg.flow.backend=dis", f"semi_cfg.flow.cache_dir={tmp_path / 'cache'}",
    ])  # fmt: skip
    semi = json.loads((run / "metrics.json").read_text())["semi"]
    assert semi["pairs"] == 4 and semi["flow"]["mask_bottom"] == 0.25 and semi["reduction"] == "sum"
    assert len((run / LIST_NAME).read_text().splitlines()) == 1 + 2  # ceil(0.5 x 4) labelled snippets
    epoch = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    assert epoch["step"] == 1 and epoch["train_fcl"] <= 0 and 0 < epoch["train_fcl_active"]
