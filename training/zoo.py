"""The model zoo: ``python -m training.zoo`` (``make zoo``) trains every synthetic method and ranks them.

On the embedded synthetic aerial video set (generated on first use):

1. train the image model (``config/image/base_synthetic.yaml``);
2. train every other image config named ``config/image/*_synthetic.yaml`` that trains (not ``untrained_*``), and
   every video config named ``config/video/*_synthetic.yaml`` from that image run — discovered, so a new method's
   synthetic config joins the zoo without any change here. A video config whose ``image_model_cfg.checkpoint_name``
   (its YAML file, or ``--video``) names an image config the zoo trains (e.g. ``swiftnet_synthetic``, the frozen
   keyframe model of ``keyframe_synthetic``) starts from that config's run instead, which is trained first (with
   ``--only``, too); any other value (empty, a run, a path) keeps the base image run;
3. a config that distils (``loss_cfg.loss_func: kldiv``) without naming its teacher gets the zoo's teacher
   (``config/image/teacher_synthetic.yaml``), trained once, whose logits of every training frame are dumped once
   (``eval.vis.image --save-logits``) and passed as ``data_cfg.teacher_run``; a config that trains on teacher
   pseudo-labels (``data_cfg.pseudo_labels``) has them made by that teacher first, with the ``config/pseudo/*.yaml``
   that writes each folder, into ``<teacher run>/pseudo_labels/`` (``eval.pseudo_label``; resumable);
4. evaluate and benchmark each run and write the leaderboard with ``eval.compare`` (``<save_dir>/leaderboard/``):
   every finished run the zoo recorded in this folder in the same mode (``--quick`` or not), so ``make kd`` after
   ``make zoo`` adds its rows to the same table.

Each model has its own run folder. The zoo is resumable: ``<out>/zoo.json`` records the run of each step with the
overrides it was trained with, and a rerun skips a finished run trained the same way (``eval.compare`` in turn
skips evaluations and benchmarks whose files exist). The benchmark settings (``--bench-*``, ``--threads``) are
modest by default so that the whole zoo stays under an hour on 2 CPU cores; they are written into ``zoo.json``
and the leaderboard. ``--quick`` trains each model for a couple of steps and times a few frames: a smoke test.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from config.cli import CliParser, at_least
from config.errors import ConfigError, run_cli
from config.files import atomic_write_text, check_writable
from config.loader import CONFIG_ROOT, load, to_dict
from config.schema import KINDS
from data.frames import ensure_dataset
from eval import compare, pseudo_label
from eval.vis import image as eval_image
from training.kinds import TRAIN
from training.run_index import run_status
from training.teacher import kd_enabled

IMAGE_CONFIG = "base_synthetic"
TEACHER_CONFIG = "teacher_synthetic"
VIDEO_PATTERN = "*_synthetic.yaml"
# --quick: a couple of optimizer steps per model, no pictures, no warm-up epochs (a smoke path, not a result).
QUICK_TRAIN = ["training_cfg.num_epochs=1", "training_cfg.max_steps_per_epoch=2", "training_cfg.max_val_samples=2",
               "training_cfg.vis_samples=0", "optim_cfg.warmup_epochs=0"]  # fmt: skip
QUICK_VIDEO = ["training_cfg.early_stopping=null"]
STATE_NAME = "zoo.json"
OUT_FIX = "pass another --out folder"


def discovered() -> list[tuple[str, str]]:
    """(name, kind) of every ``config/{image,video}/*_synthetic.yaml`` the zoo trains, image configs first (sorted);
    the base image config and image configs that do not train (``no_training``) are not listed."""
    out = []
    for kind in ("image", "video"):
        for path in sorted((CONFIG_ROOT / kind).glob(VIDEO_PATTERN)):
            if kind == "image" and (path.stem == IMAGE_CONFIG or load(path.stem, kind, []).no_training):
                continue
            out.append((path.stem, kind))
    return out


def video_configs(only: list[str] | None = None) -> list[str]:
    """The names of ``config/video/*_synthetic.yaml`` (sorted), restricted to ``only`` when given."""
    return [n for n, kind in selected(only) if kind == "video"]


def selected(only: list[str] | None = None) -> list[tuple[str, str]]:
    """:func:`discovered`, restricted to the names in ``only`` when given."""
    found = discovered()
    if only:
        names = [n for n, _ in found]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only {', '.join(unknown)}: no such config/image or config/video/{VIDEO_PATTERN} "
                              f"(there are: {', '.join(names)})")  # fmt: skip
        found = [(n, k) for n, k in found if n in only]
    return found


def image_start(name: str, overrides: list[str], trained: set[str]) -> str | None:
    """The zoo image config a video config names as its image model (its ``image_model_cfg.checkpoint_name``, with
    ``overrides``) when that config is one of ``trained``, else None (the zoo then passes the base image run)."""
    named = load(name, "video", overrides).image_model_cfg.checkpoint_name
    return named if named in trained else None


def needs_teacher(name: str, kind: str, overrides: list[str]) -> bool:
    """Whether a config distils without naming its teacher's logits or run (the zoo then provides its teacher)."""
    cfg = load(name, kind, overrides)
    d = cfg.data_cfg
    return kd_enabled(cfg) and d.logits_folder is None and d.teacher_run is None


def pseudo_label_folders(name: str, kind: str, overrides: list[str]) -> list[str]:
    """The teacher pseudo-label folders a config trains on (``data_cfg.pseudo_labels``; the zoo's teacher makes them
    with the ``config/pseudo/*.yaml`` that writes each, see :func:`eval.pseudo_label.ensure`)."""
    return list(load(name, kind, overrides).data_cfg.pseudo_labels or [])


def dump_teacher_logits(teacher: Path, num_workers: int) -> None:
    """The teacher's logits of every training frame in ``<teacher>/logits/train`` (frames written are skipped), at
    the head's own resolution (``--logits-size native``): the synthetic teacher and students share one input size,
    so the students' loader upsampling them as the teacher does gives the teacher's logits exactly, from 1/16 of
    the bytes."""
    eval_image.main([str(teacher), "--save-logits", "--split", "train", "--no-evaluation", "--logits-frames", "all",
                     "--logits-size", "native", "--num-workers", str(num_workers)])  # fmt: skip


def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"runs": {}}
    return state if isinstance(state.get("runs"), dict) else {"runs": {}}


def _resolved(name: str, kind: str, overrides: list[str]) -> dict:
    """The config a step trains with, as stored in ``zoo.json`` (so that an edited YAML file retrains its run)."""
    return json.loads(json.dumps(to_dict(load(name, kind, overrides)), default=str))


def default_config(kind: str) -> dict:
    """Every key of a ``kind`` config at its schema default, in the form of :func:`_resolved`."""
    return json.loads(json.dumps(to_dict(KINDS[kind]()), default=str))


def same_config(stored: Any, current: Any, defaults: Any = None) -> bool:
    """Whether a recorded resolved config trains like the current one. A key the schema gained since the run was
    recorded counts only when it differs from its schema default (``defaults``, the tree of
    :func:`default_config`; without it, from null): a new method's section (null unless that method is chosen) or a
    new option at its default must not retrain every run of the zoo."""
    if isinstance(stored, dict) and isinstance(current, dict):
        below = defaults if isinstance(defaults, dict) else {}
        return all(k in current for k in stored) and all(
            same_config(stored[k], v, below.get(k)) if k in stored else v == below.get(k)
            for k, v in current.items()
        )
    return stored == current


def _reusable(entry: dict | None, overrides: list[str], config: dict, kind: str | None = None) -> Path | None:
    """The recorded run of a step when it finished and was trained with the same overrides and the same resolved
    config (the YAML files may have changed since; ``kind`` gives the schema defaults of keys added since), else
    None."""
    kind = (entry or {}).get("kind", kind)
    defaults = default_config(kind) if kind in KINDS else None
    if (
        not entry
        or entry.get("overrides") != overrides
        or not same_config(entry.get("config"), config, defaults)
    ):
        return None
    run = Path(entry.get("run", ""))
    return run if run.is_dir() and run_status(run) == "finished" else None


def main(argv: list[str] | None = None) -> list[dict]:
    p = CliParser(prog="python -m training.zoo", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override for {IMAGE_CONFIG} (repeatable); its save_dir and data_cfg also apply to "
                        "every video run")  # fmt: skip
    p.add_argument("--video", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every video config (repeatable)")  # fmt: skip
    p.add_argument("--pseudo", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the pseudo-labelling configs (config/pseudo/) of the configs that train on "
                        "teacher pseudo-labels (repeatable), e.g. dataset_path=...")  # fmt: skip
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"train only this config besides {IMAGE_CONFIG} and the image configs it starts or distils "
                        f"from (repeatable; default: every config/image and config/video/{VIDEO_PATTERN})")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="smoke run: a few steps per model, a few timed frames"
    )
    p.add_argument("--out", default=None, help="leaderboard folder (default: <save_dir>/leaderboard)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bench-frames", type=at_least(1), default=100, help="timed frames per benchmark run")
    p.add_argument("--bench-warmup", type=at_least(0), default=10)
    p.add_argument("--bench-runs", type=at_least(1), default=3)
    p.add_argument("--threads", type=at_least(1), default=1,
                   help="CPU torch threads while timing (1, as make demo: the registration gets the other core)")  # fmt: skip
    p.add_argument("--num-workers", type=at_least(0), default=2, help="data workers of the evaluations")
    args = p.parse_args(argv)
    t0 = time.time()
    chosen = selected(args.only or None)
    quick_image = QUICK_TRAIN if args.quick else []
    quick_video = [*QUICK_TRAIN, *QUICK_VIDEO] if args.quick else []
    bench = (["--frames", "5", "--warmup", "1", "--bench-runs", "1"] if args.quick else
             ["--frames", str(args.bench_frames), "--warmup", str(args.bench_warmup),
              "--bench-runs", str(args.bench_runs)])  # fmt: skip

    image_overrides = [*quick_image, *args.image]
    cfg = load(IMAGE_CONFIG, "image", image_overrides)
    out = Path(args.out) if args.out else Path(cfg.save_dir) / "leaderboard"
    check_writable(out, fix=OUT_FIX)  # now, not after an hour of training
    state_path = out / STATE_NAME
    state = _load_state(state_path)
    state["settings"] = {"quick": args.quick, "device": args.device, "threads": args.threads, "benchmark": bench,
                         "configs": [n for n, _ in chosen]}  # fmt: skip

    def save_state() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=1), fix=OUT_FIX)

    root = ensure_dataset(cfg.data_cfg.dataset, cfg.data_cfg.path, tuple(cfg.data_cfg.crop_size))
    print(f"== [zoo] synthetic dataset ready at {root}; configs: {', '.join(n for n, _ in chosen) or 'none'}")
    # The video runs share the image run's data and save folder (the image overrides that name them).
    shared = [o for o in args.image if o.split("=", 1)[0].startswith(("save_dir", "data_cfg."))]

    # A video config naming a zoo image config as its image model starts from that config's run (step 2); one
    # naming the base image config needs nothing more than the default.
    trained = {n for n, k in discovered() if k == "image"}
    starts = {n: image_start(n, args.video, trained) for n, k in chosen if k == "video"}

    def overrides_of(name: str, kind: str) -> list[str]:
        if kind == "image":
            return image_overrides
        start = starts.get(name)
        if start is None:
            base = f"image_model_cfg.checkpoint_name={runs[IMAGE_CONFIG]}"
            return [*shared, *quick_video, base, *args.video]
        # after --video: the run replaces the config's name, which --video may have given
        return [*shared, *quick_video, *args.video, f"image_model_cfg.checkpoint_name={runs[start]}"]

    # the image configs they start from train too (with --only, pulled in as the teacher is)
    names = [n for n, _ in chosen]
    todo = [*chosen, *((n, "image") for n in sorted({s for s in starts.values() if s}) if n not in names)]
    # the teacher trains right after the base image run when some config distils from it
    steps = [(IMAGE_CONFIG, "image")]
    students = {n for n, k in todo if needs_teacher(n, k, overrides_of(n, k) if k == "image" else args.video)}
    labelled_by_teacher = {n: f for n, k in todo if (f := pseudo_label_folders(n, k, overrides_of(n, k) if k == "image"
                                                                                 else args.video))}  # fmt: skip
    if (students or labelled_by_teacher) and TEACHER_CONFIG not in [n for n, _ in todo]:
        steps.append((TEACHER_CONFIG, "image"))
    steps += sorted(todo, key=lambda nk: (nk[0] != TEACHER_CONFIG, nk[1] != "image"))
    runs: dict[str, Path] = {}
    dumped = False
    for i, (name, kind) in enumerate(steps, 1):
        overrides = overrides_of(name, kind)
        if name in students:
            if not dumped:
                print(
                    f"== [zoo] dumping the teacher's logits of every training frame ({runs[TEACHER_CONFIG]})"
                )
                dump_teacher_logits(runs[TEACHER_CONFIG], 0 if args.quick else args.num_workers)
                dumped = True
            overrides = [*overrides, f"data_cfg.teacher_run={runs[TEACHER_CONFIG]}"]
        if (
            name in labelled_by_teacher
        ):  # the teacher's pseudo-labels of each folder, made once, in its run folder
            made = [
                pseudo_label.ensure(f, runs[TEACHER_CONFIG], args.pseudo) for f in labelled_by_teacher[name]
            ]
            overrides = [*overrides, f"data_cfg.pseudo_labels=[{', '.join(map(str, made))}]"]
        config = _resolved(name, kind, overrides)
        run = _reusable(state["runs"].get(name), overrides, config, kind)
        if run is not None:
            print(f"== [zoo] {i}/{len(steps)} {name}: finished run {run} reused")
        else:
            t = time.time()
            print(f"== [zoo] {i}/{len(steps)} {name}: training")
            run = TRAIN[kind]([name, *overrides])
            state["runs"][name] = {"run": str(Path(run).resolve()), "kind": kind, "overrides": overrides,
                                   "config": config, "quick": args.quick, "train_s": round(time.time() - t, 1)}  # fmt: skip
            save_state()
            print(f"== [zoo] {i}/{len(steps)} {name}: trained in {time.time() - t:.0f} s: {run}")
        runs[name] = Path(run).resolve()
    save_state()
    # the leaderboard: this call's runs, and the other finished runs recorded here in the same mode
    ranked = list(runs.values())
    for name, entry in state["runs"].items():
        earlier = Path(entry.get("run", ""))
        if (
            entry.get("quick", False) != args.quick
            or earlier in ranked
            or entry.get("kind") not in ("image", "video")
        ):
            continue
        try:
            current = _resolved(name, entry["kind"], entry.get("overrides") or [])
        except (
            ConfigError
        ):  # the config file was removed or no longer loads: its run is not this zoo's any more
            continue
        if _reusable(entry, entry.get("overrides"), current):
            ranked.append(earlier)

    t = time.time()
    print(f"== [zoo] evaluating, benchmarking and ranking {len(ranked)} runs")
    rows = compare.main([*map(str, ranked), "--out", str(out), "--device", args.device, "--threads", str(args.threads),
                         "--num-workers", str(0 if args.quick else args.num_workers), *bench])  # fmt: skip
    print(f"== [zoo] leaderboard in {out} ({time.time() - t:.0f} s); total {time.time() - t0:.0f} s")
    for r in rows:
        print(
            f"  {r['rank']}. {r['config'] or r['run']:<24} mIoU {100 * r['miou']:6.2f}  FPS {r['fps']:7.1f}"
        )
    return rows


if __name__ == "__main__":
    run_cli(main)
