"""The flow-consistency loss (``other_methods.md`` §1.3) on hand-computed cases: zero padding at the borders, the
threshold, zero-flow neighbours, ring normalisation, both signs, both reductions, detached neighbours, presets."""

from __future__ import annotations

import math

import pytest
import torch

from config.errors import ConfigError
from data.unlabelled import mask_bottom_rows
from training.fcl import FCL_PRESETS, FlowConsistencyLoss, shift_map


def _logits(p: list[list[float]]) -> torch.Tensor:
    """[1,C,1,W] logits whose softmax over C is exactly the given per-pixel distributions ``p[x][c]``."""
    return torch.tensor(p).log().T.reshape(1, len(p[0]), 1, len(p))


def _flow(vx: list[float], vy: list[float] | None = None) -> torch.Tensor:
    vy = vy if vy is not None else [0.0] * len(vx)
    return torch.tensor([vx, vy]).reshape(1, 2, 1, len(vx))


def test_shift_map_reads_the_neighbour_and_pads_with_zero() -> None:
    x = torch.arange(1.0, 7.0).reshape(1, 1, 2, 3)  # [[1,2,3],[4,5,6]]
    assert shift_map(x, 0, 1)[0, 0].tolist() == [[2, 3, 0], [5, 6, 0]]
    assert shift_map(x, 1, -1)[0, 0].tolist() == [[0, 4, 5], [0, 0, 0]]
    assert shift_map(x, -1, 0)[0, 0].tolist() == [[0, 0, 0], [1, 2, 3]]


def test_two_pixels_moving_apart_by_hand() -> None:
    """Pixels 0 and 1 (one row) move at 1 and 3 px: d = 2 > 0.2 for the pair; every other neighbour is outside
    the image (zero flow: ignored). L = lambda * 2/8 * [sum_c P_c(1) log P_c(0) + sum_c P_c(0) log P_c(1)]."""
    p0, p1 = [0.9, 0.1], [0.3, 0.7]
    loss = FlowConsistencyLoss(weight=0.01, max_shift=1, threshold=0.2)(_logits([p0, p1]), _flow([1.0, 3.0]))
    cross = sum(b * math.log(a + 1e-10) for a, b in zip(p0, p1, strict=True)) + sum(
        a * math.log(b + 1e-10) for a, b in zip(p0, p1, strict=True)
    )
    assert loss.item() == pytest.approx(0.01 * 2 / 8 * cross, rel=1e-5)
    assert (
        loss.item() < 0
    )  # repulsive: no minus sign, so minimising lowers P where neighbours' classes are likely


def test_threshold_and_zero_flow_neighbours_are_ignored() -> None:
    logits = _logits([[0.9, 0.1], [0.3, 0.7]])
    same = FlowConsistencyLoss(threshold=0.2)(logits, _flow([1.0, 1.1]))  # d = 0.1 <= tau
    assert same.item() == 0
    assert FlowConsistencyLoss(threshold=None)(logits, _flow([1.0, 1.1])).item() != 0  # null: every d counts
    # pixel 1 stands still: its flow is zero, so it is no neighbour of pixel 0; pixel 0 still counts for pixel 1
    one_way = FlowConsistencyLoss(threshold=0.2)(logits, _flow([2.0, 0.0]))
    p0, p1 = [0.9, 0.1], [0.3, 0.7]
    expected = 0.01 * 2 / 8 * sum(a * math.log(b + 1e-10) for a, b in zip(p0, p1, strict=True))
    assert one_way.item() == pytest.approx(expected, rel=1e-5)
    counted = FlowConsistencyLoss(threshold=0.2, ignore_zero_flow=False)(logits, _flow([2.0, 0.0]))
    assert counted.item() != pytest.approx(one_way.item())


def test_border_neighbours_contribute_nothing_even_when_zero_flow_counts() -> None:
    """Outside the image P is zero too, so a border pixel's outside neighbours add nothing in either mode."""
    logits = torch.randn(1, 3, 1, 1)  # a single pixel: all 8 neighbours are outside
    flow = torch.tensor([5.0, -2.0]).view(1, 2, 1, 1)
    for ignore in (True, False):
        assert FlowConsistencyLoss(ignore_zero_flow=ignore, threshold=None)(logits, flow).item() == 0


