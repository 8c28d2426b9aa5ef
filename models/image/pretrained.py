"""Loading pretrained backbone weights from local files, with verified key sets.

Nothing here downloads anything. A file is read with ``torch.load(..., map_location="cpu", weights_only=True)``
(or ``safetensors`` for ``.safetensors`` files), converted to the backbone's key layout, and checked: every
parameter and buffer of the backbone must be present with the right shape and nothing unexpected may be left
over, otherwise :class:`CheckpointError` lists (a few of) the offending keys. The reference loaded SAM2 trunks
with ``strict=False``, so a wrong file "loaded" silently (``ssp.md`` §2.1); that cannot happen here.

Supported files:

- SAM2 / SAM2.1 checkpoints (``sam2_hiera_*.pt``, ``sam2.1_hiera_*.pt``): ``{"model": full SAM2 state dict}``;
  the trunk keys start with ``image_encoder.trunk.`` and name the MLP layers ``mlp.layers.0/1`` where timm has
  ``mlp.fc1/fc2``. Every non-trunk key (mask decoder, neck, memory modules ...) is dropped. A trunk already
  converted to timm keys (``checkpoint_filter_fn`` output, ecosystem.md §1.2) is accepted too.
- torchvision / timm ImageNet files for ResNet-18 (``resnet18-f37072fd.pth``) and VGG-16
  (``vgg16-397923af.pth``): the classifier (``fc.*``; ``classifier.*`` or timm's ``pre_logits.*``/``head.*``)
  is dropped explicitly; everything else must match.
- timm ImageNet files for ConvNeXt-T/S/B (e.g. ``convnext_small.fb_in1k``): ``head.*`` is dropped and the keys
  are renamed to timm's feature-net layout (:meth:`~models.image.backbones.Backbone.adapt_state_dict`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import CheckpointError
from models.image.backbones import Backbone

SAM2_TRUNK_PREFIX = "image_encoder.trunk."
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "pre_logits.", "head.")
_SHOW = 5  # offending keys named in an error message


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a local weights file into a dict (CPU tensors); a missing or unreadable file is a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file '{p}' not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and safetensors errors have no common base class
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"cannot read weights file '{p}' ({type(err).__name__}: {first[:200]}); "
            "it may be truncated or not a PyTorch weights file: download it again"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"weights file '{p}' holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _unwrap(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict inside common wrappers (``{"model": ...}``, ``{"state_dict": ...}``)."""
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return dict(inner)
    return dict(obj)


def sam2_trunk_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """SAM2 checkpoint (dict) -> trunk state dict in timm ``HieraDet`` keys.

    Uses timm's ``checkpoint_filter_fn`` (unwraps ``"model"``, keeps and strips keys with the prefix, renames
    ``mlp.layers.0/1`` -> ``mlp.fc1/fc2``) with an explicit prefix: in timm 1.0.31 the model's own filter runs
    with an empty prefix, which keeps every non-trunk key. The result is verified by the caller either way.
    """
    from timm.models.hieradet_sam2 import checkpoint_filter_fn

    sd = _unwrap(obj)
    if any(k.startswith(SAM2_TRUNK_PREFIX) for k in sd):
        return checkpoint_filter_fn(sd, prefix=SAM2_TRUNK_PREFIX)
    if "patch_embed.proj.weight" in sd:  # an already converted trunk: only the MLP renaming may remain
        return checkpoint_filter_fn(sd, prefix="")
    return {}  # not a SAM2 checkpoint at all; the caller says so


def _imagenet_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """torchvision/timm ImageNet file -> conv-trunk state dict: the classifier keys are dropped on purpose."""
    sd = _unwrap(obj)
    return {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIXES)}


