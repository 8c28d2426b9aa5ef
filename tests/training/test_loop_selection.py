"""training.loop: the selection metric that picks best.pth, and a dataset's own epoch order (a tiny in-process fit)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from config.loader import load
from data.catalog import SYNTHETIC
from data.compound import CompoundFrames, epoch_permutation
from eval.metrics import ConfusionMatrix
from training import loop
from training.loop import epoch_indices, fit

INFO = dataclasses.replace(SYNTHETIC, class_names=("a", "b"), palette=SYNTHETIC.palette[:2])
# per epoch: (1) miou 1.0, fitness 0.6 (class b absent); (2) miou 0.818, fitness 0.835; (3) both low
MATRICES = ([[10, 0], [0, 0]], [[9, 1], [1, 9]], [[5, 5], [5, 5]])


class Tiny(torch.utils.data.Dataset):
    def __init__(self, n: int, seen: list[int] | None = None) -> None:
        self.n, self.seen, self.epoch = n, seen, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> dict:
        if self.seen is not None:
            self.seen.append(idx)
        return {"x": torch.full((3, 4, 4), float(idx))}


def _fit(tmp_path: Path, metric: str, train_set: torch.utils.data.Dataset) -> Path:
    overrides = [f"training_cfg.selection_metric={metric}", "training_cfg.num_epochs=3", "training_cfg.batch_size=2",
                 "training_cfg.num_workers=0", "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
                 "training_cfg.val_interval=1"]  # fmt: skip
    cfg = load("base_synthetic", "image", overrides)
    run = tmp_path / metric
    run.mkdir()
    epoch = iter(range(3))

    def validate(m: nn.Module) -> tuple:
        cm = ConfusionMatrix(2)
        cm.mat = torch.tensor(MATRICES[next(epoch)])
        return cm, []

    fit(model=nn.Conv2d(3, 2, 1), cfg=cfg, kind="image", info=INFO, run=run, train_set=train_set,
        step_fn=lambda m, b: (m(b["x"]).mean(), {}), validate_fn=validate, device=torch.device("cpu"))  # fmt: skip
    return run


@pytest.mark.parametrize(("metric", "best_epoch"), [("miou", 1), ("fitness", 2), ("miou_zero", 2)])
def test_selection_metric_picks_best_pth(tmp_path: Path, metric: str, best_epoch: int) -> None:
    run = _fit(tmp_path, metric, Tiny(4))
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert best["epoch"] == best_epoch
    assert metrics["selection_metric"] == metric
    assert best["best_metric"] == pytest.approx(max(e["val"][metric] for e in metrics["epochs"]))
    assert metrics["epochs"][1]["val"]["fitness"] == pytest.approx(0.8 * 9 / 11 + 0.2 * 0.9, abs=1e-6)
    log = (run / "log.txt").read_text()
    assert (f"val {metric} " in log) == (metric != "miou")


def test_selection_score_of_an_undefined_value_is_minus_inf() -> None:
    assert loop.selection_score({"miou": None}, "miou") == float("-inf")
    assert loop.selection_score({"fitness": 0.5}, "fitness") == 0.5


def test_plain_epoch_indices_are_unchanged() -> None:
    """The refactor keeps the plain order bit-identical (resumed runs and existing runs depend on it)."""
    g = torch.Generator().manual_seed(3 * 100_003 + 5)
    want = torch.randperm(23, generator=g).tolist()[:20]
    assert epoch_indices(23, 3, 5, 4) == want
    assert (
        epoch_permutation(23, 3, 5) == torch.randperm(23, generator=g.manual_seed(3 * 100_003 + 5)).tolist()
    )
    compound = CompoundFrames([Tiny(13), Tiny(10)])  # unweighted: the same order through the dataset's path
    assert epoch_indices(23, 3, 5, 4, compound.epoch_order(3, 5)) == want


def test_fit_uses_the_datasets_own_epoch_order(tmp_path: Path) -> None:
    seen: tuple[list[int], list[int]] = ([], [])
    parts = [Tiny(4, seen[0]), Tiny(4, seen[1])]
    _fit(tmp_path, "miou", CompoundFrames(parts, weights=[1, 0]))  # the second dataset is never drawn
    # 3 epochs of 8 samples, all from the first dataset (its permutation used twice per epoch)
    assert seen[1] == [] and sorted(seen[0]) == sorted(list(range(4)) * 6)
    assert all(p.epoch == 2 for p in parts)
