"""torchrun with 2 CPU processes (gloo): DDP training runs, rank 0 alone writes, and the validation confusion
matrix all-reduced over 2 processes equals the one a single process computes for the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.catalog import SYNTHETIC
from data.frames import read_split
from data.image_dataset import LabelledFrames
from eval.evaluate import validate
from models.runs import load_image_model

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(
    tiny_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train_image", "base_synthetic", *tiny_overrides, "training_cfg.batch_size=2",
           "training_cfg.vis_samples=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = list((tmp_path / "checkpoints").iterdir())
    assert len(runs) == 1, runs  # both ranks used the run folder rank 0 created
    run = runs[0]
    assert proc.stdout.count("== run folder:") == 1  # rank 0 alone prints and writes
    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 2 * (4 // (2 * 2))  # 4 samples, batch 2 x 2 processes

    two_process_cm = json.loads((run / "metrics.json").read_text())["epochs"][-1]["val"]["confusion_matrix"]
    model, cfg, _ = load_image_model(run)  # the weights that the last validation saw
    val = LabelledFrames(read_split(tiny_synthetic, "val", SYNTHETIC), SYNTHETIC, (64, 96), train=False)
    one_process, _ = validate(model, val, SYNTHETIC, torch.device("cpu"), batch_size=3)
    assert one_process.mat.tolist() == two_process_cm
    labelled = sum(int((v["label"] != 255).sum()) for v in val)
    assert sum(map(sum, two_process_cm)) == labelled  # every labelled val pixel counted exactly once
