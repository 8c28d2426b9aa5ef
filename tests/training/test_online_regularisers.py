"""Continual-learning regularisers of the online loop (other_methods.md §3.6): none, lwf, mas."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from config.errors import ConfigError
from training.online.regularisers import MAS, REGULARISERS, LwF, Regulariser, build_regulariser


class _TwoWeights(nn.Module):
    """f(x) = w1·x1 + w2·x2 as [B,1]; the data has x2 = 0, so w2 gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, 0.5]))

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.w)[:, None]


def _batches() -> list[Tensor]:
    return [torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[2.0, 0.0], [2.0, 0.0]])]


def test_registry_names() -> None:
    assert REGULARISERS.names() == ["lwf", "mas", "none"]
    assert isinstance(build_regulariser("none"), Regulariser)


def test_none_adds_nothing() -> None:
    reg = build_regulariser("none")
    logits = torch.randn(2, 3, 4, 4)
    assert reg.penalty(nn.Identity(), logits, logits).item() == 0.0
    assert reg.end_window(nn.Identity(), [logits]) is True


def test_mas_importance_follows_the_l2_norm_gradient() -> None:
    # ‖f(x)‖₂ = |w1·x1| per sample; ∂/∂w1 = x1 (w1, x1 > 0): batch means 2 and 2, so Ω1 = 2; Ω2 = 0.
    omega = MAS.importance(_TwoWeights(), _batches())
    torch.testing.assert_close(omega["w"], torch.tensor([2.0, 0.0]))


def test_mas_penalises_an_important_weight_more_and_is_zero_after_a_snapshot() -> None:
    model = _TwoWeights()
    mas = build_regulariser("mas", reg=3.0, decay=0.5)
    x = _batches()[0]
    assert mas.penalty(model, x, model(x)).item() == 0.0  # no snapshot yet
    assert mas.end_window(model, _batches()) is True
    assert mas.penalty(model, x, model(x)).item() == 0.0  # θ = θ*
    with torch.no_grad():
        model.w[1] += 0.1  # the unimportant weight
    assert mas.penalty(model, x, model(x)).item() == 0.0
    with torch.no_grad():
        model.w[1] -= 0.1
        model.w[0] += 0.1  # the important weight
    pen = mas.penalty(model, x, model(x))
    torch.testing.assert_close(pen, torch.tensor(3.0 * 2.0 * 0.1**2))
    pen.backward()  # the penalty trains the model back towards θ*
    assert model.w.grad[0] > 0 and model.w.grad[1] == 0
    mas.end_window(model, _batches())
    assert mas.penalty(model, x, model(x)).item() == 0.0  # a new snapshot moves θ*


def test_mas_importance_is_an_ema() -> None:
    model = _TwoWeights()
    mas = MAS(decay=0.25)
    mas.end_window(model, _batches())  # first update: Ω = 2
    mas.end_window(model, [torch.tensor([[4.0, 0.0]])])  # new importance 4
    torch.testing.assert_close(mas.omega["w"], torch.tensor([0.25 * 2 + 0.75 * 4, 0.0]))


def test_schedule_warmup_update_freq_and_empty_windows() -> None:
    reg = Regulariser(warmup=1, update_freq=2)
    x = [torch.zeros(1, 2)]
    assert reg.end_window(nn.Identity(), []) is False  # an empty window does not count
    done = [reg.end_window(nn.Identity(), x) for _ in range(6)]
    assert done == [False, True, False, True, False, True] and reg.updates == 3


class _Conv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def test_lwf_is_zero_on_the_snapshot_positive_after_a_change_and_ignores_unseen_classes() -> None:
    torch.manual_seed(0)
    model = _Conv()
    lwf = build_regulariser("lwf", alpha=2.0, temperature=2.0)
    x = torch.randn(2, 3, 5, 6)
    targets = (
        torch.tensor([0, 1, -1, 255]).repeat(2, 15)[:, :30].reshape(2, 5, 6)
    )  # classes 0, 1 + ignore labels
    assert lwf.penalty(model, x, model(x), targets).item() == 0.0  # no snapshot yet
    assert lwf.seen == {0, 1}
    lwf.end_window(model, [x])
    assert lwf.frozen_classes == [0, 1]
    assert lwf.penalty(model, x, model(x)).abs().item() < 1e-6
    with torch.no_grad():
        model.conv.weight[2:] += 1.0  # unseen classes 2 and 3 only
        model.conv.bias[3] -= 2.0
    assert lwf.penalty(model, x, model(x)).abs().item() < 1e-6
    with torch.no_grad():
        model.conv.weight[0] += 0.5  # a seen class
    pen = lwf.penalty(model, x, model(x))
    assert pen.item() > 1e-4 and pen.requires_grad
    pen.backward()
    assert model.conv.weight.grad[:2].abs().sum() > 0 and model.conv.weight.grad[2:].abs().sum() == 0


def test_lwf_reductions_and_frozen_copy() -> None:
    torch.manual_seed(1)
    model = _Conv(3)
    x = torch.randn(2, 3, 4, 5)
    t = torch.randint(0, 3, (2, 4, 5))
    mean, batch = LwF(reduction="pixel_mean"), LwF(reduction="batchmean")
    for reg in (mean, batch):
        reg.penalty(model, x, model(x), t)
        reg.snapshot(model)
    assert mean.frozen is not model and not any(p.requires_grad for p in mean.frozen.parameters())
    with torch.no_grad():
        model.conv.weight.mul_(-1)
    torch.testing.assert_close(batch.penalty(model, x, model(x)), mean.penalty(model, x, model(x)) * 4 * 5)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        build_regulariser("lwf", temperature=0)
    with pytest.raises(ConfigError, match="decay"):
        build_regulariser("mas", decay=1.5)
    with pytest.raises(ConfigError, match="unknown argument 'temp'"):
        build_regulariser("lwf", temp=2.0)
    with pytest.raises(ConfigError, match="did you mean 'mas'"):
        build_regulariser("mass")
