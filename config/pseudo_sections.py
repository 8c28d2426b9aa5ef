"""The pseudo-labelling config (``config/pseudo/*.yaml``, ``python -m eval.pseudo_label CONFIG``): a teacher labels an
*extra* dataset, whose own labels use another taxonomy, in the teacher's (master) taxonomy; with ``use_priors`` each
pixel may only take the master classes that the ontology mapping allows for its extra label
(``other_methods.md`` §2.3-2.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.errors import ConfigError
from config.fields import opt


@dataclass
class TeacherSourceCfg:
    """`teacher`: the network whose class scores are constrained. Exactly one of ``run`` and ``hf_folder``."""

    run: str | None = opt(
        None, "a tcseg image run (name under save_dir, or a path); its classes are the master taxonomy"
    )
    best_model: bool = opt(
        True, "run: use best.pth (else last.pth; best.pth falls back to last.pth when absent)"
    )
    hf_folder: str | None = opt(
        None,
        "a local transformers save_pretrained folder of a Mask2Former or SegFormer semantic model (pip install -r "
        "requirements-extra.txt); its config.json id2label is the master taxonomy; nothing is downloaded",
    )
    input_size: list[int] | None = opt(
        None,
        "(H, W) the teacher sees; null = the run's data_cfg.crop_size (hf_folder: required)",
        length=2,
        min=1,
    )


@dataclass
class TTACfg:
    """`tta`: test-time augmentation; scores are averaged after resizing back to the input size."""

    flip: bool = opt(False, "also score the horizontally flipped image (flipped back)")
    scales: list[float] = opt(
        [1.0],
        "input scales (reference: 0.5 .. 2.0 in 0.25 steps); a scale that runs out of GPU memory is skipped and "
        "reported",
        min=0.05,
    )


@dataclass
class PseudoLabelConfig:
    """A pseudo-labelling experiment (``config/pseudo/*.yaml``)."""

    save_dir: str = opt("checkpoints", "folder holding the teacher run")
    experiment: str = opt("", "output folder name under labels_root; required")
    labels_root: str = opt(
        "datasets/generated_labels",
        "output root: <labels_root>/<experiment>/ with priors, <labels_root>/<experiment>/no_priors/ without",
    )
    teacher: TeacherSourceCfg = field(default_factory=TeacherSourceCfg, metadata={"doc": "teacher"})
    dataset_path: str = opt(
        "", "the extra dataset's folder (prepared layout: <split>.txt, data/<clip>/{origin,mask}/); required"
    )
    generate_stand_in: bool = opt(
        False,
        "make the synthetic coarse-taxonomy stand-in at dataset_path when it is missing (python -m "
        "data.synthetic.coarse, with its default parameters)",
    )
    labels_csv: str | None = opt(
        None, "the extra dataset's labels.csv (Cityscapes columns name, id, trainId, hasInstances); null = "
        "<dataset_path>/labels.csv"
    )  # fmt: skip
    master_labels: str = opt(
        "master_labels_synthetic",
        "the mapping CSV <dataset_path>/lists/<master_labels>.csv (other_methods.md 2.2; README 'Label-space KD')",
    )
    mapping_csv: str | None = opt(None, "a mapping CSV path instead of the master_labels one")
    splits: list[str] = opt(
        ["train"], "splits of the extra dataset whose labelled frames are pseudo-labelled"
    )
    use_priors: bool = opt(
        True,
        "constrain each pixel to the master classes its extra label allows (GT-corrected pseudo-labels); false = "
        "the teacher's plain argmax",
    )
    tta: TTACfg = field(default_factory=TTACfg, metadata={"doc": "test-time augmentation"})
    save_soft: bool = opt(
        False,
        "also write the corrected distribution S*C/sum(S*C) per frame (soft/<clip>/<stem>.npz, float16, [C,H,W]) "
        "as a soft target for KL training",
    )
    reference_path: str | None = opt(
        None,
        "a prepared dataset with the same clips whose masks are true labels in the master taxonomy (the synthetic "
        "stand-in's hidden_fine): the pseudo-labels are scored against it",
    )
    previews: int = opt(
        8, "preview panels written to <out>/preview/ (image, extra label, pseudo-label)", min=0
    )
    batch_size: int = opt(4, "frames per teacher forward pass", min=1)
    num_workers: int = opt(2, "data-loader worker processes", min=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when available, else cpu")

    def check(self) -> None:
        """The keys that have no usable default (the schema's defaults must build, for docs and comparisons)."""
        for key in ("experiment", "dataset_path"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required; set it in the config or as {key}=...")
        t = self.teacher
        if (t.run is None) == (t.hf_folder is None):
            raise ConfigError(
                "teacher: set exactly one of teacher.run (a tcseg image run) and teacher.hf_folder"
            )
        if t.hf_folder is not None and t.input_size is None:
            raise ConfigError("teacher.input_size: required with teacher.hf_folder, e.g. [512, 1024]")
