"""Tests for data/transforms.py: one draw per clip, frame/label/soft alignment, borders, determinism."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch

from data.augment import ImageTrainAugment, VideoTrainAugment
from data.photometric import gauss_op, hsv_op, jpeg_op, tone_lut
from data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipSample,
    center_square_crop,
    denormalize,
    random_square_crop,
    resize_frame,
    resize_label,
    resize_soft,
    to_tensor,
)

H, W, K = 96, 160, 8
# colour per class id 0..7; index 8 (grey) = ignore (255)
PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)

# geometry-only configurations (photometric/noise off) with the geometric ops forced on
GEOMETRIC = {
    "video": lambda sq: VideoTrainAugment(sq, p_scale=1.0, p_photometric=0.0),
    "image": lambda sq: ImageTrainAugment(sq, p_geometric=1.0, p_color=0.0, p_noise=0.0),
}
# everything forced on
FULL = {
    "video": lambda sq: VideoTrainAugment(sq, p_scale=1.0, p_photometric=1.0),
    "image": lambda sq: ImageTrainAugment(sq, p_geometric=1.0, p_color=1.0, p_noise=1.0),
}


def block_labels(seed: int, h: int = H, w: int = W, block: int = 12, ignore: bool = True) -> np.ndarray:
    """(h, w) uint8 label map of random class blocks (ids 0..K-1), optionally with one ignore (255) block."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, K, (h // block + 1, w // block + 1), dtype=np.uint8)
    lbl = np.kron(small, np.ones((block, block), np.uint8))[:h, :w].copy()
    if ignore:
        lbl[block : 2 * block, block : 3 * block] = 255
    return lbl


def paint(lbl: np.ndarray) -> np.ndarray:
    """Frame whose colour encodes the label: PALETTE[label] (ignore -> grey)."""
    return PALETTE[np.where(lbl == 255, 8, lbl)]


def decode(frame: np.ndarray) -> np.ndarray:
    """Nearest palette colour -> label (8 -> 255)."""
    d = ((frame[:, :, None, :].astype(np.int32) - PALETTE[None, None].astype(np.int32)) ** 2).sum(-1)
    idx = d.argmin(-1).astype(np.uint8)
    return np.where(idx == 8, 255, idx).astype(np.uint8)


