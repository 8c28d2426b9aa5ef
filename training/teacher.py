"""The teacher of a distillation run (``ssp.md`` §6): checked against the student's config, then read or run.

:func:`build_teacher` turns the config's KD keys into a :class:`Teacher`, or None for a run with labels:

- ``loss_cfg.loss_func: kldiv`` with ``data_cfg.logit_distillation: true`` (and ``soft_labels: true``, the
  reference's third key) switch distillation on; one without the others is a one-line error;
- ``data_cfg.teacher_mode: offline`` reads ``data_cfg.logits_folder`` (or ``<teacher_run>/logits/train``), whose
  manifest must match the student (classes, class order, size, frame rule);
- ``online`` loads ``data_cfg.teacher_run`` frozen, outside the student's module tree, optimizer, checkpoint and DDP,
  and runs it inside the training step (:meth:`Teacher.targets`); nothing is written to disk.

Either way the loader serves what :attr:`Teacher.source` asks (:mod:`data.teacher`) and the step gets the same
targets: the teacher's raw logits at the student's input size, augmented like the frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from config.errors import ConfigError, UserError
from data.catalog import DatasetInfo, get_dataset_info
from data.frames import Clip
from data.logits import MANIFEST_NAME, TeacherLogits, student_rule
from data.teacher import SavedLogits, TeacherInputs, TeacherSource, sample_teacher
from models.fast_path import prepare_inference
from models.runs import load_image_model, locate_run


class Teacher:
    """Teacher targets for a KD training step.

    Attributes:
        source: what the loader serves (saved logits, or the online teacher's inputs).
        model: the frozen teacher network (online), else None.
    """

    def __init__(
        self,
        source: TeacherSource,
        model: torch.nn.Module | None,
        device: torch.device,
        student_hw: tuple[int, int],
    ) -> None:
        self.source, self.model, self.device, self.student_hw = source, model, device, tuple(student_hw)

    @torch.no_grad()
    def targets(self, batch: Any, size_hw: tuple[int, int]) -> torch.Tensor:
        """[B,(T,)K,H,W] float32 teacher logits for ``batch`` (a VideoBatch or an image batch dict) at the student's
        size ``size_hw`` (the augmented one)."""
        get = (lambda k: batch.get(k)) if isinstance(batch, dict) else (lambda k: getattr(batch, k))
        saved = get("teacher_logits")
        if saved is not None:
            return saved.to(self.device, non_blocking=True).float()
        frames, grid = get("teacher_frames"), get("teacher_grid")
        if frames is None or grid is None or self.model is None:
            raise RuntimeError(
                "the batch carries no teacher targets: the loader was built without the teacher source"
            )
        lead = frames.shape[:-3]  # (B,) or (B,T)
        frames, grid = (
            frames.flatten(0, len(lead) - 1).to(self.device),
            grid.flatten(0, len(lead) - 1).to(self.device),
        )
        logits = self.model(frames).float()
        base_hw = self.student_hw  # the grid's pixel coordinates are in the student's unaugmented frame
        if tuple(logits.shape[-2:]) != base_hw:  # the dump's resize: bilinear, antialiased when shrinking
            logits = F.interpolate(logits, size=base_hw, mode="bilinear", align_corners=False, antialias=True)
        out = sample_teacher(logits, grid)
        if tuple(out.shape[-2:]) != tuple(size_hw):
            raise RuntimeError(
                f"teacher targets of size {tuple(out.shape[-2:])} for a student output of {size_hw}"
            )
        return out.unflatten(0, lead)

    def describe(self) -> dict[str, Any]:
        return self.source.describe() if hasattr(self.source, "describe") else {}


def kd_enabled(cfg: Any) -> bool:
    """Whether ``cfg`` trains by distillation; an inconsistent set of the reference's three keys is an error."""
    dcfg, lcfg = cfg.data_cfg, cfg.loss_cfg
    kd = lcfg.loss_func == "kldiv"
    if kd != dcfg.logit_distillation:
        raise ConfigError(
            "loss_cfg.loss_func and data_cfg.logit_distillation disagree: distillation needs loss_func: kldiv and "
            "logit_distillation: true (with soft_labels: true); training with labels needs crossentropy and false"
        )
    if dcfg.soft_labels != kd:
        raise ConfigError(
            "data_cfg.soft_labels: soft targets come from a teacher only (set it true together with "
            "logit_distillation and kldiv, or false)"
        )
    if kd and not lcfg.softmax_on_target:
        raise ConfigError(
            "loss_cfg.softmax_on_target: teacher logits are raw (no softmax); set it true for distillation"
        )
    return kd


def build_teacher(
    cfg: Any, info: DatasetInfo, device: torch.device, *, with_previous: bool
) -> Teacher | None:
    """The run's teacher (None without distillation). ``with_previous``: the step also needs the predecessor of
    every sample (KD-SSP), which fixes the frame rule the dump must cover."""
    if not kd_enabled(cfg):
        return None
    dcfg = cfg.data_cfg
    size = tuple(int(v) for v in dcfg.crop_size)
    if dcfg.teacher_mode == "offline":
        folder = dcfg.logits_folder
        if folder is None and dcfg.teacher_run is not None:
            folder = str(locate_run(dcfg.teacher_run, cfg.save_dir) / "logits" / "train")
        if folder is None:
            raise ConfigError(
                "data_cfg.logits_folder: distillation needs the teacher's logits; set it to the folder printed by "
                "python -m eval.vis.image TEACHER_RUN --save-logits --split train --no-evaluation (or set "
                "data_cfg.teacher_run, or teacher_mode: online)"
            )
        store = TeacherLogits(folder)
        store.check(
            classes=info.class_names, size_hw=size, rule=student_rule(dcfg.train_skip_frames, with_previous)
        )
        return Teacher(SavedLogits(store), None, device, size)
    else:
        if dcfg.teacher_run is None:
            raise ConfigError("data_cfg.teacher_run: teacher_mode online runs a teacher image run; name it")
        run = locate_run(dcfg.teacher_run, cfg.save_dir)
        model, tcfg, _ = load_image_model(run, hint="data_cfg.teacher_run must name an image run")
        classes = list(get_dataset_info(tcfg.data_cfg.dataset).class_names)
        if classes != list(info.class_names) or model.num_classes != info.num_classes:
            raise ConfigError(
                f"data_cfg.teacher_run: {run} predicts {len(classes)} classes ({', '.join(classes)}), the student "
                f"{info.num_classes} ({', '.join(info.class_names)}); use a teacher trained on '{info.name}'"
            )
        model.requires_grad_(False)
        prepare_inference(model.eval().to(device), device)  # a frozen helper: the same logits, sooner
    return Teacher(TeacherInputs(tuple(tcfg.data_cfg.crop_size)), model, device, size)


def validation_teacher(
    teacher: Teacher | None, info: DatasetInfo, frames: Iterable[tuple[Clip, int]]
) -> SavedLogits | None:
    """The saved teacher logits of the validation ``frames`` (clip, index), when an offline run's dump folder has a
    ``val`` sibling (``eval.vis.image TEACHER --save-logits --split val``) holding every one of them; else None,
    with a printed note when a val dump exists but does not fit. Validation then also logs the KL to the teacher
    (``ssp.md`` §6.5); its mIoU is scored against the human labels either way."""
    if teacher is None or not isinstance(teacher.source, SavedLogits):
        return None
    folder = teacher.source.store.folder.parent / "val"
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        store = TeacherLogits(folder, setting="validation teacher logits")
        store.check(classes=info.class_names, size_hw=teacher.student_hw, rule=store.rule, split="val")
    except UserError as err:
        print(f"== validation: not logging the KL to the teacher: {err}")
        return None
    needed = {(clip.name, clip.frames[i].stem) for clip, i in frames}
    missing = sum(not store.path(name, stem).is_file() for name, stem in needed)
    if missing:
        print(
            f"== validation: not logging the KL to the teacher: {missing} validation frames have no logits in {folder}"
        )
        return None
    return SavedLogits(store)


class TeacherKL:
    """Accumulates the KL of validation predictions to saved teacher logits (mean per sample)."""

    def __init__(self, kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.kl, self.total, self.count = kl, 0.0, 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor | None) -> None:
        """``logits`` [B,K,H,W] predictions, ``targets`` [B,K,H,W] teacher logits (None: nothing to add)."""
        if targets is not None:
            self.total += float(self.kl(logits.float(), targets.to(logits.device).float())) * len(logits)
            self.count += len(logits)

    def result(self) -> dict[str, float]:
        """``{"kl_teacher": mean}`` since the last call (then reset), or ``{}`` when nothing was added."""
        out = {"kl_teacher": self.total / self.count} if self.count else {}
        self.total, self.count = 0.0, 0
        return out
