"""Rank runs side by side: ``python -m eval.compare RUN [RUN ...] [--out DIR] [--split val] [--device cpu]``.

For each run it reads ``<run>/results/<split>/metrics.json`` (written by ``eval.vis.image`` for an image run,
``eval.vis.video`` for a video run) and its speed report ``<run>/benchmark/<device>_<H>x<W>_<precision>.json``
(``eval.benchmark``); whichever is missing is computed first with this command's settings (evaluations in this
process, benchmarks in their own, so that a CPU peak memory is the benchmark's alone).
It then writes ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.png`` (TC against mIoU, marker area
proportional to FPS) to ``--out``. Every number is copied from those files, never recomputed.

Runs are ranked only when they were measured the same way: same split, dataset, mIoU protocol, TC protocol cards
(every field except software versions, device and inference kind, which describe the model or the machine, not
the measurement) and benchmark setting (device, input size, threads). Otherwise the command stops with one line
naming the first field that differs. Order: mIoU, highest first; ties by TC (``tc_reference``), then run name.
mIoU leads because TC alone rewards a constant prediction (``metrics.md`` §3.1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from config.cli import CliParser, at_least
from config.errors import CheckpointError, ConfigError, run_cli
from eval.benchmark_report import short_settings
from eval.evaluate import resolve_device
from eval.leaderboard import columns, write_leaderboard
from models.runs import architecture_of, load_streaming_model, locate_run
from training.kinds import EVALUATE

# TC protocol card fields that describe the model or the machine, not how TC was measured.
CARD_EXEMPT = ("software", "device", "model_inference", "deterministic")
# mIoU protocol fields (metrics.json "miou" entry) that must match; "value" and "per_class" are the results.
MIOU_FIELDS = (
    "mode",
    "aggregation",
    "resolution",
    "label_resize",
    "ignore_index",
    "tta",
    "frames",
    "classes",
)
# Benchmark report fields that must match for FPS to be comparable (metrics.md §7: same device and software).
BENCH_FIELDS = ("device", "input_size", "threads", "batch_size")

REPO = Path(__file__).resolve().parents[1]  # where `python -m eval.benchmark` runs from


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder names (in --save-dir) or paths")
    p.add_argument("--save-dir", default="checkpoints", help="where runs live (default: checkpoints)")
    p.add_argument("--out", default=None, help="output folder (default: <save-dir>/leaderboard)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device of missing evaluations and benchmarks (and of the benchmark file read)")  # fmt: skip
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--tc-protocol", default="reference,strict", help="TC presets of missing evaluations")
    p.add_argument("--num-workers", type=at_least(0), default=2, help="data workers of missing evaluations")
    p.add_argument("--frames", type=at_least(1), default=200, help="timed frames of missing benchmarks")
    p.add_argument("--warmup", type=at_least(0), default=20, help="untimed frames of missing benchmarks")
    p.add_argument("--bench-runs", type=at_least(1), default=3, help="timed runs of missing benchmarks")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="CPU torch threads of missing benchmarks (part of the benchmark file name)")  # fmt: skip
    return p


@dataclass
class Entry:
    """One run and the files its row is read from."""

    run: Path
    kind: str  # image | video
    config: dict  # the run's config.yaml
    metrics: dict
    metrics_path: Path
    bench: dict
    bench_path: Path


def run_kind(run: Path) -> tuple[str, dict]:
    """(``image`` or ``video``, the run's config.yaml) — read from config.yaml, cheaper than the checkpoint."""
    path = run / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(
            f"{path}: unreadable ({type(err).__name__}); is {run} a tcseg run folder?"
        ) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a tcseg config; is {run} a tcseg run folder?")
    return ("video" if "video_model_cfg" in cfg else "image"), cfg


def input_size(metrics: dict, cfg: dict) -> tuple[int, int]:
    """The evaluation input size (the benchmark times the same size): from the TC cards or the mIoU entry."""
    for entry in (metrics.get("tc") or {}).values():
        res = entry.get("tc_protocol", {}).get("resolution")
        if isinstance(res, list):
            return int(res[0]), int(res[1])
    res = metrics.get("miou", {}).get("resolution")
    if isinstance(res, list):
        return int(res[0]), int(res[1])
    h, w = cfg["data_cfg"]["crop_size"]
    return int(h), int(w)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path}: unreadable ({type(err).__name__}); delete it and rerun to recompute it"
        ) from None


