"""Timing primitives of the benchmarks (``metrics.md`` §7): exclusive per-stage timers, the process's own peak
memory, and the summary of repeated timed runs (the median run, and the spread between runs)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# The part of a frame's time that no stage of the method's ``step`` covers (input transfer, bookkeeping).
OTHER_STAGE = "other"


class StageTimer:
    """Accumulates per-stage milliseconds; ``timer(name)`` is the context manager models accept.

    Times are exclusive: a stage opened inside another is subtracted from the outer one, so the stages never
    count the same millisecond twice and, with :data:`OTHER_STAGE`, add up to the frame time of the pass.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, {}
        self._open: list[float] = []  # per open stage: milliseconds spent in the stages nested in it

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        self._open.append(0.0)
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            elapsed = (time.perf_counter() - t0) * 1e3
            nested = self._open.pop()
            if self._open:
                self._open[-1] += elapsed
            self.ms[name] = self.ms.get(name, 0.0) + elapsed - nested


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` of Linux's ``/proc/self/status``, which starts afresh
    at ``exec`` (``getrusage``'s ``ru_maxrss`` keeps the peak of the process that started this one), else
    ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_split(stage_ms: dict[str, float], frame_ms: float) -> dict[str, float]:
    """Per-frame stage times plus :data:`OTHER_STAGE`, the rest of ``frame_ms``: a split that sums to it."""
    out = dict(stage_ms)
    out[OTHER_STAGE] = max(0.0, frame_ms - sum(stage_ms.values()))
    return out


# Timed runs whose means differ by more than this share of their median are flagged: the figure is noise-bound.
SPREAD_WARNING = 0.10


def median_run(runs: list[list[float]]) -> int:
    """The index of the median run by mean latency (the upper one of an even count)."""
    return int(np.argsort([statistics.fmean(r) for r in runs])[len(runs) // 2])


def summarise_runs(runs: list[list[float]]) -> dict:
    """Figures of the median run (by mean latency) and the spread between runs."""
    means = [statistics.fmean(r) for r in runs]
    med = runs[median_run(runs)]
    mean = statistics.fmean(med)
    spread = (max(means) - min(means)) / statistics.median(means)
    return {"mean_ms": round(mean, 3), "median_ms": round(statistics.median(med), 3),
            "p90_ms": round(float(np.percentile(med, 90)), 3), "fps": round(1000.0 / mean, 2),
            "run_means_ms": [round(m, 3) for m in means], "frames_per_run": len(med),
            "run_spread": round(spread, 4), "noisy": spread > SPREAD_WARNING}  # fmt: skip
