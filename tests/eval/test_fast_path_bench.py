"""eval.fast_path_bench on a tiny model: both copies timed, the outputs compared, the report written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.errors import ConfigError
from eval import fast_path_bench


def test_the_fast_path_bench_reports_speed_and_agreement(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    report = fast_path_bench.main(["--backbone", "tiny_cnn", "--size", "64x96", "--frames", "3", "--runs", "2",
                                   "--warmup", "1", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert set(report["results"]) == {"image/plain", "image/fast", "ssp/plain", "ssp/fast"}
    for entry in report["results"].values():
        assert entry["fps"] > 0 and entry["frames_per_run"] == 3 and len(entry["run_means_ms"]) == 2
    plain, fast = report["results"]["ssp/plain"], report["results"]["ssp/fast"]
    assert report["fast_over_plain"]["ssp"] == round(fast["fps"] / plain["fps"], 3)
    assert report["image_logits_rel_diff"] < report["tolerance"]
    assert report["label_map_mismatch_share"]["ssp"] < 1e-3 and report["fast_path"]["bn_folded"] > 0
    assert "fast / plain" in fast_path_bench.format_report(report)


def test_a_bad_size_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--size"):
        fast_path_bench.main(["--size", "256", "--out", str(tmp_path / "r.json")])
