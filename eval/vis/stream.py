"""What ``eval.vis.image`` and ``eval.vis.video`` share: arguments, the TC/VC set-up, and per-frame scoring.

Both CLIs stream the clips of a split frame by frame, in order, and hand each prediction to a
:class:`FrameScorer`, which feeds the mIoU confusion matrix (labelled frames), the TC engine (every pair of
consecutive frames, with the protocols asked for) and VC_n (dense labels only), and finally assembles
``metrics.json`` (``metrics.md`` §8). Image and video models are scored by the same code, so their numbers are
comparable.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from config.cli import at_least
from config.errors import ConfigError
from config.files import save_figure
from data.catalog import DatasetInfo
from data.frames import Clip, open_split
from eval.evaluate import amp_dtype, label_map, resolve_device
from eval.metrics import ConfusionMatrix
from eval.tc import TemporalConsistency, protocol
from eval.vc import VideoConsistency
from eval.vis.outputs import RUN_FOLDER_FIX, ResultsFolder, write_csv
from models.fast_path import add_fast_path_args, fast_path_of, prepare_inference
from models.runs import locate_run

TC_ALIASES = {"reference": "tc_reference"}


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Flags both evaluation CLIs take (``ssp.md`` §11.2)."""
    p.add_argument("run", help="run folder name (in --save-dir) or path; 'tag@name' also works")
    p.add_argument("--save-dir", default="checkpoints", help="where runs live (default: checkpoints)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="clip list to evaluate")
    p.add_argument("--evaluation", action=argparse.BooleanOptionalAction, default=True,
                   help="compute mIoU, TC and VC (default: on)")  # fmt: skip
    p.add_argument("--write-res", action=argparse.BooleanOptionalAction, default=True,
                   help="write prediction, colour and overlay PNGs and per-clip videos (default: on, except "
                        "for a logits dump: eval.vis.image --no-evaluation --save-logits)")  # fmt: skip
    p.add_argument("--best-model", action="store_true", help="load best.pth instead of last.pth")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num-workers", type=at_least(0), default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="model precision: fp32 (default) or bf16 autocast; recorded in metrics.json")  # fmt: skip
    add_fast_path_args(p)
    p.add_argument("--tc-protocol", default="reference,strict",
                   help="comma-separated TC presets: reference (= tc_reference), strict, vspw, etc; 'none' skips TC")  # fmt: skip
    p.add_argument("--tc-flow", default="auto",
                   choices=["auto", "raft_large", "raft_small", "dis", "farneback", "gt"],
                   help="flow for TC; auto = the true flow on the synthetic set, raft_large otherwise")  # fmt: skip
    p.add_argument(
        "--tc-flow-weights", default=None, help="local RAFT weights (default: base_checkpoints/...)"
    )
    p.add_argument("--vc", default="8,16", help="VC_n window lengths (dense labels only); 'none' skips VC")
    p.add_argument("--resolution", default="input", choices=["input", "label"],
                   help="where mIoU is computed: the model input size (reference; labels resized nearest) or "
                        "each mask's own size (logits resized bilinearly, then argmax); TC stays at the input size")  # fmt: skip


@dataclass
class EvalSetup:
    """What both evaluation CLIs set up from their common flags: the run, its model on the device, its data."""

    run: Path
    device: torch.device
    model: Any
    cfg: Any
    meta: dict
    info: DatasetInfo
    size: tuple[int, int]
    clips: list[Clip]
    results: ResultsFolder  # <run>/results/<split>/: write into results.path, then results.commit()
    amp: torch.dtype | None  # autocast dtype of --precision (None = fp32)
    fast_path: dict  # what models.fast_path.prepare_inference did (recorded in metrics.json)


def open_run(args: argparse.Namespace, load: Callable[..., tuple[Any, Any, dict]]) -> EvalSetup:
    """Resolve ``--device``, find the run, ``load(run, best)`` its model onto the device, open ``--split``, and
    start its results folder (which checks that the run can be written before any frame is computed)."""
    device = resolve_device(args.device)
    run = locate_run(args.run, args.save_dir)
    model, cfg, meta = load(run, args.best_model)
    model.to(device).eval()
    fast = prepare_inference(model, device, fast_path_of(args))
    _, info, clips = open_split(cfg.data_cfg, args.split)
    results = ResultsFolder(run / "results" / args.split,
                            f"Evaluation of {meta['path']} (epoch {meta.get('epoch')}) on the {args.split} split")  # fmt: skip
    return EvalSetup(run=run, device=device, model=model, cfg=cfg, meta=meta, info=info,
                     size=tuple(cfg.data_cfg.crop_size), clips=clips, results=results,
                     amp=amp_dtype("bf16" if args.precision == "bf16" else "none", device), fast_path=fast)  # fmt: skip


def build_tc(args: argparse.Namespace, info: DatasetInfo, device: torch.device) -> TemporalConsistency | None:
    """The TC engine for ``--tc-protocol`` with one flow provider per distinct flow setting."""
    from models.flow import build_flow  # RAFT and OpenCV flow only when TC is computed

    names = [n.strip() for n in args.tc_protocol.split(",") if n.strip()]
    if names == ["none"]:
        return None
    backend = args.tc_flow if args.tc_flow != "auto" else ("gt" if info.name == "synthetic" else "raft_large")
    protocols, providers, built = {}, {}, {}
    for raw in names:
        name = TC_ALIASES.get(raw, raw)
        flow = {"model": backend}
        if args.tc_flow_weights:
            flow["weights"] = args.tc_flow_weights
        proto = protocol(name, flow=flow)
        key = (backend, proto.flow.iters, proto.flow.input_norm, proto.flow.pad)
        if key not in built:
            built[key] = build_flow(backend, args.tc_flow_weights, proto.flow.iters, proto.flow.input_norm,
                                    proto.flow.pad, device=device, weights_setting="--tc-flow-weights")  # fmt: skip
        protocols[name], providers[name] = proto, built[key]
    return TemporalConsistency(info.num_classes, protocols, providers)


def build_vc(arg: str) -> list[VideoConsistency]:
    if arg.strip() == "none":
        return []
    try:
        ns = [int(v) for v in arg.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--vc: expected window lengths like 8,16 or 'none', got '{arg}'") from None
    return [VideoConsistency(n, windows="vspw", ignore="include") for n in ns]


def scored_prediction(pred: torch.Tensor, label: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
    """The prediction to score against ``label`` [h,w]: ``pred`` [H,W] itself at the label's size, else ``logits``
    [K,H,W] resized bilinearly to ``[h,w]``, then argmax (``--resolution label``, ``metrics.md`` §1)."""
    if tuple(label.shape) == tuple(pred.shape):
        return pred
    if logits is None:
        raise ValueError("a label at another resolution than the prediction needs the logits")
    resized = F.interpolate(
        logits[None].float(), size=tuple(label.shape), mode="bilinear", align_corners=False
    )
    return label_map(resized[0], 0)


class FrameScorer:
    """Per-frame scoring in clip order: mIoU on labelled frames, TC over consecutive frames, VC_n."""

    def __init__(self, info: DatasetInfo, clips: list[Clip], device: torch.device,
                 tc: TemporalConsistency | None, vc: list[VideoConsistency]) -> None:  # fmt: skip
        self.info, self.clips, self.tc, self.vc = info, clips, tc, vc
        self.cm = ConfusionMatrix(info.num_classes, device)
        self.labelled_frames = 0
        self._clip: int | None = None

    def add(self, clip_index: int, t: int, rgb: np.ndarray | torch.Tensor, pred: torch.Tensor,
            label: torch.Tensor | None, logits: torch.Tensor | None = None) -> None:  # fmt: skip
        """Frame ``t`` of clip ``clip_index``: ``rgb`` [H,W,3] uint8, ``pred`` [H,W] ids, ``label`` [h,w] or None.

        A label of another size than ``pred`` (``--resolution label``) is scored against ``logits`` [K,H,W]
        resized bilinearly to the label's size, then argmax (``metrics.md`` §1)."""
        clip = self.clips[clip_index]
        if clip_index != self._clip:
            self._clip = clip_index
            if self.tc is not None:
                self.tc.start_clip(clip.name)
            for v in self.vc:
                v.start_clip(clip.name, n_frames=len(clip))
        if label is not None:
            self.cm.update(scored_prediction(pred, label, logits), label.to(pred.device))
            self.labelled_frames += 1
        if self.tc is not None:
            frame01 = torch.as_tensor(np.asarray(rgb)).to(pred.device).permute(2, 0, 1).float() / 255.0
            nxt = clip.pair(t, t + 1) if t + 1 < len(clip) else None
            self.tc.add(frame01, pred, nxt, t)
        vc_label = label
        if label is not None and tuple(label.shape) != tuple(pred.shape):  # VC_n is defined at the input size
            vc_label = F.interpolate(label[None, None].float(), size=tuple(pred.shape), mode="nearest")[
                0, 0
            ].long()
        for v in self.vc:
            v.add(t, pred, vc_label)

    def metrics(
        self, size: tuple[int, int], model_inference: str, software: dict, resolution: str = "input"
    ) -> dict:
        """The scores of ``metrics.json`` (``metrics.md`` §8), each with its protocol."""
        names = self.info.class_names
        s = self.cm.summary(names)
        out: dict[str, Any] = {
            "miou": {"value": s["miou"], "mode": "nan_exclude", "aggregation": "dataset",
                     "resolution": list(size) if resolution == "input" else "label (each mask's own size)",
                     "label_resize": "nearest" if resolution == "input" else "none; logits resized bilinearly", "ignore_index": self.info.ignore_index, "tta": "none",
                     "frames": self.labelled_frames, "classes": list(names), "per_class": s["per_class"]},
            **{k: s[k] for k in ("miou_zero", "pixel_acc", "mean_class_acc", "fwiou", "fitness", "labelled_pixels",
                                 "confusion_matrix")},
            "model_inference": model_inference,
        }  # fmt: skip
        out["tc"] = self.tc.results(model_inference, software) if self.tc is not None else None
        out["vc"] = {str(v.n): v.result() for v in self.vc} or None
        return out

    def write_tc_files(self, out_dir: Path) -> None:
        """``per_clip_tc.csv`` and a plot of TC per clip for every protocol."""
        if self.tc is None:
            return
        rows = self.tc.per_clip_rows()
        write_csv(out_dir / "per_clip_tc.csv", rows, list(rows[0]) if rows else ["clip", "n_pairs"])
        plot_tc(self.tc, out_dir / "tc_over_time.png")


def plot_tc(tc: TemporalConsistency, path: Path) -> None:
    """TC of each consecutive pair over time, one line per clip and protocol (clip_mean protocols)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = tc.pair_series()
    if not series:
        return
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for (name, clip), values in series.items():
        ts, vs = zip(*values, strict=True)
        ax.plot(ts, vs, lw=1, label=f"{name} {clip}" if len(series) <= 12 else None)
    ax.set_xlabel("frame t (pair t, t+1)")
    ax.set_ylabel("TC of the pair")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path, fix=RUN_FOLDER_FIX)
