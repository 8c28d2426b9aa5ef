"""Key-cycle scores (eval.key_cycle) and the runtime-option flags of eval.vis.video: mIoU by key distance, one
pass per schedule phase on sparse labels, and ``--interval`` / ``--eval-scale`` / ``--option`` on any method."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from config.errors import ConfigError
from data.catalog import get_dataset_info
from data.frames import Clip, read_split
from data.image_dataset import FrameStream
from eval.key_cycle import KeyCycleScores, format_key_cycle, key_phases, score_key_cycle
from eval.metrics import ConfusionMatrix
from eval.vis import video as eval_video
from models.video.base import StepOutput, StepSide, VideoModel
from models.video.keyframe import KeySchedule
from tests.conftest import TINY_HW

QUIET = ["--num-workers", "0", "--no-write-res", "--tc-protocol", "none", "--vc", "none"]


class DistanceProbe(VideoModel):
    """A keyframe method that predicts class ``key_distance`` on every pixel, so that a distance's pixel accuracy
    is the share of its labelled pixels of that class (which frames were scored at which distance shows)."""

    method = "distance_probe"

    def __init__(self, num_classes: int, interval: int) -> None:
        super().__init__(nn.Module())
        self.k = num_classes
        self.schedule = KeySchedule(interval)

    def options(self) -> dict[str, Any]:
        return {"interval": self.schedule.interval, "key_phase": self.schedule.phase}

    def _set_option(self, name: str, value: Any) -> None:
        self.schedule.set(**{"interval" if name == "interval" else "phase": value})

    def init_state(self) -> tuple[int, int | None]:
        return 0, None  # (clip index of the next frame, frames since the last keyframe)

    def step(
        self, frame: Tensor, state: tuple[int, int | None], side: StepSide | None = None
    ) -> tuple[StepOutput, tuple[int, int | None]]:
        """``frame`` [1,3,H,W] -> one-hot logits [1,K,H,W] of class ``key_distance``."""
        index, since = state
        since = 0 if self.schedule.is_key(index, since) else since + 1
        ids = torch.full(tuple(frame.shape[-2:]), since, dtype=torch.long)
        logits = F.one_hot(ids, self.k).permute(2, 0, 1)[None].float()
        return StepOutput(logits, key_distance=since), (index + 1, since)


def _clip(n: int, labelled: list[int]) -> Clip:
    """A clip of ``n`` frames (paths only: key_phases never reads them) labelled on ``labelled``."""
    return Clip("c", tuple(Path(f"{i}.png") for i in range(n)), {i: Path(f"{i}_mask.png") for i in labelled})


@pytest.fixture
def run(tiny_image_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny image run (the evaluation writes into it)."""
    return Path(shutil.copytree(tiny_image_run, tmp_path / tiny_image_run.name))


