"""Reading a prepared dataset: clips, labelled frames, and one-line errors for what can be wrong on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import DataError
from config.loader import load
from data.catalog import CITYSCAPES, SYNTHETIC, UAVID, cityscapes_ids_to_train_ids, get_dataset_info
from data.frames import ensure_dataset, frame_sampling, open_split, read_frame, read_mask, read_split


def make_dataset(root: Path, clips: dict[str, tuple[int, list[int]]], split: str = "train") -> None:
    """clips: name -> (number of frames, labelled indices); masks hold raw values 0..8."""
    rng = np.random.default_rng(0)
    for name, (n, labelled) in clips.items():
        for i in range(n):
            d = root / "data" / name
            (d / "origin").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / "origin" / f"{i:06d}.png"), rng.integers(0, 255, (8, 12, 3), dtype=np.uint8))
            if i in labelled:
                (d / "mask").mkdir(exist_ok=True)
                cv2.imwrite(str(d / "mask" / f"{i:06d}.png"), rng.integers(0, 9, (8, 12), dtype=np.uint8))
    (root / f"{split}.txt").write_text("\n".join([*clips, *clips]) + "\n")  # duplicates are dropped


def test_clips_frames_and_labelled_indices(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": (5, [4]), "b": (3, [0, 2])})
    clips = read_split(tmp_path, "train", UAVID)
    assert [c.name for c in clips] == ["a", "b"]
    assert len(clips[0]) == 5 and clips[0].labelled == [4] and clips[1].labelled == [0, 2]
    assert read_frame(clips[0].frames[0]).shape == (8, 12, 3)
    ids = read_mask(clips[1].masks[0], UAVID)
    assert ids.dtype == np.uint8 and set(np.unique(ids)) <= set(range(8)) | {255}
    assert [c.name for c in read_split(tmp_path, "train", UAVID, min_len=4)] == ["a"]


def test_raw_to_train_ids_and_back() -> None:
    raw = np.array([[0, 1, 8]], np.uint8)
    ids = UAVID.mask_to_train_ids(raw)
    assert ids.tolist() == [[255, 0, 7]]
    assert UAVID.train_ids_to_raw(ids).tolist() == raw.tolist()
    assert cityscapes_ids_to_train_ids(np.array([[7, 26, 0, 33]])).tolist() == [[0, 13, 255, 18]]
    assert CITYSCAPES.num_classes == 19 and get_dataset_info("ruralscapes").num_classes == 12


def test_missing_dataset_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        ensure_dataset("uavid", str(tmp_path / "nope"), (64, 64))
    assert str(err.value) == (
        f"dataset folder {tmp_path / 'nope'} not found: prepare it with `bash process_dataset.sh --only uavid "
        f"--datasets-dir {tmp_path}` (it writes {tmp_path / 'UAVid'}: set data_cfg.path to that folder) "
        "(README, 'Real datasets') or set data_cfg.path"
    )


def test_prepare_hint_names_the_configured_folder(tmp_path: Path) -> None:
    """The hint is a function of the dataset's actual root, not of its default folder."""
    assert UAVID.prepare_hint() == "`bash process_dataset.sh --only uavid`"
    assert UAVID.prepare_hint("datasets/UAVid") == "`bash process_dataset.sh --only uavid`"
    assert (
        UAVID.prepare_hint(tmp_path / "UAVid")
        == f"`bash process_dataset.sh --only uavid --datasets-dir {tmp_path}`"
    )
    assert SYNTHETIC.prepare_hint().startswith("`python -m data.synthetic --out datasets/synthetic")
    assert SYNTHETIC.prepare_hint(tmp_path / "s") == f"`python -m data.synthetic --out {tmp_path / 's'}`"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "synthetic_meta.json").write_text("{}")
    # a set is there already: the generator leaves it alone unless told to replace it
    assert (
        SYNTHETIC.prepare_hint(tmp_path / "s") == f"`python -m data.synthetic --out {tmp_path / 's'} --force`"
    )


@pytest.mark.parametrize(
    ("dataset", "hint"),
    [
        ("synthetic", "`python -m data.synthetic --out {root}`"),
        ("uavid", "`bash process_dataset.sh --only uavid --datasets-dir {parent}` (it writes {parent}/UAVid: "
                  "set data_cfg.path to that folder)"),
    ],
)  # fmt: skip
def test_data_errors_name_the_configured_path(tmp_path: Path, dataset: str, hint: str) -> None:
    """data_cfg.path pointing at an empty folder: the error names that folder and the command for it."""
    root = tmp_path / "elsewhere"
    root.mkdir()
    cfg = load("base_synthetic", "image", [f"data_cfg.dataset={dataset}", f"data_cfg.path={root}",
                                           "data_cfg.generate_if_missing=false"])  # fmt: skip
    with pytest.raises(DataError) as err:
        open_split(cfg.data_cfg, "train")
    want = hint.format(root=root, parent=tmp_path)
    assert str(err.value) == f"{root / 'train.txt'} not found: prepare the dataset with {want}"
    assert "datasets/" not in str(err.value)  # not the default folder


def test_missing_split_and_test_split(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": (2, [1])})
    with pytest.raises(
        DataError, match=r"test\.txt not found \(the preparation writes train\.txt and val\.txt only\)"
    ):
        read_split(tmp_path, "test", UAVID)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": (2, [1])})
    bad = tmp_path / "data" / "a" / "origin" / "000000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"{bad}: cannot read the image"):
        read_frame(bad)


def test_label_value_outside_the_class_table_is_named(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": (2, [1])})
    mask = tmp_path / "data" / "a" / "mask" / "000001.png"
    cv2.imwrite(str(mask), np.full((8, 12), 9, np.uint8))
    with pytest.raises(
        DataError, match=rf"{mask}: label values \[9\] are outside the uavid class table"
    ) as err:
        read_mask(mask, UAVID)
    # the hint names the dataset's own folder (tmp_path), derived from the mask's place in the layout
    assert str(err.value).endswith(f"re-run the preparation (`bash process_dataset.sh --only uavid --datasets-dir "
                                   f"{tmp_path.parent}` (it writes {tmp_path.parent / 'UAVid'}: set data_cfg.path to "
                                   "that folder))")  # fmt: skip


def test_mask_without_frame_and_empty_clip(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"a": (2, [1])})
    cv2.imwrite(str(tmp_path / "data" / "a" / "mask" / "000007.png"), np.zeros((8, 12), np.uint8))
    with pytest.raises(DataError, match="has no matching frame"):
        read_split(tmp_path, "train", UAVID)


def test_skip_frames_rule() -> None:
    assert frame_sampling(6, 1) == frame_sampling(6, 2) == list(range(6))
    assert frame_sampling(9, 4) == [0, 1, 4, 5, 8]
