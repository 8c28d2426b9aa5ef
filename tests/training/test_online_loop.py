"""The online-distillation loop (other_methods.md §3.2-3.4, metrics.md §5) end to end on a tiny synthetic stream."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import ConfigError, DataError, run_cli
from config.loader import CONFIG_ROOT, from_dict, load, to_dict
from config.online_sections import OnlineConfig
from data.synthetic.stream import GT_NAME, LABELS, StreamParams, ensure_stream, stream_identity
from eval.metrics import ConfusionMatrix
from training.online.build import build_learner, open_stream
from training.online.frames import FrameStore
from training.online.loop import StreamData, evaluate
from training.online.regularisers import REGULARISERS
from training.online.replay import REPLAY_BUFFERS
from training.online.run import OnlineResult, label_stores, main, resolve_config
from training.online.students import STUDENTS

# 2 videos x 12 frames (3 s at 4 fps), looks switching every 5 frames
TINY = StreamParams(
    height=64, width=96, videos=2, minutes_per_video=0.05, fps=4.0, block_frames=5, looks=("day", "dusk")
)
# every frame a teacher frame (s_T 1): 24 frames, windows at 0, 2, ..., 22; BWT/FWT 4 frames away
PROTOCOL = ["teacher_subsample=1", "dataset_size=4", "testing_size=2", "student_subsample=2", "sequence_length=2",
            "batch_size=2", "student_cfg.width=8", "--quiet"]  # fmt: skip
C = 8  # the synthetic classes
HEADER = "acc;miou;acc_bwt;miou_bwt;acc_fwt;miou_fwt;" + ";".join(f"iou_{c}" for c in range(C))


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stream, with a hand-made teacher folder ``fake``: the true labels with class 0 drawn as 1 and some
    pixels 200 (outside 0..C-1: ignored in training, dropped in scoring), so teacher and truth differ."""
    root = ensure_stream(tmp_path_factory.mktemp("stream") / "s", TINY, workers=1, progress=False)
    for path in sorted((root / LABELS / GT_NAME).glob("*/*.npz")):
        with np.load(path) as data:
            seg = data["seg"].copy()
        seg[seg == 0] = 1
        seg[:4, :4] = 200
        out = root / LABELS / "fake" / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, seg=seg)
    return root


def _run(stream: Path, save: Path, *extra: str, config: str = "fifo_synthetic") -> OnlineResult:
    return main([config, f"dataset={stream}", f"save={save}", *PROTOCOL, *extra])


def _rows(path: Path) -> tuple[str, list[list[float]]]:
    head, *rows = path.read_text().splitlines()
    return head, [[float(x) for x in r.split(";")] for r in rows]


def test_fifo_run_writes_the_documented_outputs(stream: Path, tmp_path: Path) -> None:
    res = _run(stream, tmp_path, "teacher=fake", "dump_masks=true")
    exp = res.experiment
    assert exp == tmp_path / "fifo_synthetic" / "experiment_1"
    positions = list(range(0, 24, 2))
    assert [r.pos for r in res.records] == positions
    # scored against the teacher (groundtruth null) and, by default, the true labels gd
    for log in ("performance.log", "final.log", "performance_gd.log", "final_gd.log"):
        head, rows = _rows(exp / log)
        assert head == HEADER and len(rows) == len(positions) and all(len(r) == 6 + C for r in rows)
    _, rows = _rows(exp / "performance.log")
    # BWT windows start at pos - 4: NaN for pos 0 and 2; FWT windows end at pos + 6: NaN for pos 20 and 22
    assert [math.isnan(r[2]) and math.isnan(r[3]) for r in rows] == [p < 4 for p in positions]
    assert [math.isnan(r[4]) and math.isnan(r[5]) for r in rows] == [p + 6 > 24 for p in positions]
    assert not any(math.isnan(r[0]) or math.isnan(r[1]) for r in rows)
    _, final = _rows(exp / "final.log")
    assert all(math.isnan(x) for r in final for x in r[2:6])  # one final model: no BWT/FWT
    assert "iou" in res.records[0].scores["gd"]["now"] and set(res.records[0].scores) == {"fake", "gd"}

    summary = json.loads((exp / "summary.json").read_text())
    assert set(summary) >= {"protocol", "stream", "windows", "scores", "throughput", "device", "software"}
    assert set(summary["scores"]["fake"]) >= {"log", "final_log", "miou_mean", "acc_mean", "bwt_miou_mean",
                                              "fwt_miou_mean", "final_miou_mean", "forgetting", "pooled_miou"}  # fmt: skip
    assert summary["scores"]["gd"]["log"] == "performance_gd.log"
    assert summary["scores"]["fake"]["miou_mean"] == pytest.approx(np.mean([r[1] for r in rows]), abs=1e-5)
    assert set(summary["scores"]["gd"]["by_look"]) == {"day", "dusk"}
    t = summary["throughput"]
    assert (
        t["stream_frames"] == 24
        and t["teacher_rate_frames_per_s"] == 4.0
        and t["train_stream_frames_per_s"] > 0
    )
    assert summary["protocol"]["miou_mode"] == "present_union" and summary["windows"] == len(positions)
    assert (exp / "miou.png").stat().st_size > 0 and any((exp / "tensorboard").iterdir())
    assert load(str(exp / "config.yaml"), "online").teacher == "fake"
    args = dict(line.split(" = ") for line in (exp / "arguments").read_text().splitlines())
    assert args["datasetsize"] == "4" and args["onlinedataset"] == "fifo" and args["numclasses"] == str(C)
    with np.load(exp / "masks" / "online" / "video_01" / "000000.npz") as data:
        assert data["seg"].shape == (64, 96) and data["seg"].dtype == np.uint8
    assert len(list((exp / "masks" / "final").rglob("*.npz"))) == 24
    assert not (exp / ".frames.cache").exists()


