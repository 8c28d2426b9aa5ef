"""Temporal consistency (TC): one engine with explicit switches, named presets and a protocol card.

``metrics.md`` §3. For consecutive frames ``t, t+1`` with predictions ``P_t, P_{t+1}`` [H,W] and the forward
flow ``F_t`` [2,H,W] (on frame t, pointing into t+1), ``P_{t+1}`` is pulled back onto frame t with nearest
sampling and compared with ``P_t`` through a C x C matrix (rows = ``P_t``, columns = warped ``P_{t+1}``).
Pairs are scored and aggregated as the :class:`TCProtocol` says; every number travels with its card (§3.6).

Flow comes from a provider (duck-typed): ``provider(img1, img2, pairs=None) -> [B,2,H,W]`` float32 for RGB
frames in [0,1], plus ``provider.settings() -> dict``. The provider normalises its own input, so whoever builds
it must use ``proto.flow`` (``input_norm``, ``pad``, ``iters`` ...); :class:`TemporalConsistency` refuses a
provider whose settings contradict its protocol, because the card would then describe a flow it did not use.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from config.errors import ConfigError
from data.frames import FramePair
from eval.metrics import ConfusionMatrix
from eval.tc_protocol import (  # re-exported: eval.tc is the one import for evaluation code
    PRESETS,
    FlowSettings,
    TCProtocol,
    check_provider,
    default_software,
    nan_to_none,
    protocol,
    protocol_card,
)
from models.warp import flow_warp, fwd_bwd_occlusion

__all__ = [
    "PRESETS",
    "FlowSettings",
    "TCAccumulator",
    "TCProtocol",
    "TemporalConsistency",
    "check_provider",
    "pair_confusion",
    "pair_score",
    "protocol",
    "protocol_card",
]


# ------------------------------------------------------------------------------------------------ one pair


def pair_confusion(
    pred_t: Tensor,
    pred_t1: Tensor,
    flow_fwd: Tensor,
    num_classes: int,
    proto: TCProtocol,
    flow_bwd: Tensor | None = None,
) -> Tensor:
    """C x C int64 matrix (rows = ``P_t``, columns = ``P_{t+1}`` warped onto frame t) on ``pred_t``'s device.

    ``pred_t``, ``pred_t1``: [H,W] long; ``flow_fwd``: [2,H,W] (t -> t+1, on frame t); ``flow_bwd``: [2,H,W]
    (t+1 -> t, on frame t+1), required when ``proto.occlusion`` is not ``none``.
    """
    dev = pred_t.device
    h, w = pred_t.shape
    fwd = flow_fwd.to(dev, torch.float32).unsqueeze(0)
    warped, inside = flow_warp(pred_t1.to(dev).view(1, 1, h, w), fwd, mode="nearest", grid=proto.grid)
    warped, inside = warped[0, 0], inside[0]
    if proto.out_of_frame == "class0":
        # the reference takes the zero padding as a label; explicit so the rule does not hang on the padding
        warped = torch.where(inside, warped, torch.zeros_like(warped))
        valid = torch.ones_like(inside)
    else:
        valid = inside
    if proto.occlusion != "none":
        if flow_bwd is None:
            raise ValueError(f"occlusion={proto.occlusion} needs the backward flow (t+1 -> t)")
        bwd = flow_bwd.to(dev, torch.float32).unsqueeze(0)
        valid = valid & ~fwd_bwd_occlusion(fwd, bwd, simplified=proto.occlusion == "fwd_bwd_simplified")[0]
    cm = ConfusionMatrix(num_classes, dev)
    cm.update(warped, pred_t.to(dev), valid)
    return cm.mat


def _matrix(mat: Tensor) -> ConfusionMatrix:
    cm = ConfusionMatrix(mat.shape[0], mat.device)
    cm.mat = mat
    return cm


def pair_score(mat: Tensor, score: str) -> float:
    """Score of one pair's matrix; NaN when no pixel took part (or, for mIoU, no class is present)."""
    if int(mat.sum()) == 0:  # no evidence (all out of frame / occluded): excluded rather than scored 0
        return math.nan
    cm = _matrix(mat)
    if score == "pixel_acc":
        return cm.pixel_acc()
    return cm.miou("zero" if score == "miou_zero" else "nan_exclude")


# --------------------------------------------------------------------------------------------- aggregation


