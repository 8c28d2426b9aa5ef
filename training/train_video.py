"""Train a video model: ``python -m training.train_video CONFIG [key=value ...]``.

CONFIG is a bare name in ``config/video/`` (``ssp_uavid`` or ``ssp_uavid.yaml``) or a path. The image network is
rebuilt from the image run named in ``image_model_cfg`` and loaded strictly; the method of
``video_model_cfg.model_name`` is built around it by its registered builder (which builds its own frozen helpers),
and the shared loop (checkpoints, TensorBoard, resume, torchrun) trains it with the method's training step. The
samples serve exactly what the model and its step declare they need (:class:`data.video_batch.DataNeeds`); this
file never asks which method or provider it is training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from config.cli import CliParser
from config.errors import ConfigError, run_cli
from config.loader import save, to_dict
from data.augment import VideoTrainAugment
from data.frames import open_split
from data.video_batch import VideoBatch, collate_video
from data.video_dataset import video_samples
from eval.evaluate import amp_dtype, autocast, validate
from models.build import build_video_model
from models.runs import architecture_of, image_run_of, load_image_model
from training import distributed as D
from training.checkpoint import load_pretrained_checkpoint
from training.loop import fit
from training.setup import RunSetup, clean_up_failed_start, start_run
from training.steps import VIDEO_STEPS, step_name
from training.steps.kd import KLLoss
from training.teacher import TeacherKL, kd_enabled, validation_teacher


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m training.train_video", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config name in config/video/ or a path to a YAML file")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. video_model_cfg.const_loss_lb=0.2"
    )
    return p


def main(argv: list[str] | None = None) -> Path:
    """Train; return the run folder (a new run that fails before its first checkpoint is removed again)."""
    args = build_parser().parse_args(argv)
    with D.end_together():  # under torchrun, a user error ends every rank with exit code 2, printed once
        setup = start_run(args.config, args.overrides, "video")
        with clean_up_failed_start(setup):
            return train(setup)


def train(setup: RunSetup) -> Path:
    """The training of a started run."""
    cfg, device, run = setup.cfg, setup.device, setup.run
    dcfg, tcfg = cfg.data_cfg, cfg.training_cfg
    kd_enabled(cfg)  # the distillation keys agree (before anything is loaded)
    if dcfg.pseudo_labels or dcfg.dataset_weights:
        raise ConfigError("data_cfg.pseudo_labels / dataset_weights: compound training over pseudo-labelled datasets "
                          "is for image training (python -m training.train_image); remove them")  # fmt: skip
    size = tuple(dcfg.crop_size)

    image_run = image_run_of(cfg.image_model_cfg)
    image_model, image_cfg, image_meta = load_image_model(
        image_run, best=cfg.image_model_cfg.best_model,
        hint="image_model_cfg.checkpoint_name must name an image run (python -m training.train_image); to start "
        "from a video run's weights, set pretrained_checkpoint",
    )  # fmt: skip
    if image_cfg.data_cfg.dataset != dcfg.dataset:
        raise ConfigError(
            f"image_model_cfg.checkpoint_name: {image_run} was trained on '{image_cfg.data_cfg.dataset}', this "
            f"config trains on '{dcfg.dataset}'; use an image run of the same dataset"
        )
    image_model.check_input_size(*size)
    model = build_video_model(cfg, image_model, device=device).train()
    if cfg.pretrained_checkpoint and setup.resume is None:
        load_pretrained_checkpoint(model, cfg.pretrained_checkpoint, cfg.save_dir,
                                   architecture_of(to_dict(cfg), "video"))  # fmt: skip
    model.to(device)
    with D.main_first():
        root, info, train_clips = open_split(dcfg, "train", dcfg.min_vid_len)
        _, _, val_clips = open_split(dcfg, "val", dcfg.min_vid_len)
    step = VIDEO_STEPS.get(step_name(model.train_step, cfg.loss_cfg.loss_func))(cfg, info, device)
    needs = model.needs().merge(step.needs)
    if D.is_main():
        save(image_cfg, run / "image_config.yaml")
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"== image model from {image_meta['path']} (epoch {image_meta.get('epoch')}); "
              f"{trainable / 1e6:.3f} M trainable parameters")  # fmt: skip
        print(f"== video model: {model.describe()}; training step: {step.describe()}")

    augment = (VideoTrainAugment(square_crop=dcfg.square_crop, photometric=dcfg.photometric)
               if dcfg.data_augmentation else None)  # fmt: skip
    common = dict(edge_policy=dcfg.edge_policy, square_crop=dcfg.square_crop)
    train_set = video_samples(train_clips, info, size, needs, train=True, augment=augment,
                              skip=dcfg.train_skip_frames, seed=tcfg.seed, **common)  # fmt: skip
    val_set = video_samples(val_clips, info, size, needs, train=False, skip=dcfg.val_skip_frames, **common)
    if D.is_main():
        print(f"== {info.name} at {root}: {len(train_set)} training samples, {len(val_set)} validation samples "
              f"of {len(needs.offsets) + 1} frames")  # fmt: skip
    dtype = amp_dtype(tcfg.amp, device)
    # offline KD with a val dump beside the train dump: validation also logs the KL to the teacher
    teacher = getattr(step, "teacher", None)
    frames = [(val_clips[v.clip], i) for v in val_set.samples for i in v.indices]
    val_set.teacher = validation_teacher(teacher, info, frames)
    val_kl = None if val_set.teacher is None else TeacherKL(KLLoss(cfg.loss_cfg))

    def infer(m: torch.nn.Module, batch: VideoBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = batch.to(device)
        cur = batch.current
        with torch.inference_mode(), autocast(device, dtype):
            logits = m(batch).logits[:, cur].float()
        if val_kl is not None:
            val_kl.add(logits, None if batch.teacher_logits is None else batch.teacher_logits[:, cur])
        return batch.frames[:, cur], logits, batch.labels[:, cur]

    final = fit(
        model=model, cfg=cfg, kind="video", info=info, run=run, train_set=train_set, device=device,
        resume=setup.resume, step_fn=step, collate_fn=collate_video,
        validate_fn=lambda m: (*validate(m, val_set, info, device, batch_size=tcfg.batch_size,
                                         num_workers=min(tcfg.num_workers, 2), amp_dtype=dtype, infer=infer,
                                         max_samples=tcfg.max_val_samples, vis_samples=tcfg.vis_samples,
                                         collate_fn=collate_video),
                               *([] if val_kl is None else [val_kl.result()])),
        checkpoint_extra={"image_config": to_dict(image_cfg), "image_run": str(image_run)},
        run_info={"video_model": model.describe(), "training_step": step.describe(),
                  "amp": None if dtype is None else str(dtype).removeprefix("torch.")},
    )  # fmt: skip
    if D.is_main():
        miou = final.get("val", {}).get("miou")
        print(f"== done: {run} (training-time val mIoU {miou}); helpers: {model.describe()['helpers']}")
    D.cleanup()
    return run


if __name__ == "__main__":
    run_cli(main)
