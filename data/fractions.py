"""Labelled fractions for semi-supervised training (``other_methods.md`` §1.2): which labelled training frames keep
their labels.

The reference took the first ``ceil(f * N)`` files of an unsorted directory walk, which depends on the file system.
Here the subset is either an explicit split file (``data_cfg.labeled_split_file``: one ``<clip>/<frame stem>`` per
line, ``#`` comments) or a seeded draw (``data_cfg.labeled_fraction`` with ``data_cfg.split_seed``): the labelled
frames are sorted by clip and stem, and ``ceil(f * N)`` of them drawn without replacement with NumPy's PCG64 seeded
by ``split_seed``, so the same seed gives the same files on any machine. The run folder lists the chosen files
(:data:`LIST_NAME`) in the split-file format, so a run can be repeated with exactly its labels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from config.errors import ConfigError, DataError
from data.frames import Clip

LIST_NAME = "labelled_frames.txt"
HELD_OUT_NAME = "held_out_frames.txt"
FrameKey = tuple[str, str]  # (clip name, frame stem)


def labelled_keys(clips: list[Clip]) -> list[FrameKey]:
    """Every labelled frame of ``clips`` as ``(clip, stem)``, sorted (the order the draw is made in)."""
    return sorted((c.name, c.frames[i].stem) for c in clips for i in c.labelled)


def read_split_file(path: str | Path, available: list[FrameKey]) -> list[FrameKey]:
    """The frames a split file names; a line that is not a labelled training frame is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"data_cfg.labeled_split_file: {p} does not exist; give a file of <clip>/<frame stem> lines"
        )
    known = set(available)
    out: list[FrameKey] = []
    for n, raw in enumerate(p.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        clip, sep, stem = line.rpartition("/")
        if not sep or (clip, stem) not in known:
            raise DataError(
                f"{p}:{n}: '{line}' is not a labelled training frame (<clip>/<frame stem>); fix the line"
            )
        out.append((clip, stem))
    if not out:
        raise DataError(f"{p}: names no frame; list at least one <clip>/<frame stem>")
    return sorted(set(out))


def draw_fraction(available: list[FrameKey], fraction: float, seed: int) -> list[FrameKey]:
    """``ceil(fraction * N)`` of the sorted ``available`` frames, drawn with ``seed`` (sorted again)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data_cfg.labeled_fraction must be in (0, 1], got {fraction}")
    n = math.ceil(fraction * len(available) - 1e-9)  # 0.1 * 2975 = 297.5 -> 298, as the reference
    picked = np.random.Generator(np.random.PCG64(seed)).choice(len(available), size=n, replace=False)
    return sorted(available[i] for i in picked)


def labelled_subset(
    clips: list[Clip], fraction: float | None, seed: int, split_file: str | None
) -> list[FrameKey] | None:
    """The training frames that keep their labels, or None for all of them (neither key set)."""
    if fraction is not None and split_file is not None:
        raise ConfigError("data_cfg.labeled_fraction and data_cfg.labeled_split_file are exclusive; set one")
    if fraction is None and split_file is None:
        return None
    available = labelled_keys(clips)
    if split_file is not None:
        return read_split_file(split_file, available)
    return draw_fraction(available, float(fraction), int(seed))


def held_out_subset(
    clips: list[Clip], fraction: float | None, seed: int, labelled: list[FrameKey] | None
) -> list[FrameKey] | None:
    """``ceil(fraction * N)`` of the ``N`` labelled training frames, drawn with ``seed`` from those outside the
    ``labelled`` subset (all of them when it is None): a split to select checkpoints on whose labels training does
    not use. The draw is seeded apart from the labelled draw of the same seed. None when ``fraction`` is None."""
    if fraction is None:
        return None
    if not 0 < fraction < 1:
        raise ConfigError(f"data_cfg.held_out_fraction must be in (0, 1), got {fraction}")
    everything = labelled_keys(clips)
    taken = set(labelled or ())
    available = [k for k in everything if k not in taken]
    n = math.ceil(fraction * len(everything) - 1e-9)
    if n > len(available) or (labelled is None and n >= len(everything)):
        raise ConfigError(
            f"data_cfg.held_out_fraction: {n} held-out frames, but only {len(available)} training frames are "
            "outside the labelled subset; lower held_out_fraction or labeled_fraction"
        )
    rng = np.random.Generator(np.random.PCG64([int(seed), 1]))  # [seed, 1]: independent of the labelled draw
    return sorted(available[i] for i in rng.choice(len(available), size=n, replace=False))


def list_text(keys: list[FrameKey], total: int, how: str) -> str:
    """The run folder's list: a header saying how it was chosen, then one ``<clip>/<stem>`` per line."""
    header = f"# {len(keys)} of {total} labelled training frames keep their labels ({how})\n"
    return header + "".join(f"{c}/{s}\n" for c, s in keys)
