"""Registration providers: OpenCV accuracy and fallbacks, true homographies, the on-disk cache, DISK loading."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config.errors import CheckpointError, ConfigError, DataError
from config.schema import RegistrationCfg
from data.catalog import get_dataset_info
from data.frames import FramePair, read_clip, read_frame
from models.registration import (
    CachedRegistration,
    GTRegistration,
    IdentityRegistration,
    OpenCVRegistration,
    build_registration,
)
from models.registry import REGISTRATION_PROVIDERS
from models.warp import homography_warp
from tests.images import texture, to_tensor

H_TRUE = np.array([[1.01, 0.02, 3.0], [-0.015, 0.99, -2.0], [1e-5, -2e-5, 1.0]])


def corner_error(h: np.ndarray, ref: np.ndarray, size_hw: tuple[int, int]) -> float:
    """Largest distance (px) between the frame corners mapped by ``h`` and by ``ref``."""
    y, x = size_hw[0] - 1, size_hw[1] - 1
    c = np.array([[0, 0, 1], [x, 0, 1], [0, y, 1], [x, y, 1]], dtype=np.float64).T
    a, b = h @ c, ref @ c
    return float(np.abs(a[:2] / a[2] - b[:2] / b[2]).max())


@pytest.fixture(scope="module")
def warped_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 240x320 textured frame and its warp by ``H_TRUE`` (prev -> cur)."""
    prev = texture(240, 320)
    return prev, cv2.warpPerspective(prev, H_TRUE, (320, 240), borderMode=cv2.BORDER_REFLECT)


# ------------------------------------------------------------------------------------------------- OpenCV


@pytest.mark.parametrize(
    ("detector", "estimator"), [("orb", "ransac"), ("orb", "usac_magsac"), ("sift", "ransac")]
)
def test_opencv_recovers_homography(detector: str, estimator: str, warped_pair: tuple) -> None:
    prev, cur = warped_pair
    provider = OpenCVRegistration(detector, max_keypoints=2000, estimator=estimator)
    h = provider.estimate_np(prev, cur)
    assert h.dtype == np.float64 and corner_error(h, H_TRUE, prev.shape[:2]) < 1.5
    ht = provider.estimate(
        to_tensor(prev), to_tensor(cur)
    )  # tensor path: same frames after the uint8 round trip
    assert ht.shape == (1, 3, 3) and ht.dtype == torch.float32
    assert corner_error(ht[0].double().numpy(), h, prev.shape[:2]) < 1e-2
    assert provider.stats()["fallback_identity"] == 0 and provider.stats()["pairs"] == 2
    assert provider.settings()["threshold_semantics"].startswith("pixels")


def test_sift_is_reproducible(warped_pair: tuple) -> None:
    prev, cur = warped_pair
    provider = OpenCVRegistration("sift", max_keypoints=1000)
    first = provider.estimate_np(prev, cur)
    provider._last = None  # no feature reuse: FLANN runs again and must give the same H
    assert np.array_equal(first, provider.estimate_np(prev, cur))


def test_blank_pair_falls_back_to_identity_and_counts() -> None:
    provider = OpenCVRegistration("orb")
    blank = np.full((64, 96, 3), 128, np.uint8)
    assert np.array_equal(provider.estimate_np(blank, blank), np.eye(3))
    h = provider.estimate(torch.full((2, 3, 64, 96), 0.5), torch.full((2, 3, 64, 96), 0.5))
    assert torch.equal(h, torch.eye(3).expand(2, 3, 3))
    assert provider.stats()["fallback_identity"] == 3 and provider.stats()["pairs"] == 3
    assert provider.last_fallbacks == [True, True]
    provider.reset_stats()
    assert provider.stats()["pairs"] == 0


def test_streaming_reuses_previous_features(warped_pair: tuple) -> None:
    prev, cur = warped_pair
    provider = OpenCVRegistration("orb")
    h = provider.estimate_np(prev, cur)
    provider.estimate_np(cur, prev)  # prev is the last call's cur
    assert provider.stats()["feature_reuse"] == 1
    clone = pickle.loads(pickle.dumps(provider))  # spawned data-loader workers pickle the provider
    assert np.array_equal(clone.estimate_np(prev, cur), h)


def test_akaze_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cv2, "AKAZE_create", raising=False)
    with pytest.raises(ConfigError, match=r"orb or sift.*opencv-python-headless<5"):
        build_registration("akaze", RegistrationCfg(cache=False))


