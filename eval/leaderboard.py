"""The files of ``eval.compare``: ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.png``.

The CSV keeps every value exactly as the runs' own files store it (scores as fractions, FPS as the benchmark
rounded them), so a script can check it against ``metrics.json``; the Markdown table shows the same values as
percentages and rounded figures for people. Rows arrive already ranked (see ``eval.compare``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from config.files import atomic_write_text, check_writable, save_figure

OUT_FIX = "pass another --out folder"
# Columns in order (``vc_<n>`` columns, one per VC window length the runs have, follow ``tc_strict``; ``min_miou``
# follows ``miou`` when some row has it, see :func:`columns`).
COLUMNS = ("rank", "method", "config", "run", "image_run", "miou", "tc_reference", "tc_strict", "fps",
           "fps_vs_image", "params", "peak_memory_mb", "peak_memory_kind", "train_min", "device")  # fmt: skip
# Markdown titles; columns not named here are CSV only.
TITLES = {
    "rank": "#", "method": "Method", "config": "Config", "run": "Run", "image_run": "Image run", "miou": "mIoU %",
    "min_miou": "min mIoU %",
    "tc_reference": "TC ref %", "tc_strict": "TC strict %", "fps": "FPS", "fps_vs_image": "x image",
    "params": "Params (M)", "peak_memory_mb": "Peak MB", "train_min": "Train min",
}  # fmt: skip
PERCENT = ("miou", "min_miou", "tc_reference", "tc_strict")
# The optional column of keyframe methods: metrics.json ``key_cycle.min_miou``, the mIoU of the frame just before
# the next keyframe (the worst of the cycle; ``eval.key_cycle``). Only keyframe rows have the key.
MIN_MIOU = "min_miou"


def columns(rows: list[dict]) -> list[str]:
    """:data:`COLUMNS` with the rows' ``vc_<n>`` columns after ``tc_strict``, and ``min_miou`` after ``miou`` when
    some row has it (a table without keyframe methods keeps its columns)."""
    vc = sorted({k for r in rows for k in r if k.startswith("vc_")}, key=lambda k: int(k[3:]))
    i = COLUMNS.index("tc_strict") + 1
    cols = [*COLUMNS[:i], *vc, *COLUMNS[i:]]
    if any(MIN_MIOU in r for r in rows):
        cols.insert(cols.index("miou") + 1, MIN_MIOU)
    return cols


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key in PERCENT or key.startswith("vc_"):
        return f"{100 * value:.2f}"
    if key == "params":
        return f"{value / 1e6:.2f}"
    if key == "fps_vs_image":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value).replace("|", "/")


def markdown(rows: list[dict], settings: dict) -> str:
    """The ranked table with the protocol every row shares."""
    cols = [c for c in columns(rows) if c in TITLES or c.startswith("vc_")]
    titles = [TITLES.get(c, f"VC_{c[3:]} %") for c in cols]
    lines = [
        "# Leaderboard",
        "",
        f"{settings['dataset']} {settings['split']} split, input {settings['input_size'][0]}x{settings['input_size'][1]}, "
        f"{settings['precision']}; benchmark on {settings['device']} ({json.dumps(settings['benchmark'])}); "
        f"TC flow: {json.dumps(settings['tc_flow'])}.",
        "",
        "Ranked by mIoU (highest first), ties by TC (`tc_reference`): TC alone rewards a constant prediction. "
        "Every number is read from the run's `results/<split>/metrics.json` and `benchmark/*.json`; 'x image' is "
        "the FPS relative to the run's own image network on the same frames and device; training time is the sum "
        "of the epochs' times in the run's `metrics.json`. Peak memory on CPU is the benchmark process's own peak RSS (VmHWM).",
        *(["", "'min mIoU' (keyframe methods; the key interval is in the method's name) is the mIoU of the frames "
           "just before the next keyframe, the worst of the key cycle (`key_cycle.min_miou` in `metrics.json`)."]
          if MIN_MIOU in cols else []),
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]  # fmt: skip
    for r in rows:
        lines.append("| " + " | ".join(_cell(c, r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """Every column, values as stored (``repr`` of floats, so they read back equal)."""
    import csv

    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return text.getvalue()


def scatter(rows: list[dict], path: Path) -> None:
    """TC (``tc_reference``; ``strict`` as hollow markers) against mIoU, marker area proportional to FPS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    top = max((r["fps"] for r in rows), default=1.0) or 1.0
    for r in rows:
        size = 40 + 400 * r["fps"] / top
        x = 100 * r["miou"]
        if r["tc_reference"] is not None:
            ax.scatter(x, 100 * r["tc_reference"], s=size, alpha=0.6)
            ax.annotate(f"{r['rank']}. {r['config'] or r['run']} ({r['fps']:.1f} FPS)", (x, 100 * r["tc_reference"]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")  # fmt: skip
        if r["tc_strict"] is not None:
            ax.scatter(x, 100 * r["tc_strict"], s=size, facecolors="none", edgecolors="grey")
    ax.set_xlabel("mIoU %")
    ax.set_ylabel("TC % (filled: tc_reference, hollow: strict)")
    ax.set_title("TC against mIoU; marker area proportional to FPS")
    ax.grid(alpha=0.3)
    save_figure(fig, path, fix=OUT_FIX)


def write_leaderboard(out: Path, rows: list[dict], settings: dict) -> list[Path]:
    """Number the ranked rows and write the three files (each atomically); returns their paths."""
    check_writable(out, fix=OUT_FIX)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    md, csv_path, png = out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.png"
    atomic_write_text(md, markdown(rows, settings), fix=OUT_FIX)
    atomic_write_text(csv_path, csv_text(rows), fix=OUT_FIX)
    scatter(rows, png)
    return [md, csv_path, png]
