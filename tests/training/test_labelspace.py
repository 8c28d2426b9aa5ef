"""Label-space KD end to end (``make labelspace``'s path, in ``--quick`` mode on the tiny sets): the zoo trains the
teacher, has it pseudo-label the coarse-taxonomy stand-in with and without priors into its own run folder, trains a
student on the source plus each, and ranks teacher and students; the shipped recipe configs load."""

from __future__ import annotations

import json
from pathlib import Path

from config.loader import load
from tests.conftest import TINY_HW


def test_the_recipe_configs_load() -> None:
    student = load("student_labelspace_synthetic", "image")
    assert student.data_cfg.pseudo_labels == ["datasets/generated_labels/synthetic_coarse"]
    assert (
        student.data_cfg.dataset_weights == [2.0, 1.0] and student.training_cfg.selection_metric == "fitness"
    )
    ablation = load("student_noprior_synthetic", "image")
    assert ablation.data_cfg.pseudo_labels == ["datasets/generated_labels/synthetic_coarse/no_priors"]
    pseudo = load("synthetic_coarse", "pseudo")
    assert pseudo.use_priors and pseudo.tta.flip and pseudo.reference_path.endswith("hidden_fine")


def test_zoo_pseudo_labels_with_the_teacher_and_trains_both_students(
    tiny_synthetic: Path, tiny_coarse: Path, tmp_path: Path
) -> None:
    from training import zoo

    h, w = TINY_HW
    image = [f"save_dir={tmp_path / 'ck'}", f"data_cfg.path={tiny_synthetic}", f"data_cfg.crop_size=[{h}, {w}]",
             "model_cfg.backbone=tiny_cnn", "training_cfg.batch_size=2", "training_cfg.num_workers=0"]  # fmt: skip
    pseudo = [f"dataset_path={tiny_coarse}", "generate_stand_in=false", "num_workers=0", "tta.scales=[1.0]",
              f"reference_path={tiny_coarse / 'hidden_fine'}"]  # fmt: skip
    rows = zoo.main(["--quick", "--device", "cpu", "--only", "student_labelspace_synthetic", "--only",
                     "student_noprior_synthetic", *[a for o in image for a in ("--image", o)],
                     *[a for o in pseudo for a in ("--pseudo", o)]])  # fmt: skip
    assert sorted(r["config"] for r in rows) == [
        "base_synthetic", "student_labelspace_synthetic", "student_noprior_synthetic", "teacher_synthetic",
    ]  # fmt: skip
    state = json.loads((tmp_path / "ck" / "leaderboard" / "zoo.json").read_text())
    teacher = Path(state["runs"]["teacher_synthetic"]["run"])
    made = {"student_labelspace_synthetic": teacher / "pseudo_labels" / "synthetic_coarse",
            "student_noprior_synthetic": teacher / "pseudo_labels" / "synthetic_coarse" / "no_priors"}  # fmt: skip
    methods = {r["config"]: r["method"] for r in rows}
    for name, folder in made.items():
        assert f"data_cfg.pseudo_labels=[{folder}]" in state["runs"][name]["overrides"]
        manifest = json.loads((folder / "pseudo_labels.json").read_text())
        assert manifest["complete"] and manifest["settings"]["teacher"]["run"] == str(teacher)
        assert len(manifest["files"]["train"]) == 2 and "quality" in manifest
        metrics = json.loads((Path(state["runs"][name]["run"]) / "metrics.json").read_text())
        assert metrics["selection_metric"] == "fitness"
        assert [d["samples"] for d in metrics["datasets"]] == [4, 2]  # 4 source frames, 2 pseudo-labelled
    assert "(with priors)" in methods["student_labelspace_synthetic"]
    assert "(without priors)" in methods["student_noprior_synthetic"]
    assert "pseudo-labels" not in methods["teacher_synthetic"]


def test_the_real_pair_recipe_maps_ruralscapes_onto_uavid_without_warnings() -> None:
    import warnings

    from data.catalog import RURALSCAPES, UAVID
    from data.ontology import read_labels_csv, read_mapping

    cfg = load("ruralscapes_by_uavid", "pseudo")
    classes = read_labels_csv(cfg.labels_csv)
    # the prepared RuralScapes masks hold trainId + 1 (0 = unlabeled): labels.csv must say exactly that
    assert [(c.name, c.id, c.train_id) for c in classes[1:]] == [
        (n, i + 1, i) for i, n in enumerate(RURALSCAPES.class_names)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mapping = read_mapping(cfg.mapping_csv, cfg.labels_csv, master=list(UAVID.class_names))
    assert mapping.unmapped == [] and mapping.matrix[:, 1].sum() == 2  # residential: building or roof
    student = load("student_labelspace_uavid", "image")
    assert student.data_cfg.pseudo_labels == [f"{cfg.labels_root}/{cfg.experiment}"]
