"""Keyframe + optical-flow propagation: the shared schedule, flow units, the light flow net, GSV refinement, the
streaming recurrence, the training forward and step, learning-rate groups and runtime options."""

from __future__ import annotations

import pytest
import torch

from config.errors import ConfigError
from config.loader import load
from config.schema import OptimCfg, TrainingCfg
from data.video_batch import VideoBatch
from models.image.segmentor import Segmentor, build_segmentor
from models.video.base import StepSide
from models.video.dff import DFF
from models.video.gsv import GSVRefiner, LightFlowNet, edge_map, propagate, shift_kernels, to_net_units
from models.video.keyframe import KeySchedule
from models.video.keyframe_flow import KeyframePropagation, build_keyframe
from training.optim import build_optimizer
from training.steps import VIDEO_STEPS

K = 5
HW = (64, 96)


@pytest.fixture
def image_model() -> Segmentor:
    torch.manual_seed(0)
    return build_segmentor("tiny_cnn", "swiftnet", K, head_width=16, upsampling="bilinear").eval()


def _model(image_model: Segmentor, interval: int = 2, refine: bool = True, **kw) -> KeyframePropagation:
    torch.manual_seed(1)
    return KeyframePropagation(image_model, KeySchedule(interval), eval_scale=1.0, resolution_div=kw.pop("div", 4),
                               flow_network=LightFlowNet(8), refiner=GSVRefiner(K) if refine else None, **kw)  # fmt: skip


# -- the schedule -------------------------------------------------------------------------------------------


def test_schedule_keys_every_interval_plus_one_frames_and_the_clip_start() -> None:
    s = KeySchedule(2)
    since, keys = None, []
    for t in range(8):
        key = s.is_key(t, since)
        keys.append(key)
        since = 0 if key else since + 1
    assert keys == [True, False, False, True, False, False, True, False]
    s.set(phase=2)  # keyframes at 2, 5, ...; the clip's first frame is one anyway
    since, keys = None, []
    for t in range(6):
        key = s.is_key(t, since)
        keys.append(key)
        since = 0 if key else since + 1
    assert keys == [True, False, True, False, False, True]
    with pytest.raises(ConfigError, match="key phase"):
        s.set(phase=3)
    with pytest.raises(ConfigError, match="interval"):
        KeySchedule(-1)


def test_dff_uses_the_shared_schedule(image_model: Segmentor) -> None:
    from models.flow import DISFlow

    dff = DFF(
        build_segmentor("tiny_cnn", "upernet", K, upsampling="bilinear"),
        k_interval=3,
        flow_provider=DISFlow(),
    )
    assert isinstance(dff.schedule, KeySchedule) and dff.schedule.interval == 2 and dff.k_interval == 3
    dff.set_options(interval=0)
    assert dff.k_interval == 1


# -- flow units and propagation -----------------------------------------------------------------------------


