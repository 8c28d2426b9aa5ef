"""Learning-rate schedules and optimizer groups (ssp.md 8)."""

from __future__ import annotations

import math

import pytest
import torch

from config.schema import OptimCfg, TrainingCfg
from training.optim import LRSchedule, build_optimizer


def test_cosine_matches_the_reference_formula() -> None:
    a, b, nw, n = 1e-4, 1e-4, 10, 100
    s = LRSchedule("cosine", total_steps=n, warmup_steps=nw, start=a, final=b)
    assert s.factor(0) == pytest.approx(a)
    assert s.factor(5) == pytest.approx(a + (1 - a) * 5 / nw)
    assert s.factor(nw) == pytest.approx(1.0)
    for k in (10, 37, 80, 100):
        expect = max(b, b + (1 - b) * 0.5 * (1 + math.cos(math.pi * (k - nw) / (n - nw))))
        assert s.factor(k) == pytest.approx(expect)


def test_truncated_schedule_stops_near_ten_percent() -> None:
    # UAVid: 200 of 250 scheduled epochs -> m ~ 0.10 (ssp.md 8)
    steps = 45
    s = LRSchedule("cosine", total_steps=250 * steps, warmup_steps=2 * steps, start=1e-4, final=1e-4)
    assert s.factor(200 * steps) == pytest.approx(0.10, abs=0.01)


def test_poly_and_constant() -> None:
    poly = LRSchedule("poly", total_steps=100, warmup_steps=0, start=1.0, final=0.0, power=0.9)
    assert poly.factor(0) == 1.0 and poly.factor(50) == pytest.approx(0.5**0.9) and poly.factor(100) == 0.0
    const = LRSchedule("constant", total_steps=100, warmup_steps=4, start=0.0, final=0.0)
    assert const.factor(2) == pytest.approx(0.5) and const.factor(60) == 1.0


def test_trained_layer_gets_its_own_lr() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    tcfg = TrainingCfg(lr=1e-3, trained_layer="1.", secondary_lr=1e-5)
    opt = build_optimizer(model, tcfg, OptimCfg(optimizer="sgd"))
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-5]
    LRSchedule("constant", 10, 2, 0.5, 0.0).apply(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.75e-3, 0.75e-5])
