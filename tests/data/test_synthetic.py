"""The embedded synthetic aerial video set: layout, labels, determinism, true homographies and flow, CLI."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from config.errors import ConfigError, DataError
from data.catalog import SYNTHETIC
from data.synthetic import SyntheticParams, ensure_synthetic, generate, load_flow, load_homographies
from data.synthetic.__main__ import main as cli_main
from data.synthetic.camera import relative_homographies
from data.synthetic.io import META_NAME, read_meta
from data.synthetic.video import build_scene, video_seeds

REPO = Path(__file__).resolve().parents[2]
TINY = SyntheticParams(
    seed=3,
    height=64,
    width=96,
    train_videos=2,
    val_videos=1,
    clips_per_video=2,
    train_clip_len=3,
    val_clip_len=5,
)
# one dense val clip at the default 128 x 224 (at 64 x 96 most pixels of small objects are borders)
DEFAULT_SIZE = SyntheticParams(
    seed=5, train_videos=1, val_videos=1, clips_per_video=1, train_clip_len=2, val_clip_len=6
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _clips(root: Path, split: str) -> list[str]:
    return (root / f"{split}.txt").read_text().split()


def _rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def _warp_to_next(img: np.ndarray, hom: np.ndarray) -> np.ndarray:
    """Frame t-1 resampled into frame t with H_{t-1 -> t}."""
    return cv2.warpPerspective(
        img, hom, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderValue=np.nan
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    generate(root, TINY, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def val_scene():
    """The (single) val video's scene, rebuilt from its seed: clean renders, owners and poses."""
    n = TINY.clips_per("val") * TINY.val_clip_len
    return build_scene(TINY, video_seeds(TINY, "val")[0], n)


