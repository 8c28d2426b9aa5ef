"""TinyNet (other_methods.md §3.5) and the online student registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from config.errors import ConfigError
from models.image.tinynet import PYRAMID_GRIDS, PyramidPooling, TinyNet
from training.online.students import STUDENTS, build_student


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_close_to_reference() -> None:
    n = _n_params(TinyNet(19))
    assert abs(n - 0.83e6) / 0.83e6 < 0.02, n


@pytest.mark.parametrize("hw", [(64, 96), (120, 224), (61, 90)])
def test_output_shape_and_backward(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = TinyNet(5, width=16)
    x = torch.randn(2, 3, *hw)
    y = model(x)
    assert y.shape == (2, 5, *hw)
    F.cross_entropy(y, torch.randint(0, 5, (2, *hw))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_output_shape_full_width() -> None:
    model = TinyNet(19, upsampling="nearest").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 19, 64, 96)


def test_pyramid_grids_match_reference_kernels_at_1080p() -> None:
    # The 135x240 trunk map of a 1080x1920 input: adaptive pools == the reference's fixed kernels.
    assert PYRAMID_GRIDS == ((1, 1), (3, 2), (5, 4), (9, 8))
    x = torch.randn(1, 4, 135, 240)
    pooled = PyramidPooling(4, "batch_stats").pooled(x)
    kernels = [(135, 240), (45, 120), (27, 60), (15, 30)]
    for p, grid, k in zip(pooled, PYRAMID_GRIDS, kernels, strict=True):
        assert p.shape[-2:] == grid
        torch.testing.assert_close(p, F.avg_pool2d(x, k))


def test_pyramid_concatenates_five_branches() -> None:
    ppm = PyramidPooling(8, "running_stats")
    assert ppm(torch.randn(2, 8, 15, 30)).shape == (2, 40, 15, 30)


def test_batch_stats_eval_depends_on_batch_but_running_stats_does_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 48)
    others = torch.randn(3, 3, 32, 48) * 3 + 1
    for bn, depends in (("batch_stats", True), ("running_stats", False)):
        model = TinyNet(4, bn=bn, width=8)
        model.train()
        model(torch.cat([x, others]))  # running_stats: some running statistics to use in eval
        model.eval()
        with torch.no_grad():
            alone = model(torch.cat([x, x]))[0]
            mixed = model(torch.cat([x, others]))[0]
        assert (not torch.allclose(alone, mixed, atol=1e-5)) == depends, bn
    assert not any(
        m.track_running_stats for m in TinyNet(4, width=8).modules() if hasattr(m, "track_running_stats")
    )


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="bn"):
        TinyNet(19, bn="running")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="upsampling"):
        TinyNet(19, upsampling="bicubic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_classes"):
        TinyNet(0)


def test_student_registry_builds_tinynet_and_segmentors() -> None:
    assert {"tinynet", "segmentor"} <= set(STUDENTS.names())
    tiny = build_student("tinynet", 7, bn="running_stats", upsampling="nearest", width=8)
    assert isinstance(tiny, TinyNet) and tiny.bn_mode == "running_stats" and tiny.num_classes == 7
    seg = build_student("segmentor", 3, model_cfg={"model_architecture": "upernet", "backbone": "tiny_cnn",
                                                   "head_width": 16})  # fmt: skip
    seg.eval()
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_student_errors_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'tinynet'"):
        build_student("tinynet2", 19)
    with pytest.raises(ConfigError, match="unknown argument 'upsample'.*did you mean 'upsampling'"):
        build_student("tinynet", 19, upsample="nearest")
    with pytest.raises(ConfigError, match="model_architectur"):
        build_student("segmentor", 19, model_cfg={"model_architectur": "upernet"})
