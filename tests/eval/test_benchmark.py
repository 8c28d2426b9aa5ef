"""eval.benchmark in-process on tiny runs: the report, its JSON file, per-stage times, precisions, bad arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from config.errors import CheckpointError, ConfigError
from eval import benchmark, timing
from tests.conftest import TINY_HW
from training import train_video

SYNTH = ["video_model_cfg.k_registrator_model=gt", "video_model_cfg.flow.backend=gt"]
QUICK = ["--frames", "5", "--warmup", "1", "--runs", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def video_run(tiny_synthetic: Path, tiny_image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SSP run (true homographies and flow), one epoch of one step."""
    h, w = TINY_HW
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_video.main([
            "ssp_synthetic", *SYNTH,
            f"save_dir={tmp_path_factory.mktemp('video_runs')}",
            "data_cfg.dataset=synthetic", f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{h}, {w}]",
            f"image_model_cfg.checkpoint_name={tiny_image_run}",
            "training_cfg.batch_size=2", "training_cfg.num_epochs=1", "training_cfg.early_stopping=null",
            "training_cfg.max_steps_per_epoch=1", "training_cfg.max_val_samples=2", "training_cfg.num_workers=0",
            "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
        ])  # fmt: skip
    finally:
        torch.set_num_threads(n)