def test_key_cycle_scores_pool_every_distance_and_min_is_the_last() -> None:
    scores = KeyCycleScores(num_classes=2, interval=2)
    label = torch.tensor([[0, 1, 255]])  # the ignored pixel counts nowhere
    frames = {0: [torch.tensor([[0, 1, 1]])], 1: [torch.tensor([[0, 0, 0]])],
              2: [torch.tensor([[1, 0, 0]]), torch.tensor([[1, 0, 1]])]}  # fmt: skip
    pooled = ConfusionMatrix(2)
    for d, preds in frames.items():
        for pred in preds:
            scores.add(d, pred, label)
            pooled.update(pred, label)
    r = scores.result()
    assert [(e["distance"], e["frames"]) for e in r["per_distance"]] == [(0, 1), (1, 1), (2, 2)]
    assert [e["miou"] for e in r["per_distance"]] == [1.0, 0.25, 0.0]
    assert r["per_distance"][1]["pixel_acc"] == 0.5
    assert r["min_miou"] == 0.0  # l = interval alone, the worst position of the cycle
    # avg pools the matrices: (0->0) 2, (0->1) 2, (1->0) 3, (1->1) 1 -> IoU 2/7 and 1/6
    assert r["avg_miou"] == pytest.approx((2 / 7 + 1 / 6) / 2, abs=1e-6)
    assert r["avg_miou"] == pytest.approx(pooled.miou(), abs=1e-6)
    assert r["avg_pixel_acc"] == pytest.approx(3 / 8, abs=1e-6)
    text = format_key_cycle({**r, "phases": [0]}, title="x: ")
    assert text.splitlines()[0] == "x: key cycle, interval 2 (phases [0]):" and "l=2: mIoU  0.00" in text

    missing = KeyCycleScores(2, interval=3)
    missing.add(0, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert missing.result()["min_miou"] is None and missing.result()["avg_miou"] == 1.0


def test_key_phases_run_every_phase_only_where_labels_are_sparse() -> None:
    model = DistanceProbe(3, interval=2)
    dense, sparse = [_clip(5, [0, 1, 2, 3, 4])], [_clip(5, [0, 1, 2, 3, 4]), _clip(30, [19])]
    assert key_phases(model, dense, "auto") == [0]
    assert key_phases(model, sparse, "auto") == [0, 1, 2]
    assert key_phases(model, dense, "all") == [0, 1, 2]
    assert key_phases(model, sparse, "first") == [0]
    model.set_options(interval=0)
    assert key_phases(model, sparse, "all") == [0]  # every frame a keyframe: one phase only
    assert key_phases(VideoModel(nn.Module()), sparse, "all") == [0]  # a method without a key schedule
    with pytest.raises(ConfigError, match="--key-phases must be one of auto, all, first, got 'some'"):
        key_phases(model, dense, "some")


def test_all_phases_score_each_labelled_frame_once_at_every_distance(tiny_synthetic: Path) -> None:
    info = get_dataset_info("synthetic")
    val = read_split(tiny_synthetic, "val", info)
    # one labelled frame per clip, as Cityscapes
    sparse = [Clip(c.name, c.frames, {3: c.masks[3]}) for c in val]
    model = DistanceProbe(info.num_classes, interval=2)
    model.set_options(key_phase=1)
    phases = key_phases(model, sparse, "auto")
    assert phases == [0, 1, 2]
    result = score_key_cycle(model, sparse, info, TINY_HW, torch.device("cpu"), phases=phases)
    assert result["phases"] == [0, 1, 2] and result["interval"] == 2
    assert model.options() == {"interval": 2, "key_phase": 1}  # the model's own phase is restored
    # frame 3 is at distance 0 (phase 0: keys 0, 3), 2 (phase 1: keys 0, 1, 4) and 1 (phase 2: keys 0, 2)
    assert [(e["distance"], e["frames"]) for e in result["per_distance"]] == [(0, 2), (1, 2), (2, 2)]
    # the probe predicts class l at distance l: its pixel accuracy is class l's share of the labelled pixels
    labels = torch.cat([FrameStream(sparse, info, TINY_HW)[i]["label"].flatten()
                        for i in (3, 8)])  # fmt: skip
    labels = labels[labels != 255]
    for e in result["per_distance"]:
        assert e["pixel_acc"] == pytest.approx(float((labels == e["distance"]).float().mean()), abs=1e-6)


def test_runtime_flags_are_parsed_and_a_method_without_them_says_so(run: Path) -> None:
    assert eval_video.parse_option("use_edge=false") == ("use_edge", False)
    assert eval_video.parse_option(" eval_scale = 0.5") == ("eval_scale", 0.5)
    for bad in ("use_edge", "=1", "x=", "x=[1, 2]"):
        with pytest.raises(argparse.ArgumentTypeError):
            eval_video.parse_option(bad)
    with pytest.raises(SystemExit) as exit_info:
        eval_video.main([str(run), *QUIET, "--interval", "-1"])
    assert exit_info.value.code == 2
    with pytest.raises(ConfigError) as err:
        eval_video.main([str(run), *QUIET, "--interval", "1"])  # the per-frame adapter has no key schedule
    assert str(err.value) == "method 'per_frame' has no runtime option interval (it offers: none)"
    with pytest.raises(ConfigError, match="^--option interval= repeats --interval: give it once$"):
        eval_video.main([str(run), *QUIET, "--interval", "1", "--option", "interval=2"])
    metrics = eval_video.main([str(run), *QUIET])
    assert metrics is not None and "runtime_options" not in metrics and "key_cycle" not in metrics


@pytest.fixture
def keyframe_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.vis.video loads the tiny image run as keyframe propagation around its network (interval 2, an
    untrained light flow net: the identity warp, a GSV refiner with the edge map), as a keyframe run would."""
    from models.video.gsv import GSVRefiner, LightFlowNet
    from models.video.keyframe_flow import KeyframePropagation

    load = eval_video.load_streaming_model

    def load_keyframe(path: Path, best: bool = False, **kw: Any) -> tuple[VideoModel, Any, dict]:
        per_frame, cfg, meta = load(path, best, **kw)
        torch.manual_seed(0)
        model = KeyframePropagation(per_frame.image_model, KeySchedule(2), eval_scale=1.0, resolution_div=4,
                                    flow_network=LightFlowNet(8), refiner=GSVRefiner(per_frame.num_classes))  # fmt: skip
        return model.eval(), cfg, meta

    monkeypatch.setattr(eval_video, "load_streaming_model", load_keyframe)


def test_a_keyframe_method_is_scored_by_key_distance_with_its_variants(
    run: Path, keyframe_loader: None, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = eval_video.main([str(run), *QUIET, "--interval", "1"])
    assert metrics is not None
    assert metrics["runtime_options"] == {"interval": 1, "key_phase": 0, "eval_scale": 1.0, "use_edge": True}
    cycle = metrics["key_cycle"]
    # 2 dense clips of 5 frames, keyframes at t = 0, 2, 4: distances 0 0 0 / 1 1 per clip, from the main pass
    assert [(e["distance"], e["frames"]) for e in cycle["per_distance"]] == [(0, 6), (1, 4)]
    assert cycle["interval"] == 1 and cycle["phases"] == [0] and cycle["options"]["interval"] == 1
    # every distance pooled = every labelled frame once: the main mIoU
    assert cycle["avg_miou"] == pytest.approx(metrics["miou"]["value"], abs=1e-6)
    assert cycle["min_miou"] == cycle["per_distance"][1]["miou"]
    variant = metrics["key_cycle_variants"]["without edge"]
    assert variant["options"]["use_edge"] is False and variant["phases"] == [0]
    assert [(e["distance"], e["frames"]) for e in variant["per_distance"]] == [(0, 6), (1, 4)]
    assert variant["per_distance"][0] == cycle["per_distance"][0]  # keyframes do not use the refiner
    written = json.loads((run / "results" / "val" / "metrics.json").read_text())
    assert written["key_cycle"] == cycle and written["key_cycle_variants"] == metrics["key_cycle_variants"]
    out = capsys.readouterr().out
    assert "key cycle, interval 1 (phases [0]):" in out and "without edge: key cycle, interval 1" in out

    # every phase on request (one more pass per phase), options given by name; the edge is off, so no variant
    metrics = eval_video.main([str(run), *QUIET, "--key-phases", "all", "--eval-scale", "0.5",
                               "--option", "use_edge=false", "--option", "interval=1"])  # fmt: skip
    assert metrics is not None and metrics["key_cycle_variants"] == {}
    assert metrics["runtime_options"] == {"interval": 1, "key_phase": 0, "eval_scale": 0.5, "use_edge": False}
    cycle = metrics["key_cycle"]
    assert cycle["phases"] == [0, 1]  # phase 1: keyframes at t = 0, 1, 3 -> distances 0 0 1 0 1
    assert [(e["distance"], e["frames"]) for e in cycle["per_distance"]] == [(0, 12), (1, 8)]


def test_a_dff_run_takes_the_interval_flag(tiny_dff_run: Path) -> None:
    """A trained DFF run (k_interval 3 = interval 2) evaluated at interval 1: scores at distances 0 and 1."""
    dff = tiny_dff_run
    metrics = eval_video.main([str(dff), *QUIET, "--interval", "1"])
    assert metrics is not None and metrics["runtime_options"] == {"interval": 1, "key_phase": 0}
    written = json.loads((dff / "results" / "val" / "metrics.json").read_text())
    assert [e["distance"] for e in written["key_cycle"]["per_distance"]] == [0, 1]
    assert written["key_cycle_variants"] == {}
    with pytest.raises(ConfigError, match="no runtime option eval_scale"):
        eval_video.main([str(dff), *QUIET, "--eval-scale", "0.5"])
