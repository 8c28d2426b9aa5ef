"""eval.compare on tiny runs: missing results computed in process, table values equal to the runs' metrics.json,
protocol mismatches refused with the field named, the Markdown / CSV / PNG files; training.zoo in quick mode."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from config.errors import ConfigError, run_cli
from eval import compare
from tests.conftest import TINY_HW
from training import train_video

SYNTH = ["video_model_cfg.k_registrator_model=gt", "video_model_cfg.flow.backend=gt"]
QUICK = ["--device", "cpu", "--frames", "3", "--warmup", "1", "--bench-runs", "1", "--threads", "1",
         "--num-workers", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(
    tiny_synthetic: Path, tiny_image_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(a copy of the tiny image run, a tiny SSP run on it), neither evaluated nor benchmarked yet."""
    h, w = TINY_HW
    save = tmp_path_factory.mktemp("compare_runs")
    image = Path(shutil.copytree(tiny_image_run, save / "image_run"))  # the session's run stays as it is
    shutil.rmtree(image / "results", ignore_errors=True)
    shutil.rmtree(image / "benchmark", ignore_errors=True)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        video = train_video.main([
            "ssp_synthetic", *SYNTH, f"save_dir={save}", "data_cfg.dataset=synthetic", f"data_cfg.path={tiny_synthetic}",
            f"data_cfg.crop_size=[{h}, {w}]", f"image_model_cfg.checkpoint_name={image}",
            "training_cfg.batch_size=2", "training_cfg.num_epochs=1", "training_cfg.early_stopping=null",
            "training_cfg.max_steps_per_epoch=1", "training_cfg.max_val_samples=2", "training_cfg.num_workers=0",
            "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0",
        ])  # fmt: skip
    finally:
        torch.set_num_threads(n)
    return image, Path(video)


@pytest.fixture(scope="module")
def ranked(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    """eval.compare run once on both runs (it evaluates and benchmarks them first)."""
    image, video = runs
    for run in runs:
        assert not (run / "results" / "val" / "metrics.json").exists()
        assert not (run / "benchmark").exists()
    out = tmp_path_factory.mktemp("leaderboard")
    return compare.main([str(video), str(image), "--out", str(out), *QUICK]), out


def test_missing_results_are_computed(runs: tuple[Path, Path], ranked: tuple[list[dict], Path]) -> None:
    for run in runs:
        metrics = json.loads((run / "results" / "val" / "metrics.json").read_text())
        assert metrics["split"] == "val" and set(metrics["tc"]) == {"tc_reference", "strict"}
        bench = json.loads((run / "benchmark" / f"cpu_{TINY_HW[0]}x{TINY_HW[1]}_fp32_t1.json").read_text())
        assert bench["timed_frames"] == 3 and bench["runs"] == 1 and bench["threads"] == 1


def test_table_values_equal_the_runs_files(runs: tuple[Path, Path], ranked: tuple[list[dict], Path]) -> None:
    rows, out = ranked
    assert {p.name for p in out.iterdir()} >= {"leaderboard.md", "leaderboard.csv", "leaderboard.png"}
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "leaderboard.csv", newline="") as fh:
        table = {r["run"]: r for r in csv.DictReader(fh)}
    assert set(table) == {r.name for r in runs}
    md = (out / "leaderboard.md").read_text()
    for run in runs:
        m = json.loads((run / "results" / "val" / "metrics.json").read_text())
        b = json.loads((run / "benchmark" / f"cpu_{TINY_HW[0]}x{TINY_HW[1]}_fp32_t1.json").read_text())
        kind = b["kind"]
        r = table[run.name]
        assert float(r["miou"]) == m["miou"]["value"]
        assert float(r["tc_reference"]) == m["tc"]["tc_reference"]["value"]
        assert float(r["tc_strict"]) == m["tc"]["strict"]["value"]
        assert float(r["fps"]) == b["results"][f"{kind}/fp32"]["fps"]
        assert float(r["peak_memory_mb"]) == b["results"][f"{kind}/fp32"]["peak_memory_mb"]
        assert r["device"] == b["device"]
        assert r["vc_8"] == "" and m["vc"]["8"]["value"] is None  # 5-frame clips: no VC_8 window
        epochs = json.loads((run / "metrics.json").read_text())["epochs"]
        assert float(r["train_min"]) == round(sum(e["epoch_time_s"] for e in epochs) / 60, 3)
        assert int(r["params"]) > 0
        assert f"| {100 * m['miou']['value']:.2f} | {100 * m['tc']['tc_reference']['value']:.2f} |" in md
        if kind == "video":
            assert float(r["fps_vs_image"]) == b["results"]["ratio/fp32"]
            assert r["image_run"] == runs[0].name and r["config"] == "ssp_synthetic"
            assert r["method"].startswith("base (") and "registration gt" in r["method"]
        else:
            assert float(r["fps_vs_image"]) == 1.0 and r["method"].startswith("image baseline")
    # the documented order: mIoU, highest first
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["miou"] >= rows[1]["miou"]
    assert [int(r["rank"]) for r in sorted(table.values(), key=lambda r: -float(r["miou"]))] == [1, 2]


