"""VC_n, the video consistency of VSPW (``metrics.md`` §4), streamed clip by clip with bounded memory.

For a window of n consecutive labelled frames starting at i::

    GC_i = AND_{j=1}^{n-1} [G_i == G_{i+j}]      pixels whose ground truth is constant over the window
    PC_i = AND_{j=1}^{n-1} [P_i == P_{i+j}]      pixels whose prediction is constant over the window
    a_i  = |GC_i & PC_i| / |GC_i|                NaN if GC_i is empty
    VC_n = NaN-mean of a_i over all windows of all clips

``windows="vspw"`` uses i = 0 .. L-n-1 like VSPW's script (the last window, ending on the clip's last frame, is
not used; clips with L <= n frames give nothing); ``windows="all"`` uses i = 0 .. L-n. ``ignore="include"``
treats 255 like any label (a constant ignore region counts, as in VSPW); ``exclude`` drops pixels where any G in
the window is 255.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from config.errors import ConfigError
from data.catalog import IGNORE_INDEX


class VideoConsistency:
    """Streaming VC_n. Per clip: :meth:`start_clip`, then :meth:`add` for every frame in order.

    Memory: at most n (prediction, label) pairs. Under ``vspw`` the clip length is needed to know whether a
    window ends on the last frame; pass ``n_frames`` to :meth:`start_clip`, or call :meth:`add` for every frame
    (``label=None`` for unlabelled ones): the most recent window is then held as one number until a later frame
    of the same clip proves it is not the last one, and dropped when the clip ends.
    """

    def __init__(self, n: int, windows: str = "vspw", ignore: str = "include") -> None:
        if n < 2:
            raise ConfigError(f"VC_n: n must be at least 2, got {n}")
        if windows not in ("vspw", "all"):
            raise ConfigError(f"VC_n: windows must be 'vspw' or 'all', got {windows!r}")
        if ignore not in ("include", "exclude"):
            raise ConfigError(f"VC_n: ignore must be 'include' or 'exclude', got {ignore!r}")
        self.n, self.windows, self.ignore = n, windows, ignore
        self._buf: deque[tuple[Tensor, Tensor]] = deque(maxlen=n)
        self._clip: str | None = None
        self._n_frames: int | None = None
        self._last_t: int | None = None
        self._pending: tuple[int, float] | None = None  # (end frame, a_i) of a window not yet known to count
        self._sum, self._valid, self._used, self._dropped, self._clips = 0.0, 0, 0, 0, 0
        # for a truthful "why no value": the longest clip seen, and the longest run of consecutive labelled frames
        self._longest_clip, self._run, self._longest_run = 0, 0, 0

    def start_clip(self, name: str, n_frames: int | None = None) -> None:
        """Begin clip ``name`` (of ``n_frames`` frames, if known); the previous clip's last window is dropped."""
        if self._pending is not None:  # never confirmed: it ended on the previous clip's last frame (vspw)
            self._dropped += 1
        self._buf.clear()
        self._run = 0
        self._clip, self._n_frames, self._last_t, self._pending = name, n_frames, None, None
        self._clips += 1
        self._longest_clip = max(self._longest_clip, n_frames or 0)

    def add(self, t: int, pred: Tensor, label: Tensor | None = None) -> None:
        """Frame ``t`` of the current clip: ``pred`` [H,W] ids, ``label`` [H,W] ids or 255, or None."""
        if self._clip is None:
            raise RuntimeError("VC_n: call start_clip() before add()")
        if self._last_t is not None and t <= self._last_t:
            raise ValueError(f"VC_n: frame {t} of clip '{self._clip}' after frame {self._last_t}")
        if self._pending is not None and t > self._pending[0]:  # a later frame: not the clip's last window
            self._commit(self._pending[1])
            self._pending = None
        if label is None or (self._last_t is not None and t != self._last_t + 1):
            self._buf.clear()  # a window needs n consecutive labelled frames
            self._run = 0
        self._last_t = t
        self._longest_clip = max(self._longest_clip, t + 1)
        if label is None:
            return
        self._run += 1
        self._longest_run = max(self._longest_run, self._run)
        if label.shape != pred.shape:
            raise ValueError(f"VC_n: label {tuple(label.shape)} and prediction {tuple(pred.shape)} differ")
        self._buf.append((pred, label))
        if len(self._buf) < self.n:
            return
        a = self._window()
        if self.windows == "all" or (self._n_frames is not None and t <= self._n_frames - 2):
            self._commit(a)
        elif self._n_frames is not None:  # t is the last frame: the window i = L-n that VSPW does not use
            self._dropped += 1
        else:
            self._pending = (t, a)

    def _window(self) -> float:
        """``a_i`` of the window held in the buffer (NaN when no pixel has a constant ground truth)."""
        p0, g0 = self._buf[0]
        gc = torch.ones_like(g0, dtype=torch.bool)
        pc = torch.ones_like(p0, dtype=torch.bool)
        for p, g in list(self._buf)[1:]:
            gc &= g == g0
            pc &= p == p0
        if self.ignore == "exclude":  # constant labels are equal, so checking G_i covers the whole window
            gc &= g0 != IGNORE_INDEX
        denom = int(gc.sum())
        return math.nan if denom == 0 else int((gc & pc).sum()) / denom

    def _commit(self, a: float) -> None:
        self._used += 1
        if not math.isnan(a):
            self._sum += a
            self._valid += 1

    def result(self) -> dict:
        """``{"value": VC_n | None, "n", "windows" (used), "windows_valid" (non-NaN), "reason": str | None}``.

        A window still pending counts as the last one of its clip (not used under ``vspw``); nothing changes, so
        streaming may go on after this call.
        """
        n, reason = self.n, None
        if self._used == 0:
            if self._dropped or self._pending is not None:
                reason = (
                    f"only the last window of a clip has {n} consecutive labelled frames and windows=vspw does "
                    f"not use it (a clip needs more than {n} frames)"
                )
            elif self._longest_clip < n:
                reason = f"every clip is shorter than {n} frames (the longest has {self._longest_clip})"
            else:
                reason = (
                    f"no clip has {n} consecutive labelled frames (sparse labels: the longest run of labelled "
                    f"frames is {self._longest_run})"
                )
        elif self._valid == 0:
            reason = f"every window has an empty GC (no pixel keeps its ground-truth label over {n} frames)"
        return {
            "value": self._sum / self._valid if self._valid else None,
            "n": n,
            "windows": self._used,
            "windows_valid": self._valid,
            "windows_rule": self.windows,
            "ignore": self.ignore,
            "clips": self._clips,
            "reason": reason,
        }
