"""Labelled fractions: a seeded draw that does not depend on listing order, explicit split files, and the list
written into the run folder by image training."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError, DataError
from config.loader import load
from data.fractions import LIST_NAME, draw_fraction, labelled_keys, labelled_subset, read_split_file
from data.frames import open_split
from tests.conftest import TINY_HW

KEYS = [(f"clip{c:03d}", f"{f:06d}") for c in range(40) for f in (9, 19)]  # 80 labelled frames


def test_the_same_seed_gives_the_same_frames_whatever_the_listing_order() -> None:
    a = draw_fraction(KEYS, 0.1, seed=7)
    b = draw_fraction(sorted(KEYS), 0.1, seed=7)
    assert a == b and len(a) == 8 and a == sorted(a) and set(a) <= set(KEYS)
    assert draw_fraction(KEYS, 0.1, seed=8) != a  # another seed, other frames
    assert len(draw_fraction(KEYS, 0.5, seed=0)) == 40 and len(draw_fraction(KEYS, 1.0, seed=0)) == 80
    assert len(draw_fraction(KEYS[:7], 0.5, seed=0)) == 4  # ceil(3.5), as the reference's ceil(f * N)
    with pytest.raises(ConfigError, match="labeled_fraction"):
        draw_fraction(KEYS, 0.0, seed=0)


def test_split_files_name_labelled_training_frames(tmp_path: Path) -> None:
    f = tmp_path / "split.txt"
    f.write_text("# my split\nclip001/000019\n\nclip000/000009  # first\n")
    assert read_split_file(f, KEYS) == [("clip000", "000009"), ("clip001", "000019")]
    f.write_text("clip001/000019\nclip999/000001\n")
    with pytest.raises(DataError, match=r"split.txt:2: 'clip999/000001' is not a labelled training frame"):
        read_split_file(f, KEYS)
    with pytest.raises(ConfigError, match="does not exist"):
        read_split_file(tmp_path / "missing.txt", KEYS)


def test_fraction_and_split_file_are_exclusive_and_unset_means_all(tiny_synthetic: Path) -> None:
    cfg = load("base_synthetic", "image", [f"data_cfg.path={tiny_synthetic}"])
    clips = open_split(cfg.data_cfg, "train")[2]
    assert labelled_subset(clips, None, 0, None) is None
    assert len(labelled_subset(clips, 0.5, 0, None)) == 2 == len(labelled_keys(clips)) // 2
    with pytest.raises(ConfigError, match="exclusive"):
        labelled_subset(clips, 0.5, 0, "split.txt")


def test_image_training_lists_and_uses_only_the_drawn_frames(tiny_synthetic: Path, tmp_path: Path) -> None:
    from training import train_image

    def run(seed: int) -> list[str]:
        out = train_image.main([
            "base_synthetic", f"save_dir={tmp_path}", f"data_cfg.path={tiny_synthetic}",
            f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]", "model_cfg.backbone=tiny_cnn",
            "training_cfg.batch_size=2", "training_cfg.num_epochs=1", "training_cfg.num_workers=0",
            "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0", "data_cfg.labeled_fraction=0.5",
            f"data_cfg.split_seed={seed}",
        ])  # fmt: skip
        lines = (out / LIST_NAME).read_text().splitlines()
        assert lines[0].startswith("# 2 of 4 labelled training frames") and f"split_seed {seed}" in lines[0]
        return lines[1:]

    first, again = run(0), run(0)
    assert first == again and len(first) == 2
    seeds = {tuple(run(s)) for s in (1, 2, 3)} | {tuple(first)}
    assert len(seeds) > 1  # four seeds over the 6 possible pairs of this tiny set: not all the same