def _fmt(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def verify_and_load(
    module: nn.Module, state: Mapping[str, Any], *, path: Path, what: str, expected: str
) -> None:
    """Load ``state`` into ``module`` after checking keys and shapes; mismatches raise :class:`CheckpointError`.

    ``num_batches_tracked`` buffers missing from old torchvision files are filled from the module (BatchNorm
    does the same itself); everything else must match exactly. ``what`` names the target in messages,
    ``expected`` says which file was expected.
    """
    own = module.state_dict()
    state = dict(state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {list(getattr(state[k], 'shape', []))} vs {list(own[k].shape)}"
        for k in own
        if k in state and getattr(state[k], "shape", None) != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_fmt(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_fmt(unexpected)})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} keys with the wrong shape, file vs model ({_fmt(wrong_shape)})")
        raise CheckpointError(
            f"weights file '{path}' does not fit {what}: {'; '.join(parts)}; expected {expected}"
        )
    # Strict as well: the check above already guarantees it, this guards against silent drift.
    module.load_state_dict(state, strict=True)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load pretrained weights for ``backbone`` from the local file ``path`` (verified; see module docstring).

    Raises:
        CheckpointError: the file is missing or unreadable, the backbone has no pretrained format
            (``tiny_cnn``), or the converted keys do not match the backbone exactly.
    """
    p = Path(path)
    fmt = backbone.weights_format
    if fmt is None:
        raise CheckpointError(
            f"backbone '{backbone.name}' has no pretrained weights format; remove the pretrained file '{p}'"
        )
    if not p.is_file():
        raise CheckpointError(
            f"pretrained backbone weights '{p}' not found: get {backbone.weights_hint} "
            "and put it in base_checkpoints/ (tcseg never downloads weights)"
        )
    obj = read_state_dict(p)
    if fmt == "sam2":
        state = sam2_trunk_state_dict(obj)
        if not state:
            raise CheckpointError(
                f"weights file '{p}' has no SAM2 image-encoder trunk keys ({SAM2_TRUNK_PREFIX}*); "
                f"expected {backbone.weights_hint}"
            )
        what = f"the {backbone.name} trunk"
    elif fmt == "imagenet":
        state = backbone.adapt_state_dict(_imagenet_state_dict(obj))
        what = f"backbone {backbone.name}"
    else:  # pragma: no cover - a new backbone kind without a loader is a programming error
        raise ValueError(f"unknown weights format {fmt!r}")
    verify_and_load(backbone.weights_module(), state, path=p, what=what, expected=backbone.weights_hint)


def load_fcn8s_classifier_weights(head: nn.Module, path: str | Path) -> bool:
    """Initialise FCN-8s ``fc6``/``fc7``/``score_fr`` from the ImageNet classifier of a VGG-16 file.

    As in the reference (``other_methods.md`` §1.6): fc6 (25088 -> 4096) and fc7 (4096 -> 4096) are reshaped
    into the 7x7 and 1x1 convs, and ``score_fr`` takes the first K rows of fc8. Only possible with the
    reference widths (512-channel pool5, ``fc_width`` 4096, K <= 1000); otherwise a warning is issued and the
    head keeps its random initialisation. Returns whether the weights were copied.
    """
    p = Path(path)
    sd = _unwrap(read_state_dict(p))
    # torchvision names first, then timm's (whose fc6/fc7 are already conv-shaped).
    names = {
        "fc6": ("classifier.0", "pre_logits.fc1"),
        "fc7": ("classifier.3", "pre_logits.fc2"),
        "fc8": ("classifier.6", "head.fc"),
    }
    src: dict[str, tuple[Tensor, Tensor]] = {}
    for ours, theirs in names.items():
        for prefix in theirs:
            if f"{prefix}.weight" in sd and f"{prefix}.bias" in sd:
                src[ours] = (sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])
                break
    fc6, fc7, score = head.fc6, head.fc7, head.score_fr  # type: ignore[union-attr]
    k = score.weight.shape[0]
    fits = (
        len(src) == 3
        and src["fc6"][0].numel() == fc6.weight.numel()
        and src["fc7"][0].numel() == fc7.weight.numel()
        and src["fc8"][0].shape[0] >= k
        and src["fc8"][0].shape[1] == score.weight.shape[1]
    )
    if not fits:
        warnings.warn(
            f"FCN-8s fc6/fc7/score_fr keep their random initialisation: '{p}' has no VGG-16 classifier of "
            f"matching size for fc_width={fc6.weight.shape[0]}, {k} classes",
            stacklevel=2,
        )
        return False
    with torch.no_grad():
        fc6.weight.copy_(src["fc6"][0].reshape(fc6.weight.shape))
        fc6.bias.copy_(src["fc6"][1])
        fc7.weight.copy_(src["fc7"][0].reshape(fc7.weight.shape))
        fc7.bias.copy_(src["fc7"][1])
        score.weight.copy_(src["fc8"][0][:k].reshape(score.weight.shape))
        score.bias.copy_(src["fc8"][1][:k])
    return True


__all__ = [
    "SAM2_TRUNK_PREFIX",
    "load_backbone_weights",
    "load_fcn8s_classifier_weights",
    "read_state_dict",
    "sam2_trunk_state_dict",
    "verify_and_load",
]
