"""The TC protocol: every switch of ``metrics.md`` §3.5, the named presets and the card of §3.6.

A TC number is meaningful only with its protocol, so the protocol is a frozen value that evaluation code passes
around, and :func:`protocol_card` turns it (plus what actually ran) into the JSON written beside the number.
``eval.tc`` re-exports everything here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from config.errors import ConfigError, did_you_mean

_CHOICES: dict[str, tuple[str, ...]] = {
    "direction": ("forward",),
    "grid": ("reference", "exact"),
    "out_of_frame": ("class0", "ignore"),
    "occlusion": ("none", "fwd_bwd", "fwd_bwd_simplified"),
    "per_pair_score": ("miou_nan_exclude", "miou_zero", "pixel_acc"),
    "aggregation": ("clip_mean", "pooled"),
    "miou_mode": ("nan_exclude", "zero"),
    "input_norm": ("imagenet", "minus1_1"),
    "pad": ("none", "replicate"),
    "precision": ("fp32", "bf16"),
}
_FLOW_CHECKED = ("model", "iters", "input_norm", "pad", "precision")  # keys that change the flow itself


def _check(obj: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value not in _CHOICES[name]:
            raise ConfigError(f"TC protocol: {name}={value!r} is not one of {', '.join(_CHOICES[name])}")


@dataclass(frozen=True)
class FlowSettings:
    """``flow.*`` of the protocol: what the flow provider must be built with (``metrics.md`` §3.5)."""

    model: str = "raft_large"  # raft_large | raft_small | dis | precomputed (| gt, farneback)
    # a local file (no downloads); the provider adds its sha256 to the card
    weights: str = "base_checkpoints/raft_large_C_T_V1-22a6c225.pth"
    iters: int = 20
    input_norm: str = "imagenet"
    pad: str = "none"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check(self, ("input_norm", "pad", "precision"))


@dataclass(frozen=True)
class TCProtocol:
    """Every switch of ``metrics.md`` §3.5; the defaults are ``tc_reference`` (the SSP code's definition).

    ``resolution``: ``input`` | ``label`` | ``eval`` (same as the mIoU evaluation) | ``(H, W)`` (checked against
    the maps given). ``frames``: ``all_consecutive`` | ``stride:k`` (pairs t with t % k == 0) |
    ``first_n_clips:N``. ``miou_mode`` applies to pooled matrices, ``per_pair_score`` to ``clip_mean``.
    """

    preset: str = "custom"
    flow: FlowSettings = field(default_factory=FlowSettings)
    direction: str = "forward"
    grid: str = "reference"
    out_of_frame: str = "class0"
    occlusion: str = "none"
    resolution: str | tuple[int, int] = "input"
    frames: str = "all_consecutive"
    per_pair_score: str = "miou_nan_exclude"
    aggregation: str = "clip_mean"
    miou_mode: str = "nan_exclude"
    modified: tuple[str, ...] = ()  # switches overridden on top of the preset (written into the card)

    def __post_init__(self) -> None:
        _check(
            self,
            ("direction", "grid", "out_of_frame", "occlusion", "per_pair_score", "aggregation", "miou_mode"),
        )
        if isinstance(self.flow, dict):
            object.__setattr__(self, "flow", FlowSettings(**self.flow))
        res = self.resolution
        if isinstance(res, list | tuple):
            if len(res) != 2 or not all(isinstance(v, int) and v > 0 for v in res):
                raise ConfigError(f"TC protocol: resolution must be [H, W] of positive ints, got {res!r}")
            object.__setattr__(self, "resolution", (int(res[0]), int(res[1])))
        elif res not in ("input", "label", "eval"):
            raise ConfigError(f"TC protocol: resolution {res!r} is not input, label, eval or [H, W]")
        self.frames_rule  # noqa: B018 - parse now so that a bad rule fails at construction

    @property
    def frames_rule(self) -> tuple[str, int | None]:
        """``frames`` parsed into ``(rule, k or N)``."""
        rule, _, arg = self.frames.partition(":")
        if rule == "all_consecutive" and not arg:
            return rule, None
        if rule in ("stride", "first_n_clips") and arg.isdigit() and int(arg) > 0:
            return rule, int(arg)
        raise ConfigError(
            f"TC protocol: frames {self.frames!r} is not all_consecutive, stride:k or first_n_clips:N"
        )

    def counts_pair(self, clip_index: int, t: int) -> bool:
        """Whether the consecutive pair ``(t, t+1)`` of the ``clip_index``-th clip (0-based) takes part."""
        rule, arg = self.frames_rule
        if rule == "stride":
            return t % arg == 0
        if rule == "first_n_clips":
            return clip_index < arg
        return True


_REF = TCProtocol(preset="tc_reference")
_CORRECTED_FLOW = replace(_REF.flow, input_norm="minus1_1", pad="replicate")
PRESETS: dict[str, TCProtocol] = {
    "tc_reference": _REF,
    "strict": replace(
        _REF,
        preset="strict",
        flow=_CORRECTED_FLOW,
        grid="exact",
        out_of_frame="ignore",
        occlusion="fwd_bwd",
        resolution="eval",
        aggregation="pooled",  # per_pair_score is unused under pooled (metrics.md: "-")
    ),
    # VSPW's TC_cal.py: the original RAFT scales 0-255 input to [-1,1] itself; pooled matrix, NaN-mean
    "vspw": replace(_REF, preset="vspw", flow=_CORRECTED_FLOW, aggregation="pooled"),
    # "ETC-style": sums over all pairs, absent classes count 0; RAFT replaces FlowNet2 (recorded in the card)
    "etc": replace(_REF, preset="etc", aggregation="pooled", miou_mode="zero"),
}


def protocol(name: str, **overrides: Any) -> TCProtocol:
    """Preset ``name`` with switches replaced; ``flow=`` takes a partial dict or a :class:`FlowSettings`."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown TC protocol '{name}'{did_you_mean(name, PRESETS)}: use one of {', '.join(PRESETS)}"
        )
    base = PRESETS[name]
    known = {f.name for f in fields(TCProtocol)} - {"preset", "modified"}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown TC protocol switch '{key}'{did_you_mean(key, known)}")
    if isinstance(overrides.get("flow"), dict):
        bad = set(overrides["flow"]) - {f.name for f in fields(FlowSettings)}
        if bad:
            raise ConfigError(
                f"unknown TC flow setting(s) {sorted(bad)}: use {[f.name for f in fields(FlowSettings)]}"
            )
        overrides["flow"] = replace(base.flow, **overrides["flow"])
    return replace(base, **overrides, modified=tuple(sorted(overrides)))


def nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


# ------------------------------------------------------------------------------------------------ the card


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, bool | int | float | str):
        return x
    return str(x)  # paths, dtypes, devices


def protocol_card(
    proto: TCProtocol,
    provider: Any,
    n_clips: int,
    n_pairs: int,
    resolution: tuple[int, int] | list | None,
    num_classes: int,
    model_inference: str,
    device: str,
    software: dict,
) -> dict:
    """The JSON-ready card of ``metrics.md`` §3.6; the provider's own settings overwrite ``proto.flow``."""
    flow = asdict(proto.flow)
    if provider is not None and hasattr(provider, "settings"):
        flow.update(provider.settings() or {})
    card = {
        "preset": proto.preset,
        "modified": list(proto.modified),
        "flow": flow,
        "direction": proto.direction,
        "grid": proto.grid,
        "out_of_frame": proto.out_of_frame,
        "occlusion": proto.occlusion,
        "resolution": resolution,
        "resolution_rule": proto.resolution,
        "frames": {"rule": proto.frames, "n_clips": n_clips, "n_pairs": n_pairs},
        "per_pair_score": proto.per_pair_score if proto.aggregation == "clip_mean" else None,
        "aggregation": proto.aggregation,
        "miou_mode": proto.miou_mode if proto.aggregation == "pooled" else None,
        "num_classes": num_classes,
        "predictions": "argmax of the model output at the evaluation resolution",
        "model_inference": model_inference,
        "software": software,
        "device": device,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    return _jsonable(card)


def default_software() -> dict:
    out = {"torch": torch.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # flow providers other than RAFT do not need it
        pass
    return out


def check_provider(name: str, proto: TCProtocol, provider: Any) -> None:
    """Refuse a provider whose ``settings()`` contradict ``proto.flow`` (only keys both sides state)."""
    given = dict(provider.settings() or {}) if hasattr(provider, "settings") else {}
    given.setdefault("model", given.get("backend"))  # the flow config calls the model 'backend'
    for key in _FLOW_CHECKED:
        have, want = given.get(key), getattr(proto.flow, key)
        if have is not None and str(have) != str(want):
            raise ConfigError(
                f"TC protocol '{name}' wants flow.{key}={want!r} but its provider has {have!r}: build the "
                f"provider from the protocol's flow settings, or override them (flow={{'{key}': {have!r}}})"
            )
