"""The temporal-consistency loss (ssp.md §5.3) against hand computations."""

from __future__ import annotations

import pytest
import torch

from config.errors import ConfigError
from config.schema import TCLossCfg
from data.transforms import denormalize
from training.losses import TemporalConsistencyLoss


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    fused = torch.randn(2, 4, 6, 8, generator=g)
    prev = torch.randn(2, 4, 6, 8, generator=g, requires_grad=True)
    x_t, x_prev = torch.randn(2, 3, 6, 8, generator=g), torch.randn(2, 3, 6, 8, generator=g)
    return fused, prev, x_t, x_prev


def test_reference_form_on_zero_flow_matches_the_formula() -> None:
    fused, prev, x_t, x_prev = _inputs()
    loss = TemporalConsistencyLoss(TCLossCfg(photometric="signed_sum", grid="exact"))
    got = loss(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8))
    m = torch.exp(-(x_t - x_prev).sum(1, keepdim=True).abs())
    assert torch.allclose(got, (m * (fused - prev) ** 2).mean(), atol=1e-6)


def test_abs_sum_uses_unit_range_frames() -> None:
    fused, prev, x_t, x_prev = _inputs(1)
    loss = TemporalConsistencyLoss(TCLossCfg(photometric="abs_sum", alpha=2.0, grid="exact"))
    got = loss(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8))
    m = torch.exp(-2.0 * (denormalize(x_t) - denormalize(x_prev)).abs().sum(1, keepdim=True))
    assert torch.allclose(got, (m * (fused - prev) ** 2).mean(), atol=1e-6)


def test_translation_flow_aligns_the_previous_logits() -> None:
    """Previous logits shifted by one pixel and a flow of +1 in x: the loss vanishes inside the frame."""
    fused = torch.randn(1, 3, 5, 7)
    prev = torch.zeros_like(fused)
    prev[..., 1:] = fused[..., :-1]  # frame t-1 content sits 1 px to the right of where it is in t
    flow = torch.zeros(1, 2, 5, 7)
    flow[:, 0] = 1.0  # pixel p of t is found at p + (1, 0) in t-1
    loss = TemporalConsistencyLoss(TCLossCfg(photometric="none", grid="exact"))
    assert loss(fused, prev, torch.zeros(1, 3, 5, 7), torch.zeros(1, 3, 5, 7), flow) < 1e-12
    # without the flow the loss is clearly positive
    assert loss(fused, prev, torch.zeros(1, 3, 5, 7), torch.zeros(1, 3, 5, 7), torch.zeros_like(flow)) > 0.1


def test_gradient_reaches_the_previous_prediction_only_through_the_loss_terms() -> None:
    fused, prev, x_t, x_prev = _inputs(2)
    fused.requires_grad_(True)
    TemporalConsistencyLoss(TCLossCfg())(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8)).backward()
    assert prev.grad is not None and prev.grad.abs().sum() > 0
    assert fused.grad is not None and fused.grad.abs().sum() > 0


def test_occlusion_needs_both_flows() -> None:
    fused, prev, x_t, x_prev = _inputs(3)
    loss = TemporalConsistencyLoss(TCLossCfg(occlusion="fwd_bwd"))
    with pytest.raises(ConfigError, match="both directions"):
        loss(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8))
    # consistent zero flows: nothing occluded, same as without the mask
    plain = TemporalConsistencyLoss(TCLossCfg())(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8))
    masked = loss(fused, prev, x_t, x_prev, torch.zeros(2, 2, 6, 8), torch.zeros(2, 2, 6, 8))
    assert torch.allclose(plain, masked)
