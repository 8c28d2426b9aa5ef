"""train_video and eval.vis.video end to end, in-process: SSP trains, evaluates with TC, resumes, fails clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from config.errors import CheckpointError, ConfigError
from eval.vis import image as eval_image
from eval.vis import video as eval_video
from training import train_video

SYNTH = ["video_model_cfg.k_registrator_model=gt", "video_model_cfg.flow.backend=gt"]


def test_ssp_trains_evaluates_and_resumes(tiny_video_overrides: list[str], tiny_image_run: Path) -> None:
    run = train_video.main(["ssp_synthetic", *tiny_video_overrides, *SYNTH])
    for name in ("config.yaml", "image_config.yaml", "last.pth", "best.pth", "metrics.json", "log.txt"):
        assert (run / name).is_file(), name
    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["kind"] == "video" and last["epoch"] == 2 and last["finished"]
    assert last["image_config"]["model_cfg"]["backbone"] == "tiny_cnn"
    assert any(k.startswith("sim.") for k in last["model"]) and not any(
        "registration" in k for k in last["model"]
    )
    written = json.loads((run / "metrics.json").read_text())
    epochs = written["epochs"]
    assert {"train_ce", "train_tc"} <= set(epochs[-1]) and epochs[-1]["train_tc"] > 0
    # what ran, recorded with the run: the method, its helpers and the loss's flow, each with its precision
    assert written["video_model"]["helpers"]["registration"]["precision"] == "float32"
    assert written["training_step"]["tc_flow"]["model"] == "gt"
    assert written["training_step"]["tc_flow"]["precision"] == "float32"
    assert epochs[-1]["val"]["protocol"] == "training_validation"

    metrics = eval_video.main([str(run), "--num-workers", "0"])
    out = run / "results" / "val"
    assert metrics is not None and json.loads((out / "metrics.json").read_text())["miou"] == metrics["miou"]
    assert set(metrics["tc"]) == {"tc_reference", "strict"}
    for entry in metrics["tc"].values():
        assert 0.0 <= entry["value"] <= 1.0
        assert entry["tc_protocol"]["flow"]["model"] == "gt"
        assert entry["tc_protocol"]["model_inference"].startswith("recurrent")
    assert metrics["vc"]["8"]["value"] is None  # val clips of 5 frames are shorter than any window
    described = metrics["video_model"]
    assert described["method"] == "base" and described["inference"].startswith("recurrent")
    assert described["helpers"]["registration"]["settings"]["provider"] == "gt"
    assert described["helpers"]["registration"]["stats"]["pairs"] > 0
    for name in ("per_class_iou.csv", "per_clip_tc.csv", "tc_over_time.png"):
        assert (out / name).is_file(), name
    clips = [p.stem for p in (out / "side_by_side").glob("*.gif")]
    assert clips and sorted(clips) == sorted(p.name for p in (out / "pred").iterdir())

    with pytest.raises(CheckpointError, match="'video' checkpoint, not 'image'"):
        eval_image.main([str(run), "--num-workers", "0"])
    with pytest.raises(CheckpointError, match="checkpoint_name must name an image run"):
        train_video.main(
            ["ssp_synthetic", *tiny_video_overrides, *SYNTH, f"image_model_cfg.checkpoint_name={run}"]
        )

    again = train_video.main(["ssp_synthetic", f"resume_training={run}", *tiny_video_overrides, *SYNTH])
    assert again == run  # finished: resuming does nothing, and is not an error


def test_image_evaluation_reports_tc_under_the_same_protocols(tiny_image_run: Path) -> None:
    metrics = eval_image.main([str(tiny_image_run), "--num-workers", "0", "--no-write-res"])
    assert metrics is not None
    cards = {n: e["tc_protocol"] for n, e in metrics["tc"].items()}
    assert set(cards) == {"tc_reference", "strict"}
    assert cards["strict"]["model_inference"].startswith("per frame")
    assert all(0.0 <= e["value"] <= 1.0 for e in metrics["tc"].values())


def test_an_image_run_streams_through_eval_vis_video_with_the_image_scores(
    tiny_image_run: Path, tmp_path: Path
) -> None:
    """One path: eval.vis.video wraps an image run in the per-frame adapter and scores it as eval.vis.image does."""
    run = Path(shutil.copytree(tiny_image_run, tmp_path / tiny_image_run.name))  # results go into the run
    image = eval_image.main([str(run), "--num-workers", "0", "--no-write-res"])
    video = eval_video.main([str(run), "--num-workers", "0", "--no-write-res"])
    assert image is not None and video is not None
    assert video["video_model"] == {"method": "per_frame", "inference": "per frame (image)", "helpers": {}}
    assert image["precision"] == video["precision"] == "fp32"  # evaluation defaults to fp32, and says so
    assert video["miou"]["value"] == pytest.approx(image["miou"]["value"], abs=1e-6)
    for name in ("tc_reference", "strict"):
        assert video["tc"][name]["value"] == pytest.approx(image["tc"][name]["value"], abs=1e-6)
        assert video["tc"][name]["tc_protocol"]["model_inference"].startswith("per frame")
    bf16 = eval_video.main(
        [str(run), "--num-workers", "0", "--no-write-res", "--precision", "bf16", "--vc", "none"]
    )
    assert bf16 is not None and bf16["precision"] == "bf16" and 0.0 <= bf16["miou"]["value"] <= 1.0


def test_the_side_by_side_image_panel_says_whose_network_it_shows(
    tiny_image_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video run's image network is its own (fine-tuned unless frozen), not the image run's: the title says so."""
    from eval.vis.outputs import SideBySideWriter
    from models.runs import load_image_model
    from models.video.per_frame import PerFrame

    image_model, _, _ = load_image_model(tiny_image_run)
    tuned, frozen = PerFrame(image_model), PerFrame(image_model, freeze_image_model=True)
    assert eval_video.image_panel_title(tuned, {"kind": "video"}) == "image net (tuned here)"
    assert eval_video.image_panel_title(frozen, {"kind": "video"}) == "image net (frozen)"
    assert eval_video.image_panel_title(tuned, {"kind": "image"}) == "image model"

    titles: list[list[str]] = []

    class Recorder(SideBySideWriter):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            titles.append(self.titles)

    monkeypatch.setattr(eval_video, "SideBySideWriter", Recorder)
    run = Path(shutil.copytree(tiny_image_run, tmp_path / tiny_image_run.name))  # results go into the run
    eval_video.main([str(run), "--num-workers", "0", "--no-evaluation"])
    # an image run streams through the per-frame adapter: the panel shows the model itself
    assert titles == [["frame", "image model", "video model", "ground truth"]]
    assert list((run / "results" / "val" / "side_by_side").glob("*.gif"))


