"""The flow cache: written once by ``python -m data.flow_cache`` and reused, keyed by frames and settings, and
read back through :class:`models.flow.cache.CachedFlow` exactly as the provider computed it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import ConfigError
from config.loader import load
from data import flow_cache
from data.frames import open_split
from models.flow import build_flow
from models.flow.cache import CachedFlow
from tests.conftest import TINY_HW


def _args(tiny: Path, cache: Path, *extra: str) -> list[str]:
    return ["base_synthetic", "--split", "val", "--cache-dir", str(cache), *extra]


@pytest.fixture
def tiny_config(tiny_synthetic: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``base_synthetic`` pointed at the tiny set (the CLI loads the config by name)."""
    real = flow_cache.load
    monkeypatch.setattr(flow_cache, "load", lambda name, kind: real(name, kind, [
        f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]"]))  # fmt: skip


def test_the_cache_is_written_once_and_reused(
    tiny_config: None, tiny_synthetic: Path, tmp_path: Path
) -> None:
    first = flow_cache.main(_args(tiny_synthetic, tmp_path, "--flow", "dis"))
    assert first["pairs"] > 0 and first["computed"] == first["pairs"] and first["disk_mb"] > 0
    stored = list((tmp_path / "flow_dis").rglob("*.npy"))
    assert len(stored) == first["pairs"]
    again = flow_cache.main(_args(tiny_synthetic, tmp_path, "--flow", "dis"))
    assert again["computed"] == 0 and again["reused"] == first["pairs"]  # a second run computes no flow
    other = flow_cache.main(_args(tiny_synthetic, tmp_path, "--flow", "dis", "--size", "32x48"))
    assert other["computed"] == first["pairs"]  # another resolution is another key


def test_cached_flow_returns_what_the_provider_computed(tiny_synthetic: Path, tmp_path: Path) -> None:
    cfg = load("base_synthetic", "image", [f"data_cfg.path={tiny_synthetic}"])
    clip = open_split(cfg.data_cfg, "val")[2][0]
    pairs = [clip.pair(0, 1), clip.pair(1, 2)]
    img = torch.rand(2, 3, *TINY_HW)
    provider = build_flow("gt")
    cached = CachedFlow(provider, tmp_path)
    direct = provider(img, img, pairs)
    assert torch.equal(cached(img, img, pairs), direct) and cached.stats() == {
        "cache_hits": 0,
        "cache_misses": 2,
    }
    assert torch.equal(cached(img, img, pairs), direct) and cached.stats()["cache_hits"] == 2
    # a damaged record is recomputed and overwritten
    key = cached.key(pairs[0], TINY_HW)
    np.save(cached.store.path(key), np.zeros(3, np.float32))
    assert torch.equal(cached(img[:1], img[:1], pairs[:1]), direct[:1]) and cached.store.load(key).shape == (
        2,
        *TINY_HW,
    )
    # without pairs nothing is cached (the frames may be augmented)
    dis = CachedFlow(build_flow("dis"), tmp_path / "dis")
    dis(img, img)
    assert dis.store.disk_bytes() == 0


def test_bad_arguments_are_one_line_errors(tiny_config: None, tiny_synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--size"):
        flow_cache.main(_args(tiny_synthetic, tmp_path, "--size", "big"))
    # the tiny training clips are labelled on their last frame only: no annotated frame has a next frame
    with pytest.raises(ConfigError, match=r"no annotated train frame t has a frame t\+1"):
        flow_cache.main(["base_synthetic", "--cache-dir", str(tmp_path)])


def test_previews_show_the_flow_and_where_the_loss_acts(
    tiny_config: None, tiny_synthetic: Path, tmp_path: Path
) -> None:
    import cv2

    from eval.vis.flow import flow_to_rgb, weight_to_rgb
    from training.fcl import FlowConsistencyLoss

    report = flow_cache.main(_args(tiny_synthetic, tmp_path, "--flow", "gt", "--preview", "2"))
    assert len(report["previews"]) == 4 and all(Path(p).is_file() for p in report["previews"])
    assert cv2.imread(report["previews"][0]).shape == (*TINY_HW, 3)
    # the pictures' building blocks: direction as hue, zero flow black; the weight map is zero where nothing moves
    flow = np.zeros((2, 4, 4), np.float32)
    flow[0, :, 2:] = 3.0  # the right half moves right: a motion edge between columns 1 and 2
    rgb = flow_to_rgb(flow)
    assert rgb[:, :2].max() == 0 and rgb[:, 2:].max() == 255
    w = FlowConsistencyLoss.preset("final").weight_map(torch.from_numpy(flow)[None])[0, 0]
    # the static pixels at the edge see moving neighbours; moving pixels never count a still (zero-flow) one
    assert w[:, 1].min() > 0 and w[:, [0, 2, 3]].max() == 0
    img = weight_to_rgb(w.numpy()).astype(int)
    assert img[:, 3].sum() < 50 < img[:, 1].sum()  # zero near black, the largest weight bright
