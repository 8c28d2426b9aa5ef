"""Keyframe latency and the accuracy/speed curve of a keyframe method, for :mod:`eval.benchmark`.

A method whose streamed frames report ``key_distance`` (DFF, keyframe propagation) has two latencies: keyframes
(the image network) and non-keyframes (flow, warp, refinement). ``other_methods.md`` §4.7 and ``metrics.md`` §7
report both and the average over one key cycle of interval ``i`` (``i`` non-keyframes per keyframe):
``cycle FPS = (i + 1) / (t_key + i * t_nonkey)``. This differs from the FPS measured over streamed clips, where
every clip start is an extra keyframe.

``--intervals`` turns §4.8's table (interval, avg / min mIoU, FPS) into a curve: for each interval the benchmark
times the method again (:func:`measure_curve` sets ``interval``, the caller's ``time_interval`` times it) and,
optionally, scores it by key distance (:func:`eval.key_cycle.score_key_cycle`). Nothing here names a method: a
model offers the ``interval`` runtime option or it does not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config.errors import ConfigError
from config.files import save_figure
from data.catalog import DatasetInfo
from data.frames import Clip
from eval.key_cycle import key_phases, score_key_cycle
from eval.vis.outputs import RUN_FOLDER_FIX
from models.video.base import VideoModel


def parse_intervals(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (sorted, duplicates dropped); anything else is a one-line ConfigError."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise ConfigError(
            f"--intervals must be whole numbers >= 0 separated by commas (e.g. 0,1,2,3,4), got '{text}'"
        )
    return sorted(set(values))


def check_curve_model(model: VideoModel) -> None:
    """``--intervals`` needs a model offering the ``interval`` option (a keyframe method)."""
    offered = model.options()
    if "interval" not in offered:
        have = ", ".join(offered) if offered else "none"
        raise ConfigError(
            f"--intervals: method '{model.method}' has no keyframe interval option (it offers: {have}); "
            "use it with a keyframe method (DFF, keyframe)"
        )


def cycle_fps(key_ms: float | None, nonkey_ms: float | None, interval: int | None) -> float | None:
    """Frames per second averaged over one key cycle: ``(i + 1) / (t_key + i * t_nonkey) * 1000``; None when a
    latency the formula needs was not measured (``t_nonkey`` is not needed at ``i = 0``)."""
    if interval is None or key_ms is None or (interval > 0 and nonkey_ms is None):
        return None
    return (interval + 1) / (key_ms + interval * (nonkey_ms or 0.0)) * 1000.0


def key_split(
    latencies: list[float], distances: list[int | None], interval: int | None
) -> dict[str, Any] | None:
    """Keyframe and non-keyframe latency of one timed run (``distances[k]``: the key distance of frame ``k``).

    Returns ``{interval, key_ms, nonkey_ms, key_frames, nonkey_frames, cycle_fps}`` (None for an absent kind),
    or None when no frame reports a key distance (a method without keyframes: its entry is left as it was).
    """
    if all(d is None for d in distances):
        return None
    key = [ms for ms, d in zip(latencies, distances, strict=True) if d == 0]
    other = [ms for ms, d in zip(latencies, distances, strict=True) if d is not None and d > 0]
    key_ms = statistics.fmean(key) if key else None
    nonkey_ms = statistics.fmean(other) if other else None
    fps = cycle_fps(key_ms, nonkey_ms, interval)
    return {"interval": interval, "key_ms": _round(key_ms, 3), "nonkey_ms": _round(nonkey_ms, 3),
            "key_frames": len(key), "nonkey_frames": len(other),
            "cycle_fps": _round(fps, 2)}  # fmt: skip


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class CurveScoring:
    """Where ``--curve-miou`` scores each interval: ``clips`` of a labelled split (``info`` its dataset), fed at
    ``size`` (the run's crop size) on ``device`` under ``amp`` autocast (None = fp32)."""

    info: DatasetInfo
    clips: list[Clip]
    size: tuple[int, int]
    device: torch.device
    amp: torch.dtype | None = None
    num_workers: int = 0


def measure_curve(
    model: VideoModel, intervals: list[int], time_interval: Callable[[], dict[str, Any]],
    scoring: CurveScoring | None = None, image_fps: float | None = None, precision: str = "fp32",
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per interval: ``model.set_options(interval=i)``, then ``time_interval()`` (a summarised timing
    entry with its :func:`key_split`) and, with ``scoring``, avg / min mIoU by key distance
    (:func:`~eval.key_cycle.score_key_cycle`, the phases of :func:`~eval.key_cycle.key_phases` ``auto``), at
    ``precision`` (a label). ``image_fps``: the per-frame image network's FPS, for the ``ratio`` column. The
    model's interval and key phase are restored afterwards, whatever happens."""
    check_curve_model(model)
    start = {k: v for k, v in model.options().items() if k in ("interval", "key_phase")}
    rows: list[dict[str, Any]] = []
    try:
        for i in intervals:
            model.set_options(interval=i)
            t = time_interval()
            row: dict[str, Any] = {"precision": precision, "interval": i}
            row.update({k: t.get(k) for k in ("key_ms", "nonkey_ms", "key_frames", "nonkey_frames", "cycle_fps", "fps",
                                              "mean_ms", "run_spread", "noisy")})  # fmt: skip
            row["image_fps"] = image_fps
            row["ratio"] = (
                round(row["cycle_fps"] / image_fps, 3) if image_fps and row["cycle_fps"] is not None else None
            )
            if scoring is not None:
                sc = scoring
                s = score_key_cycle(model, sc.clips, sc.info, sc.size, sc.device, sc.amp, sc.num_workers,
                                    key_phases(model, sc.clips, "auto"), desc=f"curve {precision}")  # fmt: skip
                row.update(avg_miou=s["avg_miou"], min_miou=s["min_miou"], phases=s["phases"],
                           per_distance=s["per_distance"])  # fmt: skip
            rows.append(row)
    finally:
        model.set_options(**start)  # interval first: setting it resets the phase, which then comes back
    return rows


def curve_fields(rows: list[dict[str, Any]], plot: Path | None, miou_source: str | None) -> dict[str, Any]:
    """The report's curve keys: ``curve`` (the rows), ``monotonic`` (cycle FPS non-decreasing and, where scored,
    avg mIoU non-increasing with the interval), ``monotonic_detail`` (:func:`curve_trend`), ``curve_plot`` and
    ``curve_miou_source`` (None when not scored)."""
    trend = curve_trend(rows)
    return {"curve": rows, "monotonic": trend["cycle_fps"] and trend["avg_miou"] is not False,
            "monotonic_detail": trend, "curve_plot": None if plot is None else str(plot),
            "curve_miou_source": miou_source}  # fmt: skip


def _non_increasing(values: list[float | None]) -> bool:
    return None not in values and all(b <= a for a, b in zip(values, values[1:], strict=False))


def curve_trend(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """Whether the curve falls monotonically, for every precision's rows in order of interval: ``cycle_fps``
    non-decreasing, ``avg_miou`` non-increasing (None when not scored). A missing figure breaks the trend."""
    fps_ok, miou_ok = True, True
    scored = any("avg_miou" in r for r in rows)
    for prec in dict.fromkeys(r["precision"] for r in rows):
        mine = sorted((r for r in rows if r["precision"] == prec), key=lambda r: r["interval"])
        fps = [r["cycle_fps"] for r in mine]
        fps_ok = fps_ok and _non_increasing([None if v is None else -v for v in fps])
        if scored:
            miou_ok = miou_ok and _non_increasing([r.get("avg_miou") for r in mine])
    return {"cycle_fps": fps_ok, "avg_miou": miou_ok if scored else None}


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """avg mIoU (solid) and min mIoU (dashed) against cycle FPS, one point per interval annotated ``i=..``, one
    colour per precision, the image network's FPS as a dotted vertical line. Rows without mIoU are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for prec in dict.fromkeys(r["precision"] for r in rows):
        mine = [r for r in sorted(rows, key=lambda r: r["interval"])
                if r["precision"] == prec and r.get("avg_miou") is not None and r["cycle_fps"] is not None]  # fmt: skip
        if not mine:
            continue
        x = [r["cycle_fps"] for r in mine]
        (line,) = ax.plot(x, [100 * r["avg_miou"] for r in mine], "o-", label=f"avg mIoU ({prec})")
        low = [(r["cycle_fps"], 100 * r["min_miou"]) for r in mine if r["min_miou"] is not None]
        if low:
            ax.plot(
                *zip(*low, strict=True), "s--", color=line.get_color(), alpha=0.7, label=f"min mIoU ({prec})"
            )
        for r in mine:
            ax.annotate(f"i={r['interval']}", (r["cycle_fps"], 100 * r["avg_miou"]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
        if mine[0]["image_fps"]:
            ax.axvline(mine[0]["image_fps"], color=line.get_color(), linestyle=":", alpha=0.6,
                       label=f"image network FPS ({prec})")  # fmt: skip
    ax.set_xlabel("cycle FPS = (i + 1) / (t_key + i t_nonkey)")
    ax.set_ylabel("mIoU %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, fix=RUN_FOLDER_FIX)


def format_key_split(name: str, e: dict[str, Any]) -> str:
    """One table line: a timed entry's keyframe / non-keyframe latency and its cycle FPS."""

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    fps = "n/a" if e["cycle_fps"] is None else f"{e['cycle_fps']:.2f}"
    return (f"  {name}: keyframes {ms(e['key_ms'])} ({e['key_frames']} frames), non-keyframes {ms(e['nonkey_ms'])} "
            f"({e['nonkey_frames']} frames); cycle FPS at interval {e['interval']}: {fps}")  # fmt: skip


def format_curve(report: dict[str, Any]) -> str:
    """The curve as the reference's table: interval, key / non-key ms, cycle FPS, its ratio to the image
    network, the FPS over the streamed clips, avg and min mIoU; then whether it falls monotonically."""

    def num(v: float | None, width: int, scale: float = 1.0) -> str:
        return f"{'-':>{width}}" if v is None else f"{scale * v:>{width}.2f}"

    lines = [f"key cycle curve (mIoU: {report.get('curve_miou_source') or 'not scored'}):"]
    lines.append(f"  {'prec':<6}{'interval':>9}{'key ms':>9}{'non-key ms':>12}{'cycle FPS':>11}{'/ image':>9}"
                 f"{'stream FPS':>12}{'avg mIoU':>10}{'min mIoU':>10}")  # fmt: skip
    for r in report["curve"]:
        lines.append(f"  {r['precision']:<6}{r['interval']:>9}{num(r['key_ms'], 9)}{num(r['nonkey_ms'], 12)}"
                     f"{num(r['cycle_fps'], 11)}{num(r['ratio'], 9)}{num(r['fps'], 12)}"
                     f"{num(r.get('avg_miou'), 10, 100)}{num(r.get('min_miou'), 10, 100)}")  # fmt: skip
    trend = report["monotonic_detail"]
    parts = [f"cycle FPS {'non-decreasing' if trend['cycle_fps'] else 'NOT non-decreasing'}"]
    if trend["avg_miou"] is not None:
        parts.append(f"avg mIoU {'non-increasing' if trend['avg_miou'] else 'NOT non-increasing'}")
    lines.append(
        f"  monotonic: {'yes' if report['monotonic'] else 'no'} ({', '.join(parts)} with the interval)"
    )
    images = {r["precision"]: r["image_fps"] for r in report["curve"] if r["image_fps"]}
    if images:
        lines.append(
            "  '/ image' = cycle FPS / the image network's FPS ("
            + ", ".join(f"{p} {v:.2f}" for p, v in images.items())
            + ") on the same frames and device"
        )
    lines.append(f"  plot: {report['curve_plot'] or 'none (no mIoU scored)'}")
    return "\n".join(lines)
