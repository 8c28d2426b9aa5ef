"""Run folders and checkpoint files: finding a run, reading a checkpoint safely, rebuilding its model.

A checkpoint describes itself: it holds the resolved config, so :func:`load_image_model`,
:func:`load_video_model` and :func:`load_streaming_model` (any run as a streaming video model: an image run through
the per-frame adapter) need nothing but the run; a video method's builder rebuilds its frozen helpers. Used by
training (resume, ``pretrained_checkpoint``) and by the evaluation CLIs; it lives in ``models`` so
that ``eval`` never imports ``training``.

Checkpoint keys (``last.pth``): ``model`` (state dict of the trainable model), ``config`` (resolved, plain dict),
``kind``, ``epoch`` (epochs completed), ``step`` (optimizer steps), ``step_in_epoch``, ``optimizer``, ``scaler``,
``rng``, ``best_metric``, ``history``, ``finished``. ``best.pth`` has the same keys minus the optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from config.errors import CheckpointError
from config.loader import check_layer, from_dict, merge_layers, parse_overrides, resolve_aliases
from config.schema import KINDS, ImageModelCfg
from data.catalog import get_dataset_info
from models.build import build_image_model, build_video_model
from models.video.base import VideoModel
from models.video.per_frame import PerFrame

CHECKPOINT_NAMES = ("last.pth", "best.pth")


def locate_run(name_or_path: str | Path, save_dir: str | Path = "checkpoints") -> Path:
    """A run folder given as a path, or as a name under ``save_dir``; ``tag@name`` (reference style) works too."""
    raw = str(name_or_path).rstrip("/")
    for candidate in (Path(raw), Path(save_dir) / raw, Path(save_dir) / raw.rsplit("@", 1)[-1]):
        if candidate.is_dir():
            return candidate
    root = Path(save_dir)
    runs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = f"; runs in {root}/: {', '.join(runs[-5:])}" if runs else f"; {root}/ holds no runs"
    raise CheckpointError(f"run '{raw}' not found (as a path or in {root}/){hint}")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        # torch's own message advises weights_only=False, which would run arbitrary code from the file: not here
        other = "last.pth" if path.name == "best.pth" else "best.pth"
        raise CheckpointError(
            f"{path}: the file is damaged or not a checkpoint ({type(err).__name__}); use the run's {other} if it "
            "has one, or train the run again"
        ) from None


def checkpoint_path(run: Path, best: bool = False) -> Path:
    """``best.pth`` or ``last.pth`` of a run, with an error that says what exists instead."""
    path = run / ("best.pth" if best else "last.pth")
    if path.is_file():
        return path
    present = [n for n in CHECKPOINT_NAMES if (run / n).is_file()]
    what = (
        f"it has {', '.join(present)}" if present else "it has no checkpoint yet (was the run killed early?)"
    )
    flag = "drop --best-model" if best else "train it first"
    raise CheckpointError(f"{path} not found: {what}; {flag}")


def weights_for_init(name_or_path: str, save_dir: str | Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """State dict for ``pretrained_checkpoint``: a run (``best.pth``, else ``last.pth``) or a state-dict file.

    Returns (state dict, source path, what it holds: the architecture its stored config names, or "a state dict").
    """
    as_file = Path(name_or_path)
    if as_file.is_file():
        ckpt = read_checkpoint(as_file)
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{as_file}: not a state dict or a tcseg checkpoint")
        return state, str(as_file), architecture_of(ckpt.get("config"), ckpt.get("kind"))
    run = locate_run(name_or_path, save_dir)
    path = run / "best.pth" if (run / "best.pth").is_file() else checkpoint_path(run)
    ckpt = read_checkpoint(path)
    return ckpt["model"], str(path), architecture_of(ckpt.get("config"), ckpt.get("kind"))


def architecture_of(config: Any, kind: Any) -> str:
    """A short name of the model a stored config builds (``image upernet on resnet18``, ``video dff2``)."""
    if not isinstance(config, dict):
        return "a state dict"
    if kind == "image" or "model_cfg" in config:
        m = config.get("model_cfg", {})
        arch, ckpt = m.get("model_architecture", "?"), str(m.get("checkpoint_model"))
        backbone = f"sam2_hiera_{ckpt}" if arch == "hierasam_upernet" else m.get("backbone")
        if backbone is None and "/" in ckpt:  # a Hugging Face id (upernet-convnext-*, nvidia/mit-*)
            backbone = ckpt
        return f"image model {arch} on {backbone or 'its default backbone'}"
    return f"video model {config.get('video_model_cfg', {}).get('model_name', '?')}"


def _load_strict(model: torch.nn.Module, state: dict, path: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model its config builds: missing {list(missing)[:4]}, "
            f"unexpected {list(unexpected)[:4]}"
        )


def _read_kind(run: Path, best: bool, kind: str, hint: str | None = None) -> tuple[dict, Path]:
    """The checkpoint of a run that must be of ``kind``; ``hint`` replaces the default advice (which CLI to use)."""
    path = checkpoint_path(run, best)
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") != kind:
        cmd = {"image": "eval.vis.image", "video": "eval.vis.video"}.get(str(ckpt.get("kind")), "eval.vis.*")
        raise CheckpointError(
            f"{path} is a '{ckpt.get('kind')}' checkpoint, not '{kind}'; {hint or f'use {cmd}'}"
        )
    return ckpt, path


def _meta(ckpt: dict, path: Path) -> dict:
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scaler", "rng")}
    meta["path"] = str(path)
    return meta


def load_image_model(
    run: Path, best: bool = False, hint: str | None = None
) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild the image model of a run from its stored config and load its weights strictly.

    Returns (model in eval mode on the CPU, typed config, checkpoint dict without the big entries). ``hint`` is the
    advice given when the run is not an image run.
    """
    return _image_from(*_read_kind(run, best, "image", hint))


