"""The online-distillation config (``config/online/*.yaml``, ``python -m training.online.run CONFIG``).

A student learns a long video stream from a teacher's pseudo-labels, window by window, and is scored on the frames
that come next before it trains on them (``other_methods.md`` §3.2). Key names follow the reference's flags
(``--datasetsize`` is ``dataset_size``, ...); ``training/online/run.py`` maps every reference flag onto its key.
The chosen buffer, trainer and student each read their own keys of ``buffer_cfg``, ``trainer_cfg`` and
``student_cfg``; setting a key that the chosen one does not read is an error (it would be silently ignored).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from config.errors import ConfigError
from config.fields import opt
from config.image_sections import ModelCfg


@dataclass
class BufferCfg:
    """`buffer_cfg`: parameters of the replay buffer (each line names the buffers that read it)."""

    capacity: int | None = opt(
        None, "uniform, prioritized: frames stored, all trained on every window; null = dataset_size", min=1
    )
    alpha: float = opt(
        0.5, "prioritized: eviction probability proportional to (1/loss)^alpha (--alpha)", min=0
    )
    window: int | None = opt(
        None,
        "er, efifo, mir: the stream window trained on, in teacher frames; null = student_subsample",
        min=1,
    )
    store_capacity: int = opt(250, "er, efifo, mir: frames the replay store keeps (--er-capacity)", min=1)
    replay_per_batch: int | None = opt(
        None,
        "er, efifo: store frames added to each batch; null = as many as make a window's epoch about dataset_size "
        "frames, like fifo (the reference draws dataset_size - student_subsample per window)",
        min=0,
    )
    candidates: int = opt(
        150, "mir: random store frames whose interference is measured per batch (-C)", min=1
    )
    k: int | None = opt(
        None,
        "mir: the most interfered candidates added to each batch (-k); null = as replay_per_batch",
        min=0,
    )
    lr: float = opt(0.01, "mir: learning rate of the virtual SGD step that measures interference", min=0)


@dataclass
class TrainerCfg:
    """`trainer_cfg`: parameters of the continual-learning regulariser (each line names the trainers that read it)."""

    alpha: float = opt(0.5, "lwf: weight of the KL to the frozen previous student (--alpha)", min=0)
    temperature: float = opt(2.0, "lwf: softmax temperature of both distributions (--temperature)", min=0)
    reduction: Literal["pixel_mean", "batchmean"] = opt(
        "pixel_mean",
        "lwf: KL averaged over pixels, or summed over pixels / B (the reference's batchmean; grows with H x W)",
    )
    reg: float = opt(1.0, "mas: weight of the importance-weighted parameter penalty (--reg)", min=0)
    decay: float = opt(0.1, "mas: EMA decay of the importance weights, in [0, 1] (--decay)", min=0)
    warmup: int = opt(
        10, "lwf, mas: trained windows before the first snapshot / importance update (--warmup)", min=0
    )
    update_freq: int = opt(1, "lwf, mas: trained windows between two updates (--update-freq)", min=1)


@dataclass
class StudentCfg:
    """`student_cfg`: parameters of the student network (each line names the students that read it)."""

    bn: Literal["batch_stats", "running_stats"] = opt(
        "batch_stats",
        "tinynet: BatchNorm with batch statistics in evaluation too (the reference; scores depend on batch_size) "
        "or running statistics",
    )
    upsampling: Literal["bilinear", "nearest"] = opt(
        "bilinear", "tinynet: mode of the head's x4 and x2 upsamplings"
    )
    width: int = opt(
        64, "tinynet: channel width (64 in the reference, about 0.83 M parameters at 19 classes)", min=1
    )
    model_cfg: ModelCfg | None = field(
        default=None,
        metadata={"doc": "segmentor: any tcseg image model as the student (null = the defaults)"},
    )
    load_backbone_weights: bool = opt(
        False,
        "segmentor: load model_cfg.pretrained_backbone (the reference student starts from random weights)",
    )


# key -> the choices that read it; a key set to another value than its default under another choice is an error
_BUFFER_KEYS = {"capacity": ("uniform", "prioritized"), "alpha": ("prioritized",), "window": ("er", "efifo", "mir"),
                "store_capacity": ("er", "efifo", "mir"), "replay_per_batch": ("er", "efifo"),
                "candidates": ("mir",), "k": ("mir",), "lr": ("mir",)}  # fmt: skip
_TRAINER_KEYS = {"alpha": ("lwf",), "temperature": ("lwf",), "reduction": ("lwf",), "reg": ("mas",),
                 "decay": ("mas",), "warmup": ("lwf", "mas"), "update_freq": ("lwf", "mas")}  # fmt: skip
_STUDENT_KEYS = {"bn": ("tinynet",), "upsampling": ("tinynet",), "width": ("tinynet",),
                 "model_cfg": ("segmentor",), "load_backbone_weights": ("segmentor",)}  # fmt: skip


def _unused(
    section: Any, name: str, chosen: str, readers: dict[str, tuple[str, ...]], choice_key: str
) -> None:
    """Refuse a key of ``section`` set away from its default when the chosen buffer/trainer/student ignores it."""
    for f in dataclasses.fields(section):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if getattr(section, f.name) != default and chosen not in readers[f.name]:
            raise ConfigError(f"{name}.{f.name}: read by {choice_key} {' or '.join(readers[f.name])} only, but "
                              f"{choice_key} is '{chosen}'; remove it or change {choice_key}")  # fmt: skip


@dataclass
class OnlineConfig:
    """An online-distillation experiment (``config/online/*.yaml``)."""

    dataset: str = opt("", "stream folder: videos/*.mp4 (natural order = stream order) + pseudo_groundtruth_seg/ (--dataset)")  # fmt: skip
    teacher: str = opt("", "pseudo-GT folder of pseudo_groundtruth_seg/ used as training targets (--teacher)")
    groundtruth: str | None = opt(
        None,
        "pseudo-GT folder the student is scored against, performance.log (--groundtruth); null = teacher",
    )
    also_score_against: list[str] | None = opt(
        None,
        "more label folders to score against, each in performance_<folder>.log; null = [gd] when the dataset has a "
        "gd folder (the true labels) with the teacher's classes; [] = none",
    )
    teacher_subsample: int = opt(
        75, "s_T: the teacher labelled every s_T-th frame (--teachersubsample)", min=1
    )
    dataset_size: int = opt(67, "N: fifo training window, in teacher frames (--datasetsize)", min=1)
    testing_size: int = opt(20, "M: teacher frames tested after each window (--testingsetsize)", min=1)
    student_subsample: int = opt(20, "s_S: window step, in teacher frames (--studentsubsample)", min=1)
    sequence_length: int = opt(20, "L: BWT/FWT windows sit L * s_S teacher frames before/after (--sequence-length)", min=0)  # fmt: skip
    batch_size: int = opt(8, "B: training and evaluation batch (--batchsize); batch_stats scores depend on it", min=1)  # fmt: skip
    learning_rate: float = opt(1.0e-4, "Adam learning rate (--learningrate)", min=0)
    num_classes: int | None = opt(
        None,
        "C (--numclasses); null = the teacher folder's manifest, else the stream's stream_meta.json",
        min=1,
    )
    start: int | None = opt(None, "first video of the naturally sorted list (--start); null = 0")
    stop: int | None = opt(None, "end of the video slice, exclusive (--stop); null = all")
    input_size: list[int] | None = opt(
        None, "(H, W) frames are resized to for the student; null = the frame size. Scored at the label size",
        length=2, min=8,
    )  # fmt: skip
    first_window: Literal["untrained", "skip"] = opt(
        "untrained",
        "the first window trains on nothing: score it with the untrained student (the reference) or skip it "
        "(no row, also in final.log)",
    )
    buffer: Literal["fifo", "uniform", "prioritized", "er", "efifo", "mir"] = opt(
        "fifo", "replay buffer (--onlinedataset); fifo = the reference protocol"
    )
    buffer_cfg: BufferCfg = field(default_factory=BufferCfg, metadata={"doc": "replay buffer"})
    trainer: Literal["none", "lwf", "mas"] = opt(
        "none", "continual-learning regulariser (--trainer); none = plain CE"
    )
    trainer_cfg: TrainerCfg = field(default_factory=TrainerCfg, metadata={"doc": "regulariser"})
    student: Literal["tinynet", "segmentor"] = opt(
        "tinynet", "student network: the reference TinyNet, or any tcseg image model (student_cfg.model_cfg)"
    )
    student_cfg: StudentCfg = field(default_factory=StudentCfg, metadata={"doc": "student"})
    save: str = opt("checkpoints/online", "output root (--save): <save>/<subfolder>/experiment_<k>/")
    subfolder: str | None = opt(None, "folder under save (--subfolder); null = none")
    dump_masks: bool = opt(
        False, "write the student's masks of every tested frame (npz, key seg) in the experiment"
    )
    frame_cache: Literal["auto", "ram", "disk"] = opt(
        "auto",
        "decoded teacher frames and labels: in RAM, or in a file of the experiment deleted at the end; auto = RAM "
        "up to cache_limit_gb",
    )
    cache_limit_gb: float = opt(4.0, "frame_cache auto: the most GB of frames and labels kept in RAM", min=0)
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when available, else cpu (--device)")
    threads: int | None = opt(
        None,
        "torch CPU threads (intra-op); null = torch's default. 1 avoids stalls on a busy shared CPU",
        min=1,
    )
    seed: int = opt(0, "seed of the student's initialisation, the buffers' draws and dropout")
    num_workers: int = opt(
        0, "reference flag (--numworkers), recorded only: frames are decoded once, sequentially, in this process",
        min=0,
    )  # fmt: skip

    def __post_init__(self) -> None:
        _unused(self.buffer_cfg, "buffer_cfg", self.buffer, _BUFFER_KEYS, "buffer")
        _unused(self.trainer_cfg, "trainer_cfg", self.trainer, _TRAINER_KEYS, "trainer")
        _unused(self.student_cfg, "student_cfg", self.student, _STUDENT_KEYS, "student")
        if self.trainer_cfg.decay > 1:
            raise ConfigError(f"trainer_cfg.decay: must be in [0, 1], got {self.trainer_cfg.decay}")

    def check(self) -> None:
        """The keys that have no usable default (the schema's defaults must build, for docs and comparisons)."""
        for key, flag in (("dataset", "--dataset"), ("teacher", "--teacher")):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required; set it in the config, as {key}=... or with {flag}")

    @property
    def scored_folder(self) -> str:
        """The folder of ``performance.log``: ``groundtruth``, else the teacher's."""
        return self.groundtruth or self.teacher


__all__ = ["BufferCfg", "OnlineConfig", "StudentCfg", "TrainerCfg"]
