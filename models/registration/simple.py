"""Registration without matching: ``identity`` (the "no registration" ablation) and ``gt`` (true homographies).

``gt`` reads ``<clip>/homographies.npy`` of the synthetic set (entry t = ``H_{t-1 -> t}``): a pair
``first -> first + 1`` gives entry ``first + 1``, a pair ``first -> first - 1`` the inverse of entry ``first``;
other pairs are a :class:`DataError`. The stored homographies are in pixels of the resolution the set was
generated at, which is assumed to be the frame resolution (the synthetic set is generated at the working size,
``data.frames.ensure_dataset``); no rescaling is done, so do not feed ``gt`` resized or cropped frames.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from config.errors import ConfigError, DataError
from config.schema import RegistrationCfg
from data.frames import FramePair
from data.synthetic.io import load_homographies
from models.registration.base import RegistrationProvider
from models.registry import REGISTRATION_PROVIDERS


class IdentityRegistration(RegistrationProvider):
    """``H = I3`` for every pair; never looks at the pixels."""

    name = "identity"

    def settings(self) -> dict[str, Any]:
        return {"provider": "identity"}

    def _fit_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None) -> np.ndarray:
        return np.eye(3)

    def _fit_batch(
        self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None
    ) -> list[np.ndarray | None]:
        return [np.eye(3) for _ in range(prev.shape[0])]


class GTRegistration(RegistrationProvider):
    """The synthetic set's true homographies; needs the frame pairs. Keeps the last few clips' arrays."""

    name = "gt"
    needs_pairs = True
    _MAX_CLIPS = 32

    def __init__(self) -> None:
        super().__init__()
        self._homs: OrderedDict[Path, np.ndarray] = OrderedDict()

    def settings(self) -> dict[str, Any]:
        return {
            "provider": "gt",
            "source": "homographies.npy of the synthetic set",
            "resolution": "assumed equal to the frame resolution (no rescaling)",
        }

    def _clip(self, clip_dir: Path) -> np.ndarray:
        if clip_dir in self._homs:
            self._homs.move_to_end(clip_dir)
        else:
            self._homs[clip_dir] = load_homographies(clip_dir)
            if len(self._homs) > self._MAX_CLIPS:
                self._homs.popitem(last=False)
        return self._homs[clip_dir]

    def _lookup(self, pair: FramePair | None) -> np.ndarray:
        if pair is None:
            raise ConfigError(
                "registration 'gt' reads the synthetic set's true homographies and needs the frame pairs on disk; "
                "pass pairs, or choose orb/sift/disk/identity"
            )
        homs = self._clip(pair.clip_dir)
        if pair.second == pair.first + 1 and pair.second < len(homs):
            return homs[pair.second]
        if pair.second == pair.first - 1 and pair.first < len(homs):
            return np.linalg.inv(homs[pair.first])
        raise DataError(
            f"{pair.clip_dir / 'homographies.npy'}: no true homography for the frame pair "
            f"({pair.first}, {pair.second}) of a {len(homs)}-frame clip; only adjacent frames have one"
        )

    def _fit_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None) -> np.ndarray:
        return self._lookup(pair)

    def _fit_batch(
        self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None
    ) -> list[np.ndarray | None]:
        if pairs is None:
            return [self._lookup(None)]
        return [self._lookup(p) for p in pairs]  # no pixels needed: skip the uint8 conversion


@REGISTRATION_PROVIDERS.register("identity")
def build_identity(cfg: RegistrationCfg) -> IdentityRegistration:
    """The identity (no registration); ``cfg`` is not used."""
    return IdentityRegistration()


@REGISTRATION_PROVIDERS.register("gt")
def build_gt(cfg: RegistrationCfg) -> GTRegistration:
    """The synthetic set's true homographies; ``cfg`` is not used."""
    return GTRegistration()
