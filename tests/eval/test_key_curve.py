"""Keyframe latency and the interval curve of eval.benchmark (eval.key_curve) on a tiny keyframe run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from config.errors import ConfigError
from eval import benchmark
from eval.key_curve import curve_trend, cycle_fps, key_split, measure_curve, parse_intervals
from models.runs import load_streaming_model
from tests.conftest import TINY_HW
from tests.eval.test_benchmark import QUICK
from training import train_video


@pytest.fixture(scope="module")
def keyframe_run(
    tiny_synthetic: Path, tiny_image_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny keyframe-propagation run (light flow net, GSV refiner, interval 2), one epoch of one step."""
    h, w = TINY_HW
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_video.main([
            "keyframe_synthetic", f"save_dir={tmp_path_factory.mktemp('keyframe_runs')}",
            f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{h}, {w}]",
            f"image_model_cfg.checkpoint_name={tiny_image_run}",
            "training_cfg.batch_size=2", "training_cfg.num_epochs=1", "training_cfg.max_steps_per_epoch=1",
            "training_cfg.max_val_samples=2", "training_cfg.num_workers=0", "training_cfg.vis_samples=0",
            "optim_cfg.warmup_epochs=0",
        ])  # fmt: skip
    finally:
        torch.set_num_threads(n)


def _formula(key_ms: float, nonkey_ms: float | None, i: int) -> float:
    return (i + 1) / (key_ms + i * (nonkey_ms or 0.0)) * 1000.0


def test_headline_splits_keyframes_and_the_interval_curve(keyframe_run: Path) -> None:
    report = benchmark.main([str(keyframe_run), *QUICK, "--intervals", "2,0,1"])
    assert json.loads((keyframe_run / "benchmark" / "cpu_64x96_fp32.json").read_text()) == report
    # the headline, at the run's own interval 2: 5 frames of a 5-frame clip are K N N K N
    video = report["results"]["video/fp32"]
    assert (video["interval"], video["key_frames"], video["nonkey_frames"]) == (2, 2, 3)
    assert video["cycle_fps"] == pytest.approx(_formula(video["key_ms"], video["nonkey_ms"], 2), rel=1e-3)
    assert "key_ms" not in report["results"]["image/fp32"]  # the per-frame image network has no keyframes
    assert report["video_model"]["interval"] == 2  # restored after the curve

    rows = report["curve"]
    assert [r["interval"] for r in rows] == [0, 1, 2] and {r["precision"] for r in rows} == {"fp32"}
    image_fps = report["results"]["image/fp32"]["fps"]
    for r in rows:
        i = r["interval"]
        assert r["key_frames"] + r["nonkey_frames"] == 5 and r["fps"] > 0
        assert r["cycle_fps"] == pytest.approx(_formula(r["key_ms"], r["nonkey_ms"], i), rel=1e-3)
        assert r["image_fps"] == image_fps and r["ratio"] == pytest.approx(
            r["cycle_fps"] / image_fps, abs=1e-3
        )
        assert 0 <= r["min_miou"] <= 1 and 0 <= r["avg_miou"] <= 1 and r["phases"] == [0]  # dense val labels
        assert [d["distance"] for d in r["per_distance"]] == list(range(i + 1))
    assert (
        rows[0]["nonkey_ms"] is None and rows[0]["nonkey_frames"] == 0
    )  # interval 0: every frame a keyframe
    assert rows[0]["min_miou"] == rows[0]["avg_miou"]
    assert (rows[1]["key_frames"], rows[1]["nonkey_frames"]) == (3, 2)
    trend = report["monotonic_detail"]
    assert trend == curve_trend(rows) and report["monotonic"] == (trend["cycle_fps"] and trend["avg_miou"])
    plot = Path(report["curve_plot"])
    assert plot == keyframe_run / "benchmark" / "cpu_64x96_fp32_curve.png" and plot.stat().st_size > 1000
    text = benchmark.format_report(report)
    assert "video/fp32: keyframes" in text and "key cycle curve" in text and "monotonic: " in text
    assert f"(fp32 {image_fps:.2f})" in text and str(plot) in text

    # without mIoU and without the image network: timing only, no plot, no ratio
    report = benchmark.main([str(keyframe_run), *QUICK, "--intervals", "1", "--no-curve-miou",
                             "--no-image-baseline"])  # fmt: skip
    (row,) = report["curve"]
    assert "avg_miou" not in row and row["ratio"] is None and row["image_fps"] is None
    assert report["curve_plot"] is None and report["monotonic_detail"]["avg_miou"] is None
    assert "plot: none" in benchmark.format_report(report)