def _image_from(ckpt: dict, path: Path) -> tuple[torch.nn.Module, Any, dict]:
    cfg = from_dict(ckpt["config"], "image")
    info = get_dataset_info(cfg.data_cfg.dataset)
    model = build_image_model(cfg.model_cfg, info.num_classes, load_backbone_weights=False)
    _load_strict(model, ckpt["model"], path)
    return model.eval(), cfg, _meta(ckpt, path)


def image_run_of(icfg: ImageModelCfg) -> Path:
    """The image run named by ``image_model_cfg`` (``image_save_dir`` / ``checkpoint_folder`` / name or path)."""
    if not icfg.checkpoint_name:
        raise CheckpointError(
            "image_model_cfg.checkpoint_name is empty: set it to a trained image run, e.g. "
            "image_model_cfg.checkpoint_name=2026-01-01_12-00-00 (train one with python -m training.train_image)"
        )
    return locate_run(icfg.checkpoint_name, Path(icfg.image_save_dir) / icfg.checkpoint_folder)


def load_video_model(
    run: Path, best: bool = False, *, device: torch.device | str = "cpu", use_caches: bool = True,
    overrides: list[str] | None = None,
) -> tuple[VideoModel, Any, dict]:  # fmt: skip
    """Rebuild a video run's model from its checkpoint alone (video config + stored image config), strictly.

    The method's builder builds its frozen helpers (on ``device``; ``use_caches=False`` bypasses their on-disk
    caches). ``overrides`` (``key.path=value``) change the stored config before the build, e.g. another provider
    for a frozen helper; they must not change the trainable weights. Returns (model in eval mode on the CPU, typed
    video config, checkpoint dict without the big entries; its ``image_config`` is the typed image config).
    """
    ckpt, path = _read_kind(run, best, "video")
    return _video_from(ckpt, path, device=device, use_caches=use_caches, overrides=overrides)


def _video_from(
    ckpt: dict, path: Path, *, device: torch.device | str = "cpu", use_caches: bool = True,
    overrides: list[str] | None = None,
) -> tuple[VideoModel, Any, dict]:  # fmt: skip
    stored = ckpt["config"]
    if overrides:
        layer = check_layer(parse_overrides(overrides), KINDS["video"])
        # reference spellings (video_model_cfg.k_interval) override the stored section key they stand for
        stored = merge_layers(stored, resolve_aliases(layer, KINDS["video"], merge_layers(stored, layer)))
    cfg = from_dict(stored, "video")
    image_cfg = from_dict(ckpt["image_config"], "image")
    info = get_dataset_info(cfg.data_cfg.dataset)
    image_model = build_image_model(image_cfg.model_cfg, info.num_classes, load_backbone_weights=False)
    model = build_video_model(cfg, image_model, device=device, pretrained=False, use_caches=use_caches)
    _load_strict(model, ckpt["model"], path)
    meta = _meta(ckpt, path)
    meta["image_config"] = image_cfg
    return model.eval(), cfg, meta


def _per_frame_from(
    ckpt: dict, path: Path, *, overrides: list[str] | None = None, **_helper_options: Any
) -> tuple[VideoModel, Any, dict]:
    if overrides:
        raise CheckpointError(f"{path} is an image run: config overrides apply to video runs only")
    image_model, cfg, meta = _image_from(ckpt, path)
    return PerFrame(image_model).eval(), cfg, meta


# checkpoint kind -> how it becomes a streaming video model
_STREAMING = {"image": _per_frame_from, "video": _video_from}


def load_streaming_model(
    run: Path, best: bool = False, *, device: torch.device | str = "cpu", use_caches: bool = True,
    overrides: list[str] | None = None,
) -> tuple[VideoModel, Any, dict]:  # fmt: skip
    """Any run as a streaming video model: a video run's own model, an image run through the per-frame adapter.

    Returns (model in eval mode on the CPU, the run's typed config, checkpoint metadata with ``kind``).
    """
    path = checkpoint_path(run, best)
    ckpt = read_checkpoint(path)
    loader = _STREAMING.get(str(ckpt.get("kind")))
    if loader is None:
        raise CheckpointError(f"{path} is a '{ckpt.get('kind')}' checkpoint: not an image or a video run")
    return loader(ckpt, path, device=device, use_caches=use_caches, overrides=overrides)
