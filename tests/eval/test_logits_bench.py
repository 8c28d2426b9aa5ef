"""``eval.logits_bench``: the dump formats written, measured and projected (ssp.md 6.3) on the tiny set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eval import logits_bench
from tests.conftest import TINY_HW


def test_logits_bench_measures_three_formats(
    tiny_image_run: Path, tiny_synthetic: Path, tmp_path: Path
) -> None:
    run = tmp_path / "teacher"  # a copy: the dumps go into the run folder, which other tests share
    shutil.copytree(tiny_image_run, run)
    overrides = [f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]"]
    report = logits_bench.main([str(run), "--config", "kd_ssp_synthetic", "--samples", "4", "--batch-size", "2",
                                "--workers", "0", *[a for o in overrides for a in ("--override", o)]])  # fmt: skip
    default, native, reference = report["formats"].values()
    assert (
        default["frames"] == native["frames"] == reference["frames"] == 16
    )  # kd_pairs(2): every train frame
    assert default["bytes_per_frame"] > 8 * TINY_HW[0] * TINY_HW[1] * 2  # float16 plus the npy header
    assert native["bytes"] * 10 < default["bytes"] < reference["bytes"]
    assert all(f["samples_per_s"] > 0 for f in report["formats"].values())
    pj = report["projection"]
    assert pj["tcseg_default_bytes"] == 18000 * 8 * 736 * 1280 * 2
    assert pj["reference_bytes_uncompressed"] == 18000 * 8 * 1440 * 2560 * 4
    assert 0 < pj["reference_npz_ratio_measured"] <= 1.05
    assert json.loads((run / "logits" / "bench.json").read_text())["size_ratio"] == report["size_ratio"]