class TCAccumulator:
    """Aggregates pair matrices by ``proto.aggregation`` (``metrics.md`` §3.2, §3.3).

    ``clip_mean``: pair score -> NaN-mean per clip -> NaN-mean over clips (NaN pairs / clips are excluded).
    ``pooled``: one matrix over all pairs of all clips -> mIoU in ``proto.miou_mode``; per-clip matrices give
    the per-clip breakdown. Memory: O(C^2) per clip, nothing per pair.
    """

    def __init__(self, num_classes: int, proto: TCProtocol) -> None:
        self.num_classes, self.proto = num_classes, proto
        self.pooled: Tensor | None = None
        self._clips: dict[str, dict] = {}  # clip -> n_pairs, last_t, sum, count (clip_mean) or mat (pooled)
        self.series: dict[str, list[tuple[int, float]]] = {}  # clip -> [(t, score of pair (t, t+1))]

    def add(self, clip: str, t: int, cm: Tensor | ConfusionMatrix) -> None:
        """Add the matrix of pair ``(t, t+1)`` of ``clip``; pairs of a clip must come in increasing ``t``."""
        mat = cm.mat if isinstance(cm, ConfusionMatrix) else cm
        st = self._clips.setdefault(clip, {"n_pairs": 0, "last_t": -1, "sum": 0.0, "count": 0, "mat": None})
        if t <= st["last_t"]:  # would count a pair twice
            raise ValueError(f"TC pair {t} of clip '{clip}' added after pair {st['last_t']}")
        st["last_t"] = t
        st["n_pairs"] += 1
        # one float per pair for the TC-over-time plot (pooled protocols: the pair's own mIoU in miou_mode)
        score = (
            self.proto.per_pair_score
            if self.proto.aggregation == "clip_mean"
            else f"miou_{self.proto.miou_mode}"
        )
        self.series.setdefault(clip, []).append((t, pair_score(mat, score)))
        if self.proto.aggregation == "pooled":
            st["mat"] = mat.clone() if st["mat"] is None else st["mat"] + mat
            self.pooled = mat.clone() if self.pooled is None else self.pooled + mat
        else:
            s = pair_score(mat, self.proto.per_pair_score)
            if not math.isnan(s):
                st["sum"] += s
                st["count"] += 1

    def _clip_value(self, st: dict) -> float:
        if self.proto.aggregation == "pooled":
            return math.nan if st["mat"] is None else _matrix(st["mat"]).miou(self.proto.miou_mode)
        return st["sum"] / st["count"] if st["count"] else math.nan

    def value(self) -> float:
        """The TC of everything added so far; NaN when no pair was scored."""
        if self.proto.aggregation == "pooled":
            return math.nan if self.pooled is None else _matrix(self.pooled).miou(self.proto.miou_mode)
        vals = [v for v in map(self._clip_value, self._clips.values()) if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else math.nan

    def per_clip(self) -> list[dict]:
        """``[{"clip", "n_pairs", "tc" (None when undefined)}]`` in the order the clips were first added."""
        return [
            {"clip": c, "n_pairs": st["n_pairs"], "tc": nan_to_none(self._clip_value(st))}
            for c, st in self._clips.items()
        ]

    @property
    def n_pairs(self) -> int:
        return sum(st["n_pairs"] for st in self._clips.values())

    @property
    def n_clips(self) -> int:
        return len(self._clips)


# ------------------------------------------------------------------------------------------- the driver


def _reverse(pair: FramePair) -> FramePair:
    return FramePair(pair.second_path, pair.first_path, pair.second, pair.first)


class TemporalConsistency:
    """Streaming TC over clips for several protocols at once (``metrics.md`` §3.5).

    Call :meth:`start_clip`, then :meth:`add` for the frames of the clip in order. Only the previous frame and
    prediction are kept, so memory does not grow with the video. A pair counts only when both frames are truly
    consecutive (``index == previous index + 1``): with skipped frames only the ``(i, i+1)`` pairs present count
    (§3.4h). Protocols given the same provider object share its flows for a pair (computed once).
    """

    def __init__(
        self, num_classes: int, protocols: dict[str, TCProtocol], flow_providers: dict[str, Any]
    ) -> None:
        missing = [n for n in protocols if n not in flow_providers]
        if missing:
            raise ConfigError(f"TC: no flow provider for protocol(s) {missing}")
        for name, proto in protocols.items():
            check_provider(name, proto, flow_providers[name])
        self.num_classes, self.protocols, self.providers = num_classes, dict(protocols), flow_providers
        self.acc = {n: TCAccumulator(num_classes, p) for n, p in protocols.items()}
        self.flow_calls = 0
        self._prev: tuple[Tensor, Tensor, FramePair | None, int] | None = None
        self._clip: str | None = None
        self._clip_pairs: dict[str, int] = {}  # clip -> consecutive pairs seen (whatever the frames rules)
        self._sizes: list[tuple[int, int]] = []
        self._device = "cpu"

    def start_clip(self, name: str) -> None:
        if name in self._clip_pairs:
            raise ValueError(f"TC: clip '{name}' started twice")
        self._clip, self._prev = name, None
        self._clip_pairs[name] = 0

    def add(self, frame01: Tensor, pred: Tensor, pair_to_next: FramePair | None, index: int) -> None:
        """Frame ``index`` of the current clip: ``frame01`` [3,H,W] RGB in [0,1], ``pred`` [H,W] long.

        ``pair_to_next`` is the :class:`FramePair` ``(index, index+1)`` handed to the provider as ``pairs=[..]``
        (needed by stored / ground-truth flows), or None. Tensors must not be modified in place afterwards.
        """
        if self._clip is None:
            raise RuntimeError("TC: call start_clip() before add()")
        if frame01.dim() != 3 or frame01.shape[0] != 3 or pred.shape != frame01.shape[1:]:
            raise ValueError(
                f"TC: frame {tuple(frame01.shape)} must be [3,H,W] and pred {tuple(pred.shape)} [H,W]"
            )
        hw = (int(pred.shape[0]), int(pred.shape[1]))
        if hw not in self._sizes:
            self._sizes.append(hw)
        self._device = str(pred.device)
        prev, self._prev = self._prev, (frame01, pred, pair_to_next, index)  # the previous frame is dropped
        if prev is None or index != prev[3] + 1:
            return
        frame0, pred0, pair, t = prev
        if pair is not None and (pair.first, pair.second) != (t, index):
            raise ValueError(
                f"TC: pair_to_next of frame {t} is ({pair.first}, {pair.second}), not ({t}, {index})"
            )
        clip_index = len(self._clip_pairs) - 1
        self._clip_pairs[self._clip] += 1
        flows: dict[tuple[int, bool], Tensor] = {}  # (provider id, backward) -> flow of this pair only
        for name, proto in self.protocols.items():
            if not proto.counts_pair(clip_index, t):
                continue
            if isinstance(proto.resolution, tuple) and proto.resolution != hw:
                raise ValueError(f"TC protocol '{name}' is defined at {proto.resolution}, maps are {hw}")
            prov = self.providers[name]
            fwd = self._flow(prov, flows, frame0, frame01, pair, backward=False)
            bwd = (
                None
                if proto.occlusion == "none"
                else self._flow(prov, flows, frame0, frame01, pair, backward=True)
            )
            self.acc[name].add(self._clip, t, pair_confusion(pred0, pred, fwd, self.num_classes, proto, bwd))

    def _flow(
        self, prov: Any, cache: dict, a: Tensor, b: Tensor, pair: FramePair | None, backward: bool
    ) -> Tensor:
        """Flow ``a -> b`` [2,H,W] (``b -> a`` if ``backward``) from ``prov``, computed once per pair."""
        key = (id(prov), backward)
        if key not in cache:
            img1, img2 = (b, a) if backward else (a, b)
            pairs = None if pair is None else [_reverse(pair) if backward else pair]
            with torch.no_grad():
                f = prov(img1.unsqueeze(0), img2.unsqueeze(0), pairs=pairs)
            if tuple(f.shape) != (1, 2, *a.shape[1:]):
                raise ValueError(
                    f"TC: flow provider returned {tuple(f.shape)}, expected (1, 2, {a.shape[1]}, {a.shape[2]})"
                )
            cache[key] = f[0].float()
            self.flow_calls += 1
        return cache[key]

    def results(self, model_inference: str = "per frame (image)", software: dict | None = None) -> dict:
        """``{name: {"value": float | None, "tc_protocol": card}}`` for every protocol."""
        res = list(self._sizes[0]) if len(self._sizes) == 1 else [list(s) for s in self._sizes] or None
        sw = software if software is not None else default_software()
        out = {}
        for name, proto in self.protocols.items():
            acc = self.acc[name]
            card = protocol_card(
                proto, self.providers[name], acc.n_clips, acc.n_pairs, res, self.num_classes,
                model_inference, self._device, sw,
            )  # fmt: skip
            out[name] = {"value": nan_to_none(acc.value()), "tc_protocol": card}
        return out

    def pair_series(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        """``{(protocol, clip): [(t, score of pair (t, t+1)), ...]}`` for plots of TC over time."""
        return {(n, clip): pts for n, acc in self.acc.items() for clip, pts in acc.series.items()}

    def per_clip_rows(self) -> list[dict]:
        """One row per clip: ``clip``, ``n_pairs`` (consecutive pairs seen), one TC column per protocol."""
        per = {n: {r["clip"]: r["tc"] for r in acc.per_clip()} for n, acc in self.acc.items()}
        return [
            {"clip": c, "n_pairs": k, **{n: per[n].get(c) for n in self.protocols}}
            for c, k in self._clip_pairs.items()
        ]
