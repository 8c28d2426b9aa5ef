"""The typed config schema: one dataclass per section, every key with a type, a default and a one-line doc.

The section and key names are those of the SSP reference configs (``ssp.md`` §10), so reference YAML files load
as they are; keys tcseg adds are documented the same way. ``docs/configs.md`` is generated from this file
(``python -m config.docs --write``) and a test fails when it is stale.

Types allowed in the schema (the loader checks them): ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``
(an enum), ``list[int|float|str]``, ``X | None`` and nested section dataclasses. The sub-sections of
``video_model_cfg`` (helpers and methods) live in :mod:`config.video_sections`, ``model_cfg`` and its model ids
in :mod:`config.image_sections`, the field helper ``opt`` in :mod:`config.fields`; all are re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from config.data_sections import DataCfg
from config.errors import ConfigError
from config.fields import opt
from config.image_sections import (
    HIERA_SIZES,
    SEGFORMER_IDS,
    UPERNET_CONVNEXT_IDS,
    UPERNET_SWIN_IDS,
    ModelCfg,
)
from config.online_sections import OnlineConfig
from config.pseudo_sections import PseudoLabelConfig
from config.semi_sections import FCLCfg, PairFlowCfg, SemiCfg
from config.video_sections import (
    PLANNED_VIDEO_METHODS,
    DFFCfg,
    FlowCfg,
    KDConsistencyCfg,
    KeyframeCfg,
    NetWarpCfg,
    RegistrationCfg,
    TCBCfg,
    TCLossCfg,
)

# Re-exported: code imports every section from here.
__all__ = [
    "KINDS",
    "PLANNED_VIDEO_METHODS",
    "DFFCfg",
    "DataCfg",
    "FCLCfg",
    "FlowCfg",
    "HIERA_SIZES",
    "ImageConfig",
    "ImageModelCfg",
    "KDConsistencyCfg",
    "KeyframeCfg",
    "LossCfg",
    "ModelCfg",
    "NetWarpCfg",
    "OptimCfg",
    "PairFlowCfg",
    "RegistrationCfg",
    "RunConfig",
    "SEGFORMER_IDS",
    "SemiCfg",
    "TCBCfg",
    "TCLossCfg",
    "TrainingCfg",
    "UPERNET_CONVNEXT_IDS",
    "UPERNET_SWIN_IDS",
    "VideoConfig",
    "VideoModelCfg",
    "opt",
]


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
    channels_last: Literal["auto", True, False] = opt(
        "auto",
        "train in the channels_last memory format (model and image batches); auto = on (measured faster on CUDA "
        "and on the CPU)",
    )
    compile: bool = opt(
        False, "torch.compile the model for the training forward (an error where unsupported)"
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
    selection_metric: Literal["miou", "miou_zero", "fitness"] = opt(
        "miou",
        "validation score that picks best.pth: miou (NaN-excluding mean over present classes), miou_zero (absent "
        "classes count 0), fitness = 0.8 miou_zero + 0.2 pixel accuracy (data-priors)",
    )

    def __post_init__(self) -> None:
        # the Literal check lets 1 and 0 through: they equal True and False
        if not isinstance(self.channels_last, bool | str):
            raise ConfigError(
                f"training_cfg.channels_last: '{self.channels_last}' is not one of auto, true, false"
            )
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
    ce_reduction: Literal["mean", "sum"] | None = opt(
        None,
        "cross-entropy over the labelled pixels: mean (null, the default) or sum (the classic FCN setup, with lr "
        "~1e-10; its mean equivalent multiplies lr by the labelled pixels per batch)",
    )
    kl_reduction: Literal["batchmean_reference", "mean_per_pixel"] = opt(
        "batchmean_reference", "KL reduction: sum over K x H x W / B (reference) or additionally / (H x W)"
    )


@dataclass
class ImageModelCfg:
    """`image_model_cfg`: the trained image run a video model starts from (video configs only)."""

    image_save_dir: str = opt("checkpoints", "folder holding the image run")
    checkpoint_folder: str = opt("", "optional sub-folder of image_save_dir")
    checkpoint_name: str = opt("", "image run name or path (a trained run, or an untrained_* run); required")
    best_model: bool = opt(False, "start from the run's best.pth instead of last.pth")


@dataclass
class VideoModelCfg:
    """`video_model_cfg`: the video model and its temporal loss.

    The top-level keys are SSP's (the reference's names); every other method has its own section (``dff``, ...),
    which may only be set when ``model_name`` is that method. The reference writes those methods' keys flat;
    :attr:`ALIASES` lists these spellings, which the loader moves into the chosen method's section.
    """

    # Reference spelling (flat key) -> key of the method section of model_name (ssp.md 10.5).
    ALIASES: ClassVar[dict[str, str]] = {
        "train_flow": "train_flow",
        "flow_iters": "flow_iters",
        "k_interval": "k_interval",
        "flow_mode": "flow_mode",
        "tcb_module": "module",
    }

    model_name: Literal["base", "dff2", "per_frame", "netwarp", "tcb", "keyframe"] = opt(
        "base",
        "base = SSP (semantic similarity propagation); dff2 = DFF; per_frame = the image model per frame; "
        "netwarp = NetWarp; tcb = TCB (an OCR or PPM temporal context block, see video_model_cfg.tcb); keyframe = "
        "keyframes + optical-flow propagation (video_model_cfg.keyframe)",
        registry="video model",
        registry_extra=tuple(PLANNED_VIDEO_METHODS),
    )
    const_loss_lb: float = opt(
        0.0, "lambda, weight of the temporal-consistency loss (SSP configs: 0.5)", min=0
    )
    kd_consistent_labels: bool = opt(True, "KD: make teacher logits of t-1 and t flow-consistent (KD-SSP)")
    last_out_loss_lb: float = opt(
        0.0, "KD-SSP: weight mu of the KL of frame t-1's raw image prediction to its teacher target", min=0
    )
    pred_mixing_op: Literal["id", "conv"] = opt(
        "id", "transform of (warped past, current) logits before fusion", registry="prediction mixing op"
    )
    sim_op: Literal["conv", "convbase", "cossim", "constant", "reuse", "avg"] = opt(
        "conv",
        "similarity s: conv net, cosine, s=0 (constant), s=1 (reuse), sigmoid of one learnt scalar (avg)",
        registry="similarity op",
    )
    upsample_before_mixing: bool = opt(
        True, "warp and fuse full-size logits (else at stride 4, then upsample)"
    )
    upsampling: Literal["bicubic", "bilinear", "nearest"] = opt("bilinear", "interpolation of logits")
    features_interp_mode: Literal["bilinear", "nearest"] = opt("bilinear", "sampling when warping features")
    k_registrator_model: Literal["disk", "orb", "sift", "akaze", "identity", "gt"] = opt(
        "disk",
        "homography provider of the model: streaming, and training unless data_cfg.opencv_homos (gt = the "
        "synthetic set's true homographies)",
        registry="registration provider",
    )
    low_scale_homo: bool = opt(False, "legacy reference switch (inconsistent scaling); must stay false")
    n_mixing_layers: int = opt(1, "layers of the conv mixing op", min=1)
    window_size: int | None = opt(None, "legacy mixer window (attention mixers are not offered)")
    freeze_image_model: bool = opt(False, "train the fusion layers only (the image network stays fixed)")
    registration: RegistrationCfg = field(default_factory=RegistrationCfg, metadata={"doc": "registration"})
    flow: FlowCfg = field(default_factory=FlowCfg, metadata={"doc": "flow for the temporal loss"})
    tc_loss: TCLossCfg = field(default_factory=TCLossCfg, metadata={"doc": "temporal-consistency loss"})
    kd_consistency: KDConsistencyCfg = field(
        default_factory=KDConsistencyCfg, metadata={"doc": "KD-SSP: flow-consistent teacher targets"}
    )
    dff: DFFCfg | None = field(
        default=None, metadata={"doc": "DFF settings (model_name: dff2)", "method": "dff2"}
    )
    netwarp: NetWarpCfg | None = field(
        default=None, metadata={"doc": "NetWarp settings (model_name: netwarp)", "method": "netwarp"}
    )
    tcb: TCBCfg | None = field(
        default=None, metadata={"doc": "TCB settings (model_name: tcb)", "method": "tcb"}
    )
    keyframe: KeyframeCfg | None = field(
        default=None,
        metadata={"doc": "keyframe + flow propagation settings (model_name: keyframe)", "method": "keyframe"},
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            method = f.metadata.get("method")
            if method is not None and getattr(self, f.name) is not None and self.model_name != method:
                raise ConfigError(
                    f"video_model_cfg.{f.name}: this section configures model_name '{method}', but model_name is "
                    f"'{self.model_name}'; remove the section or set model_name: {method}"
                )


@dataclass
class RunConfig:
    """What image and video experiments share: where runs go, how they start, data, loop, optimizer and loss."""

    save_dir: str = opt("checkpoints", "output root for run folders")
    pretrained_checkpoint: str | None = opt(
        None, "initialise weights from a run (name or path) or a state-dict file"
    )
    resume_training: str | None = opt(None, "run folder (name or path) to resume; its stored config is used")
    data_cfg: DataCfg = field(default_factory=DataCfg, metadata={"doc": "dataset"})
    training_cfg: TrainingCfg = field(default_factory=TrainingCfg, metadata={"doc": "training loop"})
    optim_cfg: OptimCfg = field(default_factory=OptimCfg, metadata={"doc": "optimizer and schedule"})
    loss_cfg: LossCfg = field(default_factory=LossCfg, metadata={"doc": "loss"})


@dataclass
class ImageConfig(RunConfig):
    """An image-model experiment (``config/image/*.yaml``)."""

    pretrained_checkpoint: str | None = opt(
        None, "initialise weights from a run (name or path, best.pth else last.pth) or a state-dict file"
    )
    no_training: bool = opt(False, "write an epoch-0 checkpoint of the freshly built model and stop")
    model_cfg: ModelCfg = field(default_factory=ModelCfg, metadata={"doc": "image model"})
    semi_cfg: SemiCfg | None = field(
        default=None, metadata={"doc": "semi-supervised training on unlabelled frames (null = labels only)"}
    )


@dataclass
class VideoConfig(RunConfig):
    """A video-model experiment (``config/video/*.yaml``)."""

    pretrained_checkpoint: str | None = opt(
        None, "initialise the whole video model from a video run (name or path) or a state-dict file"
    )
    image_model_cfg: ImageModelCfg = field(default_factory=ImageModelCfg, metadata={"doc": "image run"})
    video_model_cfg: VideoModelCfg = field(default_factory=VideoModelCfg, metadata={"doc": "video model"})

    @property
    def loader_registration_name(self) -> str | None:
        """The provider the data loader registers training pairs with: ``data_cfg.opencv_model_type`` when
        ``data_cfg.opencv_homos`` (the reference's key), else None (the model's ``k_registrator_model`` does).
        ``gt`` (the synthetic set's true homographies) is served by the dataset whatever opencv_homos says."""
        if self.data_cfg.opencv_homos and self.video_model_cfg.k_registrator_model != "gt":
            return self.data_cfg.opencv_model_type
        return None


# Config kinds: the folder of their YAML files and their schema.
KINDS: dict[str, type] = {
    "image": ImageConfig,
    "video": VideoConfig,
    "pseudo": PseudoLabelConfig,
    "online": OnlineConfig,
}
