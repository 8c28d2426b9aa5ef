"""Repeat training over seeds and report mean and spread: ``python -m training.sweep CONFIG [CONFIG ...] --seeds 0,1``.

Each *arm* is a config with optional overrides: a positional ``CONFIG`` is an arm named after it, and
``--arm NAME CONFIG [KEY=VALUE ...]`` adds a named one (an ablation of a config). Every arm is trained once per
seed, with ``--vary`` (default ``data_cfg.split_seed``: which frames keep their labels) set to the seed, so the
arms of one seed see the same labels and differ only in the arm; each run is then evaluated on ``--split``
(``eval.vis.image`` / ``eval.vis.video``, no pictures) and the command writes ``<out>/sweep.md`` and
``sweep.json``: per arm the mean, sample standard deviation, min and max of mIoU and TC over the seeds, and per
seed its difference to the first arm (a paired comparison: same labels, same schedule).

Resumable like the zoo: ``<out>/sweep.json`` records each run with the config it was trained with, and a rerun
reuses finished runs trained the same way and evaluations already on disk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text, check_writable
from config.loader import CONFIG_ROOT, load
from training import zoo
from training.kinds import EVALUATE, TRAIN

STATE_NAME = "sweep.json"
OUT_FIX = "pass another --out folder"


def config_kind(name: str) -> str:
    """``image`` or ``video``: the folder of ``config/`` a bare name lives in (a path: tried as image first)."""
    for kind in ("image", "video"):
        if (CONFIG_ROOT / kind / f"{Path(name).stem}.yaml").is_file() and not Path(name).suffix:
            return kind
    try:
        load(name, "image")
        return "image"
    except ConfigError:
        return "video"


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds: expected distinct integers such as 0,1,2, got '{text}'")
    return seeds


def arms_of(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(name, config, overrides) of every arm, positional configs first, names unique."""
    arms = [(Path(c).stem, c, []) for c in args.configs]
    for spec in args.arm:
        if len(spec) < 2 or any("=" not in o for o in spec[2:]):
            raise ConfigError(f"--arm {' '.join(spec)}: expected NAME CONFIG [KEY=VALUE ...]")
        arms.append((spec[0], spec[1], list(spec[2:])))
    names = [a[0] for a in arms]
    if not arms or len(set(names)) != len(names):
        raise ConfigError(
            f"the arms need distinct names, got {', '.join(names) or 'none'}; name them with --arm"
        )
    return arms


def evaluate(run: Path, kind: str, split: str, num_workers: int) -> dict:
    """The run's ``results/<split>/metrics.json``, evaluated first when missing."""
    path = run / "results" / split / "metrics.json"
    if not path.is_file():
        EVALUATE[kind]([str(run), "--split", split, "--no-write-res", "--num-workers", str(num_workers)])
    return json.loads(path.read_text())


