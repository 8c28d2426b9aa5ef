"""training_cfg.channels_last / compile and the loader wait: same loss in either memory format, checkpoints that
load in either layout, clear errors, and the per-epoch loader-wait fields (metrics.json, log.txt, TensorBoard)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from config.errors import ConfigError
from config.loader import load
from models.build import build_image_model
from models.runs import load_image_model
from training import throughput, train_image
from training.losses import build_segmentation_loss
from training.steps import image_step

CPU = torch.device("cpu")


def _tiny_model_and_batch() -> tuple[torch.nn.Module, dict]:
    cfg = load("base_synthetic", "image", ["model_cfg.backbone=tiny_cnn"])
    torch.manual_seed(0)
    model = build_image_model(cfg.model_cfg, 8, load_backbone_weights=False).train()
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(2, 3, 64, 96, generator=g),
        "label": torch.randint(0, 8, (2, 64, 96), generator=g),
    }
    return model, batch


def test_channels_last_gives_the_nchw_loss_and_a_layout_free_state_dict() -> None:
    nchw, batch = _tiny_model_and_batch()
    nhwc = throughput.to_channels_last(copy.deepcopy(nchw))
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    loss_fn = build_segmentation_loss(load("base_synthetic", "image").loss_cfg, 8)
    losses = {}
    for name, model in (("nchw", nchw), ("nhwc", nhwc)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        first, _ = image_step(model, batch, loss_fn, CPU)  # one step: forward, backward, optimizer
        first.backward()
        opt.step()
        second, _ = image_step(model, batch, loss_fn, CPU)
        losses[name] = (first.item(), second.item())
    assert seen and all(seen)  # the NCHW batch reached the network in channels_last
    for a, b in zip(losses["nchw"], losses["nhwc"], strict=True):
        assert abs(a - b) < 1e-5
    # the state dict is layout-free: the same keys, and values an NCHW model loads strictly and computes with
    sd_nhwc = nhwc.state_dict()
    assert list(nchw.state_dict()) == list(sd_nhwc)
    fresh, _ = _tiny_model_and_batch()
    fresh.load_state_dict(sd_nhwc)
    assert next(fresh.parameters()).is_contiguous()
    with torch.no_grad():
        assert torch.allclose(fresh(batch["image"]), nhwc(batch["image"]), atol=1e-5)


def test_channels_last_run_records_settings_resumes_and_loads(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """A channels_last run: settings in metrics.json; killed after epoch 1 and resumed it ends with the weights of
    an uninterrupted one; its checkpoint loads into a plain (NCHW) model."""
    common = [
        "base_synthetic",
        *tiny_overrides,
        "training_cfg.channels_last=true",
        "training_cfg.log_interval=1",
    ]
    whole = train_image.main(common)
    info = json.loads((whole / "metrics.json").read_text())
    assert (info["precision"], info["channels_last"], info["compile"]) == ("fp32", True, False)
    half = train_image.main([*common, "training_cfg.epochs_to_run=1", f"save_dir={tmp_path / 'half'}"])
    (half / "config.yaml").write_text(
        (half / "config.yaml").read_text().replace("epochs_to_run: 1", "epochs_to_run: null")
    )
    train_image.main(["base_synthetic", f"resume_training={half}", f"save_dir={tmp_path / 'half'}"])
    a = torch.load(whole / "last.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(half / "last.pth", map_location="cpu", weights_only=True)
    assert b["epoch"] == 2
    for key in a:
        assert torch.allclose(a[key].float(), b["model"][key].float(), atol=1e-5), key
    model, _, _ = load_image_model(whole)  # a fresh NCHW model, loaded strictly
    assert next(model.parameters()).is_contiguous()


def test_nchw_checkpoint_resumes_in_channels_last(tiny_overrides: list[str]) -> None:
    run = train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.epochs_to_run=1",
                            "training_cfg.channels_last=false"])  # fmt: skip
    stored = (run / "config.yaml").read_text()
    assert "channels_last: false" in stored and "epochs_to_run: 1" in stored
    stored = stored.replace("channels_last: false", "channels_last: true").replace(
        "epochs_to_run: 1", "epochs_to_run: null"
    )
    (run / "config.yaml").write_text(stored)
    train_image.main(["base_synthetic", f"resume_training={run}", *tiny_overrides[:1]])
    info = json.loads((run / "metrics.json").read_text())
    assert info["channels_last"] is True and [e["epoch"] for e in info["epochs"]] == [1, 2]


def test_loader_wait_is_reported_per_epoch(tiny_overrides: list[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.log_interval=1"])
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    for e in epochs:
        assert 0.0 <= e["loader_wait_ms"] / 1000 <= e["step_time_s"]
        assert 0.0 <= e["loader_wait_share"] <= 1.0
        assert e["images_per_s"] > 0 and e["step_time_s"] > 0
    assert (run / "log.txt").read_text().count("ms/step") == len(epochs)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    waits = events.Scalars("train/loader_wait_ms")
    assert [w.step for w in waits] == [1, 2, 3, 4] and all(w.value >= 0 for w in waits)
    assert "epoch/loader_wait_share" in events.Tags()["scalars"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training_cfg.channels_last=maybe", r"training_cfg\.channels_last: 'maybe' is not one of auto"),
        ("training_cfg.channels_last=1", r"training_cfg\.channels_last: '1' is not one of auto, true, false"),
        ("training_cfg.compile=sometimes", r"training_cfg\.compile: expected true/false"),
    ],
)
def test_bad_values_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load("base_synthetic", "image", [override])


def test_settings_resolve_auto() -> None:
    cfg = load("base_synthetic", "image").training_cfg
    assert throughput.settings(cfg, CPU) == {"precision": "fp32", "compile": False, "channels_last": True}
    assert throughput.channels_last_enabled("auto", torch.device("cuda"))
    assert not throughput.channels_last_enabled(False, torch.device("cuda"))


def test_compile_where_unsupported_is_one_clear_error(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Dynamo is not supported on this Python\nlong details")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.raises(ConfigError, match=r"^training_cfg\.compile: torch\.compile does not work on cpu here "
                       r"\(RuntimeError: Dynamo is not supported on this Python\); set training_cfg\.compile: false$"):  # fmt: skip
        train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.compile=true"])


def test_compile_failing_at_the_first_step_is_one_clear_error(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiler error raised when the model's forward compiles (the probe passed) is a ConfigError, not an
    eager fallback."""

    def failing_compile(fn: object, *args: object, **kwargs: object) -> object:
        if not isinstance(fn, torch.nn.Module):
            return fn  # the probe

        def forward(*a: object, **k: object) -> None:
            try:
                raise RuntimeError("C++ compile error\ncc1plus: fatal error: killed")
            except RuntimeError as cause:  # as dynamo reports a backend's failure
                raise torch._dynamo.exc.TorchDynamoException("backend='inductor' raised:") from cause

        return forward

    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.raises(
        ConfigError,
        match=r"compile: .*\(RuntimeError: C\+\+ compile error\); set training_cfg\.compile: false$",
    ):
        train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.compile=true"])


def test_a_model_error_under_compile_is_not_blamed_on_compile() -> None:
    with pytest.raises(ValueError, match="shape"):
        with throughput.compile_errors(True, CPU):
            raise ValueError("bad shape")


@pytest.mark.slow
def test_compile_trains_on_this_cpu(tiny_overrides: list[str]) -> None:
    """Real torch.compile (inductor needs a C++ compiler): tens of seconds on a 2-core CPU, hence slow."""
    run = train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.compile=true",
                            "training_cfg.channels_last=true"])  # fmt: skip
    info = json.loads((run / "metrics.json").read_text())
    assert info["compile"] is True and info["epochs"][-1]["train_loss"] > 0