@pytest.fixture(scope="module")
def default_size_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val clip of DEFAULT_SIZE (its folder)."""
    root = tmp_path_factory.mktemp("syn_default") / "synthetic"
    generate(root, DEFAULT_SIZE, workers=1, progress=False)
    return root / "data" / _clips(root, "val")[0]


def test_layout_and_splits(dataset: Path) -> None:
    train, val = _clips(dataset, "train"), _clips(dataset, "val")
    assert len(train) == TINY.train_videos * TINY.clips_per_video and len(
        val
    ) == TINY.val_videos * TINY.clips_per("val")
    assert not set(train) & set(val)
    for name in train + val:
        assert re.fullmatch(r"\d{4}_vid\d{2}_\d{2}", name)
    assert sorted(int(n[:4]) for n in train + val) == list(range(len(train) + len(val)))  # global clip index
    meta = read_meta(dataset)
    assert meta["params"] == TINY.to_json() and meta["clips"] == {"train": len(train), "val": len(val)}
    for split, clip_len in (("train", TINY.train_clip_len), ("val", TINY.val_clip_len)):
        for name in _clips(dataset, split):
            clip = dataset / "data" / name
            frames = sorted(p.name for p in (clip / "origin").iterdir())
            assert frames == [f"{i:06d}.png" for i in range(clip_len)]  # consecutive %06d names
            img = cv2.imread(str(clip / "origin" / frames[0]), cv2.IMREAD_UNCHANGED)
            assert img.shape == (TINY.height, TINY.width, 3) and img.dtype == np.uint8
            homs = load_homographies(clip)
            assert homs.shape == (clip_len, 3, 3) and homs.dtype == np.float64
            np.testing.assert_array_equal(homs[0], np.eye(3))
            for i in range(clip_len):
                with np.load(clip / "flow" / f"{i:06d}.npz") as f:
                    assert set(f.files) == {"forward", "backward"} - (
                        {"forward"} if i == clip_len - 1 else set()
                    ) - ({"backward"} if i == 0 else set())
                    for key in f.files:
                        assert f[key].dtype == np.float16 and f[key].shape == (TINY.height, TINY.width, 2)


def test_sparse_train_labels_dense_val_labels(dataset: Path) -> None:
    seen = np.zeros(SYNTHETIC.num_classes + 1, bool)
    for split in ("train", "val"):
        for name in _clips(dataset, split):
            masks = sorted(p.name for p in (dataset / "data" / name / "mask").iterdir())
            frames = sorted(p.name for p in (dataset / "data" / name / "origin").iterdir())
            assert masks == (frames[-1:] if split == "train" else frames)  # train: last frame only (UAVid)
            for m in masks:
                raw = cv2.imread(str(dataset / "data" / name / "mask" / m), cv2.IMREAD_UNCHANGED)
                assert raw.shape == (TINY.height, TINY.width) and raw.dtype == np.uint8
                assert raw.max() <= SYNTHETIC.num_classes
                seen[np.unique(raw)] = True
                SYNTHETIC.mask_to_train_ids(raw)  # the catalog accepts them
    assert seen[1:].sum() >= 6  # most classes show up even in a tiny set
    assert seen[0]  # ignore regions (clutter, sidewalks) exist


def test_same_seed_same_bytes_whatever_workers(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "synthetic"
    generate(other, TINY, workers=2, progress=False)
    a, b = _files(dataset), _files(other)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_different_frames(dataset: Path, tmp_path: Path) -> None:
    params = dataclasses.replace(TINY, seed=4, train_videos=1, val_videos=1)
    generate(tmp_path / "s4", params, workers=1, progress=False)
    name0 = _clips(dataset, "train")[0]
    name1 = _clips(tmp_path / "s4", "train")[0]
    a = (dataset / "data" / name0 / "origin" / "000000.png").read_bytes()
    b = (tmp_path / "s4" / "data" / name1 / "origin" / "000000.png").read_bytes()
    assert a != b


def test_stored_homographies_are_the_scene_homographies(dataset: Path, val_scene) -> None:
    for c, name in enumerate(_clips(dataset, "val")):
        ts = slice(c * TINY.val_clip_len, (c + 1) * TINY.val_clip_len)
        np.testing.assert_allclose(
            load_homographies(dataset / "data" / name),
            relative_homographies(val_scene.flight.homographies[ts]),
            atol=1e-12,
        )


def test_homography_aligns_clean_frames(default_size_clip: Path) -> None:
    """Noise-free renders: frame t-1 warped with the stored H_{t-1->t} matches frame t on static pixels.

    Negative controls: identity, the inverse, and the true H shifted by half a pixel must all do worse.
    """
    scene = build_scene(DEFAULT_SIZE, video_seeds(DEFAULT_SIZE, "val")[0], DEFAULT_SIZE.val_clip_len)
    homs = load_homographies(default_size_clip)
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for t in range(1, 4):
        prev, cur = scene.render(t - 1), scene.render(t)
        movers = (cur.owner >= 0) | (_warp_to_next((prev.owner >= 0).astype(np.float32), homs[t]) > 0)
        static = cv2.dilate(movers.astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
        blur = lambda im: cv2.GaussianBlur(im, (0, 0), 1.0)  # noqa: E731  (damps resampling error of fine texture)
        err = {}
        for kind, hom in (("true", homs[t]), ("identity", np.eye(3)), ("inverse", np.linalg.inv(homs[t])),
                          ("half_px", shift @ homs[t])):  # fmt: skip
            err[kind] = float(np.nanmean(np.abs(_warp_to_next(blur(prev.rgb), hom) - blur(cur.rgb))[static]))
        assert (
            err["true"] < 0.25 * min(err["identity"], err["inverse"]) and err["true"] < 0.75 * err["half_px"]
        ), err


def test_homography_aligns_stored_noisy_frames(dataset: Path) -> None:
    """Also on the written frames (noise, flicker, blur): the true H beats identity and its inverse."""
    wins = 0
    for name in _clips(dataset, "val"):
        clip = dataset / "data" / name
        homs = load_homographies(clip)
        for t in range(1, TINY.val_clip_len):
            prev, cur = _rgb(clip / "origin" / f"{t - 1:06d}.png"), _rgb(clip / "origin" / f"{t:06d}.png")
            err = {}
            for kind, hom in (
                ("true", homs[t]),
                ("identity", np.eye(3)),
                ("inverse", np.linalg.inv(homs[t])),
            ):
                warped = _warp_to_next(prev, hom)
                err[kind] = float(np.nanmedian(np.abs(warped - cur).mean(axis=2)))
            wins += err["true"] < min(err["identity"], err["inverse"])
    assert wins >= 0.8 * len(_clips(dataset, "val")) * (TINY.val_clip_len - 1)


def _homography_flow(hom: np.ndarray, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    q = hom @ np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
    return (q[:2] / q[2]).T.reshape(h, w, 2) - np.stack([xx, yy], axis=-1)


def test_flow_is_homography_flow_on_static_pixels_and_object_motion_on_movers(
    dataset: Path, val_scene
) -> None:
    moved = 0
    for c, name in enumerate(_clips(dataset, "val")):
        clip = dataset / "data" / name
        homs = load_homographies(clip)
        for i in range(TINY.val_clip_len):
            owner = val_scene.render(c * TINY.val_clip_len + i).owner
            for direction, hom in (("forward", homs[i + 1] if i + 1 < len(homs) else None),
                                   ("backward", np.linalg.inv(homs[i]) if i > 0 else None)):  # fmt: skip
                if hom is None:
                    with pytest.raises(DataError, match=direction):
                        load_flow(clip, f"{i:06d}", direction)
                    continue
                flow = load_flow(clip, f"{i:06d}", direction)
                assert flow.dtype == np.float32 and flow.shape == (TINY.height, TINY.width, 2)
                diff = np.abs(flow - _homography_flow(hom, TINY.height, TINY.width)).max(axis=2)
                assert diff[owner < 0].max() < 0.01  # exact up to float16 storage
                moved += int((diff[owner >= 0] > 0.1).sum())
    assert moved > 0  # moving vehicles/persons carry their own motion


def _sample(img: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """img sampled (nearest) at x + flow(x) for every pixel x; and which targets fall inside the frame."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    tx, ty = np.rint(xx + flow[..., 0]).astype(int), np.rint(yy + flow[..., 1]).astype(int)
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    return img[np.clip(ty, 0, h - 1), np.clip(tx, 0, w - 1)], inside


