"""The plain-text table of an ``eval.benchmark`` report (what the command prints)."""

from __future__ import annotations

from typing import Any

from eval.key_curve import format_curve, format_key_split
from eval.timing import OTHER_STAGE, SPREAD_WARNING
from models.fast_path import describe as describe_fast_path


def short_settings(value: Any) -> str:
    """A settings dict by its provider or model name (the JSON report has the rest)."""
    if isinstance(value, dict):
        return str(value.get("provider", value.get("model", value)))
    return str(value)


def format_report(report: dict) -> str:
    """A plain-text table of a benchmark report."""
    lines = [
        f"{report['run']} at {report['input_size'][0]}x{report['input_size'][1]}, batch 1, {report['device']}"
    ]
    described = report["video_model"]
    own = {
        k: v for k, v in described.items() if k not in ("method", "inference", "helpers") and v is not None
    }
    lines.append(f"method: {described['method']} ({described['inference']})"
                 + "".join(f", {k} {short_settings(v)}" for k, v in own.items()))  # fmt: skip
    for name, helper in described["helpers"].items():
        lines.append(f"{name}: {short_settings(helper['settings']) if helper else 'none'}")
    lines.append(
        f"  {'model/precision':<16}{'FPS':>8}{'mean ms':>10}{'median':>9}{'p90 ms':>9}{'spread':>8}{'peak MB':>10}"
        "  stages (ms, separate timed pass)"
    )
    warnings = []
    for key, e in report["results"].items():
        if key.startswith("ratio/"):
            continue
        stages = ", ".join(f"{k} {v:.2f}" for k, v in e["stages_ms"].items())
        lines.append(f"  {key:<16}{e['fps']:>8.2f}{e['mean_ms']:>10.2f}{e['median_ms']:>9.2f}{e['p90_ms']:>9.2f}"
                     f"{100 * e['run_spread']:>7.1f}%{e['peak_memory_mb']:>10.0f}  {stages}"
                     f" (= {e['stage_sum_ms']:.2f} per frame)")  # fmt: skip
        if e["noisy"]:
            warnings.append(
                f"  warning: {key}: the timed runs differ by {100 * e['run_spread']:.0f} % (> "
                f"{100 * SPREAD_WARNING:.0f} %): noise, not a speed difference; rerun on a quieter machine"
            )
    lines.append(
        "  FPS and mean ms: the median of the timed runs. Stages: a separate pass with a (synchronising) timer "
        f"around each, split exclusively ('{OTHER_STAGE}' = outside every stage): they add up to that pass's frame "
        "time, which the timers make a little slower than the mean"
    )
    lines += warnings
    for key, v in report["results"].items():
        if key.startswith("ratio/"):
            lines.append(f"  video FPS / image FPS ({key[6:]}): {v:.3f}")
    lines += [
        format_key_split(k, e) for k, e in report["results"].items() if isinstance(e, dict) and "key_ms" in e
    ]
    if "fast_path" in report:
        lines.append(f"  {describe_fast_path(report['fast_path'])}")
    for row in report.get("fast_path_steps", []):
        lines.append(f"  fast path {row['step']:<22}{row['fps']:>8.2f} FPS {row['mean_ms']:>9.2f} ms  "
                     f"x{row['speedup']:.3f} of plain")  # fmt: skip
    if "curve" in report:
        lines.append(format_curve(report))
    return "\n".join(lines)