def spread(values: list[float | None]) -> dict[str, float | None] | None:
    """Mean, sample standard deviation (None for one value), min and max of the values given (None: none are)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def summarise(results: dict[str, dict[int, dict]], reference: str) -> dict[str, dict]:
    """Per arm: the spread of mIoU and TC over its seeds, and its per-seed mIoU difference to ``reference``."""
    out = {}
    for arm, by_seed in results.items():
        seeds = sorted(by_seed)
        entry = {metric: spread([by_seed[s][metric] for s in seeds]) for metric in ("miou", "tc")}
        paired = [
            by_seed[s]["miou"] - results[reference][s]["miou"] for s in seeds if s in results[reference]
        ]
        entry["miou_minus_reference"] = spread(paired) if arm != reference and paired else None
        entry["seeds"] = seeds
        out[arm] = entry
    return out


def markdown(
    summary: dict[str, dict], results: dict[str, dict[int, dict]], reference: str, settings: dict
) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    lines = [f"# Sweep over {settings['vary']} = {', '.join(map(str, settings['seeds']))}", "",
             f"Split {settings['split']}; mean ± sample std (min..max) in %; Δ = paired difference of mIoU to "
             f"{reference} (same seed).", "",
             "| arm | mIoU | TC | Δ mIoU | per seed mIoU |", "|---|---|---|---|---|"]  # fmt: skip
    for arm, s in summary.items():
        m, t, d = s["miou"], s["tc"] or {"mean": None, "std": None}, s["miou_minus_reference"]
        per_seed = ", ".join(pct(results[arm][k]["miou"]) for k in s["seeds"])
        delta = "—" if d is None else f"{pct(d['mean'])} ± {pct(d['std'])}"
        lines.append(f"| {arm} | {pct(m['mean'])} ± {pct(m['std'])} ({pct(m['min'])}..{pct(m['max'])}) | "
                     f"{pct(t['mean'])} ± {pct(t['std'])} | {delta} | {per_seed} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = CliParser(prog="python -m training.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="configs, each an arm named after it")
    p.add_argument("--arm", nargs="+", action="append", default=[], metavar="NAME CONFIG [KEY=VALUE]",
                   help="a named arm: a config with overrides (repeatable)")  # fmt: skip
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--vary", default="data_cfg.split_seed", help="the key each seed is written to")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arm")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--out", default=None, help="result folder (default: <save_dir>/sweeps/<arm names>)")
    p.add_argument("--num-workers", type=at_least(0), default=2, help="data workers of the evaluations")
    args = p.parse_args(argv)
    arms, seeds = arms_of(args), parse_seeds(args.seeds)
    save_dir = load(arms[0][1], config_kind(arms[0][1]), args.set).save_dir
    out = Path(args.out) if args.out else Path(save_dir) / "sweeps" / "_vs_".join(a[0] for a in arms)
    check_writable(out, fix=OUT_FIX)
    state_path = out / STATE_NAME
    state = zoo._load_state(state_path)
    settings = {"seeds": seeds, "vary": args.vary, "split": args.split, "set": args.set,
                "arms": {name: {"config": c, "overrides": o} for name, c, o in arms}}  # fmt: skip
    state["settings"] = settings
    t0 = time.time()
    results: dict[str, dict[int, dict]] = {}
    for name, config, extra in arms:
        kind = config_kind(config)
        for seed in seeds:
            key = f"{name}@{seed}"
            overrides = [*args.set, *extra, f"{args.vary}={seed}"]
            resolved = zoo._resolved(config, kind, overrides)
            run = zoo._reusable(state["runs"].get(key), overrides, resolved, kind)
            if run is None:
                t = time.time()
                print(f"== [sweep] {name}, {args.vary}={seed}: training {config}")
                run = Path(TRAIN[kind]([config, *overrides])).resolve()
                state["runs"][key] = {"run": str(run), "kind": kind, "overrides": overrides, "config": resolved,
                                      "train_s": round(time.time() - t, 1)}  # fmt: skip
                atomic_write_text(state_path, json.dumps(state, indent=1), fix=OUT_FIX)
            else:
                print(f"== [sweep] {name}, {args.vary}={seed}: finished run {run} reused")
            m = evaluate(run, kind, args.split, args.num_workers)
            tc = (m.get("tc") or {}).get("tc_reference") or {}
            results.setdefault(name, {})[seed] = {"run": str(run), "miou": m["miou"]["value"],
                                                  "tc": tc.get("value"), "per_class": m["miou"]["per_class"]}  # fmt: skip
    summary = summarise(results, arms[0][0])
    state["results"] = {a: {str(s): r for s, r in by.items()} for a, by in results.items()}
    state["summary"] = summary
    atomic_write_text(state_path, json.dumps(state, indent=1), fix=OUT_FIX)
    text = markdown(summary, results, arms[0][0], settings)
    atomic_write_text(out / "sweep.md", text, fix=OUT_FIX)
    print(text + f"== [sweep] {out / 'sweep.md'} ({time.time() - t0:.0f} s)")
    return summary


if __name__ == "__main__":
    run_cli(main)
