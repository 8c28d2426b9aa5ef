"""train_image end to end, in-process: run folder, checkpoints, resume, pretrained init, no_training, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config.errors import CheckpointError, ConfigError, DataError
from training import train_image

REPO = Path(__file__).resolve().parents[2]


def test_trains_and_writes_a_complete_run(tiny_overrides: list[str]) -> None:
    run = train_image.main(["base_synthetic", *tiny_overrides])
    for name in ("config.yaml", "last.pth", "best.pth", "metrics.json", "log.txt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["kind"] == "image" and last["epoch"] == 2 and last["finished"]
    assert last["step"] == 2 * (4 // 2)  # 4 labelled train frames, batch 2, 2 epochs
    assert {"optimizer", "scaler", "rng", "config", "history"} <= set(last)
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["val"]["protocol"] == "training_validation"
    assert 0.0 <= epochs[-1]["val"]["miou"] <= 1.0
    best = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert best["best_metric"] == max(e["val"]["miou"] for e in epochs)
    assert "optimizer" not in best


def test_resume_finished_run_is_not_an_error(
    tiny_overrides: list[str], capsys: pytest.CaptureFixture
) -> None:
    run = train_image.main(["base_synthetic", *tiny_overrides])
    before = (run / "last.pth").stat().st_mtime_ns
    again = train_image.main(["base_synthetic", f"resume_training={run}", *tiny_overrides])
    assert again == run
    assert "using its stored config.yaml" in capsys.readouterr().out
    assert (run / "last.pth").stat().st_mtime_ns == before  # nothing left to do, nothing rewritten


def test_resume_rejects_conflicting_overrides(tiny_overrides: list[str]) -> None:
    run = train_image.main(["base_synthetic", *tiny_overrides])
    with pytest.raises(ConfigError, match=r"conflicting overrides: training_cfg\.lr=0\.5"):
        train_image.main(["base_synthetic", f"resume_training={run}", *tiny_overrides, "training_cfg.lr=0.5"])


def test_resume_continues_an_interrupted_run(tiny_overrides: list[str]) -> None:
    """A run stopped after epoch 1 and resumed ends with exactly the weights of an uninterrupted run."""
    common = [
        "base_synthetic",
        *tiny_overrides,
        "training_cfg.num_epochs=3",
        "training_cfg.max_steps_per_epoch=1",
    ]
    reference = train_image.main([*common, "training_cfg.epochs_to_run=3"])
    stopped = train_image.main([*common, "training_cfg.epochs_to_run=1"])
    # As if it had been killed after epoch 1: its stored config asks for all 3 epochs.
    stored = stopped / "config.yaml"
    stored.write_text(stored.read_text().replace("epochs_to_run: 1", "epochs_to_run: 3"))
    train_image.main(["base_synthetic", f"resume_training={stopped}", f"save_dir={stopped.parent}"])
    want = torch.load(reference / "last.pth", map_location="cpu", weights_only=True)
    got = torch.load(stopped / "last.pth", map_location="cpu", weights_only=True)
    assert got["epoch"] == 3 and got["step"] == want["step"] == 3
    # same data order, augmentation draws, RNG and optimizer state -> the same weights
    for k, v in want["model"].items():
        assert torch.allclose(v.float(), got["model"][k].float(), atol=1e-5), k


@pytest.mark.slow
def test_killed_run_resumes_to_a_finished_run_with_best(tiny_overrides: list[str]) -> None:
    """SIGKILL train_image during an epoch, then resume: the run finishes and has best.pth."""
    args = [
        "base_synthetic",
        *tiny_overrides,
        "training_cfg.num_epochs=40",
        "training_cfg.max_steps_per_epoch=2",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train_image", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    run = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.startswith("== run folder: "):
            run = Path(line.split(": ", 1)[1].strip())
        if run is not None and (run / "last.pth").is_file():
            ckpt = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
            if ckpt["epoch"] >= 2:
                break
    proc.send_signal(signal.SIGKILL)  # mid-training: no chance to clean up
    proc.wait(timeout=30)
    assert run is not None and proc.returncode == -signal.SIGKILL
    killed_at = torch.load(run / "last.pth", map_location="cpu", weights_only=True)["epoch"]
    assert 2 <= killed_at < 40
    train_image.main(["base_synthetic", f"resume_training={run.name}", f"save_dir={run.parent}"])
    final = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert final["epoch"] == 40 and final["finished"]
    assert (run / "best.pth").is_file()
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["epochs"]] == list(
        range(1, 41)
    )


def test_pretrained_checkpoint_loads_weights_only(
    tiny_overrides: list[str], capsys: pytest.CaptureFixture
) -> None:
    first = train_image.main(["base_synthetic", *tiny_overrides])
    second = train_image.main(["base_synthetic", *tiny_overrides, f"pretrained_checkpoint={first}",
                               "training_cfg.epochs_to_run=0"])  # fmt: skip
    out = capsys.readouterr().out
    assert f"initialised from {first / 'best.pth'}" in out and "missing 0" in out
    assert second != first


def test_no_training_writes_an_epoch_zero_checkpoint(tiny_overrides: list[str]) -> None:
    run = train_image.main(["untrained_synthetic", *tiny_overrides])
    ckpt = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["kind"] == "image"


def test_reference_photometry_is_refused_for_image_training(tiny_overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="data_cfg.photometric: reference applies to video training only"):
        train_image.main(["base_synthetic", *tiny_overrides, "data_cfg.photometric=reference"])


def test_missing_dataset_is_a_data_error(tiny_overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="dataset folder .* not found: prepare it with `bash process_dataset.sh"
    ):
        train_image.main(
            ["base_synthetic", *tiny_overrides, "data_cfg.dataset=uavid", f"data_cfg.path={tmp_path / 'x'}"]
        )


def test_missing_sam2_weights_is_a_checkpoint_error(tiny_overrides: list[str], tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="sam2_hiera_tiny.pt"):
        train_image.main(["base_synthetic", *tiny_overrides, "model_cfg.model_architecture=hierasam_upernet",
                          "model_cfg.checkpoint_model=tiny",
                          f"model_cfg.pretrained_backbone={tmp_path / 'sam2_hiera_tiny.pt'}"])  # fmt: skip


def test_user_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "training.train_image", "base_synthetic", "data_cfg.dataset=uavid",
                           f"data_cfg.path={tmp_path / 'none'}", f"save_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("data error: dataset folder")
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_a_damaged_checkpoint_is_one_line_that_says_so(tmp_path: Path) -> None:
    from config.errors import CheckpointError
    from models.runs import read_checkpoint

    bad = tmp_path / "last.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a whole checkpoint")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    text = str(err.value)
    assert "damaged" in text and "best.pth" in text and "weights_only" not in text and "\n" not in text


def test_pretrained_checkpoint_of_another_architecture_is_refused(
    tiny_overrides: list[str], tiny_image_run: Path
) -> None:
    """An UperNet run into FCN-8s used to load zero tensors and train on: now one line naming both."""
    from config.errors import CheckpointError

    with pytest.raises(CheckpointError) as err:
        train_image.main(["base_synthetic", *tiny_overrides, f"pretrained_checkpoint={tiny_image_run}",
                          "model_cfg.model_architecture=fcn8s", "model_cfg.backbone=vgg16",
                          "model_cfg.head_width=64"])  # fmt: skip
    text = str(err.value)
    assert "image model upernet on tiny_cnn" in text and "image model fcn8s on vgg16" in text
    assert "another architecture" in text and "\n" not in text


def test_a_failed_start_leaves_nothing_and_a_failed_run_says_why(tmp_path: Path) -> None:
    from config.errors import DataError
    from training.setup import RunSetup, clean_up_failed_start

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("x: 1\n")
    with pytest.raises(DataError), clean_up_failed_start(RunSetup(None, fresh, torch.device("cpu"), None)):
        raise DataError("datasets/synthetic/val.txt not found")
    assert not fresh.exists()  # nothing was trained: the folder is gone

    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.yaml").write_text("x: 1\n")
    (trained / "last.pth").write_bytes(b"")
    with pytest.raises(DataError), clean_up_failed_start(RunSetup(None, trained, torch.device("cpu"), None)):
        raise DataError("datasets/synthetic/val.txt not found")
    assert "FAILED: datasets/synthetic/val.txt not found" in (trained / "log.txt").read_text()
    assert (trained / "last.pth").exists()


def test_a_batch_larger_than_the_train_split_says_how_to_fix_it(
    tiny_overrides: list[str], tiny_synthetic: Path, tmp_path: Path
) -> None:
    """The tiny set has 4 training samples: the error gives the largest batch that fits, and a generator command
    that really yields enough samples."""
    import shlex

    from data.catalog import SYNTHETIC
    from data.frames import read_split
    from data.image_dataset import LabelledFrames
    from data.synthetic.__main__ import main as generate_cli

    with pytest.raises(ConfigError) as err:
        train_image.main(["base_synthetic", *tiny_overrides, "training_cfg.batch_size=6"])
    command = (f"python -m data.synthetic --out {tiny_synthetic} --height 64 --width 96 --val-videos 1 "
               "--train-clip-len 4 --val-clip-len 5 --train-videos 3 --force")  # fmt: skip
    assert str(err.value) == (
        "training_cfg.batch_size: one step needs 6 samples (batch 6 x accumulation 1 x 1 processes) but the train "
        f"split has 4; set training_cfg.batch_size <= 4, or generate more clips with `{command}`"
    )
    args = shlex.split(command)[3:]  # the suggested command, into another folder (the fixture is shared)
    args[args.index(str(tiny_synthetic))] = str(tmp_path / "more")
    generate_cli([*args, "--workers", "1", "--quiet"])
    train = LabelledFrames(read_split(tmp_path / "more", "train", SYNTHETIC), SYNTHETIC, (64, 96), train=True)
    assert len(train) == 6