def time_in_own_process(argv: list[str]) -> None:
    """Run ``eval.benchmark`` in a fresh process: on the CPU its peak memory is the process's peak RSS, which in
    this process would include every evaluation and benchmark run before it. Its progress goes to our stdout; its
    one-line user error becomes ours."""
    proc = subprocess.run([sys.executable, "-m", "eval.benchmark", *argv], cwd=REPO, stderr=subprocess.PIPE,
                          text=True, check=False)  # fmt: skip
    if proc.returncode == 2:
        raise ConfigError(f"eval.benchmark {argv[0]}: {proc.stderr.strip().splitlines()[-1]}")
    if proc.returncode != 0:
        raise RuntimeError(f"eval.benchmark {' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr}")


def gather(run: Path, args: argparse.Namespace, device_type: str) -> Entry:
    """A run's metrics and benchmark report, computing whichever is missing (in process, with these settings)."""
    kind, cfg = run_kind(run)
    metrics_path = run / "results" / args.split / "metrics.json"
    if not metrics_path.is_file():
        print(f"== [compare] {run.name}: no {args.split} results yet, evaluating")
        EVALUATE[kind]([str(run), "--split", args.split, "--device", args.device, "--precision", args.precision,
                  "--tc-protocol", args.tc_protocol, "--num-workers", str(args.num_workers), "--no-write-res"])  # fmt: skip
    metrics = _read_json(metrics_path)
    h, w = input_size(metrics, cfg)
    suffix = f"_t{args.threads}" if args.threads is not None else ""
    bench_path = run / "benchmark" / f"{device_type}_{h}x{w}_{args.precision}{suffix}.json"
    if not bench_path.is_file():
        print(f"== [compare] {run.name}: no benchmark {bench_path.name} yet, timing")
        extra = ["--threads", str(args.threads)] if args.threads is not None else []
        time_in_own_process([str(run.resolve()), "--device", device_type, "--height", str(h), "--width", str(w),
                             "--frames", str(args.frames), "--warmup", str(args.warmup), "--runs",
                             str(args.bench_runs), "--precision", args.precision, "--split", args.split, *extra])  # fmt: skip
    return Entry(run, kind, cfg, metrics, metrics_path, _read_json(bench_path), bench_path)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = value


def protocol(e: Entry) -> dict[str, tuple[Any, Path]]:
    """Every field that must be equal across ranked runs: dotted name -> (value, the file it comes from)."""
    m, fields = e.metrics, {}
    for key in ("split", "dataset", "precision"):
        fields[key] = m.get(key)
    fields["skip_frames"] = m.get("skip_frames", 1)  # video evaluations always use every frame
    for key in MIOU_FIELDS:
        fields[f"miou.{key}"] = m.get("miou", {}).get(key)
    tc = m.get("tc") or {}
    fields["tc presets"] = sorted(tc)
    for name, entry in tc.items():
        card = {k: v for k, v in entry.get("tc_protocol", {}).items() if k not in CARD_EXEMPT}
        _flatten(f"tc.{name}.tc_protocol", card, fields)
    for n, entry in (m.get("vc") or {}).items():
        for key in ("n", "windows_rule", "ignore"):
            fields[f"vc.{n}.{key}"] = entry.get(key)
    out = {k: (v, e.metrics_path) for k, v in fields.items()}
    for key in BENCH_FIELDS:
        out[f"benchmark {key}"] = (e.bench.get(key), e.bench_path)
    return out