def test_forward_flow_pulls_next_labels_back_onto_this_frame(default_size_clip: Path) -> None:
    clip = default_size_clip
    n = len(list((clip / "mask").iterdir()))
    masks = [cv2.imread(str(clip / "mask" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED) for i in range(n)]
    right, wrong = [], []
    for i in range(n - 1):
        fwd = load_flow(clip, f"{i:06d}", "forward")
        bwd_next = load_flow(clip, f"{i + 1:06d}", "backward")
        # visible: the forward-backward check of metrics.md 3.4(c) (the point is not covered in frame t+1)
        bwd_at, inside = _sample(bwd_next, fwd)
        visible = inside & (np.linalg.norm(fwd + bwd_at, axis=2) < 0.5)
        pulled, _ = _sample(masks[i + 1], fwd)
        right.append(float((pulled == masks[i])[visible].mean()))
        pulled, inside_wrong = _sample(masks[i + 1], -fwd)  # the wrong direction, as a negative control
        wrong.append(float((pulled == masks[i])[inside_wrong].mean()))
        assert visible.mean() > 0.8
    assert min(right) > 0.95, right
    assert np.mean(1 - np.asarray(wrong)) > 2 * np.mean(1 - np.asarray(right)), (right, wrong)


def test_ensure_synthetic_generates_once_and_never_overwrites_other_data(tmp_path: Path) -> None:
    params = dataclasses.replace(TINY, train_videos=1, val_videos=1, clips_per_video=1, val_clips_per_video=2)
    root = tmp_path / "synthetic"
    assert ensure_synthetic(root, params) == root
    assert len(_clips(root, "train")) == 1 and len(_clips(root, "val")) == 2  # the val override
    meta = root / META_NAME
    stamp = meta.stat().st_mtime_ns
    assert ensure_synthetic(root, params) == root and meta.stat().st_mtime_ns == stamp  # no-op
    assert not list(tmp_path.glob(".synthetic.tmp-*"))  # the temporary folder was renamed into place
    meta.unlink()  # now it looks exactly like a prepared real dataset (data/, train.txt, val.txt)
    frames_before = sorted(root.rglob("*.png"))
    with pytest.raises(DataError, match="not a synthetic set made by tcseg"):
        ensure_synthetic(root, params)
    assert sorted(root.rglob("*.png")) == frames_before  # left untouched
    foreign = tmp_path / "not_ours"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(DataError, match="not a synthetic set made by tcseg"):
        ensure_synthetic(foreign, params)
    assert (foreign / "notes.txt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_synthetic(empty, params) == empty and read_meta(empty) is not None


def test_cli_refuses_other_params_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    args = ["--out", str(out), "--height", "64", "--width", "96", "--train-videos", "1", "--val-videos", "1",
            "--clips-per-video", "1", "--train-clip-len", "2", "--val-clip-len", "2", "--workers", "1", "--quiet"]  # fmt: skip
    cli_main(args)
    assert read_meta(out)["params"]["train_clip_len"] == 2
    capsys.readouterr()
    cli_main(args)
    assert "leaving it alone" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "data.synthetic", *args, "--seed", "9"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("data error:") and "--force" in proc.stderr
    cli_main([*args, "--seed", "9", "--force"])
    assert read_meta(out)["params"]["seed"] == 9


def test_bad_parameters_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="height"):
        generate(tmp_path / "x", dataclasses.replace(TINY, height=8), progress=False)
    with pytest.raises(ConfigError, match="val_clip_len"):
        cli_main(["--out", str(tmp_path / "y"), "--val-clip-len", "1"])
    with pytest.raises(DataError, match="homographies.npy"):
        load_homographies(tmp_path)
    with pytest.raises(DataError, match="000000.npz"):
        load_flow(tmp_path, "000000", "forward")


def test_the_summary_gives_the_training_samples_training_sees(tiny_synthetic: Path) -> None:
    """One labelled training sample per train clip, for image and video training alike; the CLI says how many."""
    from data.frames import read_split
    from data.image_dataset import LabelledFrames
    from data.synthetic.__main__ import summary
    from data.video_batch import DataNeeds
    from data.video_dataset import video_samples

    params = SyntheticParams.from_json(read_meta(tiny_synthetic)["params"])
    clips = read_split(tiny_synthetic, "train", SYNTHETIC)
    image = LabelledFrames(clips, SYNTHETIC, (64, 96), train=True)
    video = video_samples(clips, SYNTHETIC, (64, 96), DataNeeds(), train=True)
    assert len(image) == len(video) == params.train_samples == 4  # 2 videos x 2 clips
    assert summary(params).startswith(
        "4 train clips, i.e. 4 labelled training samples for image and video training"
    )
    assert SyntheticParams().train_samples == 96  # the default set


def test_force_replaces_only_what_the_generator_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force used to delete the whole folder, with the files the user had added to it."""
    out = tmp_path / "synthetic"
    args = ["--out", str(out), "--height", "64", "--width", "96", "--train-videos", "1", "--val-videos", "1",
            "--clips-per-video", "1", "--train-clip-len", "2", "--val-clip-len", "2", "--workers", "1", "--quiet"]  # fmt: skip
    cli_main(args)
    clip = out / "data" / _clips(out, "train")[0]
    mine = {"notes.txt": b"top level", f"data/{clip.name}/my_labels.txt": b"in a clip",
            "data/extra/a.txt": b"own folder", f"data/{clip.name}/origin/000000_edited.png": b"beside a frame"}  # fmt: skip
    for rel, data in mine.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    capsys.readouterr()
    cli_main([*args, "--seed", "9", "--force"])
    assert read_meta(out)["params"]["seed"] == 9
    assert {
        rel: (out / rel).read_bytes() for rel in mine
    } == mine  # every file of the user's is kept, as it was
    assert f"kept {len(mine)} file(s) the generator did not write" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    cli_main([*args, "--seed", "9", "--out", str(fresh)])
    assert {k: v for k, v in _files(out).items() if k not in mine} == _files(fresh)  # the rest is the new set
    assert not list(tmp_path.glob(".synthetic.tmp-*"))

    # a file of the user's where the new set writes one of its own: refused before anything changes
    (out / "data" / "0002_vid02_00" / "origin").mkdir(parents=True)
    (out / "data" / "0002_vid02_00" / "origin" / "000000.png").write_bytes(b"mine")
    before = _files(out)
    with pytest.raises(DataError, match="0002_vid02_00/origin/000000.png: your file is where the new set"):
        cli_main([*args, "--train-videos", "2", "--force"])
    assert _files(out) == before and not list(tmp_path.glob(".synthetic.tmp-*"))

    # a split file edited to point outside the set never makes the generator delete there
    outside = tmp_path / "outside" / "origin"
    outside.mkdir(parents=True)
    (outside / "000000.png").write_bytes(b"not in the set")
    (out / "train.txt").write_text("../../outside\n" + (out / "train.txt").read_text())
    cli_main([*args, "--force"])
    assert (outside / "000000.png").read_bytes() == b"not in the set"
    assert read_meta(out)["params"]["seed"] == SyntheticParams().seed  # regenerated with the default seed
