"""The ``data_cfg`` section of image and video configs (re-exported by :mod:`config.schema`): which dataset, where
it is, how frames are read and augmented, and (label-space KD) the pseudo-labelled extra datasets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from config.errors import ConfigError
from config.fields import opt


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
    photometric: Literal["mid_grey", "reference"] = opt(
        "mid_grey",
        "video training photometry: contrast about mid-grey, brightness x255 (tcseg), or the reference's (ssp.md "
        "7.8: gain about 0, brightness +-0.2 grey levels = a no-op, order contrast, HSV, gamma)",
    )
    soft_labels: bool = opt(False, "targets are per-class maps (knowledge distillation: true with kldiv)")
    logit_distillation: bool = opt(
        False, "train on a teacher's logits (knowledge distillation: true with loss_cfg.loss_func kldiv)"
    )
    logits_folder: str | None = opt(
        None,
        "offline KD: the teacher's logits dump (python -m eval.vis.image TEACHER --save-logits), or the teacher run "
        "holding logits/train; null = <teacher_run>/logits/train",
    )
    teacher_mode: Literal["offline", "online"] = opt(
        "offline",
        "KD: read the teacher's logits from logits_folder (offline), or run the frozen teacher_run inside the "
        "training step (online; nothing on disk, teacher compute every step)",
    )
    teacher_run: str | None = opt(
        None, "KD: the teacher image run (name under save_dir, or a path); required for teacher_mode online"
    )
    min_vid_len: int = opt(0, "legacy: skip clips shorter than this many frames", min=0)
    labeled_frames_per_vid: int | None = opt(None, "legacy reference key; must stay null")
    labeled_fraction: float | None = opt(
        None,
        "image training: keep the labels of ceil(f * N) training frames drawn with split_seed; null = all",
        min=0,
    )
    split_seed: int = opt(
        0, "seed of the labeled_fraction draw (the same seed gives the same frames anywhere)"
    )
    labeled_split_file: str | None = opt(
        None, "image training: a file of <clip>/<frame stem> lines naming the frames that keep their labels"
    )
    held_out_fraction: float | None = opt(
        None,
        "image training: hold out ceil(f * N) training frames outside the labelled subset (drawn with split_seed) "
        "to select best.pth on; null = select on val (the reference's best-on-val, a compatibility mode)",
        min=0,
    )
    train_skip_frames: int | None = opt(
        None, "use training samples at clip indices 1, 1+k, 1+2k, ...; null = all", min=1
    )
    val_skip_frames: int = opt(
        1, "validation uses labelled frames whose clip index is a multiple of k", min=1
    )
    generate_if_missing: bool = opt(
        True, "synthetic only: generate the dataset at crop_size when it is missing"
    )
    adjacent_frames: list[int] = opt(
        [-1], "video: offsets of the frames fed with the current one (SSP: [-1]); never wrap around a clip"
    )
    edge_policy: Literal["drop", "repeat_first"] = opt(
        "drop",
        "video: a sample whose adjacent frame falls outside its clip is dropped, or uses the edge frame",
    )
    opencv_homos: bool = opt(
        False,
        "video training: the data loader registers the augmented pairs with opencv_model_type (CPU) instead of "
        "the model; streaming still uses k_registrator_model (gt: always the dataset's true homographies)",
    )
    opencv_model_type: Literal["sift", "akaze", "orb"] = opt(
        "sift",
        "video: the data loader's OpenCV registration when opencv_homos is true (reference files: akaze)",
    )
    pseudo_labels: list[str] | None = opt(
        None,
        "label-space KD: folders of teacher pseudo-labels of extra datasets (python -m eval.pseudo_label), trained "
        "on with the source's own labels; validation stays on the source val split",
    )
    dataset_weights: list[float] | None = opt(
        None,
        "sampling weight per training dataset, the source first then each pseudo_labels folder; null = every "
        "sample equally likely",
        min=0,
    )

    def __post_init__(self) -> None:
        if self.dataset_weights is None:
            return
        want = 1 + len(self.pseudo_labels or [])
        if len(self.dataset_weights) != want:
            raise ConfigError(
                f"data_cfg.dataset_weights: {len(self.dataset_weights)} weights for {want} training datasets (the "
                f"source and {want - 1} pseudo_labels folders); give one weight per dataset, the source first"
            )
        if min(self.dataset_weights) < 0 or not any(w > 0 for w in self.dataset_weights):
            raise ConfigError(
                f"data_cfg.dataset_weights: {self.dataset_weights}: weights must be >= 0 and at least one > 0"
            )