@pytest.mark.skipif(not hasattr(cv2, "AKAZE_create"), reason="this OpenCV build has no AKAZE")
def test_akaze_recovers_homography(warped_pair: tuple) -> None:
    prev, cur = warped_pair
    h = build_registration("akaze", RegistrationCfg(cache=False, max_keypoints=1000)).estimate_np(prev, cur)
    assert corner_error(h, H_TRUE, prev.shape[:2]) < 1.5


# ------------------------------------------------------------------------------------ identity and truth


def test_identity_provider() -> None:
    provider = build_registration("identity", RegistrationCfg())
    assert isinstance(provider, IdentityRegistration)  # never cached
    h = provider.estimate(torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8))
    assert torch.equal(h, torch.eye(3).expand(3, 3, 3)) and provider.stats()["pairs"] == 3


def _val_clip(root: Path):
    name = (root / "val.txt").read_text().split()[0]
    return read_clip(root / "data" / name, name, get_dataset_info("synthetic"))


def test_gt_homography_registers_frames(tiny_synthetic: Path) -> None:
    clip = _val_clip(tiny_synthetic)
    frames = to_tensor(*(read_frame(p) for p in clip.frames))
    provider = build_registration("gt", RegistrationCfg())
    assert isinstance(provider, GTRegistration)
    pairs = [clip.pair(t - 1, t) for t in range(1, len(clip))]
    h = provider.estimate(frames[:-1], frames[1:], pairs)
    warped = homography_warp(frames[:-1], h)
    valid = homography_warp(torch.ones_like(frames[:-1, :1]), h) > 0.999
    valid[..., :4, :] = valid[..., -4:, :] = valid[..., :4] = valid[..., -4:] = False
    err_gt = ((warped - frames[1:]).abs().mean(1, keepdim=True))[valid].mean()
    err_id = ((frames[:-1] - frames[1:]).abs().mean(1, keepdim=True))[valid].mean()
    assert err_gt < 0.5 * err_id, (err_gt, err_id)
    # the reverse pair is the inverse; the numpy path agrees
    back = provider.estimate_np(read_frame(clip.frames[2]), read_frame(clip.frames[1]), clip.pair(2, 1))
    assert np.allclose(back @ h[1].double().numpy(), np.eye(3), atol=1e-4)
    with pytest.raises(DataError, match="adjacent"):
        provider.estimate(frames[:1], frames[2:3], [clip.pair(0, 2)])
    with pytest.raises(ConfigError, match="needs the frame pairs"):
        provider.estimate(frames[:1], frames[1:2])


def test_orb_sift_on_tiny_synthetic_pairs(tiny_synthetic: Path) -> None:
    """On 64x96 frames the detectors run and never crash; failures are counted, not raised."""
    clip = _val_clip(tiny_synthetic)
    for name in ("orb", "sift"):
        provider = build_registration(name, RegistrationCfg(cache=False))
        for t in range(1, len(clip)):
            h = provider.estimate_np(read_frame(clip.frames[t - 1]), read_frame(clip.frames[t]))
            assert h.shape == (3, 3) and np.isfinite(h).all()
        assert provider.stats()["pairs"] == len(clip) - 1


# -------------------------------------------------------------------------------------------------- cache


def test_cache_hits_and_misses(warped_pair: tuple, tmp_path: Path) -> None:
    prev, cur = warped_pair
    for i, img in enumerate((prev, cur)):
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), img[..., ::-1])
    pair = FramePair(tmp_path / "000000.png", tmp_path / "000001.png", 0, 1)
    cfg = RegistrationCfg(cache_dir=str(tmp_path / "cache"))
    provider = build_registration("orb", cfg)
    assert isinstance(provider, CachedRegistration)
    h1 = provider.estimate_np(prev, cur, pair)
    h2 = provider.estimate_np(prev, cur, pair)
    assert np.array_equal(h1, h2)
    assert (provider.stats()["cache_hits"], provider.stats()["cache_misses"], provider.stats()["pairs"]) == (
        1,
        1,
        2,
    )
    files = list((tmp_path / "cache" / "registration" / "orb").rglob("*"))
    assert [f.suffix for f in files if f.is_file()] == [".npy"]  # no temporary file left behind
    ht = provider.estimate(to_tensor(prev, prev), to_tensor(cur, cur), [pair, pair])  # tensor path, same key
    assert (
        torch.allclose(ht, torch.from_numpy(h1).float().expand(2, 3, 3))
        and provider.stats()["cache_hits"] == 3
    )
    other = build_registration("orb", dataclasses.replace(cfg, ratio=0.7))
    other.estimate_np(prev, cur, pair)
    assert other.stats()["cache_misses"] == 1 and other.stats()["cache_hits"] == 0
    assert provider.estimate(to_tensor(prev), to_tensor(cur)).shape == (1, 3, 3)  # no pairs: pass-through
    assert provider.stats()["cache_hits"] == 3


