"""eval.vis.image end to end: metrics, outputs, every flag combination, logits, and clear errors."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config.errors import CheckpointError, DataError
from eval.vis import image as vis_image
from training import train_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_run(tiny_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    save = tmp_path_factory.mktemp("runs")
    return train_image.main([
        "base_synthetic", f"save_dir={save}", f"data_cfg.path={tiny_synthetic}", "data_cfg.crop_size=[64, 96]",
        "model_cfg.backbone=tiny_cnn", "training_cfg.batch_size=2", "training_cfg.num_epochs=2",
        "training_cfg.num_workers=0", "training_cfg.val_interval=1", "optim_cfg.warmup_epochs=0",
    ])  # fmt: skip


def test_metrics_match_the_confusion_matrix_and_outputs_exist(
    trained_run: Path, capsys: pytest.CaptureFixture
) -> None:
    metrics = vis_image.main([str(trained_run), "--num-workers", "0"])
    out_dir = trained_run / "results" / "val"
    stored = json.loads((out_dir / "metrics.json").read_text())
    assert stored["miou"]["value"] == metrics["miou"]["value"]
    cm = np.array(stored["confusion_matrix"])
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    assert stored["miou"]["value"] == pytest.approx((tp[union > 0] / union[union > 0]).mean(), abs=1e-6)
    assert stored["miou"]["frames"] == 10  # 2 val clips x 5 frames, all labelled (dense)
    printed = capsys.readouterr().out
    assert f"{100 * stored['miou']['value']:6.2f}" in printed  # the printed table shows the stored numbers
    rows = list(csv.DictReader(open(out_dir / "per_class_iou.csv")))
    assert [r["name"] for r in rows][:2] == ["road", "vegetation"] and len(rows) == 8
    pngs = sorted((out_dir / "pred").rglob("*.png"))
    assert len(pngs) == 10
    raw = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.min() >= 1 and raw.max() <= 8  # class id + 1 (reference convention)
    assert (
        len(list((out_dir / "overlay").rglob("*.png"))) == 10
        and len(list((out_dir / "video").glob("*.gif"))) == 2
    )
    assert stored["fast_path"]["fold"] == "applied" and stored["fast_path"]["probe_diff"] < 1e-4


def test_the_plain_model_scores_what_the_fast_path_scores(trained_run: Path) -> None:
    """--no-fast-path evaluates the model as trained: the same confusion matrix as the fast path."""
    fast = vis_image.main([str(trained_run), "--num-workers", "0", "--no-write-res"])
    plain = vis_image.main([str(trained_run), "--num-workers", "0", "--no-write-res", "--no-fast-path"])
    stored = json.loads((trained_run / "results" / "val" / "metrics.json").read_text())
    assert stored["fast_path"]["bn_folded"] == 0 and not stored["fast_path"]["switched"]
    assert plain["confusion_matrix"] and plain["confusion_matrix"] == fast["confusion_matrix"]


def test_best_model_flag_and_run_by_name(trained_run: Path) -> None:
    metrics = vis_image.main(
        [
            trained_run.name,
            "--save-dir",
            str(trained_run.parent),
            "--best-model",
            "--no-write-res",
            "--num-workers",
            "0",
        ]
    )
    assert metrics["checkpoint"] == str(trained_run / "best.pth")


@pytest.mark.parametrize(
    ("evaluation", "write_res", "save_logits"),
    list(itertools.product([True, False], [None, True, False], [True, False])),
)
def test_every_flag_combination_works(trained_run: Path, tmp_path: Path, evaluation: bool,
                                      write_res: bool | None, save_logits: bool) -> None:  # fmt: skip
    """write_res None: neither --write-res nor --no-write-res; pictures then, except for a logits dump."""
    run = tmp_path / trained_run.name
    run.mkdir()
    for name in ("last.pth", "config.yaml"):
        (run / name).write_bytes((trained_run / name).read_bytes())
    flags = ["--num-workers", "0", "--split", "train", "--skip-frames", "3"]
    flags += [] if evaluation else ["--no-evaluation"]
    flags += {None: [], True: ["--write-res"], False: ["--no-write-res"]}[write_res]
    flags += ["--save-logits"] if save_logits else []
    result = vis_image.main([str(run), *flags])
    assert (result is not None) == evaluation
    pictures = write_res if write_res is not None else not (save_logits and not evaluation)
    results = run / "results" / "train"
    assert (results / "pred").is_dir() == pictures
    for kind in ("color", "overlay", "video"):  # a logits dump writes none of the pictures
        assert (results / kind).is_dir() == pictures
    assert (run / "results" / "train" / "metrics.json").is_file() == evaluation
    logits_dir = run / "logits" / "train"
    assert logits_dir.is_dir() == save_logits
    if save_logits:
        files = sorted(logits_dir.rglob("*.npy"))  # npy by default
        # skip 3 keeps clip indices {0, 1, 3} of each 4-frame train clip
        assert sorted({f.stem for f in files}) == ["000000", "000001", "000003"] and len(files) == 4 * 3
        arr = np.load(files[0])
        # by default at the student's size: for the synthetic set (no DatasetInfo.student_size) the 64x96 input
        assert arr.dtype == np.float16 and arr.shape == (8, 64, 96)
        manifest = json.loads((logits_dir / "manifest.json").read_text())
        assert manifest["frames_written"] == 12 and manifest["num_classes"] == 8


def test_logits_are_the_model_logits_downsampled(trained_run: Path) -> None:
    vis_image.main([str(trained_run), "--no-evaluation", "--no-write-res", "--save-logits", "--logits-stride", "2",
                    "--logits-size", "eval", "--logits-format", "npy", "--logits-dtype", "float32",
                    "--num-workers", "0"])  # fmt: skip
    from data.catalog import SYNTHETIC
    from data.frames import read_split
    from data.image_dataset import FrameStream
    from models.runs import load_image_model

    model, cfg, _ = load_image_model(trained_run)
    clip = read_split(Path(cfg.data_cfg.path), "val", SYNTHETIC)[0]
    item = FrameStream([clip], SYNTHETIC, (64, 96))[2]
    with torch.inference_mode():
        want = torch.nn.functional.avg_pool2d(model(item["image"][None]), 2)[0].numpy()
    got = np.load(trained_run / "logits" / "val" / clip.name / f"{item['frame']}.npy")
    assert got.shape == (8, 32, 48) and np.allclose(got, want, atol=1e-4)


def test_missing_test_split_and_missing_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test.txt not found"):
        vis_image.main([str(trained_run), "--split", "test", "--num-workers", "0"])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="last.pth not found: it has no checkpoint yet"):
        vis_image.main([str(empty)])
    with pytest.raises(CheckpointError, match="run 'nope' not found"):
        vis_image.main(["nope", "--save-dir", str(tmp_path)])


def test_missing_checkpoint_cli_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "eval.vis.image", "nope", "--save-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"checkpoint error: run 'nope' not found (as a path or in {tmp_path}/); "
                                                f"{tmp_path}/ holds no runs"]  # fmt: skip


def test_flip_tta_runs(trained_run: Path) -> None:
    metrics = vis_image.main([str(trained_run), "--tta", "flip", "--no-write-res", "--num-workers", "0"])
    assert metrics["miou"]["tta"] == "flip" and 0 <= metrics["miou"]["value"] <= 1
