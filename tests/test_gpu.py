"""CUDA checks (marker ``gpu``: skipped by default and without CUDA; run with ``pytest -m gpu``).

They exercise what the CPU suite cannot: image and SSP training on CUDA with bf16 autocast, streaming video
evaluation on CUDA, and the CUDA-event benchmark path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval import benchmark
from eval.vis import video as eval_video
from training import train_image, train_video

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_image_and_ssp_train_evaluate_and_time_on_cuda(
    tiny_overrides: list[str], tiny_synthetic: Path
) -> None:
    image = train_image.main(
        ["base_synthetic", *tiny_overrides, "training_cfg.device=cuda", "training_cfg.amp=bf16"]
    )
    video = train_video.main([
        "ssp_synthetic", *[o for o in tiny_overrides if not o.startswith("model_cfg")],
        f"image_model_cfg.checkpoint_name={image}", "training_cfg.device=cuda", "training_cfg.amp=bf16",
        "video_model_cfg.k_registrator_model=gt", "video_model_cfg.flow.backend=gt",
    ])  # fmt: skip
    last = torch.load(video / "last.pth", map_location="cpu", weights_only=True)
    written = json.loads((video / "metrics.json").read_text())
    assert last["finished"] and "CUDA" in written["device"] and written["amp"] == "bfloat16"
    assert written["training_step"]["tc_flow"]["precision"] == "float32"  # frozen helpers stay in fp32
    metrics = eval_video.main([str(video), "--device", "cuda", "--num-workers", "0", "--no-write-res"])
    assert metrics is not None and 0.0 <= metrics["tc"]["strict"]["value"] <= 1.0
    report = benchmark.main([str(video), "--device", "cuda", "--frames", "20", "--warmup", "5",
                             "--precision", "both"])  # fmt: skip
    assert (
        report["results"]["video/bf16"]["fps"] > 0 and report["results"]["video/fp32"]["peak_memory_mb"] > 0
    )


def test_dff_with_a_trainable_raft_trains_evaluates_and_times_on_cuda(
    tiny_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    """DFF's RAFT is a submodule trained with bf16 autocast on CUDA; the run reloads and streams on CUDA."""
    from torchvision.models.optical_flow import raft_small

    weights = tmp_path / "raft_small_random.pth"  # speed and mechanics need no trained flow
    torch.save(raft_small(weights=None).state_dict(), weights)
    image = train_image.main(
        ["base_synthetic", *tiny_overrides, "training_cfg.device=cuda", "training_cfg.amp=bf16"]
    )
    video = train_video.main([
        "dff_synthetic", *[o for o in tiny_overrides if not o.startswith("model_cfg")],
        f"image_model_cfg.checkpoint_name={image}", "training_cfg.device=cuda", "training_cfg.amp=bf16",
        "video_model_cfg.dff.flow=raft_small", "video_model_cfg.dff.train_flow=true",
        f"video_model_cfg.dff.flow_weights={weights}", "video_model_cfg.dff.flow_iters=4",
        "video_model_cfg.dff.k_interval=3",
    ])  # fmt: skip
    last = torch.load(video / "last.pth", map_location="cpu", weights_only=True)
    assert last["finished"] and any(k.startswith("flow_network.") for k in last["model"])
    weights.unlink()  # the trained RAFT is in the checkpoint: evaluation must not need the file
    metrics = eval_video.main([str(video), "--device", "cuda", "--num-workers", "0", "--no-write-res"])
    assert metrics is not None and metrics["video_model"]["method"] == "dff2"
    report = benchmark.main([str(video), "--device", "cuda", "--frames", "20", "--warmup", "5"])
    assert {"keyframe", "flow", "warp", "head"} <= set(report["results"]["video/fp32"]["stages_ms"])
