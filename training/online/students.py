"""Online students by name (``other_methods.md`` §3.5: "students are pluggable").

``tinynet`` is the reference student; ``segmentor`` builds any tcseg image model from a ``model_cfg`` mapping, so
every registered backbone/head pair (and SegFormer) can be a student. :func:`build_student` is what the online
loop calls; :func:`build_checked` is the shared "name + keyword arguments -> object" step of the online
registries, which turns a wrong or missing keyword into a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from config.errors import ConfigError, did_you_mean
from config.image_sections import ModelCfg
from config.loader import from_dict
from models.build import build_image_model
from models.image.tinynet import TinyNet
from models.registry import Registry

STUDENTS = Registry("online student")


def build_checked(registry: Registry, name: str, kwargs: Mapping[str, Any]) -> Any:
    """``registry.build(name, **kwargs)`` where an unknown name or keyword is a :class:`ConfigError` naming the
    accepted keywords (a ``TypeError`` from deep inside a builder would read as a program error)."""
    builder = registry.get(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(
                    f"{registry.kind} '{name}': unknown argument '{key}'{did_you_mean(key, accepted)}; "
                    f"accepted: {', '.join(accepted)}"
                )
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"{registry.kind} '{name}': missing argument(s) {', '.join(missing)}")
    return builder(**kwargs)


@STUDENTS.register("tinynet")
def tinynet(
    num_classes: int,
    bn: Literal["batch_stats", "running_stats"] = "batch_stats",
    upsampling: Literal["bilinear", "nearest"] = "bilinear",
    width: int = 64,
) -> nn.Module:
    """The reference TinyNet student (:class:`models.image.tinynet.TinyNet`)."""
    return TinyNet(num_classes, bn=bn, upsampling=upsampling, width=width)


def model_cfg_from(model_cfg: Mapping[str, Any] | ModelCfg | None) -> ModelCfg:
    """A checked :class:`ModelCfg` from a ``model_cfg`` mapping (strict, as in a YAML file), a ready one, or
    ``None`` (the defaults)."""
    if model_cfg is None:
        return ModelCfg()
    if isinstance(model_cfg, ModelCfg):
        return model_cfg
    if not isinstance(model_cfg, Mapping):
        raise ConfigError(
            f"student 'segmentor': model_cfg must be a mapping of model_cfg keys, got {model_cfg!r}"
        )
    # The loader's strict key and type checks, with did-you-mean, as for a YAML file.
    return from_dict({"model_cfg": dict(model_cfg)}, "image").model_cfg


@STUDENTS.register("segmentor")
def segmentor(
    num_classes: int,
    model_cfg: Mapping[str, Any] | ModelCfg | None = None,
    load_backbone_weights: bool = False,
) -> nn.Module:
    """Any tcseg image model as a student, e.g. ``model_cfg={"model_architecture": "swiftnet", "backbone":
    "resnet18"}``. ``load_backbone_weights=True`` reads ``model_cfg.pretrained_backbone`` (off by default: the
    reference student starts from a random initialisation)."""
    return build_image_model(
        model_cfg_from(model_cfg), num_classes, load_backbone_weights=load_backbone_weights
    )


def build_student(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The student ``name`` (``tinynet``, ``segmentor``) for ``num_classes`` classes; ``kwargs`` go to its
    builder. ``model(x [B,3,H,W]) -> logits [B,C,H,W]``."""
    return build_checked(STUDENTS, name, {"num_classes": num_classes, **kwargs})


__all__ = ["STUDENTS", "build_checked", "build_student", "model_cfg_from", "segmentor", "tinynet"]