def test_the_first_window_is_scored_by_the_untrained_student(stream: Path, tmp_path: Path) -> None:
    res = _run(stream, tmp_path, "teacher=fake", "also_score_against=[]")
    first = res.records[0]
    assert first.trained == [] and first.steps_before_test == 0 and res.records[1].steps_before_test > 0
    # the same seed builds the same untrained student: its scores on frames 0-1 are the logged first row
    cfg = load(
        "fifo_synthetic",
        "online",
        [f"dataset={stream}", *PROTOCOL[:-1], "teacher=fake", "also_score_against=[]"],
    )
    info = open_stream(cfg)
    teacher, scored = label_stores(info, keep=True)
    data = StreamData(FrameStore(info.videos, info.frames, info.size_hw), teacher, scored, info.num_classes)
    learner = build_learner(cfg, info.num_classes, torch.device("cpu"))
    assert torch.equal(
        evaluate(learner, data, first.test, cfg.batch_size)["fake"].mat, first.matrices["fake"].mat
    )


@pytest.mark.parametrize("config", ["fifo_synthetic", "uniform_synthetic", "mir_synthetic", "lwf_synthetic"])
def test_tested_frames_are_never_in_that_windows_training_set(
    stream: Path, tmp_path: Path, config: str
) -> None:
    res = _run(stream, tmp_path, "teacher=gd", config=config)
    assert len(res.records) == 12
    windows = json.loads((res.experiment / "windows.json").read_text())["windows"]
    for rec, logged in zip(res.records, windows, strict=True):
        assert not set(rec.trained) & set(rec.test + (rec.fwt or []))
        assert all(k < rec.pos for k in rec.trained)  # only frames of the past
        assert logged["trained"] == rec.trained and logged["test"] == [rec.test[0], rec.test[-1] + 1]
        if config == "fifo_synthetic":  # the reference window frames[max(0, pos - N) : pos], in order
            assert rec.trained == list(range(max(0, rec.pos - 4), rec.pos))
    if config == "mir_synthetic":  # frames older than the stream window were replayed
        assert any(k < rec.pos - 2 for rec in res.records for k in rec.trained)
    assert res.summary["protocol"]["buffer"] == load(config, "online").buffer


def test_runs_never_overwrite_and_options_skip_resize(stream: Path, tmp_path: Path) -> None:
    first = _run(stream, tmp_path, "teacher=gd", "stop=1", "frame_cache=disk")
    second = _run(stream, tmp_path, "teacher=gd", "stop=1", "first_window=skip", "input_size=[32,48]")
    assert (first.experiment.name, second.experiment.name) == ("experiment_1", "experiment_2")
    assert [r.pos for r in first.records] == [0, 2, 4, 6, 8, 10]
    assert [r.pos for r in second.records] == [2, 4, 6, 8, 10]  # skip: the untrained window has no row
    _, rows = _rows(second.experiment / "performance.log")
    assert len(rows) == 5 and second.summary["protocol"]["input_size"] == [32, 48]
    assert not (first.experiment / "masks").exists()  # dump_masks is off by default
    assert not (first.experiment / ".frames.cache").exists()  # the disk cache goes at the end