def _copy_with(run: Path, dest: Path, edit) -> Path:
    """A copy of an evaluated run whose metrics.json is changed by ``edit``."""
    copy = Path(shutil.copytree(run, dest))
    path = copy / "results" / "val" / "metrics.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    return copy


def test_different_protocols_are_refused_naming_the_field(
    runs: tuple[Path, Path], ranked: tuple[list[dict], Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    image, video = runs

    def occlusion(m: dict) -> None:
        m["tc"]["strict"]["tc_protocol"]["occlusion"] = "none"

    def resolution(m: dict) -> None:
        m["miou"]["resolution"] = "label (each mask's own size)"

    def split(m: dict) -> None:
        m["split"] = "test"

    cases = [
        ("occ", occlusion, "tc.strict.tc_protocol.occlusion"),
        ("res", resolution, "miou.resolution"),
        ("split", split, "split"),
    ]
    for name, edit, field in cases:
        odd = _copy_with(image, tmp_path / name, edit)
        with pytest.raises(ConfigError, match=f"'{field}' differs"):
            compare.main([str(video), str(odd), "--out", str(tmp_path / "out"), *QUICK])
    assert not (tmp_path / "out" / "leaderboard.csv").exists()
    # on the command line: one line and exit code 2
    with pytest.raises(SystemExit) as exc:
        run_cli(compare.main, [str(video), str(tmp_path / "occ"), "--out", str(tmp_path / "out"), *QUICK])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("config error: cannot rank")
    assert "'tc.strict.tc_protocol.occlusion' differs" in err
    # a device card difference is not a protocol difference (the machine, not the measurement)
    same = _copy_with(
        image, tmp_path / "dev", lambda m: m["tc"]["strict"]["tc_protocol"].update(device="other")
    )
    compare.check_protocols([compare.gather(p, compare.build_parser().parse_args([str(p), *QUICK]), "cpu")
                             for p in (video, same)])  # fmt: skip


def test_rank_key_orders_by_miou_then_tc() -> None:
    rows = [{"miou": 0.5, "tc_reference": 0.7, "run": "b"}, {"miou": 0.5, "tc_reference": 0.9, "run": "a"},
            {"miou": 0.6, "tc_reference": None, "run": "c"}, {"miou": 0.5, "tc_reference": None, "run": "d"}]  # fmt: skip
    assert [r["run"] for r in sorted(rows, key=compare.rank_key)] == ["c", "a", "b", "d"]


def test_zoo_quick(tiny_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The zoo trains the image run and the discovered video configs, ranks them, and reuses finished runs (two
    configs with --only keep it about 15 s; the discovery itself is checked on the whole folder)."""
    from training import zoo

    h, w = TINY_HW
    assert {"ssp_synthetic", "dff_synthetic", "per_frame_synthetic"} <= set(zoo.video_configs())
    argv = [
        "--quick", "--device", "cpu", "--only", "per_frame_synthetic", "--only", "dff_synthetic",
        "--image", f"save_dir={tmp_path / 'ck'}", "--image", f"data_cfg.path={tiny_synthetic}",
        "--image", f"data_cfg.crop_size=[{h}, {w}]", "--image", "model_cfg.backbone=tiny_cnn",
        "--image", "training_cfg.batch_size=2", "--image", "training_cfg.num_workers=0",
        *[a for o in [*SYNTH, "training_cfg.batch_size=2", "training_cfg.num_workers=0"] for a in ("--video", o)],
    ]  # fmt: skip
    rows = zoo.main(argv)
    out = tmp_path / "ck" / "leaderboard"
    assert sorted(r["config"] for r in rows) == ["base_synthetic", "dff_synthetic", "per_frame_synthetic"]
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.png", "zoo.json"} <= {
        p.name for p in out.iterdir()
    }
    state = json.loads((out / "zoo.json").read_text())
    assert set(state["runs"]) == {"base_synthetic", "dff_synthetic", "per_frame_synthetic"}
    assert state["settings"]["quick"] is True
    capsys.readouterr()
    again = zoo.main(argv)  # resumable: every finished run is reused, nothing retrained
    assert capsys.readouterr().out.count("reused") == 3
    assert [r["run"] for r in again] == [r["run"] for r in rows]
    with pytest.raises(ConfigError, match="no such config"):
        zoo.main([*argv, "--only", "nonexistent_synthetic"])


def test_zoo_trains_a_teacher_and_dumps_its_logits_for_a_distilling_config(
    tiny_synthetic: Path, tmp_path: Path
) -> None:
    """make kd's path: a config that distils without naming a teacher gets the zoo's teacher, whose logits are
    dumped once; the leaderboard ranks the image run, the teacher and the student."""
    from training import zoo

    h, w = TINY_HW
    image = [f"save_dir={tmp_path / 'ck'}", f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{h}, {w}]",
             "model_cfg.backbone=tiny_cnn", "training_cfg.batch_size=2", "training_cfg.num_workers=0"]  # fmt: skip
    assert ("kd_base_synthetic", "image") in zoo.discovered() and (
        "untrained_synthetic",
        "image",
    ) not in zoo.discovered()
    rows = zoo.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--only",
            "kd_base_synthetic",
            *[a for o in image for a in ("--image", o)],
        ]
    )
    assert sorted(r["config"] for r in rows) == ["base_synthetic", "kd_base_synthetic", "teacher_synthetic"]
    methods = {r["config"]: r["method"] for r in rows}
    assert "kldiv to a teacher" in methods["kd_base_synthetic"] and "teacher" not in methods["base_synthetic"]
    state = json.loads((tmp_path / "ck" / "leaderboard" / "zoo.json").read_text())
    teacher = Path(state["runs"]["teacher_synthetic"]["run"])
    assert f"data_cfg.teacher_run={teacher}" in state["runs"]["kd_base_synthetic"]["overrides"]
    manifest = json.loads((teacher / "logits" / "train" / "manifest.json").read_text())
    assert manifest["frames_rule"] == "all" and manifest["frames_on_disk"] == 16  # 4 train clips of 4 frames


def test_zoo_retrains_a_run_whose_config_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorded run is reused only when its overrides and its resolved config are what the step would train now."""
    from training import zoo

    monkeypatch.setattr(zoo, "run_status", lambda path: "finished")
    run = tmp_path / "run"
    run.mkdir()
    config = zoo._resolved("ssp_synthetic", "video", [])
    entry = {"run": str(run), "overrides": [], "config": config}
    assert zoo._reusable(entry, [], config) == run
    edited = zoo._resolved("ssp_synthetic", "video", ["video_model_cfg.const_loss_lb=0.2"])
    assert zoo._reusable(entry, [], edited) is None  # as if the YAML file had been edited
    assert zoo._reusable(entry, ["training_cfg.lr=1.0"], config) is None
    assert (
        zoo._reusable({k: v for k, v in entry.items() if k != "config"}, [], config) is None
    )  # an old zoo.json


def test_min_miou_column_and_key_interval_come_from_key_cycle(
    runs: tuple[Path, Path], ranked: tuple[list[dict], Path], tmp_path: Path
) -> None:
    """A run whose metrics.json has a ``key_cycle`` entry (a keyframe method's evaluation) gets the 'min mIoU %'
    column, copied from ``key_cycle.min_miou``, and its key interval in the method; a table without one keeps its
    columns."""
    image, video = runs
    rows, out = ranked
    assert all("min_miou" not in r for r in rows) and "min mIoU" not in (out / "leaderboard.md").read_text()
    with open(out / "leaderboard.csv", newline="") as fh:
        assert "min_miou" not in next(csv.reader(fh))

    def key_cycle(m: dict) -> None:
        m["key_cycle"] = {"interval": 2, "per_distance": [], "avg_miou": m["miou"]["value"], "avg_pixel_acc": 0.5,
                          "min_miou": 0.123456, "phases": [0], "options": {}}  # fmt: skip

    keyed = _copy_with(video, tmp_path / "keyed", key_cycle)
    out = tmp_path / "out"
    rows = {
        r["run"]: r for r in compare.main([str(keyed), str(video), str(image), "--out", str(out), *QUICK])
    }
    assert rows["keyed"]["min_miou"] == 0.123456 and "min_miou" not in rows[video.name]
    assert (
        rows["keyed"]["method"].startswith("base (interval 2, ")
        and "interval" not in rows[video.name]["method"]
    )
    with open(out / "leaderboard.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert (
            reader.fieldnames is not None
            and reader.fieldnames.index("min_miou") == reader.fieldnames.index("miou") + 1
        )
        table = {r["run"]: r for r in reader}
    assert float(table["keyed"]["min_miou"]) == 0.123456 and table[image.name]["min_miou"] == ""
    md = (out / "leaderboard.md").read_text()
    assert "| mIoU % | min mIoU % |" in md and "| 12.35 |" in md and "key_cycle.min_miou" in md


def test_method_label_states_the_measured_key_interval() -> None:
    """With ``key_cycle`` the label leads with its interval and leaves out the description's interval and key
    phase (the passes may pool phases); without it the description's scalars stay as they are."""
    described = {"method": "keyframe", "inference": "x", "helpers": {}, "interval": 3, "key_phase": 1,
                 "eval_scale": 1.0, "train_steps": [1, 2]}  # fmt: skip
    cfg = {"video_model_cfg": {"model_name": "keyframe"}}

    def label(metrics: dict) -> str:
        e = compare.Entry(
            Path("r"), "video", cfg, {"video_model": described, **metrics}, Path("m"), {}, Path("b")
        )
        return compare.method_label(e)

    assert label({}) == "keyframe (interval 3, key_phase 1, eval_scale 1.0)"
    assert label({"key_cycle": {"interval": 2, "min_miou": None}}) == "keyframe (interval 2, eval_scale 1.0)"


@pytest.fixture
def fake_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, list[str]]]:
    """training.zoo with training, the data set and eval.compare replaced: each step's (name, kind, overrides)
    in the order trained, every run a folder ``<tmp>/ck/<name>``; compare's argv appended as ("compare", "", argv)."""
    from types import SimpleNamespace

    from training import zoo

    calls: list[tuple[str, str, list[str]]] = []

    def trainer(kind: str):
        def main(argv: list[str]) -> Path:
            calls.append((argv[0], kind, argv[1:]))
            run = tmp_path / "ck" / argv[0]
            run.mkdir(parents=True)
            return run

        return main

    monkeypatch.setattr(zoo, "TRAIN", {kind: trainer(kind) for kind in ("image", "video")})
    monkeypatch.setattr(zoo, "ensure_dataset", lambda *a: tmp_path / "data")
    monkeypatch.setattr(
        zoo, "compare", SimpleNamespace(main=lambda argv: calls.append(("compare", "", argv)) or [])
    )
    return calls


def test_zoo_starts_a_video_config_from_the_image_config_it_names(
    fake_zoo: list[tuple[str, str, list[str]]], tmp_path: Path
) -> None:
    """keyframe_synthetic names swiftnet_synthetic as its image model: --only keyframe_synthetic trains that image
    config first and passes its run; a config naming none starts from the base image run."""
    from training import zoo

    run = tmp_path / "ck"
    zoo.main(["--quick", "--only", "keyframe_synthetic", "--only", "dff_synthetic", "--out", str(tmp_path / "out"),
              "--image", f"save_dir={run}"])  # fmt: skip
    trained = {name: overrides for name, _, overrides in fake_zoo}
    assert [(n, k) for n, k, _ in fake_zoo] == [("base_synthetic", "image"), ("swiftnet_synthetic", "image"),
                                                ("dff_synthetic", "video"), ("keyframe_synthetic", "video"),
                                                ("compare", "")]  # fmt: skip
    ckpt = [o for o in trained["keyframe_synthetic"] if o.startswith("image_model_cfg.checkpoint_name=")]
    assert ckpt == [f"image_model_cfg.checkpoint_name={(run / 'swiftnet_synthetic').resolve()}"]
    assert f"image_model_cfg.checkpoint_name={(run / 'base_synthetic').resolve()}" in trained["dff_synthetic"]
    assert str((run / "swiftnet_synthetic").resolve()) in trained["compare"]  # the per-frame row beside it


def test_zoo_keeps_the_base_image_run_for_a_name_it_does_not_train(
    fake_zoo: list[tuple[str, str, list[str]]], tmp_path: Path
) -> None:
    """A checkpoint_name that is no zoo image config (here a run path given with --video) is today's behaviour:
    the base image run's override, then the user's, and nothing more is trained."""
    from training import zoo

    run, given = tmp_path / "ck", "image_model_cfg.checkpoint_name=/elsewhere/run"
    zoo.main(["--quick", "--only", "keyframe_synthetic", "--out", str(tmp_path / "out"), "--image", f"save_dir={run}",
              "--video", given])  # fmt: skip
    assert [n for n, _, _ in fake_zoo] == ["base_synthetic", "keyframe_synthetic", "compare"]
    ckpt = [o for o in fake_zoo[1][2] if o.startswith("image_model_cfg.checkpoint_name=")]
    assert ckpt == [f"image_model_cfg.checkpoint_name={(run / 'base_synthetic').resolve()}", given]


def test_a_new_schema_section_left_unset_does_not_retrain_recorded_runs() -> None:
    from training.zoo import same_config

    stored = {"video_model_cfg": {"model_name": "base", "dff": None}, "training_cfg": {"lr": 1e-3}}
    grown = {
        "video_model_cfg": {"model_name": "base", "dff": None, "keyframe": None},
        "training_cfg": {"lr": 1e-3},
    }
    assert same_config(stored, grown)  # the schema gained a method section that this config does not use
    assert not same_config(
        stored, {**grown, "video_model_cfg": {**grown["video_model_cfg"], "keyframe": {"a": 1}}}
    )
    assert not same_config(stored, {**grown, "training_cfg": {"lr": 2e-3}})  # a changed value
    assert not same_config(grown, stored)  # a key that disappeared
    # a new option counts when it differs from its schema default (a new key at its default retrains nothing)
    defaults = {"training_cfg": {"lr": 1e-4, "seed": 0}}
    seeded = {**grown, "training_cfg": {"lr": 1e-3, "seed": 0}}
    assert same_config(stored, seeded, defaults) and not same_config(stored, seeded)
    assert not same_config(stored, {**grown, "training_cfg": {"lr": 1e-3, "seed": 1}}, defaults)
