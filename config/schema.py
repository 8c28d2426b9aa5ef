"""The typed config schema: one dataclass per section, every key with a type, a default and a one-line doc.

The section and key names are those of the SSP reference configs (``ssp.md`` §10), so reference YAML files load
as they are; keys tcseg adds are documented the same way. ``docs/configs.md`` is generated from this file
(``python -m config.docs --write``) and a test fails when it is stale.

Types allowed in the schema (the loader checks them): ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``
(an enum), ``list[int|float|str]``, ``X | None`` and nested section dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from config.errors import ConfigError


def opt(default: Any, doc: str, **meta: Any) -> Any:
    """A schema field: ``default`` (lists are copied per instance), a one-line ``doc`` and extra checks.

    Extra checks: ``length`` (exact list length), ``min`` (lower bound for numbers and list items).
    """
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass
class DataCfg:
    """`data_cfg`: which dataset, where it is, and how frames are read and augmented."""

    dataset: Literal["uavid", "ruralscapes", "cityscapes", "synthetic"] = opt(
        "uavid", "dataset descriptor (classes, colours, label conversion); see data/catalog.py"
    )
    path: str | None = opt(None, "dataset root; null = datasets/UAVid, datasets/ruralscapes, ... per dataset")
    crop_size: list[int] = opt(
        [736, 1280],
        "(H, W) every frame and label is resized to when read: the network input size",
        length=2,
        min=1,
    )
    square_crop: bool = opt(False, "training: random HxH crop; training-time validation: centre HxH crop")
    data_augmentation: bool = opt(
        True, "training augmentation (flip, geometry, photometry, noise; ssp.md 7.8/7.9)"
    )
    soft_labels: bool = opt(False, "targets are per-class maps (knowledge distillation; not available yet)")
    logit_distillation: bool = opt(
        False, "train on saved teacher logits (knowledge distillation; not available yet)"
    )
    logits_folder: str | None = opt(
        None, "folder of saved teacher logits (knowledge distillation; not available yet)"
    )
    min_vid_len: int = opt(0, "legacy: skip clips shorter than this many frames", min=0)
    labeled_frames_per_vid: int | None = opt(None, "legacy reference key; must stay null")
    train_skip_frames: int | None = opt(
        None, "use training samples at clip indices 1, 1+k, 1+2k, ...; null = all", min=1
    )
    val_skip_frames: int = opt(
        1, "validation uses labelled frames whose clip index is a multiple of k", min=1
    )
    generate_if_missing: bool = opt(
        True, "synthetic only: generate the dataset at crop_size when it is missing"
    )


@dataclass
class ModelCfg:
    """`model_cfg`: the image segmentation network (image configs only)."""

    model_architecture: Literal["hierasam_upernet", "upernet", "fcn8s", "swiftnet"] = opt(
        "hierasam_upernet",
        "hierasam_upernet = SAM2 Hiera (checkpoint_model) + UperNet; otherwise the head on model_cfg.backbone",
    )
    checkpoint_model: Literal["tiny", "small", "base_plus"] = opt(
        "small", "SAM2 Hiera size for hierasam_upernet; also fixes the UperNet width (128/256/512)"
    )
    backbone: str | None = opt(
        None, "backbone name for the other architectures (default: vgg16 for fcn8s, resnet18 otherwise)"
    )
    head_width: int | None = opt(
        None, "head channel width; null = the reference width for the backbone", min=1
    )
    pretrained_backbone: str | None = opt(
        None, "local backbone weights file (e.g. base_checkpoints/sam2_hiera_small.pt); null = random init"
    )
    upsampling: Literal["bicubic", "bilinear", "nearest"] = opt(
        "bicubic", "interpolation of the stride-4 logits to the input size"
    )
    frozen_encoder: bool = opt(False, "freeze the backbone (train the head only)")


@dataclass
class TrainingCfg:
    """`training_cfg`: the training loop."""

    batch_size: int = opt(4, "samples per optimizer step and process (video: pairs)", min=1)
    num_epochs: int = opt(250, "length of the LR schedule in epochs", min=1)
    early_stopping: int | None = opt(
        None,
        "epochs actually run (a fixed count, not patience; null = num_epochs); alias: epochs_to_run",
        min=0,
    )
    epochs_to_run: int | None = opt(
        None, "same as early_stopping (clearer name); set at most one of the two", min=0
    )
    num_workers: int = opt(4, "data-loader worker processes (0 = load in the main process)", min=0)
    lr: float = opt(2.5e-5, "peak learning rate", min=0)
    trained_layer: str | None = opt(
        None, "parameters whose name contains this get lr, the others secondary_lr"
    )
    secondary_lr: float = opt(1e-4, "learning rate of the other parameters when trained_layer is set", min=0)
    seed: int = opt(0, "seed of every random generator (recorded in the run)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto = cuda when available, else cpu")
    amp: Literal["auto", "none", "bf16", "fp16"] = opt(
        "auto", "autocast precision; auto = bf16 on CUDA, none on CPU"
    )
    grad_clip: float | None = opt(None, "clip the gradient norm to this value; null = no clipping", min=0)
    grad_accum_steps: int = opt(1, "micro-batches accumulated per optimizer step", min=1)
    val_interval: int = opt(1, "validate every k epochs (and always after the last one)", min=1)
    log_interval: int = opt(10, "log training scalars to TensorBoard every k steps", min=1)
    vis_samples: int = opt(4, "prediction overlays logged to TensorBoard at each validation", min=0)
    max_steps_per_epoch: int | None = opt(
        None, "cap on optimizer steps per epoch (quick runs); null = all", min=1
    )
    max_val_samples: int | None = opt(None, "cap on validation samples (quick runs); null = all", min=1)
    deterministic: bool = opt(False, "ask torch for deterministic algorithms (slower)")

    def __post_init__(self) -> None:
        if self.early_stopping is not None and self.epochs_to_run is not None:
            raise ConfigError(
                "training_cfg: set epochs_to_run or early_stopping, not both (they mean the same)"
            )

    @property
    def epochs(self) -> int:
        """Epochs actually run: ``epochs_to_run`` / ``early_stopping``, else the whole schedule."""
        chosen = self.epochs_to_run if self.epochs_to_run is not None else self.early_stopping
        return self.num_epochs if chosen is None else chosen


@dataclass
class OptimCfg:
    """`optim_cfg`: optimizer and learning-rate schedule (stepped per iteration)."""

    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = opt("adamw", "optimizer")
    scheduler: Literal["cosine", "constant", "poly"] = opt("cosine", "schedule after the linear warm-up")
    weight_decay: float = opt(0.05, "weight decay of every optimizer", min=0)
    momentum: float = opt(0.9, "momentum (sgd, rmsprop)", min=0)
    nesterov: bool = opt(False, "Nesterov momentum (sgd)")
    warmup_epochs: float = opt(2.0, "linear warm-up length in epochs (0 = none)", min=0)
    scheduler_power: float = opt(0.9, "exponent of the poly schedule", min=0)
    start_lr: float = opt(1e-4, "warm-up start, as a multiplier of lr", min=0)
    final_lr: float = opt(1e-4, "floor of the cosine/poly decay, as a multiplier of lr", min=0)


@dataclass
class LossCfg:
    """`loss_cfg`: the segmentation / distillation loss."""

    loss_func: Literal["crossentropy", "kldiv"] = opt("crossentropy", "main loss (kldiv needs soft targets)")
    class_weights: list[float] | None = opt(
        None, "per-class weights of the cross-entropy; null = uniform", min=0
    )
    softmax_on_target: bool = opt(False, "apply softmax(target / T) to soft targets")
    temperature: float = opt(1.0, "temperature T of the KL loss", min=0)
    kl_reduction: Literal["batchmean_reference", "mean_per_pixel"] = opt(
        "batchmean_reference", "KL reduction: sum over K x H x W / B (reference) or additionally / (H x W)"
    )


@dataclass
class ImageConfig:
    """An image-model experiment (``config/image/*.yaml``)."""

    save_dir: str = opt("checkpoints", "output root for run folders")
    pretrained_checkpoint: str | None = opt(
        None, "initialise weights from a run (name or path, best.pth else last.pth) or a state-dict file"
    )
    resume_training: str | None = opt(None, "run folder (name or path) to resume; its stored config is used")
    no_training: bool = opt(False, "write an epoch-0 checkpoint of the freshly built model and stop")
    data_cfg: DataCfg = field(default_factory=DataCfg, metadata={"doc": "dataset"})
    model_cfg: ModelCfg = field(default_factory=ModelCfg, metadata={"doc": "image model"})
    training_cfg: TrainingCfg = field(default_factory=TrainingCfg, metadata={"doc": "training loop"})
    optim_cfg: OptimCfg = field(default_factory=OptimCfg, metadata={"doc": "optimizer and schedule"})
    loss_cfg: LossCfg = field(default_factory=LossCfg, metadata={"doc": "loss"})


# Config kinds: the folder of their YAML files and their schema.
KINDS: dict[str, type] = {"image": ImageConfig}