def test_reference_flags_set_their_keys() -> None:
    by_flag, _ = resolve_config(["fifo_synthetic", "--datasetsize", "5"])
    by_key, _ = resolve_config(["fifo_synthetic", "dataset_size=5"])
    assert by_flag.dataset_size == 5 and to_dict(by_flag) == to_dict(by_key)
    cfg, _ = resolve_config(["fifo_synthetic", "dataset_size=3", "--datasetsize", "6"])  # flags apply last
    assert cfg.dataset_size == 6
    cfg, _ = resolve_config(["--dataset", "d", "--teacher", "t", "--onlinedataset", "MIR", "-C", "7", "-k", "3",
                             "--trainer", "LWF", "--alpha", "0.3", "--sequence-length", "4", "--er-capacity", "9"])  # fmt: skip
    assert (cfg.dataset, cfg.teacher, cfg.buffer, cfg.trainer, cfg.sequence_length) == (
        "d",
        "t",
        "mir",
        "lwf",
        4,
    )
    assert (cfg.buffer_cfg.candidates, cfg.buffer_cfg.k, cfg.buffer_cfg.store_capacity) == (7, 3, 9)
    assert cfg.trainer_cfg.alpha == 0.3 and cfg.buffer_cfg.alpha == 0.5  # --alpha: only where it is read
    assert resolve_config(["--onlinedataset", "prioritized", "--alpha", "2"])[0].buffer_cfg.alpha == 2.0
    assert resolve_config(["--trainer", ""])[0].trainer == "none"  # the reference's plain CE
    with pytest.raises(ConfigError, match="--alpha: read by the prioritized buffer and the lwf trainer only"):
        resolve_config(["fifo_synthetic", "--alpha", "0.3"])
    with pytest.raises(ConfigError, match="--delta-t: the RWalk"):
        resolve_config(["fifo_synthetic", "--delta-t", "3"])
    with pytest.raises(ConfigError, match="buffer_cfg.k: read by buffer mir only, but buffer is 'fifo'"):
        resolve_config(["fifo_synthetic", "buffer_cfg.k=3"])


def test_a_missing_dataset_or_teacher_is_one_line(
    stream: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            main, ["fifo_synthetic", f"dataset={tmp_path / 'nope'}", f"save={tmp_path / 'out'}", "--quiet"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("data error: dataset: ")
        and "\n" not in err
        and "python -m data.synthetic.stream" in err
    )
    with pytest.raises(DataError, match="no such teacher label folder.*teacher_label"):
        _run(stream, tmp_path / "out", "teacher=teacher_synthetic")
    shutil.copytree(stream / LABELS / GT_NAME, stream / LABELS / "holes")
    (stream / LABELS / "holes" / "video_02" / "000005.npz").unlink()
    with pytest.raises(DataError, match="1 label files of the stream's teacher frames are missing"):
        _run(stream, tmp_path / "out", "teacher=holes")
    assert not (tmp_path / "out").exists()  # checked before any experiment folder is made


def test_the_teacher_manifest_is_checked_and_gives_the_classes(stream: Path) -> None:
    folder = stream / LABELS / "labelled"
    if not folder.exists():
        shutil.copytree(stream / LABELS / GT_NAME, folder)
    cfg = load("fifo_synthetic", "online", [f"dataset={stream}", "teacher=labelled", "teacher_subsample=1"])
    classes = [f"cs_{i}" for i in range(19)]  # another taxonomy than the stream's 8 true classes
    for subsample, identity, error in ((2, stream_identity(stream), "labelled every 2 frames"),
                                       (1, {"params": "old"}, "labels of another stream"), (1, stream_identity(stream), None)):  # fmt: skip
        manifest = {"subsample": subsample, "classes": classes, "stream": identity}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        if error is not None:
            with pytest.raises(DataError, match=error):
                open_stream(cfg)
    info = open_stream(cfg)
    assert info.num_classes == 19 and info.class_names == classes
    # the true labels are in another taxonomy: not scored against by default, and said so
    assert [p.name for p in info.scored] == ["labelled"] and GT_NAME in info.notes[0]


@pytest.mark.parametrize("path", sorted((CONFIG_ROOT / "online").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_online_config_loads(path: Path) -> None:
    cfg = load(path.stem, "online")
    assert to_dict(from_dict(to_dict(cfg), "online")) == to_dict(cfg)
    reference = load("fifo_cityscapes_reference", "online")
    assert (reference.teacher_subsample, reference.dataset_size, reference.testing_size, reference.student_subsample,
            reference.batch_size, reference.sequence_length, reference.learning_rate, reference.num_classes,
            reference.buffer, reference.first_window) == (75, 67, 20, 20, 8, 20, 1e-4, 19, "fifo", "untrained")  # fmt: skip


def test_schema_choices_equal_the_registries() -> None:
    hints = typing.get_type_hints(OnlineConfig)
    for key, registry in (("buffer", REPLAY_BUFFERS), ("trainer", REGULARISERS), ("student", STUDENTS)):
        assert set(typing.get_args(hints[key])) == set(registry.names()), key
    assert {f.name for f in dataclasses.fields(OnlineConfig)} >= {
        "first_window",
        "dump_masks",
        "also_score_against",
    }


def test_window_summary_is_the_present_union_rule() -> None:
    # C = 3; pixel 3 (label 5) and pixel 4 (255) are dropped; class 2 is then in neither labels nor predictions
    pred, target = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 5, 255])
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(pred, target)  # the default still refuses labels outside 0..C-1
    cm.update(pred, target, out_of_range="drop")
    s = cm.window_summary()
    assert s["acc"] == pytest.approx(2 / 3) and s["miou"] == pytest.approx(0.5)
    assert s["iou"][:2] == [0.5, 0.5] and math.isnan(s["iou"][2])
    assert cm.miou("present_union") == cm.miou("nan_exclude")
    # an empty window is NaN, as in the reference
    assert math.isnan(ConfusionMatrix(3).window_summary()["miou"])
