"""``python -m training.sweep``: arms, seeds, the mean and spread it reports, and reuse of finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.errors import ConfigError
from tests.conftest import TINY_HW
from training import sweep


def test_spread_and_paired_differences() -> None:
    assert sweep.spread([0.5, 0.7, 0.6]) == pytest.approx({"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7})
    assert sweep.spread([0.4])["std"] is None and sweep.spread([None, None]) is None
    results = {
        "a": {0: {"miou": 0.50, "tc": 0.6}, 1: {"miou": 0.40, "tc": 0.7}},
        "b": {0: {"miou": 0.53, "tc": None}, 1: {"miou": 0.41, "tc": None}},
    }
    s = sweep.summarise(results, "a")
    assert s["a"]["miou_minus_reference"] is None and s["b"]["tc"] is None
    assert s["b"]["miou_minus_reference"] == pytest.approx({"mean": 0.02, "std": 2**0.5 / 100, "min": 0.01,
                                                            "max": 0.03})  # fmt: skip
    table = sweep.markdown(s, results, "a", {"vary": "data_cfg.split_seed", "seeds": [0, 1], "split": "val"})
    assert "| b | 47.00 ± 8.49 (41.00..53.00) | n/a ± n/a | 2.00 ± 1.41 | 53.00, 41.00 |" in table


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="--seeds"):
        sweep.parse_seeds("0,0")
    with pytest.raises(ConfigError, match="distinct names"):
        sweep.main(["base_synthetic", "base_synthetic"])
    with pytest.raises(ConfigError, match="NAME CONFIG"):
        sweep.main(["--arm", "x", "base_synthetic", "lr"])


def test_trains_each_arm_per_seed_and_reuses_finished_runs(
    tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    common = [f"save_dir={tmp_path / 'runs'}", f"data_cfg.path={tiny_synthetic}",
              f"data_cfg.crop_size=[{TINY_HW[0]}, {TINY_HW[1]}]", "model_cfg.backbone=tiny_cnn",
              "training_cfg.batch_size=2", "training_cfg.num_epochs=1", "training_cfg.num_workers=0",
              "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0"]  # fmt: skip
    argv = ["base_synthetic", "--arm", "slow", "base_synthetic", "training_cfg.lr=1.0e-5", "--seeds", "0,1",
            "--vary", "training_cfg.seed", "--out", str(tmp_path / "sweep"), "--num-workers", "0",
            *(a for o in common for a in ("--set", o))]  # fmt: skip
    summary = sweep.main(argv)
    state = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sorted(state["runs"]) == ["base_synthetic@0", "base_synthetic@1", "slow@0", "slow@1"]
    assert len({r["run"] for r in state["runs"].values()}) == 4
    assert "training_cfg.seed=1" in state["runs"]["slow@1"]["overrides"]
    assert summary["slow"]["seeds"] == [0, 1] and 0 <= summary["slow"]["miou"]["mean"] <= 1
    per_seed = [state["results"]["slow"][s]["miou"] for s in ("0", "1")]
    assert summary["slow"]["miou"]["min"] == min(per_seed)
    assert (tmp_path / "sweep" / "sweep.md").read_text().count(
        "\n| "
    ) == 3  # header rule excluded: 2 arms + header
    capsys.readouterr()
    sweep.main(argv)
    assert capsys.readouterr().out.count("reused") == 4