def one_hot(lbl: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(K, h, w) one-hot of the valid ids (all zero at ignore)."""
    return (np.arange(K)[:, None, None] == lbl[None]).astype(dtype)


def interior(lbl: np.ndarray, size: int = 5) -> np.ndarray:
    """Pixels whose size x size neighbourhood lies inside the image and holds one label value."""
    k = np.ones((size, size), np.uint8)
    lo = cv2.erode(lbl, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    hi = cv2.dilate(lbl, k, borderType=cv2.BORDER_CONSTANT, borderValue=255)
    return lo == hi


def make_clip(t: int = 2, seed: int = 0, soft: bool = True) -> ClipSample:
    labels = [block_labels(seed + i) for i in range(t)]
    return ClipSample([paint(lb) for lb in labels], labels, [one_hot(lb) for lb in labels] if soft else None)


def same(a: ClipSample, b: ClipSample) -> bool:
    def eq(x, y):
        return (x is None and y is None) or (
            x is not None
            and y is not None
            and x.shape == y.shape
            and x.dtype == y.dtype
            and np.array_equal(x, y)
        )

    soft_a, soft_b = a.soft or [], b.soft or []
    return (
        len(a.frames) == len(b.frames)
        and all(map(eq, a.frames, b.frames))
        and all(map(eq, a.labels, b.labels))
        and (a.soft is None) == (b.soft is None)
        and all(map(eq, soft_a, soft_b))
    )


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("square", [False, True])
def test_same_draw_for_every_frame(kind, square):
    lbl = block_labels(3)
    for seed in range(8):
        clip = ClipSample([paint(lbl)] * 3, [lbl] * 3, [one_hot(lbl)] * 3)
        # video photometric is deterministic per clip; image noise is per frame, so geometry + colour only
        if kind == "image":
            aug = ImageTrainAugment(square, p_geometric=1.0, p_color=1.0, p_noise=0.0)
        else:
            aug = FULL[kind](square)
        out = aug(clip, np.random.default_rng(seed))
        for i in (1, 2):
            assert np.array_equal(out.frames[i], out.frames[0])
            assert np.array_equal(out.labels[i], out.labels[0])
            assert np.array_equal(out.soft[i], out.soft[0])


def test_image_noise_keeps_geometry_shared():
    lbl = block_labels(4)
    aug = FULL["image"](False)
    for seed in range(8):
        out = aug(ClipSample([paint(lbl)] * 2, [lbl] * 2), np.random.default_rng(seed))
        assert np.array_equal(out.labels[0], out.labels[1])
        # noise samples may differ per frame, but the clip-level parameters and geometry do not
        diff = np.abs(out.frames[0].astype(int) - out.frames[1].astype(int))
        assert diff.mean() < 12


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("square", [False, True])
def test_label_frame_alignment_palette(kind, square):
    aug = GEOMETRIC[kind](square)
    for seed in range(10):
        clip = make_clip(2, seed)
        out = aug(clip, np.random.default_rng(seed))
        for f, lb in zip(out.frames, out.labels, strict=True):
            inner, dec = interior(lb), decode(f)
            assert inner.mean() > 0.3
            mism = (dec != lb) & inner & (lb != 255)
            assert mism.mean() < 0.005, (seed, mism.mean())
            # interior ignore: the grey ignore block, or the black geometric border (palette[0])
            assert np.isin(dec[inner & (lb == 255)], (0, 255)).all()


@pytest.mark.parametrize("kind", ["video", "image"])
def test_label_frame_alignment_subpixel(kind):
    """Frame channels hold the source x and y, labels hold x (frame 0) and y (frame 1). Bilinear reproduces a
    linear function exactly and nearest rounds the same source coordinate, so they agree to within 1."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.uint8)
    frame = np.stack([xs, ys, np.full_like(xs, 7)], -1)
    aug = GEOMETRIC[kind](False)
    for seed in range(10):
        out = aug(ClipSample([frame, frame], [xs, ys]), np.random.default_rng(seed))
        for ch, lb in ((0, out.labels[0]), (1, out.labels[1])):
            valid = cv2.erode(
                (lb != 255).astype(np.uint8),
                np.ones((3, 3), np.uint8),
                borderType=cv2.BORDER_CONSTANT,
                borderValue=0,
            ).astype(bool)
            d = np.abs(out.frames[0][..., ch].astype(int) - lb.astype(int))[valid]
            assert valid.mean() > 0.5
            assert d.max() <= 1 and (d > 0).mean() < 0.05, (seed, d.max(), (d > 0).mean())


def test_geometric_borders_are_ignore():
    """White frame, label all class 0: pixels from outside the image must be frame 0 / label 255 / soft 0."""
    lbl = np.zeros((H, W), np.uint8)
    clip = ClipSample([np.full((H, W, 3), 255, np.uint8)], [lbl], [one_hot(lbl)])
    aug = ImageTrainAugment(False, p_flip=0.5, p_geometric=1.0, p_color=0.0, p_noise=0.0)
    n_border = 0
    for seed in range(30):
        out = aug(clip, np.random.default_rng(seed))
        f, lb, s = out.frames[0], out.labels[0], out.soft[0]
        assert lb.dtype == np.uint8 and set(np.unique(lb)) <= {0, 255}
        outside = (f == 0).all(-1)
        assert (lb[outside] == 255).all() and (s[:, outside] == 0).all()
        # bilinear reaches half a pixel further than nearest: at most a thin rim of 255 is not fully black
        assert ((lb == 255) & ~outside).sum() <= 2 * (H + W) + 4
        assert (lb == 0).mean() > 0.5
        n_border += int(outside.sum() > 0)
    assert n_border >= 3  # shift-scale-rotate was drawn and produced borders


@pytest.mark.parametrize("kind", ["video", "image"])
def test_labels_only_valid_ids_and_dtype(kind):
    aug = FULL[kind](True)
    for seed in range(10):
        out = aug(make_clip(2, seed), np.random.default_rng(seed))
        for lb in out.labels:
            assert lb.dtype == np.uint8 and lb.shape == (H, H)
            assert set(np.unique(lb)) <= set(range(K)) | {255}
        for f in out.frames:
            assert f.dtype == np.uint8 and f.shape == (H, H, 3)


def test_video_scale_crop_never_adds_ignore():
    lbl = block_labels(1, ignore=False)
    aug = VideoTrainAugment(False, p_scale=1.0, p_photometric=0.0)
    for seed in range(10):
        out = aug(ClipSample([paint(lbl)], [lbl]), np.random.default_rng(seed))
        assert (out.labels[0] != 255).all() and out.frames[0].shape == (H, W, 3)


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_soft_targets_follow_geometry(kind, dtype):
    aug = GEOMETRIC[kind](True)
    for seed in range(8):
        lbl = block_labels(seed, ignore=False)
        clip = ClipSample([paint(lbl)], [lbl], [one_hot(lbl, dtype)])
        out = aug(clip, np.random.default_rng(seed))
        s, lb = out.soft[0], out.labels[0]
        assert s.dtype == dtype and s.shape == (K,) + lb.shape
        inner = interior(lb) & (lb != 255)
        assert (s.argmax(0)[inner] == lb[inner]).all()
        assert np.allclose(s[:, inner].sum(0), 1.0, atol=1e-2)


@pytest.mark.parametrize("kind", ["video", "image"])
def test_low_resolution_soft_targets_follow_geometry(kind):
    aug = GEOMETRIC[kind](True)
    for seed in range(8):
        lbl = block_labels(seed, ignore=False)
        soft_lr = resize_soft(one_hot(lbl), (H // 2, W // 2))
        out = aug(ClipSample([paint(lbl)], [lbl], [soft_lr]), np.random.default_rng(seed))
        s = out.soft[0]
        assert s.shape == (K, H // 2, H // 2)
        ref = resize_label(out.labels[0], (H // 2, H // 2))
        inner = interior(ref, 3) & (ref != 255)
        assert (s.argmax(0)[inner] == ref[inner]).mean() > 0.97


@pytest.mark.parametrize("kind", ["video", "image"])
def test_determinism(kind):
    aug = FULL[kind](True)
    clip = make_clip(2, 5)
    a = aug(clip, np.random.default_rng(123))
    b = aug(clip, np.random.default_rng(123))
    assert same(a, b)
    others = [aug(clip, np.random.default_rng(s)) for s in range(4)]
    assert sum(not same(a, o) for o in others) >= 3


def test_square_crop_is_a_window_of_the_input():
    clip = make_clip(2, 6)
    aug = VideoTrainAugment(True, p_flip=0.0, p_scale=0.0, p_photometric=0.0)
    offsets = set()
    for seed in range(10):
        out = aug(clip, np.random.default_rng(seed))
        assert out.frames[0].shape == (H, H, 3) and out.labels[1].shape == (H, H)
        assert out.soft[0].shape == (K, H, H)
        ox = [x for x in range(W - H + 1) if np.array_equal(clip.frames[0][:, x : x + H], out.frames[0])]
        assert ox and np.array_equal(clip.labels[1][:, ox[0] : ox[0] + H], out.labels[1])
        assert np.array_equal(clip.soft[0][:, :, ox[0] : ox[0] + H], out.soft[0])
        offsets.add(ox[0])
    assert len(offsets) > 3


def test_random_square_crop_is_one_window_for_the_clip():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)] * 2
    labels = [rng.integers(0, K, (20, 32), dtype=np.uint8)] * 2
    out = random_square_crop(ClipSample(frames, labels), np.random.default_rng(5))
    assert out.frames[0].shape == (20, 20, 3) and out.labels[0].shape == (20, 20)
    assert np.array_equal(out.frames[0], out.frames[1]) and np.array_equal(out.labels[0], out.labels[1])
    x0 = next(
        x for x in range(13) if np.array_equal(frames[0][:, x : x + 20], out.frames[0])
    )  # a window of the input
    assert np.array_equal(labels[0][:, x0 : x0 + 20], out.labels[0])


def test_center_square_crop():
    clip = make_clip(2, 7)
    out = center_square_crop(clip)
    x0 = (W - H) // 2
    for i in range(2):
        assert np.array_equal(out.frames[i], clip.frames[i][:, x0 : x0 + H])
        assert np.array_equal(out.labels[i], clip.labels[i][:, x0 : x0 + H])
        assert np.array_equal(out.soft[i], clip.soft[i][:, :, x0 : x0 + H])


def test_flip_is_exact():
    clip = make_clip(1, 8)
    aug = VideoTrainAugment(False, p_flip=1.0, p_scale=0.0, p_photometric=0.0)
    out = aug(clip, np.random.default_rng(0))
    assert np.array_equal(out.frames[0], clip.frames[0][:, ::-1])
    assert np.array_equal(out.labels[0], clip.labels[0][:, ::-1])
    assert np.array_equal(out.soft[0], clip.soft[0][:, :, ::-1])


@pytest.mark.parametrize("kind", ["video", "image"])
def test_inputs_unchanged_and_outputs_are_new_arrays(kind):
    clip = make_clip(2, 9)
    clip.soft[1] = clip.soft[1].astype(np.float16)
    ref = copy.deepcopy(clip)
    aug = FULL[kind](False)
    for seed in range(10):
        out = aug(clip, np.random.default_rng(seed))
        assert same(clip, ref)
        outs, ins = out.frames + out.labels + out.soft, clip.frames + clip.labels + clip.soft
        for x, y in zip(outs, ins, strict=True):
            assert not np.shares_memory(x, y)
    # identity configuration too (nothing drawn): still copies
    out = VideoTrainAugment(False, p_flip=0.0, p_scale=0.0, p_photometric=0.0)(clip, np.random.default_rng(0))
    assert same(out, clip) and not np.shares_memory(out.frames[0], clip.frames[0])


@pytest.mark.parametrize("kind", ["video", "image"])
def test_none_labels_and_soft_pass_through(kind):
    clip = make_clip(3, 10)
    clip = ClipSample(clip.frames, [None, clip.labels[1], None], [clip.soft[0], None, None])
    for seed in range(5):
        out = FULL[kind](True)(clip, np.random.default_rng(seed))
        assert out.labels[0] is None and out.labels[2] is None and out.labels[1].shape == (H, H)
        assert out.soft[1] is None and out.soft[2] is None and out.soft[0].shape == (K, H, H)
    out = FULL[kind](False)(ClipSample(clip.frames, [None] * 3), np.random.default_rng(0))
    assert out.labels == [None] * 3 and out.soft is None


def test_photometric_touches_frames_only_and_is_shared():
    clip = make_clip(2, 11)
    aug = VideoTrainAugment(False, p_flip=0.0, p_scale=0.0, p_photometric=1.0)
    changed = 0
    for seed in range(5):
        out = aug(clip, np.random.default_rng(seed))
        assert all(np.array_equal(a, b) for a, b in zip(out.labels, clip.labels, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(out.soft, clip.soft, strict=True))
        changed += int(not np.array_equal(out.frames[0], clip.frames[0]))
    assert changed >= 4
    # neutral parameters leave frames untouched (no lossy HSV round trip)
    neutral = VideoTrainAugment(
        False,
        p_flip=0.0,
        p_scale=0.0,
        p_photometric=1.0,
        contrast=0.0,
        brightness=0.0,
        hue=0.0,
        sat=0.0,
        val=0.0,
        gamma=(1.0, 1.0),
    )
    assert same(neutral(clip, np.random.default_rng(0)), clip)


def test_all_image_colour_and_noise_branches_run():
    clip = make_clip(2, 12)
    aug = FULL["image"](False)
    means = set()
    for seed in range(40):
        out = aug(clip, np.random.default_rng(seed))
        assert out.frames[0].shape == (H, W, 3) and out.frames[0].dtype == np.uint8
        means.add(round(float(out.frames[0].mean()), 1))
    assert len(means) > 20


def test_hsv_and_tone_units():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    # hue in OpenCV 8-bit units (2 degrees each): +30 -> 60 degrees -> yellow
    assert (hsv_op(30.0, 0.0, 0.0)(red, None) == (255, 255, 0)).all()
    # value -20 on the 0-255 scale
    assert (hsv_op(0.0, 0.0, -20.0)(red, None) == (235, 0, 0)).all()
    lut = tone_lut(contrast=1.2, brightness=0.1)  # contrast about mid-grey, brightness x 255
    assert lut[128] == round((128 - 127.5) * 1.2 + 127.5 + 25.5) and lut[0] == 0 and lut[255] == 255
    assert (tone_lut(gamma=1.2) <= np.arange(256)).all() and tone_lut(gamma=1.0).tolist() == list(range(256))


def test_noise_is_per_frame_but_jpeg_is_deterministic():
    img = paint(block_labels(13))
    rng = np.random.default_rng(0)
    g = gauss_op(5.0)
    a, b = g(img, rng), g(img, rng)
    assert not np.array_equal(a, b) and 3.0 < np.std(a.astype(float) - img) < 7.0
    j = jpeg_op(60)
    assert np.array_equal(j(img, rng), j(img, rng))


def test_to_tensor_and_denormalize_round_trip():
    frames = make_clip(3, 14).frames
    x = to_tensor(frames)
    assert x.shape == (3, 3, H, W) and x.dtype == torch.float32 and x.is_contiguous()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expect = (torch.from_numpy(frames[1]).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(x[1], expect, atol=1e-6)
    back = denormalize(x[None])  # any leading dims
    assert back.shape == (1, 3, 3, H, W)
    ref = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    assert torch.allclose(back[0] * 255, ref, atol=1e-3)
    with pytest.raises(ValueError):
        to_tensor([f.astype(np.float32) for f in frames])


def test_resize_helpers():
    lbl = block_labels(15)
    img = paint(lbl)
    up = resize_frame(img, (2 * H, 2 * W))
    assert up.shape == (2 * H, 2 * W, 3) and up.dtype == np.uint8
    small = resize_frame(img, (H // 4, W // 4))  # > 2x shrink: INTER_AREA
    assert np.array_equal(small, cv2.resize(img, (W // 4, H // 4), interpolation=cv2.INTER_AREA))
    lr = resize_label(lbl, (H // 2, W // 2))
    assert lr.dtype == np.uint8 and set(np.unique(lr)) <= set(np.unique(lbl))
    assert np.array_equal(resize_label(lr, (H, W))[::2, ::2], lr)  # pixel-centre aligned nearest
    s = resize_soft(one_hot(lbl, np.float16), (H // 3, W // 3))
    assert s.shape == (K, H // 3, W // 3) and s.dtype == np.float16
    const = resize_soft(np.full((2, H, W), 0.25, np.float32), (37, 51))
    assert np.allclose(const, 0.25)


def test_invalid_samples_are_rejected():
    clip = make_clip(2, 16)
    with pytest.raises(ValueError):
        bad = ClipSample(clip.frames, [clip.labels[0][:-1], None])  # label one row short
        VideoTrainAugment(False)(bad, np.random.default_rng(0))
    with pytest.raises(ValueError):
        ImageTrainAugment(False)(ClipSample(clip.frames, [None]), np.random.default_rng(0))
    with pytest.raises(ValueError):
        VideoTrainAugment(False, scales=(0.9, 1.1))


def _only_photometry(mode: str, **ranges: object) -> VideoTrainAugment:
    return VideoTrainAugment(False, p_flip=0.0, p_scale=0.0, p_photometric=1.0, photometric=mode, **ranges)


def test_reference_photometry_is_a_gain_about_zero_with_a_grey_level_brightness():
    """ssp.md 7.8: the reference's contrast is alpha * x (about 0, not mid-grey) and its brightness adds b grey
    levels, not b * 255; with contrast alone, dark pixels barely move and bright ones move the most."""
    clip = make_clip(1, 13)
    contrast_only = dict(hue=0.0, sat=0.0, val=0.0, gamma=(1.0, 1.0), brightness=0.0)
    for seed in range(4):
        rng_draws = np.random.default_rng(seed)
        rng_draws.random(), rng_draws.random(), rng_draws.random()  # flip, scale, photometric gates
        alpha = 1.0 + rng_draws.uniform(-0.2, 0.2)
        out = _only_photometry("reference", **contrast_only)(clip, np.random.default_rng(seed))
        expected = np.clip(np.rint(clip.frames[0].astype(np.float64) * alpha), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out.frames[0], expected)
    # brightness alone: +-0.2 grey levels rounds away (the reference's no-op); tcseg's default shifts by up to 51
    brightness_only = dict(contrast=0.0, hue=0.0, sat=0.0, val=0.0, gamma=(1.0, 1.0))
    for seed in range(4):
        ref = _only_photometry("reference", **brightness_only)(clip, np.random.default_rng(seed))
        assert np.array_equal(ref.frames[0], clip.frames[0])
    moved = [
        np.abs(_only_photometry("mid_grey", **brightness_only)(clip, np.random.default_rng(s)).frames[0].astype(int)
               - clip.frames[0].astype(int)).mean()
        for s in range(4)
    ]  # fmt: skip
    assert max(moved) > 5.0


def test_reference_photometry_applies_gamma_after_hsv_and_rejects_unknown_modes():
    clip = make_clip(1, 14)
    ref = _only_photometry("reference")(clip, np.random.default_rng(1))
    tcseg = _only_photometry("mid_grey")(clip, np.random.default_rng(1))
    assert ref.frames[0].shape == tcseg.frames[0].shape and not np.array_equal(ref.frames[0], tcseg.frames[0])
    with pytest.raises(ValueError, match="photometric"):
        VideoTrainAugment(False, photometric="albumentations")
