"""Train an image segmentation model: ``python -m training.train_image CONFIG [key=value ...]``.

CONFIG is a bare name in ``config/image/`` (``base_uavid`` or ``base_uavid.yaml``) or a path. Overrides use
``section.key=value``. Under ``torchrun --nproc_per_node=N`` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text
from config.loader import to_dict
from config.schema import ImageConfig
from data.augment import ImageTrainAugment
from data.catalog import get_dataset_info
from data.compound import check_compound, compound_train_set
from data.fractions import (
    HELD_OUT_NAME,
    LIST_NAME,
    FrameKey,
    held_out_subset,
    labelled_keys,
    labelled_subset,
    list_text,
)
from data.frames import open_split
from data.image_dataset import LabelledFrames
from eval.evaluate import amp_dtype, predict, validate
from models.build import build_image_model
from models.runs import architecture_of
from training import distributed as D
from training.checkpoint import load_pretrained_checkpoint, save_checkpoint
from training.loop import fit
from training.losses import build_segmentation_loss
from training.semi import build_side_stream
from training.setup import RunSetup, clean_up_failed_start, start_run
from training.steps import image_step
from training.steps.kd import KLLoss, image_kd_step
from training.teacher import TeacherKL, build_teacher, kd_enabled, validation_teacher


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m training.train_image", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/image/ or a path to a YAML file")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training_cfg.lr=1.0e-4")
    return p


def main(argv: list[str] | None = None) -> Path:
    """Train; return the run folder (a new run that fails before its first checkpoint is removed again)."""
    args = build_parser().parse_args(argv)
    with D.end_together():  # under torchrun, a user error ends every rank with exit code 2, printed once
        setup = start_run(args.config, args.overrides, "image")
        with clean_up_failed_start(setup):
            return train(setup)


def label_splits(
    cfg: ImageConfig, clips: list, run: Path, distilled: bool
) -> tuple[list[FrameKey] | None, list[FrameKey] | None]:
    """The training frames that keep their labels (None: all) and the held-out frames best.pth is selected on
    (None: val), each listed in the run folder."""
    dcfg = cfg.data_cfg
    keep = labelled_subset(clips, dcfg.labeled_fraction, dcfg.split_seed, dcfg.labeled_split_file)
    held = held_out_subset(clips, dcfg.held_out_fraction, dcfg.split_seed, keep)
    if (keep is not None or held is not None) and distilled:
        raise ConfigError("data_cfg.labeled_fraction / labeled_split_file / held_out_fraction: a teacher's targets "
                          "need no labels; unset them or the teacher")  # fmt: skip
    everything = labelled_keys(clips)
    total = len(everything)
    if held is not None and keep is None:  # all labels but the held-out ones
        keep = sorted(set(everything) - set(held))
    if keep is not None and D.is_main():
        how = (f"split file {dcfg.labeled_split_file}" if dcfg.labeled_split_file else
               f"labeled_fraction {dcfg.labeled_fraction}, split_seed {dcfg.split_seed}")  # fmt: skip
        if dcfg.labeled_fraction is None and dcfg.labeled_split_file is None:
            how = f"all but the held-out frames (held_out_fraction {dcfg.held_out_fraction})"
        atomic_write_text(run / LIST_NAME, list_text(keep, total, how))
        print(f"== {len(keep)} labelled training frames ({how}), listed in {run / LIST_NAME}")
    if held is not None and D.is_main():
        how = f"held_out_fraction {dcfg.held_out_fraction}, split_seed {dcfg.split_seed}; best.pth is selected on them"
        atomic_write_text(run / HELD_OUT_NAME, list_text(held, total, how))
        print(f"== {len(held)} held-out training frames select best.pth, listed in {run / HELD_OUT_NAME}")
    return keep, held


def train(setup: RunSetup) -> Path:
    """The training of a started run."""
    cfg, device, run = setup.cfg, setup.device, setup.run
    dcfg, tcfg = cfg.data_cfg, cfg.training_cfg
    info = get_dataset_info(dcfg.dataset)
    size = tuple(dcfg.crop_size)

    model = build_image_model(cfg.model_cfg, info.num_classes, load_backbone_weights=setup.resume is None)
    model.check_input_size(*size)
    if cfg.pretrained_checkpoint and setup.resume is None:
        load_pretrained_checkpoint(model, cfg.pretrained_checkpoint, cfg.save_dir,
                                   architecture_of(to_dict(cfg), "image"))  # fmt: skip
    model.to(device)
    if cfg.no_training:
        if D.is_main():
            save_checkpoint(run / "last.pth", model, cfg, "image", epoch=0, step=0, finished=True, history=[])
            print(f"== no_training: wrote the untrained model to {run / 'last.pth'}")
        return run
    if dcfg.labeled_frames_per_vid is not None:
        raise ConfigError(
            "data_cfg.labeled_frames_per_vid: a legacy reference key that tcseg does not offer; remove it"
        )
    if dcfg.photometric != "mid_grey":
        # The reference's image pipeline (albumentations) has no photometric defect to reproduce (ssp.md 7.9).
        raise ConfigError(
            "data_cfg.photometric: reference applies to video training only (ssp.md 7.8); remove it"
        )
    if dcfg.pseudo_labels:  # what training on pseudo-labels cannot be combined with, before anything is built
        check_compound(cfg, distilled=kd_enabled(cfg))

    with D.main_first():
        root, _, train_clips = open_split(dcfg, "train", dcfg.min_vid_len)
        _, _, val_clips = open_split(dcfg, "val", dcfg.min_vid_len)
    teacher = build_teacher(cfg, info, device, with_previous=False)  # KD image baseline, else None
    keep, held = label_splits(cfg, train_clips, run, teacher is not None)
    augment = ImageTrainAugment(square_crop=dcfg.square_crop) if dcfg.data_augmentation else None
    train_set = LabelledFrames(train_clips, info, size, train=True, augment=augment, square_crop=dcfg.square_crop,
                               skip=dcfg.train_skip_frames, seed=tcfg.seed,
                               teacher=None if teacher is None else teacher.source,
                               labelled_only=None if keep is None else set(keep))  # fmt: skip
    if held is None:  # the reference's best-on-val: the evaluation split also picks best.pth
        val_set = LabelledFrames(
            val_clips, info, size, train=False, square_crop=dcfg.square_crop, skip=dcfg.val_skip_frames
        )
    else:
        val_set = LabelledFrames(train_clips, info, size, train=False, square_crop=dcfg.square_crop,
                                 labelled_only=set(held))  # fmt: skip
    side, semi_info = build_side_stream(cfg, info, train_clips, set(held or ()), device)
    if D.is_main():
        print(
            f"== {info.name} at {root}: {len(train_set)} training samples, {len(val_set)} validation samples"
        )
    datasets = None
    if (
        dcfg.pseudo_labels
    ):  # label-space KD: the source and the pseudo-labelled extra datasets, one training set
        train_set, datasets = compound_train_set(dcfg, info, train_set, verbose=D.is_main())
    # offline KD with a val dump beside the train dump: validation also logs the KL to the teacher
    val_teacher = validation_teacher(
        teacher, info, [(val_set.clips[r.clip], r.index) for r in val_set.samples]
    )
    val_kl = None if val_teacher is None else TeacherKL(KLLoss(cfg.loss_cfg))
    val_set.teacher = val_teacher

    if teacher is None:
        loss_fn = build_segmentation_loss(cfg.loss_cfg, info.num_classes).to(device)
        step_fn = lambda m, batch: image_step(m, batch, loss_fn, device)  # noqa: E731
    else:
        kl = KLLoss(cfg.loss_cfg)
        step_fn = lambda m, batch: image_kd_step(m, batch, teacher, kl, device)  # noqa: E731
    dtype = amp_dtype(tcfg.amp, device)

    def kl_infer(m: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images = batch["image"].to(device)
        logits = predict(m, images, dtype)
        val_kl.add(logits, batch.get("teacher_logits"))
        return images, logits, batch["label"].to(device)

    final = fit(
        model=model, cfg=cfg, kind="image", info=info, run=run, train_set=train_set, device=device,
        resume=setup.resume,
        step_fn=step_fn, side=side,
        run_info={"model_selection": "held_out" if held else "best_on_val (reference compatibility)",
                  **({} if teacher is None else {"teacher": teacher.describe()}),
                  **({} if semi_info is None else {"semi": semi_info}),
                  **({} if datasets is None else {"datasets": datasets})},
        validate_fn=lambda m: (*validate(m, val_set, info, device, batch_size=tcfg.batch_size,
                                         num_workers=min(tcfg.num_workers, 2), amp_dtype=dtype,
                                         max_samples=tcfg.max_val_samples, vis_samples=tcfg.vis_samples,
                                         infer=None if val_kl is None else kl_infer),
                               *([] if val_kl is None else [val_kl.result()])),
    )  # fmt: skip
    if D.is_main():
        miou = final.get("val", {}).get("miou")
        print(f"== done: {run} (training-time val mIoU {miou})")
    D.cleanup()
    return run


if __name__ == "__main__":
    run_cli(main)