def test_curve_arguments_are_config_errors(keyframe_run: Path, tiny_image_run: Path, tmp_path: Path) -> None:
    for bad in ("a,b", "-1", ",", "1.5"):
        with pytest.raises(ConfigError, match="--intervals must be whole numbers"):
            benchmark.main([str(keyframe_run), *QUICK, "--intervals", bad])
    with pytest.raises(ConfigError, match="only with --intervals"):
        benchmark.main([str(keyframe_run), *QUICK, "--no-curve-miou"])
    # a copy: the check comes after the run's benchmark folder is made, and the shared run stays as it is
    image_run = shutil.copytree(tiny_image_run, tmp_path / tiny_image_run.name)
    with pytest.raises(ConfigError, match="--intervals: method 'per_frame' has no keyframe interval"):
        benchmark.main([str(image_run), *QUICK, "--intervals", "0,1"])


def test_measure_curve_restores_interval_and_phase(keyframe_run: Path) -> None:
    model = load_streaming_model(keyframe_run, use_caches=False)[0]
    model.set_options(key_phase=1)
    seen = []

    def time_interval() -> dict:
        seen.append(model.options()["interval"])
        return {"fps": 1.0, "cycle_fps": 2.0}

    rows = measure_curve(model, [0, 3], time_interval, image_fps=4.0, precision="bf16")
    assert seen == [0, 3] and [r["ratio"] for r in rows] == [0.5, 0.5] and rows[0]["precision"] == "bf16"
    assert (model.options()["interval"], model.options()["key_phase"]) == (2, 1)

    def fail() -> dict:
        raise RuntimeError("timing failed")

    with pytest.raises(RuntimeError, match="timing failed"):
        measure_curve(model, [1], fail)
    assert (model.options()["interval"], model.options()["key_phase"]) == (2, 1)


def test_key_split_and_cycle_fps() -> None:
    assert key_split([1.0, 2.0], [None, None], None) is None  # no keyframes: the entry stays as it was
    split = key_split([10.0, 2.0, 4.0, 12.0], [0, 1, 2, 0], 2)
    assert split == {"interval": 2, "key_ms": 11.0, "nonkey_ms": 3.0, "key_frames": 2, "nonkey_frames": 2,
                     "cycle_fps": round(3 / (11.0 + 2 * 3.0) * 1000, 2)}  # fmt: skip
    assert (
        cycle_fps(5.0, None, 0) == 200.0
        and cycle_fps(5.0, None, 1) is None
        and cycle_fps(None, 1.0, 1) is None
    )
    assert parse_intervals("4, 0,2,2") == [0, 2, 4]


def test_curve_trend() -> None:
    def row(i: int, fps: float | None, miou: float | None = None, prec: str = "fp32") -> dict:
        return {
            "precision": prec,
            "interval": i,
            "cycle_fps": fps,
            **({} if miou is None else {"avg_miou": miou}),
        }

    assert curve_trend([row(0, 10, 0.7), row(1, 15, 0.7), row(2, 20, 0.6)]) == {
        "cycle_fps": True,
        "avg_miou": True,
    }
    assert curve_trend([row(0, 10, 0.6), row(1, 9, 0.7)]) == {"cycle_fps": False, "avg_miou": False}
    assert curve_trend([row(0, 10), row(1, 12)]) == {"cycle_fps": True, "avg_miou": None}
    assert curve_trend([row(0, 10), row(1, None)])["cycle_fps"] is False  # a missing figure breaks the trend
    # each precision's rows on their own (bf16 is faster than fp32 at interval 0 but rises too)
    rows = [
        row(0, 10, prec="fp32"),
        row(1, 12, prec="fp32"),
        row(0, 20, prec="bf16"),
        row(1, 25, prec="bf16"),
    ]
    assert curve_trend(rows)["cycle_fps"] is True
