"""torchrun with 2 CPU processes (gloo): DDP training runs, rank 0 alone writes, and the validation confusion
matrix all-reduced over 2 processes equals the one a single process computes for the same weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
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
    runs = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]  # beside RUNS.txt
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


@pytest.mark.slow
def test_torchrun_trains_the_unlabelled_stream_on_every_rank(tiny_synthetic: Path, tmp_path: Path) -> None:
    """Semi-supervised DDP: both ranks take the alternating unlabelled step (each its own share of the stream)."""
    from tests.training.test_semi import FCL, _tiny

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train_image", FCL, *_tiny(tiny_synthetic, tmp_path, "data_cfg.labeled_fraction=1.0",
                                                     "training_cfg.vis_samples=0")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    ckpt = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    state = next(iter(ckpt["optimizer"]["state"].values()))
    assert (
        ckpt["step"] == 1 and int(state["step"]) == 2
    )  # 4 labelled frames, batch 2 x 2 ranks; + 1 unlabelled
    assert json.loads((run / "metrics.json").read_text())["epochs"][-1]["train_fcl"] <= 0


@pytest.mark.parametrize(
    ("codes", "printed"),
    [([2, 2], ""), ([2, -15], "torchrun: rank 1 ended with exit code -15 after that error\n")],
)
def test_training_torchrun_ends_a_user_error_with_exit_code_2(
    codes: list[int], printed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Processes that stopped on a user error (exit 2, the line printed by them): exit 2 without torchrun's
    traceback; a rank that did not exit 2 by itself is named. Any other failure stays torchrun's."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from training import torchrun

    def failing(exit_codes: list[int]):
        def run(args: object) -> None:
            assert args.nproc_per_node == "2"  # torchrun's own options, parsed by torchrun
            raise ChildFailedError("training.train_image", {
                rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=code, error_file="<N/A>")
                for rank, code in enumerate(exit_codes)
            })  # fmt: skip

        return run

    argv = ["--standalone", "--nproc_per_node=2", "-m", "training.train_image", "base_synthetic"]
    monkeypatch.setattr(torchrun, "run", failing(codes))
    with pytest.raises(SystemExit) as end:
        torchrun.main(argv)
    assert end.value.code == 2 and capsys.readouterr().err == printed
    monkeypatch.setattr(torchrun, "run", failing([1, 2]))  # rank 0 crashed first: a bug, torchrun's report
    with pytest.raises(ChildFailedError):
        torchrun.main(argv)


def _with_data(overrides: list[str], root: Path, *extra: str) -> list[str]:
    """``tiny_overrides`` reading the dataset at ``root`` instead, plus ``extra``."""
    return [o for o in overrides if not o.startswith("data_cfg.path=")] + [f"data_cfg.path={root}", *extra]


def _runs(save_dir: Path) -> list[Path]:
    return [p for p in save_dir.iterdir() if p.is_dir()] if save_dir.is_dir() else []


@pytest.mark.slow
def test_a_user_error_under_torchrun_is_one_line_and_exit_code_2_on_every_rank(
    tiny_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    """A label value outside the class table, met by one rank in its first batch while the other waits for it in
    DDP's gradient all-reduce: both exit 2 (none hangs or is killed), the line is printed once, no traceback."""
    bad = Path(shutil.copytree(tiny_synthetic, tmp_path / "bad"))
    clip = (bad / "train.txt").read_text().split()[1]
    mask = next((bad / "data" / clip / "mask").glob("*.png"))
    cv2.imwrite(str(mask), np.full((64, 96), 200, np.uint8))
    overrides = _with_data(tiny_overrides, bad, "training_cfg.vis_samples=0", "training_cfg.num_workers=1")
    cmd = [sys.executable, "-m", "training.torchrun", "--standalone", "--nproc_per_node=2",
           "-m", "training.train_image", "base_synthetic", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # without torchrun's banner about it
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    line = (f"data error: {mask}: label values [200] are outside the synthetic class table (0 = ignore, 1..8 = "
            f"classes); re-run the preparation (`python -m data.synthetic --out {bad} --force`)")  # fmt: skip
    # besides torchrun's own log lines (one: "failed (exitcode: 2) local_rank: ..."), the one line
    own = [x for x in proc.stderr.splitlines() if not re.match(r"[IWE]\d{4} \d\d:\d\d:\d\d", x)]
    assert own == [line], proc.stderr[-3000:]
    assert "Traceback" not in out and "ended with exit code" not in out  # every rank exited 2 by itself
    assert "failed (exitcode: 2)" in proc.stderr
    assert _runs(tmp_path / "checkpoints") == []  # the run that failed before its first checkpoint is removed


@pytest.mark.slow
def test_plain_torchrun_sees_every_rank_exit_2_after_one_line(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    """A missing dataset found by rank 0 while rank 1 waits at a barrier. Plain torchrun then reports the exit codes
    in its own failure table (with its own traceback, which training.torchrun leaves out)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = _with_data(tiny_overrides, empty, "data_cfg.generate_if_missing=false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train_image", "base_synthetic", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    line = (f"data error: {empty / 'train.txt'} not found: prepare the dataset with "
            f"`python -m data.synthetic --out {empty}`")  # fmt: skip
    assert out.count("data error:") == 1 and line in proc.stderr.splitlines(), out[-3000:]
    table = re.findall(r"^\s+exitcode\s*:\s*(-?\d+)", proc.stderr, flags=re.MULTILINE)  # one row per rank
    assert table == ["2", "2"], proc.stderr[-3000:]
    assert not [x for x in out.splitlines() if x.startswith("[rank")]  # no rank printed a traceback
    assert _runs(tmp_path / "checkpoints") == []