def _check_entry(entry: dict, frames: int, runs: int) -> None:
    assert entry["fps"] > 0 and entry["mean_ms"] > 0
    assert 0 < entry["median_ms"] <= entry["p90_ms"]
    assert entry["fps"] == pytest.approx(1000.0 / entry["mean_ms"], rel=1e-3, abs=0.01)
    assert len(entry["run_means_ms"]) == runs and entry["frames_per_run"] == frames
    assert entry["mean_ms"] in entry["run_means_ms"]  # the median run is the one reported
    assert all(v >= 0 for v in entry["stages_ms"].values())
    # each stage and the sum are rounded to 3 decimals on their own: 0.0005 ms of slack apiece
    slack = 5e-4 * (len(entry["stages_ms"]) + 1)
    assert entry["stage_sum_ms"] == pytest.approx(sum(entry["stages_ms"].values()), abs=slack)
    assert entry["peak_memory_mb"] > 0 and entry["peak_memory_kind"] == "process peak RSS"
    means = entry["run_means_ms"]
    spread = (max(means) - min(means)) / sorted(means)[len(means) // 2] if len(means) % 2 else None
    if spread is not None:
        assert entry["run_spread"] == pytest.approx(spread, abs=1e-4)
    assert entry["noisy"] == (entry["run_spread"] > timing.SPREAD_WARNING)


def _check_file(run: Path, report: dict, name: str) -> None:
    out = run / "benchmark" / name
    assert out.is_file(), sorted(p.name for p in out.parent.iterdir())
    assert json.loads(out.read_text()) == report


def test_video_run_benchmark_fp32(video_run: Path) -> None:
    report = benchmark.main([str(video_run), *QUICK])
    _check_file(video_run, report, "cpu_64x96_fp32.json")
    assert report["kind"] == "video" and report["input_size"] == [64, 96] and report["batch_size"] == 1
    assert (report["warmup"], report["timed_frames"], report["runs"]) == (1, 5, 2)
    assert report["threads"] == 1 and report["tf32"] is None
    res = report["results"]
    assert set(res) == {"video/fp32", "image/fp32", "ratio/fp32"}
    for key in ("video/fp32", "image/fp32"):
        _check_entry(res[key], frames=5, runs=2)
    assert {"backbone", "head", "warp", "fusion", "registration", "upsample", "argmax"} <= set(
        res["video/fp32"]["stages_ms"]
    )
    assert set(res["image/fp32"]["stages_ms"]) == {"backbone", "head", "upsample", "argmax", "other"}
    assert res["ratio/fp32"] == round(res["video/fp32"]["fps"] / res["image/fp32"]["fps"], 3)
    # no keyframes: no keyframe split, no curve (the report of a method without keyframes is as it was)
    assert not any("key_ms" in res[k] for k in ("video/fp32", "image/fp32")) and "curve" not in report
    described = report["video_model"]
    assert described["method"] == "base"
    assert (
        described["helpers"]["registration"]["settings"]["provider"] == "gt"
    )  # the run's provider, recorded
    assert report["frames_source"] == "synthetic val clips resized to 64x96"
    text = benchmark.format_report(report)
    assert (
        "method: base (recurrent" in text
        and "registration: gt\n" in text
        and f"video FPS / image FPS (fp32): {res['ratio/fp32']:.3f}" in text
    )


def test_video_run_benchmark_both_precisions_and_options(video_run: Path) -> None:
    report = benchmark.main([str(video_run), *QUICK, "--precision", "both", "--no-image-baseline"])
    _check_file(video_run, report, "cpu_64x96_both.json")
    assert set(report["results"]) == {"video/fp32", "video/bf16"}  # no image network timed, so no ratio
    for entry in report["results"].values():
        _check_entry(entry, frames=5, runs=2)
        assert {"backbone", "head", "warp", "fusion"} <= set(entry["stages_ms"])

    report = benchmark.main([str(video_run), *QUICK, "--precision", "bf16",
                             "--set", "video_model_cfg.k_registrator_model=identity"])  # fmt: skip
    _check_file(video_run, report, "cpu_64x96_bf16.json")
    assert set(report["results"]) == {"video/bf16", "image/bf16", "ratio/bf16"}
    assert report["results"]["ratio/bf16"] == round(
        report["results"]["video/bf16"]["fps"] / report["results"]["image/bf16"]["fps"], 3
    )
    # --set replaces the run's provider (a frozen helper) before the build
    assert report["video_model"]["helpers"]["registration"]["settings"]["provider"] == "identity"


def test_bad_arguments_are_config_errors(video_run: Path) -> None:
    for bad in (["--frames", "0"], ["--runs", "0"], ["--warmup", "-1"], ["--height", "0"], ["--width", "-8"]):
        with pytest.raises(ConfigError, match="at least"):
            benchmark.main([str(video_run), *QUICK, *bad])
    with pytest.raises(ConfigError, match="--intervals: method 'base' has no keyframe interval"):
        benchmark.main([str(video_run), *QUICK, "--intervals", "0,1"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            benchmark.main([str(video_run), *QUICK, "--device", "cuda"])


def test_image_run_benchmark_has_image_entries_only(tiny_image_run: Path, tmp_path: Path) -> None:
    run = Path(
        shutil.copytree(tiny_image_run, tmp_path / tiny_image_run.name)
    )  # the shared run stays as it is
    report = benchmark.main([str(run), *QUICK, "--precision", "both"])
    _check_file(run, report, "cpu_64x96_both.json")
    assert report["kind"] == "image"
    assert report["video_model"] == {"method": "per_frame", "inference": "per frame (image)", "helpers": {}}
    assert set(report["results"]) == {"image/fp32", "image/bf16"}
    for entry in report["results"].values():
        _check_entry(entry, frames=5, runs=2)
        assert set(entry["stages_ms"]) == {"backbone", "head", "upsample", "argmax", "other"}


def test_dff_run_reports_its_own_stages(tiny_dff_run: Path, tiny_image_run: Path) -> None:
    """The benchmark times any method through the contract: DFF's keyframe / flow / warp / head split, and no
    registration (a DFF run needs no DISK or RAFT file)."""
    run = tiny_dff_run
    report = benchmark.main([str(run), *QUICK])
    assert report["video_model"]["method"] == "dff2" and set(report["video_model"]["helpers"]) == {"flow"}
    stages = report["results"]["video/fp32"]["stages_ms"]
    assert {"keyframe", "flow", "warp", "head", "upsample", "argmax"} <= set(stages)
    assert (
        "registration" not in stages and "backbone" not in stages
    )  # the backbone runs inside keyframes only
    video = report["results"]["video/fp32"]
    _check_entry(video, frames=5, runs=2)
    # k_interval 3 = interval 2: the 5 timed frames of a 5-frame clip are K N N K N
    assert (video["interval"], video["key_frames"], video["nonkey_frames"]) == (2, 2, 3)
    assert video["cycle_fps"] == pytest.approx(
        3 / (video["key_ms"] + 2 * video["nonkey_ms"]) * 1000, rel=1e-3
    )
    assert "video/fp32: keyframes" in benchmark.format_report(report)
    assert "dis" in benchmark.format_report(report)
    with pytest.raises(CheckpointError, match="image run"):
        benchmark.main([str(tiny_image_run), *QUICK, "--set", "video_model_cfg.sim_op=avg"])


def test_the_report_flags_noisy_runs() -> None:
    entry = timing.summarise_runs([[10.0] * 5, [10.5] * 5, [12.5] * 5])
    assert (
        entry["mean_ms"] == 10.5
        and entry["run_spread"] == pytest.approx(2.5 / 10.5, abs=1e-4)
        and entry["noisy"]
    )
    quiet = timing.summarise_runs([[10.0] * 5, [10.2] * 5, [10.1] * 5])
    assert not quiet["noisy"]
    entry.update(stages_ms={"backbone": 9.0}, stage_sum_ms=9.0, peak_memory_mb=1.0)
    report = {"run": "r", "input_size": [8, 8], "device": "cpu", "results": {"video/fp32": entry},
              "video_model": {"method": "base", "inference": "recurrent", "helpers": {}}}  # fmt: skip
    text = benchmark.format_report(report)
    assert "warning: video/fp32: the timed runs differ by 24 %" in text and "median of the timed runs" in text


def test_stage_times_are_exclusive_and_split_the_frame_time() -> None:
    """A stage nested in another is not counted twice, and with 'other' the stages add up to the frame time."""
    import time

    from eval.timing import OTHER_STAGE, StageTimer, stage_split

    timer = StageTimer(torch.device("cpu"))
    t0 = time.perf_counter()
    with timer("outer"):
        time.sleep(0.02)
        with timer("inner"):
            time.sleep(0.03)
    block_ms = (time.perf_counter() - t0) * 1e3
    frame_ms = block_ms + 5.0  # 5 ms outside every stage
    assert timer.ms["inner"] >= 30.0 and timer.ms["outer"] >= 20.0
    # exclusive: outer + inner is the block's time once (inclusive timing would count the inner 30 ms twice)
    assert timer.ms["outer"] + timer.ms["inner"] == pytest.approx(block_ms, abs=2.0)
    split = stage_split(timer.ms, frame_ms)
    assert sum(split.values()) == pytest.approx(frame_ms)
    assert split[OTHER_STAGE] == pytest.approx(frame_ms - timer.ms["inner"] - timer.ms["outer"])
    assert split[OTHER_STAGE] >= 5.0


def test_peak_memory_is_this_process_own() -> None:
    """A benchmark started by a big process reports its own peak (ru_maxrss would report the parent's)."""
    import subprocess
    import sys

    from eval.timing import peak_rss_mb

    code = "from eval.timing import peak_rss_mb; print(peak_rss_mb())"
    ballast = bytearray(b"\x01") * (300 * 2**20)  # written pages: this process now peaks 300 MB higher
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[2]).stdout)  # fmt: skip
    assert 0 < child < peak_rss_mb() - 250 and len(ballast) > 0


def test_fast_path_steps_and_the_plain_model(video_run: Path) -> None:
    """--fast-path-steps times each cumulative step of the fast path; --no-fast-path times the model as trained."""
    report = benchmark.main([str(video_run), *QUICK, "--no-image-baseline", "--fast-path-steps"])
    steps = report["fast_path_steps"]
    assert [r["step"] for r in steps] == list(benchmark.FAST_PATH_STEPS)
    assert steps[0]["speedup"] == 1.0 and all(r["fps"] > 0 and r["frames_per_run"] == 5 for r in steps)
    assert steps[0]["bn_folded"] == 0 and steps[1]["bn_folded"] > 0 and steps[3]["probe_diff"] < 1e-4
    assert report["fast_path"]["channels_last"] and report["fast_path"]["fold"] == "applied"
    text = benchmark.format_report(report)
    assert "fast path + channels_last" in text and "BatchNorms folded" in text
    plain = benchmark.main([str(video_run), *QUICK, "--no-image-baseline", "--no-fast-path"])
    assert plain["fast_path"]["bn_folded"] == 0 and not plain["fast_path"]["switched"]
    assert "inference fast path: off" in benchmark.format_report(plain)
