"""Train a video model (SSP): ``python -m training.train_video CONFIG [key=value ...]``.

CONFIG is a bare name in ``config/video/`` (``ssp_uavid`` or ``ssp_uavid.yaml``) or a path. The image network is
rebuilt from the image run named in ``image_model_cfg`` and loaded strictly; training then runs the shared loop
(checkpoints, TensorBoard, resume, torchrun) on (t-1, t) samples with cross-entropy plus the flow-based
temporal-consistency loss. Frozen helpers (registration, the loss's optical flow) stay outside the model, its
checkpoint, its optimizer and DDP.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from config.errors import ConfigError, run_cli
from config.loader import save, to_dict
from data.augment import VideoTrainAugment
from data.catalog import get_dataset_info
from data.frames import ensure_dataset, read_split
from data.video_dataset import FramePairs
from eval.evaluate import validate
from models.build import build_video_model
from models.flow import build_flow
from models.registration import build_registration
from models.runs import image_run_of, load_image_model
from training import distributed as D
from training.loop import amp_dtype, fit
from training.losses import TemporalConsistencyLoss, build_segmentation_loss
from training.setup import start_run
from training.steps import video_step
from training.train_image import load_pretrained_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train_video", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/video/ or a path to a YAML file")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. video_model_cfg.const_loss_lb=0.2"
    )
    return p


def _check_supported(cfg: Any) -> None:
    dcfg, vcfg = cfg.data_cfg, cfg.video_model_cfg
    if dcfg.soft_labels or dcfg.logit_distillation or cfg.loss_cfg.loss_func != "crossentropy":
        raise ConfigError(
            "data_cfg.soft_labels / logit_distillation and loss_cfg.loss_func=kldiv (KD-SSP) are not supported "
            "yet; train SSP with labels (crossentropy)"
        )
    if dcfg.adjacent_frames != [-1]:
        raise ConfigError(
            f"data_cfg.adjacent_frames: SSP trains on (t-1, t) pairs; use [-1], got {dcfg.adjacent_frames}"
        )
    if vcfg.k_registrator_model == "disk" and dcfg.opencv_homos:
        raise ConfigError(
            "data_cfg.opencv_homos: disk registration runs in the model; set opencv_homos: false"
        )
    if vcfg.tc_loss.occlusion != "none" and vcfg.flow.backend == "gt" and vcfg.const_loss_lb > 0:
        raise ConfigError(
            "video_model_cfg.tc_loss.occlusion: the forward-backward check needs flow in both directions, "
            "which the gt flow of augmented samples does not give; use occlusion: none or another flow backend"
        )


def main(argv: list[str] | None = None) -> Path:
    """Train; return the run folder."""
    args = build_parser().parse_args(argv)
    setup = start_run(args.config, args.overrides, "video")
    cfg, device, run = setup.cfg, setup.device, setup.run
    dcfg, tcfg, vcfg = cfg.data_cfg, cfg.training_cfg, cfg.video_model_cfg
    _check_supported(cfg)
    info = get_dataset_info(dcfg.dataset)
    size = tuple(dcfg.crop_size)

    image_run = image_run_of(cfg.image_model_cfg)
    image_model, image_cfg, image_meta = load_image_model(image_run, best=cfg.image_model_cfg.best_model)
    if image_cfg.data_cfg.dataset != dcfg.dataset:
        raise ConfigError(
            f"image_model_cfg.checkpoint_name: {image_run} was trained on '{image_cfg.data_cfg.dataset}', this "
            f"config trains on '{dcfg.dataset}'; use an image run of the same dataset"
        )
    image_model.check_input_size(*size)
    in_loader = vcfg.k_registrator_model == "gt" or dcfg.opencv_homos
    registration = build_registration(vcfg.k_registrator_model, vcfg.registration)
    model = build_video_model(vcfg, image_model, registration).train()
    if cfg.pretrained_checkpoint and setup.resume is None:
        load_pretrained_checkpoint(model, cfg.pretrained_checkpoint, cfg.save_dir)
    model.to(device)
    if D.is_main():
        save(image_cfg, run / "image_config.yaml")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"== image model from {image_meta['path']} (epoch {image_meta.get('epoch')}); "
              f"{trainable / 1e6:.3f} M trainable parameters; registration '{vcfg.k_registrator_model}' "
              f"{'in the data loader' if in_loader else 'in the model'}")  # fmt: skip

    with D.main_first():
        root = ensure_dataset(dcfg.dataset, dcfg.path, size, dcfg.generate_if_missing)
    use_tc = vcfg.const_loss_lb > 0
    gt_flow = use_tc and vcfg.flow.backend == "gt"
    common = dict(offsets=dcfg.adjacent_frames, edge_policy=dcfg.edge_policy, square_crop=dcfg.square_crop,
                  gt_homographies=vcfg.k_registrator_model == "gt",
                  registration=registration if in_loader and vcfg.k_registrator_model != "gt" else None)  # fmt: skip
    augment = VideoTrainAugment(square_crop=dcfg.square_crop) if dcfg.data_augmentation else None
    train_set = FramePairs(read_split(root, "train", info, dcfg.min_vid_len), info, size, train=True,
                           augment=augment, skip=dcfg.train_skip_frames, seed=tcfg.seed, gt_flow=gt_flow, **common)  # fmt: skip
    val_set = FramePairs(
        read_split(root, "val", info, dcfg.min_vid_len),
        info,
        size,
        train=False,
        skip=dcfg.val_skip_frames,
        **common,
    )
    if D.is_main():
        print(f"== {info.name} at {root}: {len(train_set)} training pairs, {len(val_set)} validation pairs")

    flow_fn = None
    if use_tc and not gt_flow:
        f = vcfg.flow
        flow_fn = build_flow(f.backend, f.weights, f.iters, f.input_norm, f.pad, device=device)
    ce = build_segmentation_loss(cfg.loss_cfg, info.num_classes).to(device)
    tc_loss = TemporalConsistencyLoss(vcfg.tc_loss) if use_tc else None
    dtype = amp_dtype(tcfg.amp, device)

    def infer(m: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frames = batch["frames"].to(device)
        homs = batch.get("homographies")
        cur = int(batch["current"][0])
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fused = m(frames, None if homs is None else homs.to(device))["fused"][:, cur].float()
        return frames[:, cur], fused, batch["labels"][:, cur].to(device)

    final = fit(
        model=model, cfg=cfg, kind="video", info=info, run=run, train_set=train_set, device=device,
        resume=setup.resume,
        step_fn=lambda m, batch: video_step(m, batch, ce, device, tc_loss=tc_loss, tc_weight=vcfg.const_loss_lb,
                                            flow_fn=flow_fn, need_forward_flow=vcfg.tc_loss.occlusion != "none"),
        validate_fn=lambda m: validate(m, val_set, info, device, batch_size=tcfg.batch_size,
                                       num_workers=min(tcfg.num_workers, 2), amp_dtype=dtype, infer=infer,
                                       max_samples=tcfg.max_val_samples, vis_samples=tcfg.vis_samples),
        checkpoint_extra={"image_config": to_dict(image_cfg), "image_run": str(image_run)},
    )  # fmt: skip
    if D.is_main():
        miou = final.get("val", {}).get("miou")
        where = (
            f"identity fallbacks in the last epoch: {100 * final.get('train_registration_fallback', 0):.1f} %"
            if in_loader
            else f"registration {registration.stats()}"
        )
        print(f"== done: {run} (training-time val mIoU {miou}); {where}")
    D.cleanup()
    return run


if __name__ == "__main__":
    run_cli(main)