def test_cache_counts_cached_fallbacks(tmp_path: Path) -> None:
    blank = np.full((32, 32, 3), 7, np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), blank)
    pair = FramePair(tmp_path / "a.png", tmp_path / "a.png", 0, 1)
    provider = CachedRegistration(OpenCVRegistration("orb"), tmp_path / "cache")
    provider.estimate_np(blank, blank, pair)
    provider.estimate_np(blank, blank, pair)
    assert provider.stats()["fallback_identity"] == 2 and provider.stats()["cache_hits"] == 1


def test_unknown_provider() -> None:
    assert REGISTRATION_PROVIDERS.names() == ["akaze", "disk", "gt", "identity", "orb", "sift"]
    with pytest.raises(ConfigError, match="did you mean 'sift'"):
        build_registration("sifty", RegistrationCfg())


# --------------------------------------------------------------------------------------------------- DISK


def _disk_cfg(files: tuple[Path, Path], **kw: object) -> RegistrationCfg:
    return RegistrationCfg(disk_weights=str(files[0]), lightglue_weights=str(files[1]), cache=False, **kw)


def test_disk_runs_and_falls_back(disk_weight_files: tuple[Path, Path]) -> None:
    provider = build_registration("disk", _disk_cfg(disk_weight_files, max_keypoints=64))
    img = to_tensor(texture(64, 64))
    h = provider.estimate(img.expand(2, -1, -1, -1), torch.roll(img, (3, 2), (2, 3)).expand(2, -1, -1, -1))
    assert h.shape == (2, 3, 3) and h.dtype == torch.float32 and torch.isfinite(h).all()
    blank = torch.full((1, 3, 64, 64), 0.5)  # no keypoints at all
    assert torch.equal(provider.estimate(blank, blank)[0], torch.eye(3))
    assert provider.stats()["pairs"] == 3 and provider.stats()["fallback_identity"] >= 1
    s = provider.settings()
    assert s["threshold_semantics"].startswith("squared") and len(s["disk_sha256"]) == 64
    assert not provider.runs_in_loader
    with pytest.raises(ConfigError, match="runs in the model"):
        provider.estimate_np(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_disk_geometry_with_exact_matches(
    disk_weight_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With correct matches (a stand-in for trained LightGlue), RANSAC recovers a shift prev -> cur."""
    provider = build_registration(
        "disk", _disk_cfg(disk_weight_files, max_keypoints=256, input_norm="imagenet")
    )

    shift = {"px": 16.0}

    def matcher(data: dict) -> dict:
        k0, k1 = data["image0"]["keypoints"][0], data["image1"]["keypoints"][0]
        dist, j = torch.cdist(k0 + shift["px"], k1).min(1)
        i = torch.nonzero(dist < 0.5)[:, 0]
        return {"matches": [torch.stack([i, j[i]], 1)]}

    monkeypatch.setattr(provider.matcher, "forward", matcher)
    img = to_tensor(texture(128, 128))
    h = provider.estimate(img, torch.roll(img, (16, 16), (2, 3)))[0]  # a 16 px shift keeps DISK's grid
    expected = torch.tensor([[1.0, 0, 16], [0, 1, 16], [0, 0, 1]])
    assert torch.allclose(h, expected, atol=0.05), h
    shift["px"] = -16.0
    h = provider.estimate(torch.roll(img, (16, 16), (2, 3)), img)[
        0
    ]  # streaming: the last cur's features reused
    assert torch.allclose(h, torch.linalg.inv(expected), atol=0.05), h
    assert provider.stats()["feature_reuse"] == 1 and provider.stats()["fallback_identity"] == 0


def test_disk_weight_errors(disk_weight_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"missing\.pth.*cvlab-epfl"):
        build_registration("disk", _disk_cfg((tmp_path / "missing.pth", disk_weight_files[1])))
    with pytest.raises(CheckpointError, match=r"nolg\.pth.*LightGlue"):
        build_registration("disk", _disk_cfg((disk_weight_files[0], tmp_path / "nolg.pth")))
    bare = tmp_path / "bare.pth"  # a bare DISK state dict is accepted too
    torch.save(torch.load(disk_weight_files[0], weights_only=True)["extractor"], bare)
    build_registration("disk", _disk_cfg((bare, disk_weight_files[1])))
    with pytest.raises(CheckpointError, match="does not fit kornia DISK"):
        build_registration("disk", _disk_cfg((disk_weight_files[1], disk_weight_files[1])))
