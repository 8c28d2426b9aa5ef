"""Tests for data/video_dataset.py: sample enumeration, edge policy (never wrap), item layout, augmentation of
true homographies and flows, the registration hook, determinism, training-time validation crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.augment import VideoTrainAugment
from data.catalog import get_dataset_info
from data.frames import Clip, FramePair, read_split
from data.synthetic.io import save_npz, write_mask, write_rgb
from data.transforms import denormalize
from data.video_dataset import FramePairs
from models.warp import flow_warp, homography_warp

INFO = get_dataset_info("synthetic")
HW = (64, 96)
# geometry forced on (scale + crop every draw, flip in half the draws); no photometric: comparable errors
GEOMETRIC = VideoTrainAugment(False, p_scale=1.0, p_photometric=0.0)


@pytest.fixture(scope="module")
def train_clips(tiny_synthetic: Path) -> list[Clip]:
    return read_split(tiny_synthetic, "train", INFO)  # 4 frames, last one labelled


@pytest.fixture(scope="module")
def val_clips(tiny_synthetic: Path) -> list[Clip]:
    return read_split(tiny_synthetic, "val", INFO)  # 5 frames, all labelled


def _rgb(frames: torch.Tensor) -> torch.Tensor:
    """Normalised [T,3,H,W] -> uint8-valued [T,3,H,W] float (exact inverse of to_tensor up to rounding)."""
    return (denormalize(frames) * 255).round()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur of [B,3,H,W]: damps the sensor noise of the synthetic frames, keeps the motion."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    return F.conv2d(x, k.expand(3, 1, 5, 5).contiguous(), padding=2, groups=3)


def _err(a: torch.Tensor, b: torch.Tensor, margin: int = 8, valid: torch.Tensor | None = None) -> float:
    """Mean abs difference away from the borders (newly visible regions and warp padding); with ``valid``
    [1,1,H,W] only where it is set."""
    d = (a - b).abs().mean(dim=-3, keepdim=True)
    keep = torch.zeros_like(d, dtype=torch.bool)
    keep[..., margin:-margin, margin:-margin] = True
    if valid is not None:
        keep &= valid
    return float(d[keep].mean())


# ------------------------------------------------------------------------------------------ item layout
def test_item_shapes_order_and_collate(train_clips: list[Clip]) -> None:
    ds = FramePairs(train_clips, INFO, HW, train=True, augment=VideoTrainAugment(False), gt_homographies=True,
                    gt_flow=True)  # fmt: skip
    assert len(ds) == len(train_clips) and ds.dropped == 0
    it = ds[0]
    keys = {"frames", "current", "labels", "label_valid", "indices", "clip", "frame", "homographies", "flows"}
    assert set(it) == keys
    assert it["frames"].shape == (2, 3, *HW) and it["frames"].dtype == torch.float32
    assert it["labels"].shape == (2, *HW) and it["labels"].dtype == torch.int64
    assert it["label_valid"].tolist() == [False, True]  # only the last frame of a train clip is labelled
    assert (it["labels"][0] == 255).all() and (it["labels"][1] != 255).any()
    assert it["current"] == 1 and it["indices"].tolist() == [2, 3]
    assert it["frame"] == train_clips[0].frames[3].stem and it["clip"] == train_clips[0].name
    assert it["homographies"].shape == (1, 3, 3) and it["homographies"].dtype == torch.float32
    assert it["flows"].shape == (1, 2, *HW) and it["flows"].dtype == torch.float32

    batch = next(iter(DataLoader(ds, batch_size=2)))  # default collate: no None values anywhere
    assert batch["frames"].shape == (2, 2, 3, *HW) and batch["homographies"].shape == (2, 1, 3, 3)
    assert batch["flows"].shape == (2, 1, 2, *HW) and batch["current"].tolist() == [1, 1]


def test_multi_offsets_time_order(val_clips: list[Clip]) -> None:
    ds = FramePairs(val_clips, INFO, HW, offsets=[-1, -3, -2], train=False)
    assert ds.time_offsets == (-3, -2, -1, 0) and ds.current == 3
    assert [s.indices for s in ds.samples[:2]] == [(0, 1, 2, 3), (1, 2, 3, 4)]
    it = ds[1]
    assert it["frames"].shape == (4, 3, *HW) and it["label_valid"].all() and it["current"] == 3
    # item k (k < 5) serves labelled frame k of the first clip as its frame 0
    ref = FramePairs(val_clips, INFO, HW, offsets=[1], train=False, edge_policy="repeat_first")
    for pos, frame_index in enumerate(it["indices"].tolist()):
        torch.testing.assert_close(it["frames"][pos], ref[frame_index]["frames"][0])


def test_bad_offsets_raise(val_clips: list[Clip]) -> None:
    with pytest.raises(ValueError, match="0"):
        FramePairs(val_clips, INFO, HW, offsets=[0, -1], train=False)
    with pytest.raises(ValueError, match="distinct"):
        FramePairs(val_clips, INFO, HW, offsets=[-1, -1], train=False)
    with pytest.raises(ValueError, match="contiguous"):
        FramePairs(val_clips, INFO, HW, offsets=[-2], train=False, gt_flow=True)
    with pytest.raises(ValueError, match="edge_policy"):
        FramePairs(val_clips, INFO, HW, train=False, edge_policy="wrap")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ never wrap around
def test_negative_offset_at_clip_start_never_wraps(val_clips: list[Clip]) -> None:
    n_lab = sum(len(c.labelled) for c in val_clips)
    drop = FramePairs(val_clips, INFO, HW, train=False, edge_policy="drop")
    assert len(drop) == n_lab - len(val_clips) and drop.dropped == len(val_clips)
    assert all(s.index >= 1 and s.indices[0] == s.index - 1 for s in drop.samples)

    rep = FramePairs(val_clips, INFO, HW, train=False, edge_policy="repeat_first", gt_homographies=True,
                     gt_flow=True)  # fmt: skip
    assert len(rep) == n_lab and rep.dropped == 0
    it = rep[0]  # labelled frame 0 of the first clip
    assert it["indices"].tolist() == [0, 0] and it["frame"] == val_clips[0].frames[0].stem
    torch.testing.assert_close(
        it["frames"][0], it["frames"][1], rtol=0, atol=0
    )  # frame 0, not the last frame
    torch.testing.assert_close(it["homographies"][0], torch.eye(3))
    assert (it["flows"] == 0).all()


def test_positive_offset_past_clip_end(val_clips: list[Clip]) -> None:
    drop = FramePairs(val_clips, INFO, HW, offsets=[1], train=False)
    assert drop.dropped == len(val_clips) and all(s.index < len(val_clips[s.clip]) - 1 for s in drop.samples)
    rep = FramePairs(val_clips, INFO, HW, offsets=[1], train=False, edge_policy="repeat_first")
    last = [k for k, s in enumerate(rep.samples) if s.index == len(val_clips[s.clip]) - 1]
    assert len(last) == len(val_clips)
    it = rep[last[0]]
    assert it["current"] == 0 and it["indices"].tolist() == [4, 4]
    torch.testing.assert_close(it["frames"][0], it["frames"][1], rtol=0, atol=0)


def test_repeat_first_with_several_offsets(val_clips: list[Clip]) -> None:
    ds = FramePairs(val_clips, INFO, HW, offsets=[-1, -2, -3], train=False, edge_policy="repeat_first",
                    gt_flow=True)  # fmt: skip
    assert [s.indices for s in ds.samples[:3]] == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 2)]
    flows = ds[1]["flows"]
    assert (flows[:2] == 0).all() and flows[2].abs().sum() > 0


# ------------------------------------------------------------- true homographies and flows under augmentation
def test_gt_homography_and_flow_survive_augmentation(val_clips: list[Clip]) -> None:
    """Real synthetic frames (noise, flicker, movers; sub-pixel to pixel motion): warping frame t-1 with the
    returned H or along the returned flow lands much closer to frame t than no warp, over flipped, scaled,
    and square-cropped draws, and H beats the un-augmented true H."""
    ratios: dict[str, list[float]] = {"hom": [], "flow": [], "raw_hom": []}
    flipped = 0
    for square in (False, True):
        aug = VideoTrainAugment(square, p_scale=1.0, p_photometric=0.0)
        ds = FramePairs(val_clips, INFO, HW, train=True, augment=aug, gt_homographies=True, gt_flow=True)
        raw = FramePairs(val_clips, INFO, HW, train=True, gt_homographies=True)
        for seed in range(3):
            ds.seed = seed
            for k in range(len(ds)):
                it = ds[k]
                flipped += int(np.random.default_rng((seed, 0, k)).random() < 0.5)  # the augment's first draw
                x = _blur(denormalize(it["frames"]))
                prev, cur = x[:1], x[1:]
                e_id = _err(prev, cur)
                ratios["hom"].append(_err(homography_warp(prev, it["homographies"]), cur) / e_id)
                ratios["raw_hom"].append(_err(homography_warp(prev, raw[k]["homographies"]), cur) / e_id)
                ratios["flow"].append(_err(flow_warp(prev, it["flows"], mode="bilinear")[0], cur) / e_id)
    mean = {k: float(np.mean(v)) for k, v in ratios.items()}
    assert flipped > 5  # the check covered flipped draws
    assert mean["hom"] < 0.5 and mean["flow"] < 0.5, mean
    assert mean["hom"] < 0.9 * mean["raw_hom"], mean


def _textured_clip(root: Path, n: int = 4, hw: tuple[int, int] = HW) -> Clip:
    """A noise-free clip with large known motion (shift, rotation, zoom) on a smooth texture, with the
    synthetic set's files: ``homographies.npy`` (entry t = H_{t-1->t}) and backward flows in ``flow/``."""
    h, w = hw
    rng = np.random.default_rng(7)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (3 * h, 3 * w, 3)).astype(np.float32), (0, 0), 3.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    clip_dir = root / "data" / "fake"
    world_to_img: list[np.ndarray] = []
    for sub in ("origin", "mask", "flow"):
        (clip_dir / sub).mkdir(parents=True)
    centre, back = np.eye(3), np.eye(3)
    centre[:2, 2], back[:2, 2] = ((w - 1) / 2, (h - 1) / 2), (-(w - 1) / 2, -(h - 1) / 2)
    for t in range(n):  # camera drifting right/down, turning, zooming in and tilting (non-commuting steps)
        a, s = np.deg2rad(2.0 * t * t), 1.0 + 0.03 * t
        c, sn = s * np.cos(a), s * np.sin(a)
        rot = np.array([[c, -sn, 0], [sn, c, 0], [0, 0, 1.0]])
        tilt = np.array([[1, 0, 0], [0, 1, 0], [4e-4 * t, -3e-4 * t, 1.0]])
        shift = np.array([[1, 0, -w - 4.0 * t], [0, 1, -h - 3.0 * t], [0, 0, 1.0]])
        world_to_img.append(centre @ tilt @ rot @ back @ shift)
    homs = np.stack([np.eye(3)] + [world_to_img[t] @ np.linalg.inv(world_to_img[t - 1]) for t in range(1, n)])
    np.save(clip_dir / "homographies.npy", homs)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
    frames = []
    for t in range(n):
        frames.append(clip_dir / "origin" / f"{t:06d}.png")
        write_rgb(frames[-1], cv2.warpPerspective(tex, world_to_img[t], (w, h), flags=cv2.INTER_LINEAR))
        arrays = {}
        if t > 0:  # backward flow of frame t: where its pixels were in frame t-1
            q = np.linalg.inv(homs[t]) @ pts
            arrays["backward"] = ((q[:2] / q[2]).T.reshape(h, w, 2) - np.stack([xx, yy], -1)).astype(
                np.float16
            )
        save_npz(clip_dir / "flow" / f"{t:06d}.npz", arrays)
    write_mask(clip_dir / "mask" / f"{n - 1:06d}.png", np.ones(hw, np.uint8))
    np.save(clip_dir / "world_to_img.npy", np.stack(world_to_img))  # for the tests only
    return Clip("fake", tuple(frames), {n - 1: clip_dir / "mask" / f"{n - 1:06d}.png"})


