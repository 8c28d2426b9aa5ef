"""Sections of ``video_model_cfg`` besides its own keys: the helpers (registration, flow, temporal loss) and one
section per method other than SSP. Kept apart from :mod:`config.schema`, which imports and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.fields import opt


@dataclass
class RegistrationCfg:
    """`video_model_cfg.registration`: settings of the homography provider (``ssp.md`` §3.2)."""

    max_keypoints: int = opt(2048, "keypoints per frame (disk: 2048; sift/orb/akaze detector limit)", min=4)
    ratio: float = opt(0.8, "Lowe ratio test for nearest-neighbour matches (OpenCV providers)", min=0)
    estimator: Literal["ransac", "usac_magsac"] = opt(
        "ransac", "robust fit of the homography (OpenCV providers)"
    )
    threshold: float = opt(
        2.5, "inlier threshold: pixels for OpenCV; squared transfer error for disk (kornia semantics)", min=0
    )
    min_matches: int = opt(4, "fewer matches than this falls back to the identity (counted, reported)", min=4)
    input_norm: Literal["rgb01", "imagenet"] = opt(
        "rgb01", "what disk sees: RGB in [0,1] (correct) or ImageNet-normalised frames (reference defect)"
    )
    disk_weights: str = opt("base_checkpoints/depth-save.pth", "local DISK 'depth' weights (disk only)")
    lightglue_weights: str = opt(
        "base_checkpoints/disk_lightglue_v0-1_arxiv.pth", "local LightGlue-for-DISK weights (disk only)"
    )
    cache: bool = opt(True, "cache homographies of unaugmented frame pairs on disk (evaluation)")
    cache_dir: str = opt("datasets/.cache", "root of the registration and flow caches")
    scaling: Literal["reference", "centered"] = opt(
        "reference", "homography at stride s: S.H.S^-1 (reference) or with the half-pixel centre correction"
    )


@dataclass
class FlowCfg:
    """`video_model_cfg.flow`: the optical-flow provider of the temporal-consistency loss."""

    backend: Literal["raft_large", "raft_small", "dis", "farneback", "gt"] = opt(
        "raft_large", "flow provider; gt = the synthetic set's true flow", registry="flow provider"
    )
    weights: str | None = opt(
        None, "local RAFT weights; null = base_checkpoints/raft_large_C_T_V1-22a6c225.pth (or raft_small_...)"
    )
    iters: int = opt(20, "RAFT refinement iterations", min=1)
    input_norm: Literal["minus1_1", "imagenet"] = opt(
        "minus1_1", "RAFT input: [-1,1] as torchvision expects, or ImageNet-normalised (reference defect)"
    )
    pad: Literal["none", "replicate"] = opt("replicate", "pad frames to a multiple of 8 for RAFT")


@dataclass
class KDFlowCfg(FlowCfg):
    """`video_model_cfg.kd_consistency.flow`: as `flow`, with the reference's 15 RAFT iterations (``ssp.md`` §5.4)."""

    iters: int = opt(15, "RAFT refinement iterations", min=1)


@dataclass
class KDConsistencyCfg:
    """`video_model_cfg.kd_consistency`: flow-consistent teacher targets of KD-SSP (``ssp.md`` §5.4)."""

    mode: Literal["reference", "proper", "off"] = opt(
        "proper",
        "average the teacher logits of t-1 and t along the flow where visible: reference (both flows read at the "
        "same pixel, one mask for both frames), proper (backward flow read at the displaced position, a mask per "
        "frame, out-of-frame samples occluded) or off; kd_consistent_labels: false also means off",
    )
    flow: KDFlowCfg = field(
        default_factory=KDFlowCfg,
        metadata={"doc": "the frozen flow provider of the check (no gradient, outside the model and DDP)"},
    )


@dataclass
class TCLossCfg:
    """`video_model_cfg.tc_loss`: the temporal-consistency loss (``ssp.md`` §5.3)."""

    photometric: Literal["signed_sum", "abs_sum", "none"] = opt(
        "abs_sum",
        "weight M: exp(-|sum_c d_c|) on normalised frames (reference), exp(-alpha sum_c |d_c|) on [0,1], or 1",
    )
    alpha: float = opt(1.0, "sharpness of the abs_sum photometric weight", min=0)
    occlusion: Literal["none", "fwd_bwd"] = opt("none", "mask occluded pixels with a forward-backward check")
    space: Literal["logits", "probs"] = opt("logits", "compare logits (reference) or softmax probabilities")
    grid: Literal["reference", "exact"] = opt(
        "exact", "flow-warp grid: 2x/(W-1)-1 with align_corners=False (reference, half-pixel off) or exact"
    )