@pytest.mark.parametrize("div", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize(("full", "res_div"), [((64, 96), 8), ((64, 96), 4), ((128, 224), 8), ((96, 96), 2)])
def test_true_flow_moves_logits_by_exactly_the_displacement(
    div: float, full: tuple[int, int], res_div: int
) -> None:
    """A full-size flow of (dx, dy) pixels moves logits at P = full / res_div by (dx, dy) / res_div pixels of P,
    whatever flow_scale_div is (the net-unit conversion and the warp's division cancel exactly)."""
    p = (full[0] // res_div, full[1] // res_div)
    sx, sy = 2, 1  # pixels of P
    flow_full = torch.zeros(1, 2, *full)
    flow_full[:, 0], flow_full[:, 1] = sx * res_div, sy * res_div  # current -> previous, full-size pixels
    logits = torch.randn(1, K, *p)
    net = to_net_units(flow_full, p, div)
    assert torch.allclose(net, torch.tensor([sx * div, sy * div]).view(1, 2, 1, 1).expand_as(net))
    out = propagate(logits, net, div)
    assert torch.allclose(out[..., : p[0] - sy, : p[1] - sx], logits[..., sy:, sx:], atol=1e-5)
    assert (
        out[..., p[0] - sy :, :].abs().max() == 0 and out[..., :, p[1] - sx :].abs().max() == 0
    )  # zero padding


def test_streaming_propagation_follows_the_true_flow(image_model: Segmentor) -> None:
    """Through the model: keyframe, then a frame whose side flow is a known translation -> the propagated logits
    (no refinement) are the keyframe's at P shifted by that translation."""
    model = _model(image_model, refine=False).eval()
    x = torch.randn(1, 3, *HW)
    with torch.no_grad():
        out0, state = model.step(x, model.init_state())
        flow = torch.zeros(1, 2, *HW)
        flow[:, 0] = 8.0  # 2 pixels of P (1/4)
        out1, state1 = model.step(x, state, StepSide(flow=flow))
    assert (out0.key_distance, out1.key_distance) == (0, 1)
    assert out0.image_logits is not None and out1.image_logits is None
    assert torch.allclose(state1.logits[..., :-2], state.logits[..., 2:], atol=1e-5)
    assert out1.logits.shape == (1, K, *HW)


def test_light_flow_net_starts_as_the_identity_warp() -> None:
    net = LightFlowNet(8)
    a, b = torch.randn(2, 3, 16, 24), torch.randn(2, 3, 16, 24)
    f = net(a, b)
    assert f.shape == (2, 2, 16, 24) and f.abs().max() == 0
    f.sum().backward()  # gradients reach the output conv, so it learns from the segmentation loss
    assert net.out.weight.grad is not None


# -- GSV refinement -----------------------------------------------------------------------------------------


def test_shift_kernels_are_the_eight_one_pixel_shifts_and_a_zero_filter() -> None:
    k = shift_kernels()
    assert k.shape == (9, 1, 3, 3)
    assert (
        k[:8].sum((1, 2, 3)).tolist() == [1.0] * 8
        and k[:, 0, 1, 1].abs().sum() == 0
        and k[8].abs().sum() == 0
    )


def test_edge_map_marks_class_boundaries_only() -> None:
    logits = torch.zeros(1, K, 6, 8)
    logits[:, 0, :, :4] = 1.0
    logits[:, 1, :, 4:] = 1.0
    e = edge_map(logits)[0, 0]
    assert e[:, 3].all() and e[:, 4].all() and e[:, :3].sum() == 0 and e[:, 5:].sum() == 0


def test_guide_weights_sum_to_one_and_an_all_zero_guide_keeps_the_warped_logits() -> None:
    torch.manual_seed(0)
    ref = GSVRefiner(K).eval()
    warped, frame = torch.randn(2, K, 12, 16), torch.randn(2, 3, 12, 16)
    g, _ = ref.weights(warped, frame)
    assert g.shape == (2, 11, 12, 16) and torch.allclose(g.sum(1), torch.ones(2, 12, 16), atol=1e-5)
    with torch.no_grad():
        ref.guide.head[1].bias.fill_(-1e4)  # every guide output is ReLU(negative) = 0: the sum guard applies
    out = ref(warped, frame)
    assert torch.isfinite(out).all() and torch.allclose(out, warped, atol=1e-4)


def test_use_edge_switch_changes_the_guide_input_not_the_weights() -> None:
    torch.manual_seed(0)
    ref = GSVRefiner(K).eval()
    warped = torch.zeros(1, K, 12, 16)
    warped[:, 0, :, :8], warped[:, 1, :, 8:] = 1.0, 1.0
    frame = torch.randn(1, 3, 12, 16)
    with_edge = ref(warped, frame)
    ref.use_edge = False
    without = ref(warped, frame)
    assert not torch.allclose(with_edge, without)


# -- training -------------------------------------------------------------------------------------------------


def _batch(b: int = 2, t: int = 3) -> VideoBatch:
    torch.manual_seed(3)
    labels = torch.randint(0, K, (b, t, *HW))
    return VideoBatch(frames=torch.randn(b, t, 3, *HW), labels=labels, label_valid=torch.ones(b, t, dtype=torch.bool),
                      current=t - 1)  # fmt: skip


def test_training_forward_scores_every_distance_and_trains_only_the_propagator(
    image_model: Segmentor,
) -> None:
    model = _model(image_model).train()
    assert model.needs().offsets == (-2, -1)
    assert not image_model.training  # the keyframe model stays frozen in eval mode
    cfg = load("keyframe_synthetic", "video")
    step = VIDEO_STEPS.get("keyframe")(cfg, _info(), torch.device("cpu"))
    loss, parts = step(model, _batch())
    assert torch.isfinite(loss) and {"ce_l1", "ce_l2", "kl_l1", "kl_l2"} <= set(parts)
    loss.backward()
    assert all(p.grad is None for p in image_model.parameters())
    assert (
        model.flow_network.out.weight.grad is not None and model.flow_network.out.weight.grad.abs().sum() > 0
    )
    assert model.refiner.guide.stem[0].weight.grad.abs().sum() > 0
    assert model.refiner.shifts.grad is None  # train_ideal_delay false


def test_training_distance_matches_streaming_from_that_keyframe(image_model: Segmentor) -> None:
    """The training forward's distance-l prediction equals streaming frames t-l .. t from a keyframe at t-l."""
    model = _model(image_model)
    batch = _batch(b=1)
    model.eval()  # the guide's BatchNorm on running statistics in both paths
    with torch.no_grad():
        per_step, _ = model.train_outputs(batch)
    for dist, pred in per_step.items():
        state = model.init_state()
        with torch.no_grad():
            for t in range(batch.current - dist, batch.current + 1):
                out, state = model.step(batch.frames[:, t], state)
        assert out.key_distance == dist
        assert torch.allclose(out.logits, pred, atol=1e-4), dist


def test_param_groups_give_the_guide_and_flow_their_own_learning_rates(image_model: Segmentor) -> None:
    model = _model(image_model, guide_lr=0.02, flow_lr=0.03)
    opt = build_optimizer(model, TrainingCfg(lr=0.002), OptimCfg(optimizer="sgd", nesterov=True))
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [0.002, 0.02, 0.03]
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in grouped for p in image_model.parameters())


# -- options and the builder --------------------------------------------------------------------------------


def test_runtime_options_and_variants(image_model: Segmentor) -> None:
    model = _model(image_model)
    assert model.options() == {"interval": 2, "key_phase": 0, "eval_scale": 1.0, "use_edge": True}
    model.set_options(interval=4, eval_scale=0.5, use_edge=False)
    assert model.schedule.interval == 4 and model.eval_scale == 0.5 and not model.refiner.use_edge
    assert model.eval_variants() == {}  # nothing left to switch off
    with pytest.raises(ConfigError, match="no runtime option flow"):
        model.set_options(flow="dis")
    with pytest.raises(ConfigError, match="eval-scale"):
        model.set_options(eval_scale=0)


def test_eval_scale_resizes_the_keyframe_input(image_model: Segmentor) -> None:
    model = _model(image_model).eval()
    model.set_options(eval_scale=0.5)
    with torch.no_grad():
        z = model.key_logits(torch.randn(1, 3, *HW))
    assert z.shape[-2:] == (HW[0] // 2 // 4, HW[1] // 2 // 4)  # stride-4 logits of the half-size frame


def test_builder_reads_the_section_and_offers_providers(image_model: Segmentor) -> None:
    cfg = load("keyframe_synthetic", "video", ["video_model_cfg.keyframe.flow=dis",
                                                "video_model_cfg.keyframe.refine=none"])  # fmt: skip
    model = build_keyframe(cfg, image_model)
    assert model.flow_network is None and model.flow.name == "dis" and model.refiner is None
    assert model.describe()["helpers"]["flow"]["settings"]["model"].lower().startswith("dis")
    assert model.resolution_div == 4 and model.schedule.interval == 2


def _info():  # noqa: ANN202
    from data.catalog import get_dataset_info

    return get_dataset_info("synthetic")


def test_option_values_are_checked_not_coerced(image_model: Segmentor) -> None:
    model = _model(image_model)
    for bad in ({"interval": 1.5}, {"interval": "abc"}, {"use_edge": "flase"}, {"eval_scale": "big"}):
        with pytest.raises(ConfigError, match="runtime option"):
            model.set_options(**bad)
    model.set_options(interval="3", use_edge="false", key_phase=2)
    assert (
        model.options()["interval"] == 3 and model.options()["key_phase"] == 2 and not model.refiner.use_edge
    )
    model.set_options(interval=1)  # phase 2 no longer fits a 2-frame cycle
    assert model.options()["key_phase"] == 0
