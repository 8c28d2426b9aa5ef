"""python -m training.step_bench at tiny sizes on the CPU: the table, the JSON and its fields, real batches, a video
config, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.errors import CheckpointError, ConfigError
from training import step_bench

TINY = ["model_cfg.backbone=tiny_cnn", "--height", "32", "--width", "48", "--batch-size", "2", "--steps", "2",
        "--warmup", "1", "--threads", "1"]  # fmt: skip


def test_image_bench_writes_every_combination(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bench.json"
    report = step_bench.main(["base_synthetic", *TINY, "--device", "cpu", "--random-init", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == {k: v for k, v in report.items() if k != "path"}
    assert written["device"].startswith("CPU") and written["device_type"] == "cpu"
    assert written["software"]["torch"] and written["threads"] == 1
    assert (written["input_size"], written["batch_size"], written["data"]) == ([32, 48], 2, "random")
    assert written["random_init"] is True and written["step"].startswith("image_step")
    combos = [(r["precision"], r["layout"]) for r in written["results"]]
    assert combos == [("fp32", "NCHW"), ("fp32", "NHWC"), ("bf16", "NCHW"), ("bf16", "NHWC")]
    for r in written["results"]:
        assert 0 < r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"]
        assert min(r["step_ms_mean"], r["first_step_ms"], r["images_per_s"], r["peak_memory_mb"]) > 0
        assert r["speedup_vs_fp32_nchw"] > 0 and r["memory_vs_fp32_nchw"] > 0
        assert r["autocast_dtype"] == (None if r["precision"] == "fp32" else "bfloat16")
    assert written["results"][0]["speedup_vs_fp32_nchw"] == 1.0
    table = out.with_suffix(".md").read_text()
    assert table.count("\n") == 6 and table in capsys.readouterr().out


def test_real_batches_one_layout_and_the_default_folder(tiny_synthetic: Path, tmp_path: Path) -> None:
    args = ["base_synthetic", f"data_cfg.path={tiny_synthetic}", f"save_dir={tmp_path}", *TINY, "--data", "real",
            "--precision", "fp32", "--channels-last", "auto"]  # fmt: skip
    report = step_bench.main(args)
    path = Path(report["path"])
    assert path.parent == tmp_path / "step_bench" and path.name.startswith("base_synthetic_cpu_32x48_b2_")
    assert report["data"] == "real" and [r["layout"] for r in report["results"]] == ["NHWC"]  # auto: on
    assert report["results"][0]["loss_first"] > 0


def test_video_config_uses_the_method_step(tiny_video_overrides: list[str], tmp_path: Path) -> None:
    synth = ["video_model_cfg.k_registrator_model=gt", "video_model_cfg.flow.backend=gt"]
    report = step_bench.main(["ssp_synthetic", *tiny_video_overrides, *synth, "--height", "64", "--width", "96",
                              "--steps", "1", "--warmup", "0", "--precision", "fp32", "--out", str(tmp_path)])  # fmt: skip
    assert report["kind"] == "video" and report["step"] == "ssp" and report["data"] == "real"
    assert report["frames_per_sample"] >= 2 and len(report["results"]) == 2


def test_config_kind(tmp_path: Path) -> None:
    assert step_bench.config_kind("base_uavid") == "image"
    assert step_bench.config_kind("ssp_synthetic.yaml") == "video"
    (tmp_path / "ssp_synthetic.yaml").write_text("video_model_cfg:\n  model_name: base\n")
    (tmp_path / "mine.yaml").write_text("base: ssp_synthetic\ntraining_cfg:\n  lr: 1.0e-4\n")
    assert step_bench.config_kind(str(tmp_path / "mine.yaml")) == "video"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["base_synthetic", "--height", "32"], r"^--height/--width: give both or neither$"),
        (["ssp_synthetic", "--data", "random"], r"^--data: a video batch .* use --data real$"),
        (
            ["base_synthetic", "training_cfg.channels_last=sideways"],
            r"training_cfg\.channels_last: 'sideways'",
        ),
    ],
)
def test_errors_are_one_line(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        step_bench.main(args)


def test_missing_weights_point_to_random_init(tmp_path: Path) -> None:
    args = [
        "base_uavid",
        f"model_cfg.pretrained_backbone={tmp_path / 'sam2.pt'}",
        "--height",
        "64",
        "--width",
        "64",
    ]
    with pytest.raises(
        CheckpointError, match=r"sam2\.pt' not found: .*; --random-init times the step without"
    ):
        step_bench.main(args)


def test_bad_flag_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        step_bench.main(["base_synthetic", "--precision", "fp8"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