def _short_repr(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_protocols(entries: list[Entry]) -> None:
    """Refuse (one line) to rank runs measured under different protocols, naming the first field that differs."""
    first, ref = entries[0], protocol(entries[0])
    for other in entries[1:]:
        theirs = protocol(other)
        for key in [*ref, *(k for k in theirs if k not in ref)]:
            (a, fa), (b, fb) = (
                ref.get(key, (None, first.metrics_path)),
                theirs.get(key, (None, other.metrics_path)),
            )
            if a != b:
                raise ConfigError(
                    f"cannot rank {first.run.name} and {other.run.name}: '{key}' differs ({_short_repr(a)} in {fa}, "
                    f"{_short_repr(b)} in {fb}); evaluate them the same way (delete the odd file and rerun "
                    "python -m eval.compare to recompute it with one setting)"
                )


def method_label(e: Entry) -> str:
    """The method: the video model's ``model_name`` with the facts its ``describe()`` records; image runs are the
    image baseline, named by their architecture."""
    loss = (e.config.get("loss_cfg") or {}).get("loss_func", "crossentropy")
    taught = (
        [] if loss == "crossentropy" else [f"{loss} to a teacher"]
    )  # distilled, not trained on the labels
    if e.kind == "image":
        data, semi = e.config.get("data_cfg") or {}, e.config.get("semi_cfg")
        fraction = data.get("labeled_fraction")
        labels = [] if fraction is None else [f"{100 * fraction:g} % of the labels"]
        unlabelled = (
            [] if not semi else [f"{semi.get('loss')} on unlabelled frames ({semi.get('step_mode')})"]
        )
        facts = [
            architecture_of(e.config, "image").removeprefix("image model "),
            *taught,
            *labels,
            *unlabelled,
            *map(_pseudo_label_fact, data.get("pseudo_labels") or []),
        ]
        return f"image baseline ({', '.join(facts)})"
    described = e.metrics.get("video_model") or e.bench.get("video_model") or {}
    name = e.config.get("video_model_cfg", {}).get("model_name", described.get("method", "?"))
    # A keyframe method's row leads with the key interval its key_cycle scores were measured at (min mIoU depends
    # on it). The description's key_phase is left out there: the key-cycle passes may pool several phases
    # (metrics.json key_cycle.phases says which).
    cycle = _key_cycle(e.metrics)
    skip = ("method", "inference", "helpers", *(("interval", "key_phase") if cycle else ()))
    # Scalar settings only (DFF's k_interval, TCB's module): lists and dicts (widths, learned statistics) would
    # swamp the column; metrics.json keeps the whole description.
    own = [f"interval {cycle['interval']}"] if cycle else []
    own += [f"{k} {v}" for k, v in described.items() if k not in skip and isinstance(v, (str, int, float, bool))]  # fmt: skip
    helpers = [
        f"{k} {short_settings(h['settings'])}" for k, h in (described.get("helpers") or {}).items() if h
    ]
    facts = ", ".join(own + helpers + taught)
    return f"{name} ({facts})" if facts else name


def _pseudo_label_fact(folder: str) -> str:
    """``+ teacher pseudo-labels of <set> (with|without priors)``: an extra training set (label-space KD)."""
    try:  # only for the label: a moved folder must not break the table
        manifest = json.loads((Path(folder) / "pseudo_labels.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    priors = {True: " (with priors)", False: " (without priors)"}.get(manifest.get("use_priors"), "")
    return f"+ teacher pseudo-labels of {Path(str(manifest.get('dataset_root', folder))).name}{priors}"


def config_name(run: Path) -> str:
    """The config file a run was started from (its log's START line), or '' when the log does not say."""
    try:
        lines = (run / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        _, sep, rest = line.partition("  START: ")
        if sep:
            return Path(rest.strip()).stem
    return ""


def parameter_count(run: Path) -> int:
    """Parameters of the model the run evaluates (a video run: its image network included)."""
    model, _, _ = load_streaming_model(run, use_caches=False)
    return sum(p.numel() for p in model.parameters())


def training_minutes(run: Path) -> float | None:
    """Training time: the sum of the epochs' ``epoch_time_s`` in the run's own metrics.json (resumes included)."""
    try:
        epochs = json.loads((run / "metrics.json").read_text()).get("epochs", [])
    except (OSError, ValueError, AttributeError):
        return None
    times = [ep.get("epoch_time_s") for ep in epochs if isinstance(ep, dict)]
    return round(sum(times) / 60, 3) if times and None not in times else None


def _key_cycle(m: dict) -> dict | None:
    """The metrics.json ``key_cycle`` entry of a keyframe method's evaluation (scores by position in the key
    cycle, ``eval.key_cycle``), or None when the run has none (every other method, and older results)."""
    cycle = m.get("key_cycle")
    return cycle if isinstance(cycle, dict) and cycle.get("interval") is not None else None


def _tc(m: dict, name: str) -> float | None:
    entry = (m.get("tc") or {}).get(name)
    return None if entry is None else entry["value"]


def row(e: Entry, precision: str) -> dict[str, Any]:
    """The leaderboard row of a run (keys: :data:`eval.leaderboard.COLUMNS` plus ``vc_<n>``, and ``min_miou`` for a
    run whose metrics.json has a ``key_cycle`` entry), values as stored."""
    m, res = e.metrics, e.bench["results"]
    # A per-frame model (an image run, or a video run of the per-frame method) is timed as "image": it is its own
    # image network, so its FPS ratio to that network is 1 by definition.
    timed = "video" if f"video/{precision}" in res else "image"
    own = res[f"{timed}/{precision}"]
    image_run = e.run if e.kind == "image" else Path(str(m.get("image_run") or "?"))
    out: dict[str, Any] = {
        "method": method_label(e), "config": config_name(e.run), "run": e.run.name, "image_run": image_run.name,
        "miou": m["miou"]["value"], "tc_reference": _tc(m, "tc_reference"), "tc_strict": _tc(m, "strict"),
        "fps": own["fps"], "fps_vs_image": 1.0 if timed == "image" else res.get(f"ratio/{precision}"),
        "params": parameter_count(e.run), "peak_memory_mb": own["peak_memory_mb"],
        "peak_memory_kind": own.get("peak_memory_kind"), "train_min": training_minutes(e.run),
        "device": e.bench["device"],
    }  # fmt: skip
    cycle = _key_cycle(m)
    if cycle is not None:
        # Only keyframe rows carry the key (the column shows when some row has it); the value as evaluated: the
        # frames just before the next keyframe, never recomputed here.
        out["min_miou"] = cycle.get("min_miou")
    for n, entry in sorted((m.get("vc") or {}).items(), key=lambda kv: int(kv[0])):
        out[f"vc_{n}"] = entry.get("value")
    return out


def rank_key(r: dict) -> tuple:
    """mIoU, highest first; ties by tc_reference (missing last), then run name."""
    tc = r["tc_reference"]
    return (-r["miou"], 0 if tc is not None else 1, -(tc or 0.0), r["run"])


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    device_type = resolve_device(args.device).type
    runs: list[Path] = []
    for name in args.runs:
        run = locate_run(name, args.save_dir).resolve()
        if run not in runs:
            runs.append(run)
    entries = [gather(run, args, device_type) for run in runs]
    check_protocols(entries)
    rows = sorted((row(e, args.precision) for e in entries), key=rank_key)
    out = Path(args.out) if args.out else Path(args.save_dir) / "leaderboard"
    shared = protocol(entries[0])
    settings = {
        "split": args.split, "dataset": shared["dataset"][0], "input_size": shared["benchmark input_size"][0],
        "device": entries[0].bench["device"], "precision": args.precision,
        "tc_flow": {n: e["tc_protocol"]["flow"]["model"] for n, e in (entries[0].metrics.get("tc") or {}).items()},
        "benchmark": {k: entries[0].bench.get(k) for k in ("timed_frames", "warmup", "runs", "threads")},
    }  # fmt: skip
    paths = write_leaderboard(out, rows, settings)
    for path in paths:
        print(f"written {path}")
    print(f"{len(rows)} runs ranked; columns: {', '.join(columns(rows))}")
    return rows


if __name__ == "__main__":
    run_cli(main)