def _normalised(h: np.ndarray) -> np.ndarray:
    return h / h[..., 2:3, 2:3]


@pytest.mark.parametrize("size_hw", [HW, (80, 100)])  # (80, 100): an anisotropic resize on read
def test_gt_geometry_exact_on_noise_free_clip(tmp_path: Path, size_hw: tuple[int, int]) -> None:
    """Large motion, no noise: the augmented H (also composed over three steps for offset [-3]) and the
    augmented flow align the frames almost perfectly, for flipped and scaled draws alike; the un-augmented H
    does not."""
    clip = _textured_clip(tmp_path)
    errs: dict[str, list[float]] = {"aug": [], "raw": []}
    for offsets in ([-1], [-3], [-2, -1]):
        gt_flow = offsets != [-3]
        ds = FramePairs([clip], INFO, size_hw, offsets=offsets, train=True, augment=GEOMETRIC,
                        gt_homographies=True, gt_flow=gt_flow)  # fmt: skip
        raw = FramePairs([clip], INFO, size_hw, offsets=offsets, train=True, gt_homographies=True)[0][
            "homographies"
        ]
        for seed in range(6):
            ds.seed = seed
            it = ds[0]
            x = denormalize(it["frames"])
            for i in range(1, x.shape[0]):
                prev, cur, hom = x[i - 1 : i], x[i : i + 1], it["homographies"][i - 1 : i]
                # compare only where frame i-1 covers frame i (the motion here exceeds the border margin)
                valid = homography_warp(torch.ones_like(prev[:, :1]), hom) > 0.999
                e_id = _err(prev, cur, valid=valid)
                e_h = _err(homography_warp(prev, hom), cur, valid=valid)
                assert e_h < 0.15 * e_id, (offsets, seed, e_h, e_id)
                errs["aug"].append(e_h)
                errs["raw"].append(_err(homography_warp(prev, raw[i - 1 : i]), cur, valid=valid))
                if gt_flow:
                    e_f = _err(flow_warp(prev, it["flows"][i - 1 : i], mode="bilinear")[0], cur, valid=valid)
                    assert e_f < 0.15 * e_id, (offsets, seed, e_f, e_id)
    # the un-augmented H is far off on flipped/shifted draws (close on a few unflipped ones)
    assert np.mean(errs["raw"]) > 3 * np.mean(errs["aug"]), errs