def test_ring_normalisation_and_the_second_ring() -> None:
    """Three pixels at 1, 1, 4 px: with K = 2 pixel 0 sees pixel 2 on ring 2 (weight d / 16)."""
    p = [[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]]
    logits, flow = _logits(p), _flow([1.0, 1.0, 4.0])

    def term(x: int, n: int, w: float) -> float:
        return w * sum(q * math.log(c + 1e-10) for c, q in zip(p[x], p[n], strict=True))

    # K = 2, tau 0.2: pairs (0,2) on ring 2 (d 3 -> 3/16 each way), (1,2) on ring 1 (d 3 -> 3/8 each way)
    expected = term(0, 2, 3 / 16) + term(2, 0, 3 / 16) + term(1, 2, 3 / 8) + term(2, 1, 3 / 8)
    got = FlowConsistencyLoss(weight=1.0, max_shift=2, threshold=0.2)(logits, flow)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    raw = term(0, 2, 3) + term(2, 0, 3) + term(1, 2, 3) + term(2, 1, 3)
    unnormed = FlowConsistencyLoss(weight=1.0, max_shift=2, threshold=0.2, ring_norm="none")(logits, flow)
    assert unnormed.item() == pytest.approx(raw, rel=1e-5)


def test_attractive_form_is_a_soft_cross_entropy_to_similarly_moving_neighbours() -> None:
    p0, p1 = [0.9, 0.1], [0.3, 0.7]
    loss = FlowConsistencyLoss(weight=1.0, threshold=0.5, sign="attractive")(
        _logits([p0, p1]), _flow([1.0, 1.1])
    )
    w = (0.5 - 0.1) / 0.5 / 8
    cross = sum(b * math.log(a) for a, b in zip(p0, p1, strict=True)) + sum(
        a * math.log(b) for a, b in zip(p0, p1, strict=True)
    )
    assert loss.item() == pytest.approx(-w * cross, rel=1e-4) and loss.item() > 0
    with pytest.raises(ConfigError, match="attractive"):
        FlowConsistencyLoss(sign="attractive", threshold=None)


def test_mean_reduction_divides_by_batch_and_pixels() -> None:
    logits, flow = torch.randn(2, 4, 5, 6), torch.randn(2, 2, 5, 6)
    total = FlowConsistencyLoss(threshold=None)(logits, flow)
    mean = FlowConsistencyLoss(threshold=None, reduction="mean")(logits, flow)
    assert mean.item() == pytest.approx(total.item() / (2 * 5 * 6), rel=1e-5)


def test_only_the_centre_pixel_gets_gradient_with_detached_neighbours() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    flow = torch.randn(1, 2, 4, 4)
    fcl = FlowConsistencyLoss(threshold=None)
    fcl(logits, flow).backward()
    got = logits.grad.clone()
    # the same loss with Q built from a constant copy of the probabilities
    logits2 = logits.detach().clone().requires_grad_(True)
    q, _ = fcl.targets(logits.detach().softmax(1), flow)
    (fcl.weight * (q * torch.log(logits2.softmax(1) + fcl.eps)).sum()).backward()
    assert torch.allclose(got, logits2.grad, atol=1e-6)
    logits.grad = None
    FlowConsistencyLoss(threshold=None, stopgrad_neighbors=False)(logits, flow).backward()
    assert not torch.allclose(got, logits.grad, atol=1e-6)


def test_presets_and_the_bottom_row_mask() -> None:
    final = FlowConsistencyLoss.preset("final")
    assert (final.weight, final.max_shift, final.threshold) == (0.01, 1, 0.2)
    jan = FlowConsistencyLoss.preset("jan2019", reduction="mean")
    assert (jan.weight, jan.max_shift, jan.threshold, jan.reduction) == (10.0, 2, None, "mean")
    assert set(FCL_PRESETS) == {"final", "jan2019"}
    with pytest.raises(ConfigError, match="preset"):
        FlowConsistencyLoss.preset("other")
    flow = torch.ones(1, 2, 8, 3)
    masked = mask_bottom_rows(flow, 0.25)
    assert masked[..., :6, :].eq(1).all() and masked[..., 6:, :].eq(0).all() and flow.eq(1).all()
