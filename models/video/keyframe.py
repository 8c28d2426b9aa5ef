"""The keyframe scheduler shared by every method that runs its image network on some frames only (DFF, keyframe
+ flow propagation): which frame of a clip is a keyframe, and how far each frame is from its keyframe.

``interval`` is the number of non-keyframes between two keyframes (``other_methods.md`` §4.1: ``i = 0`` is the
plain per-frame model), so the key cycle is ``interval + 1`` frames long. DFF's ``k_interval`` is that cycle
length. ``phase`` shifts the cycle: frame ``t`` is a keyframe when ``(t - phase) mod (interval + 1) == 0``. The
evaluation of a set labelled on one frame per clip (Cityscapes: frame 19) runs one pass per phase, so that the
labelled frame is seen at every distance ``l = 0 .. interval`` (§4.6). A clip's first frame is always a keyframe
(there is nothing to propagate from), whatever the phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.errors import ConfigError


@dataclass
class KeySchedule:
    """Keyframes every ``interval + 1`` frames of a clip, shifted by ``phase``.

    Attributes:
        interval: non-keyframes between keyframes (>= 0).
        phase: the clip index of the first scheduled keyframe, in ``[0, interval]``.
    """

    interval: int = 0
    phase: int = 0

    def __post_init__(self) -> None:
        self.check(self.interval, self.phase)

    @staticmethod
    def check(interval: int, phase: int = 0, key: str = "interval") -> None:
        """One-line errors for an impossible schedule (``key``: the setting's name in the message)."""
        if int(interval) != interval or interval < 0:
            raise ConfigError(
                f"{key} must be a whole number >= 0 (non-keyframes between keyframes), got {interval}"
            )
        if not 0 <= phase <= interval:
            raise ConfigError(f"key phase must be in [0, {interval}] for interval {interval}, got {phase}")

    @property
    def period(self) -> int:
        """Frames per key cycle (``interval + 1``)."""
        return int(self.interval) + 1

    def is_key(self, index: int, since_key: int | None) -> bool:
        """Whether clip frame ``index`` is a keyframe; ``since_key`` is how many frames ago the last keyframe was
        (None: no keyframe yet in this clip, so this one must be)."""
        if since_key is None:
            return True
        return (index - self.phase) % self.period == 0 or since_key >= self.period

    def set(self, interval: int | None = None, phase: int | None = None) -> None:
        """Change the schedule in place (runtime options); a phase the new interval no longer allows becomes 0."""
        new_interval = self.interval if interval is None else int(interval)
        new_phase = self.phase if phase is None else int(phase)
        if phase is None and new_phase > new_interval:
            new_phase = 0
        self.check(new_interval, new_phase)
        self.interval, self.phase = new_interval, new_phase
