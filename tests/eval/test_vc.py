"""VC_n (``metrics.md`` §4) on hand-computed tiny clips."""

from __future__ import annotations

import math

import pytest
import torch

from config.errors import ConfigError
from eval.vc import VideoConsistency


def t(*v: int) -> torch.Tensor:
    """A 1 x len(v) map."""
    return torch.tensor([list(v)])


# G and P of a 3-frame clip, two pixels. n = 2:
#   window 0: GC = [T, T], PC = [T, F] -> a_0 = 1/2
#   window 1: GC = [T, F], PC = [T, T] -> a_1 = 1/1
CLIP_G = [t(0, 1), t(0, 1), t(0, 0)]
CLIP_P = [t(0, 1), t(0, 0), t(0, 0)]


def run(vc: VideoConsistency, name: str, preds: list, labels: list, n_frames: int | None = None) -> None:
    vc.start_clip(name, n_frames)
    for i, (p, g) in enumerate(zip(preds, labels, strict=True)):
        vc.add(i, p, g)


@pytest.mark.parametrize("known_length", [False, True])
def test_vspw_vs_all_windows(known_length: bool) -> None:
    n_frames = 3 if known_length else None
    vspw, every = VideoConsistency(2, "vspw"), VideoConsistency(2, "all")
    run(vspw, "a", CLIP_P, CLIP_G, n_frames)
    run(every, "a", CLIP_P, CLIP_G, n_frames)
    r = vspw.result()
    assert r["value"] == 0.5 and r["windows"] == 1 and r["reason"] is None  # i = 0 .. L-n-1 = 0 only
    r = every.result()
    assert r["value"] == 0.75 and r["windows"] == 2  # i = 0 .. L-n
    # a second clip: the first clip's last window stays unused under vspw
    run(
        vspw, "b", CLIP_P[:2] + [t(1, 1)], CLIP_G[:2] + [t(5, 5)], n_frames
    )  # a_0 = 1/2; window 1 is its last
    assert vspw.result()["value"] == 0.5 and vspw.result()["windows"] == 2


def test_ignore_include_vs_exclude() -> None:
    labels, preds = [t(255, 1), t(255, 1)], [t(0, 1), t(1, 1)]
    inc, exc = VideoConsistency(2, "all", "include"), VideoConsistency(2, "all", "exclude")
    run(inc, "a", preds, labels)
    run(exc, "a", preds, labels)
    assert inc.result()["value"] == 0.5  # the constant ignore pixel counts, its prediction changes
    assert exc.result()["value"] == 1.0  # ignore pixel dropped


def test_nan_windows_are_excluded_from_the_mean() -> None:
    vc = VideoConsistency(2, "all")
    run(vc, "a", [t(0), t(0)], [t(1), t(2)])  # GC empty -> a = NaN
    r = vc.result()
    assert r["value"] is None and r["windows"] == 1 and "empty GC" in r["reason"]
    run(vc, "b", [t(0), t(0)], [t(1), t(1)])
    assert vc.result()["value"] == 1.0 and vc.result()["windows_valid"] == 1


def test_sparse_labels_give_null_with_reason() -> None:
    vc = VideoConsistency(8, "vspw")
    vc.start_clip("uavid_like", 30)
    for i in range(30):
        vc.add(
            i,
            torch.zeros(4, 4, dtype=torch.long),
            torch.zeros(4, 4, dtype=torch.long) if i % 10 == 9 else None,
        )
    r = vc.result()
    assert r["value"] is None and r["windows"] == 0
    assert r["reason"] == (
        "no clip has 8 consecutive labelled frames (sparse labels: the longest run of labelled frames is 1)"
    )
    # a gap in the frame indices breaks a run even when every given frame is labelled
    vc2 = VideoConsistency(2, "all")
    vc2.start_clip("gap")
    for i in (0, 2, 4):
        vc2.add(i, t(0), t(0))
    assert vc2.result()["value"] is None and "consecutive" in vc2.result()["reason"]


def test_short_clip_under_vspw_and_bounded_memory() -> None:
    vc = VideoConsistency(3, "vspw")
    run(vc, "short", [t(0)] * 3, [t(0)] * 3)  # L = n: its only window is the unused last one
    r = vc.result()
    assert r["value"] is None and "last window" in r["reason"]
    long = VideoConsistency(3, "vspw")
    long.start_clip("long")
    for i in range(50):
        long.add(i, t(i % 2), t(0))
        assert len(long._buf) <= 3  # never more than n frames held
    r = long.result()
    assert r["windows"] == 50 - 3 and r["value"] == 0.0  # windows 0 .. L-n-1; predictions flicker everywhere
    assert not math.isnan(r["value"])
    with pytest.raises(ConfigError):
        VideoConsistency(8, "some")


def test_dense_labels_on_short_clips_are_not_called_sparse() -> None:
    vc = VideoConsistency(8, "vspw")
    for clip in ("a", "b"):
        vc.start_clip(clip, 5)
        for i in range(5):
            vc.add(i, t(0), t(0))  # every frame labelled: dense, but 5 < 8
    r = vc.result()
    assert r["value"] is None and r["reason"] == "every clip is shorter than 8 frames (the longest has 5)"