def test_missing_image_run_and_wrong_kind_are_clear_errors(
    tiny_video_overrides: list[str], tiny_image_run: Path
) -> None:
    with pytest.raises(CheckpointError, match="checkpoint_name is empty"):
        train_video.main(["ssp_synthetic", *tiny_video_overrides, 'image_model_cfg.checkpoint_name=""'])
    with pytest.raises(CheckpointError, match="not found"):
        train_video.main(
            ["ssp_synthetic", *tiny_video_overrides, "image_model_cfg.checkpoint_name=no_such_run"]
        )
    with pytest.raises(ConfigError, match="adjacent_frames"):
        train_video.main(["ssp_synthetic", *tiny_video_overrides, "data_cfg.adjacent_frames=[-2]"])
    # each of these failed after its run folder was made: nothing is left behind
    save_dir = Path(next(o for o in tiny_video_overrides if o.startswith("save_dir=")).partition("=")[2])
    assert not [p for p in save_dir.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_torchrun_two_processes_train_ssp(tiny_video_overrides: list[str], tmp_path: Path) -> None:
    """DDP on 2 CPU processes (gloo): the SSP wrapper trains with its frozen helpers outside DDP."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train_video", "ssp_synthetic", *tiny_video_overrides, *SYNTH,
           "training_cfg.vis_samples=0", "training_cfg.num_epochs=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]  # beside RUNS.txt
    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["finished"] and last["step"] == 4 // (2 * 2)  # 4 labelled pairs, batch 2 x 2 processes
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2


def test_cli_error_is_one_line(tiny_video_overrides: list[str]) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "training.train_video", "ssp_synthetic", *tiny_video_overrides,
           "image_model_cfg.checkpoint_name=missing_run"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "missing_run" in proc.stderr


def test_a_model_running_opencv_trains_with_forked_loader_workers(
    tiny_video_overrides: list[str], tmp_path: Path
) -> None:
    """DFF's DIS flow runs OpenCV in the main process; the workers forked for the next epoch and for validation must
    not inherit its thread pool (they used to hang in their first OpenCV call)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    overrides = [o for o in tiny_video_overrides if not o.startswith("training_cfg.num_workers")]
    cmd = [sys.executable, "-m", "training.train_video", "dff_synthetic", *overrides, "training_cfg.num_workers=1",
           "training_cfg.max_steps_per_epoch=1", "training_cfg.max_val_samples=2", "training_cfg.vis_samples=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]  # beside RUNS.txt
    last = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert last["finished"] and last["epoch"] == 2


def test_missing_tc_flow_weights_name_the_flag(tiny_image_run: Path, tmp_path: Path) -> None:
    """The hint names what the user of this CLI can set: the flag, not a config key."""
    missing = tmp_path / "raft_large.pth"
    for cli in (eval_image, eval_video):
        with pytest.raises(CheckpointError, match="set --tc-flow-weights"):
            cli.main([str(tiny_image_run), "--num-workers", "0", "--no-write-res", "--tc-flow", "raft_large",
                      "--tc-flow-weights", str(missing)])  # fmt: skip


def test_registration_in_the_loader_workers_gives_the_inline_scores(
    tiny_video_overrides: list[str], tiny_image_run: Path
) -> None:
    """With loader workers, SSP's ORB registration runs there (ahead of the network): the same homographies, the
    same predictions as registering in the main process."""
    run = train_video.main(["ssp_synthetic", *tiny_video_overrides, "training_cfg.num_epochs=1",
                            "training_cfg.max_steps_per_epoch=1", "training_cfg.max_val_samples=2"])  # fmt: skip
    flags = ["--no-write-res", "--vc", "none", "--tc-protocol", "none"]
    inline = eval_video.main([str(run), "--num-workers", "0", *flags])
    loader = eval_video.main([str(run), "--num-workers", "1", *flags])
    assert inline["registration_in_loader_workers"] == 0 and loader["registration_in_loader_workers"] == 1
    assert loader["video_model"]["helpers"]["registration"]["settings"]["provider"] == "orb"
    assert loader["confusion_matrix"] and loader["confusion_matrix"] == inline["confusion_matrix"]