@dataclass
class FeatureFlowCfg:
    """The flow network a method warps its features with (DFF, NetWarp): shared keys of their sections."""

    flow: Literal["raft_large", "raft_small", "dis", "farneback", "gt"] = opt(
        "raft_large",
        "flow to the previous frame: a RAFT network (trainable, local weights) or a frozen provider",
        registry="flow provider",
    )
    flow_weights: str | None = opt(
        None, "local RAFT weights; null = base_checkpoints/raft_large_C_T_V1-22a6c225.pth (or raft_small_...)"
    )
    flow_iters: int = opt(8, "RAFT refinement iterations inside the model", min=1)
    flow_input_norm: Literal["minus1_1", "imagenet"] = opt(
        "minus1_1", "RAFT input: [-1,1] as torchvision expects, or ImageNet-normalised"
    )
    train_flow: bool = opt(
        True, "train the RAFT network with the segmentation loss (it is then saved with the model)"
    )
    flow_mode: Literal["bilinear", "nearest"] = opt(
        "bilinear", "sampling when warping features along the flow"
    )


@dataclass
class DFFCfg(FeatureFlowCfg):
    """`video_model_cfg.dff`: deep feature flow (``model_name: dff2``, ``ssp.md`` §4.1)."""

    k_interval: int = opt(8, "inference: frame i of a clip is a keyframe when i mod k_interval == 0", min=1)
    max_key_offset: int = opt(
        1,
        "training: the key frame is d frames before the labelled one, d drawn in [1, max] (reference: 1)",
        min=1,
    )


@dataclass
class NetWarpCfg(FeatureFlowCfg):
    """`video_model_cfg.netwarp`: NetWarp (``model_name: netwarp``, ``ssp.md`` §4.2).

    The FlowCNN and the per-level fusion weights need no setting: their sizes come from the image model.
    """


@dataclass
class KeyframeCfg:
    """`video_model_cfg.keyframe`: keyframes + optical-flow propagation (``model_name: keyframe``,
    ``other_methods.md`` §4). The image run is the frozen keyframe model (SwiftNet-R18 in the reference)."""

    interval: int = opt(
        2, "non-keyframes between keyframes (0 = the per-frame model); eval flag --interval", min=0
    )
    eval_scale: float = opt(
        0.75, "the keyframe model sees the frame resized by this; eval flag --eval-scale", min=0
    )
    key_full_scale_in_training: bool = opt(
        False, "reference train/test mismatch: the training keyframe is not downscaled by eval_scale"
    )
    resolution_div: int = opt(8, "propagation resolution P = input / resolution_div (reference: 8)", min=1)
    flow: Literal["light", "raft_large", "raft_small", "dis", "farneback", "gt"] = opt(
        "light", "flow between consecutive frames at P: the trainable light net, or a frozen provider"
    )
    flow_weights: str | None = opt(None, "providers: local RAFT weights (null = the default file)")
    flow_iters: int = opt(12, "providers: RAFT refinement iterations", min=1)
    flow_width: int = opt(32, "light: width of the flow net", min=1)
    flow_scale_div: float = opt(
        4.0, "logits move by flow / flow_scale_div pixels of P (reference constant)", min=0
    )
    refine: Literal["gsv", "none"] = opt("gsv", "refinement of the warped logits: GSV filtering or none")
    gsv_width: int = opt(32, "GSV: base width of the intra net and the guide net (reference 32)", min=1)
    use_edge: bool = opt(True, "GSV: feed the boundary map of the warped labels to the guide net")
    train_ideal_delay: bool = opt(False, "GSV: train the one-pixel shift filters")
    train_steps: list[int] = opt(
        [1, 2], "training: the keyframe is l frames before the labelled one, every l"
    )
    guide_lr: float = opt(2.0e-2, "learning rate of the guide net (intra net: training_cfg.lr)", min=0)
    flow_lr: float = opt(2.0e-2, "learning rate of the light flow net", min=0)
    ce_weight: float = opt(10.0, "weight of the class-weighted cross-entropy (reference param_ce)", min=0)
    kd_weight: float = opt(
        10.0,
        "weight of the KL to the per-frame model on the labelled frame (reference param_ce_distil)",
        min=0,
    )


@dataclass
class TCBCfg:
    """`video_model_cfg.tcb`: temporal context blocks (``model_name: tcb``, ``ssp.md`` §4.3-4.4)."""

    module: Literal["ocr", "ppm"] = opt(
        "ocr",
        "context block on the stride-32 maps of t and 3 past frames; ppm builds PPM (the reference built OCR for both)",
    )
    ppm_weight_order: Literal["aligned", "reference"] = opt(
        "aligned",
        "ppm: each frame weight multiplies its own frame, or the reference's shifted order (defect)",
    )
    ppm_reduce: Literal["mean", "sum"] = opt(
        "mean", "ppm: how the weighted pooled maps of the frames combine"
    )
    ocr_channels: int | None = opt(None, "ocr: width of the block's features; null = C4 (reference)", min=1)
    ocr_key_channels: int | None = opt(
        None, "ocr: width of the attention keys; null = half of ocr_channels (reference)", min=1
    )
    ppm_channels: int = opt(
        512, "ppm: width of each pooled branch and of the bottleneck (reference: 512)", min=1
    )


# Model names the reference has and tcseg accepts in configs, whose models are not available yet.
PLANNED_VIDEO_METHODS: dict[str, str] = {}