# ------------------------------------------------------------------------------------ registration hook
class RecordingRegistration:
    """Fake CPU registration provider: records its inputs, returns a fixed (unnormalised) homography."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, FramePair]] = []
        self.h = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, -1.0], [0.0, 0.0, 2.0]])

    def estimate_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair) -> np.ndarray:
        self.calls.append((prev.copy(), cur.copy(), pair))
        return self.h


def test_registration_hook_gets_augmented_uint8_frames(val_clips: list[Clip]) -> None:
    reg = RecordingRegistration()
    aug = VideoTrainAugment(True, p_scale=1.0, p_photometric=1.0)  # every op on, square crop included
    ds = FramePairs(val_clips, INFO, HW, offsets=[-2, -1], train=True, augment=aug, registration=reg)
    it = ds[2]
    assert len(reg.calls) == 2
    rgb = _rgb(it["frames"]).permute(0, 2, 3, 1).numpy()  # [T,H,W,3]
    for i, (prev, cur, pair) in enumerate(reg.calls, start=1):
        assert prev.dtype == np.uint8 and prev.shape == (HW[0], HW[0], 3)
        np.testing.assert_array_equal(prev, rgb[i - 1])
        np.testing.assert_array_equal(cur, rgb[i])
        assert pair is None  # augmented frames: no pair, so no on-disk cache can answer for them
    torch.testing.assert_close(it["homographies"], torch.from_numpy(reg.h / 2).float().expand(2, 3, 3))

    # a clamped (repeated) frame gets the exact identity without asking the provider
    reg.calls.clear()
    rep = FramePairs(val_clips, INFO, HW, train=False, edge_policy="repeat_first", registration=reg)
    torch.testing.assert_close(rep[0]["homographies"], torch.eye(3)[None])
    assert not reg.calls
    with pytest.raises(ValueError, match="not both"):
        FramePairs(val_clips, INFO, HW, train=False, registration=reg, gt_homographies=True)


# --------------------------------------------------------------------------------- determinism and crops
def test_same_seed_epoch_index_same_item(val_clips: list[Clip]) -> None:
    def make() -> FramePairs:
        return FramePairs(val_clips, INFO, HW, train=True, augment=VideoTrainAugment(True), seed=3,
                          gt_homographies=True, gt_flow=True)  # fmt: skip

    a, b = make(), make()
    for k in (0, 5):
        x, y = a[k], b[k]
        for key in ("frames", "labels", "homographies", "flows"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
    differs = 0
    b.epoch = 1
    for k in range(len(a)):
        differs += not torch.equal(a[k]["frames"], b[k]["frames"])
    assert differs >= len(a) // 2


def test_val_square_crop_is_centre_crop(val_clips: list[Clip]) -> None:
    full = FramePairs(val_clips, INFO, HW, train=False, gt_homographies=True, gt_flow=True)
    sq = FramePairs(val_clips, INFO, HW, train=False, square_crop=True, gt_homographies=True, gt_flow=True)
    side, ox = HW[0], (HW[1] - HW[0]) // 2
    for k in (0, 3):
        a, b = full[k], sq[k]
        assert b["frames"].shape == (2, 3, side, side)
        torch.testing.assert_close(b["frames"], a["frames"][..., ox : ox + side], rtol=0, atol=0)
        torch.testing.assert_close(b["labels"], a["labels"][..., ox : ox + side], rtol=0, atol=0)
        torch.testing.assert_close(b["flows"], a["flows"][..., ox : ox + side], rtol=0, atol=0)
        t = torch.tensor([[1.0, 0, -ox], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
        expect = t @ a["homographies"][0].double() @ torch.linalg.inv(t)
        expect = expect / expect[2, 2]  # items are normalised to h33 = 1
        torch.testing.assert_close(b["homographies"][0].double(), expect, rtol=1e-5, atol=1e-4)


def test_train_square_crop_without_augment_is_a_seeded_random_crop(val_clips: list[Clip]) -> None:
    full = FramePairs(val_clips, INFO, HW, train=True)
    sq = FramePairs(val_clips, INFO, HW, train=True, square_crop=True, seed=1)
    side = HW[0]
    starts = set()
    for k in range(len(sq)):
        b, a = sq[k]["frames"], full[k]["frames"]
        match = [ox for ox in range(HW[1] - side + 1) if torch.equal(b, a[..., ox : ox + side])]
        assert len(match) == 1
        starts.add(match[0])
    assert len(starts) > 1


def test_gt_homography_composition_and_agreement_with_gt_flow(tmp_path: Path) -> None:
    """Numbers, not images: a 3-step H is the true camera motion H_3 H_2 H_1; after resize and augmentation,
    the backward flow implied by each H equals the returned (independently transformed) true flow."""
    clip = _textured_clip(tmp_path)
    g = np.load(clip.dir / "world_to_img.npy")
    h3 = FramePairs([clip], INFO, HW, offsets=[-3], train=False, gt_homographies=True)[0]["homographies"][0]
    np.testing.assert_allclose(h3.numpy(), _normalised(g[3] @ np.linalg.inv(g[0])), rtol=1e-5, atol=1e-5)

    size = (80, 100)  # anisotropic resize on read
    ds = FramePairs([clip], INFO, size, offsets=[-2, -1], train=True, augment=GEOMETRIC, gt_homographies=True,
                    gt_flow=True)  # fmt: skip
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    for seed in range(4):
        ds.seed = seed
        it = ds[0]
        for hom, flow in zip(it["homographies"].double().numpy(), it["flows"].numpy(), strict=True):
            q = np.linalg.inv(hom) @ pts
            implied = (q[:2] / q[2]).reshape(2, *size) - np.stack([xx, yy])
            # interior: the bilinearly resampled field is exact up to float16 storage and its tiny curvature
            assert np.abs(implied - flow)[:, 4:-4, 4:-4].max() < 0.05, seed


def test_resize_matrix_is_pixel_centre_aligned() -> None:
    """``x_out = (x_in + 0.5) s - 0.5``, the grid of cv2.resize: a horizontal/vertical ramp resized with
    resize_frame reads back the source coordinate that the inverse matrix gives."""
    from data.transforms import resize_frame
    from data.video_dataset import pixel_resize_matrix

    src, dst = (20, 30), (50, 45)
    yy, xx = np.mgrid[0 : src[0], 0 : src[1]]
    ramp = np.stack([xx * 8, yy * 8, np.zeros_like(xx)], -1).astype(np.uint8)
    out = resize_frame(ramp, dst).astype(np.float64) / 8
    inv = np.linalg.inv(pixel_resize_matrix(src, dst))
    oy, ox = np.mgrid[0 : dst[0], 0 : dst[1]]
    sx, sy = inv[0, 0] * ox + inv[0, 2], inv[1, 1] * oy + inv[1, 2]
    inner = (sx >= 0) & (sx <= src[1] - 1) & (sy >= 0) & (sy <= src[0] - 1)
    assert np.abs(out[..., 0] - sx)[inner].max() < 0.1 and np.abs(out[..., 1] - sy)[inner].max() < 0.1


def test_random_key_offset_draws_the_earlier_frame_within_the_clip(val_clips: list[Clip]) -> None:
    """DFF's random key offset: in training the earlier frame is 1..max frames back (never before the clip start),
    the draw depends on (seed, epoch, index), validation keeps the fixed offset, and the batch collates."""
    from data.video_batch import DataNeeds, collate_video
    from data.video_dataset import video_samples

    ds = FramePairs(val_clips, INFO, HW, train=True, max_key_offset=3, gt_homographies=True)
    distances = set()
    for epoch in range(4):
        ds.epoch = epoch
        for i in range(len(ds)):
            first, cur = (int(v) for v in ds[i]["indices"])
            assert 1 <= cur - first <= min(3, cur) and first >= 0
            distances.add(cur - first)
    assert distances == {1, 2, 3}
    ds.epoch = 1
    assert torch.equal(ds[5]["indices"], ds[5]["indices"])  # deterministic per (seed, epoch, index)
    val = FramePairs(val_clips, INFO, HW, train=False, max_key_offset=3)
    assert all(int(val[i]["indices"][1] - val[i]["indices"][0]) == 1 for i in range(len(val)))
    with pytest.raises(ValueError, match="random key offset"):
        FramePairs(val_clips, INFO, HW, train=True, max_key_offset=2, gt_flow=True)
    batch = collate_video([ds[0], ds[1]])
    assert (
        batch.frames.shape == (2, 2, 3, *HW)
        and batch.current == 1
        and batch.homographies.shape == (2, 1, 3, 3)
    )
    served = video_samples(val_clips, INFO, HW, DataNeeds(max_key_offset=3, true_flows=False), train=True)
    assert served.max_key_offset == 3 and not served.gt_flow
