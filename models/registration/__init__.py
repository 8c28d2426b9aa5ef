"""Homography providers (global registration, ``ssp.md`` §3.2), chosen by ``video_model_cfg.k_registrator_model``.

============  ===============  ==========================================================================
name          runs in          what
============  ===============  ==========================================================================
``disk``      the model (GPU)  kornia DISK + LightGlue + RANSAC, local weights; threshold = squared error
``orb``       loader or model  OpenCV ORB, Hamming kNN + ratio test, findHomography; threshold in pixels
``sift``      loader or model  OpenCV SIFT, FLANN kNN + ratio test, findHomography; threshold in pixels
``akaze``     loader or model  OpenCV AKAZE (OpenCV 4.x builds only; otherwise a ConfigError)
``identity``  anywhere         ``H = I3`` (no registration)
``gt``        loader or model  the synthetic set's true homographies (needs the frame pairs)
============  ===============  ==========================================================================

Every provider: ``estimate(prev [B,3,H,W], cur, pairs=None) -> H [B,3,3]`` with ``p_cur ~ H p_prev``;
``estimate_np`` for uint8 frames in the data loader; ``settings()`` and ``stats()`` for the results (see
:mod:`models.registration.base`).
"""

from __future__ import annotations

from pathlib import Path

from config.schema import RegistrationCfg
from models.registration import disk, opencv, simple
from models.registration.base import RegistrationProvider
from models.registration.cache import CachedRegistration
from models.registration.disk import DiskRegistration
from models.registration.opencv import OpenCVRegistration
from models.registration.simple import GTRegistration, IdentityRegistration
from models.registry import REGISTRATION_PROVIDERS

# Not cached: the identity costs nothing and gt already reads a stored file.
UNCACHED = ("identity", "gt")


def build_registration(name: str, cfg: RegistrationCfg) -> RegistrationProvider:
    """Build provider ``name`` from ``cfg``; wrapped in an on-disk cache (``<cfg.cache_dir>/registration``) when
    ``cfg.cache`` is set. An unknown name is a ``ConfigError`` listing the known ones."""
    provider = REGISTRATION_PROVIDERS.get(name)(cfg)
    if cfg.cache and name not in UNCACHED:
        return CachedRegistration(provider, Path(cfg.cache_dir) / "registration")
    return provider


__all__ = [
    "CachedRegistration",
    "DiskRegistration",
    "GTRegistration",
    "IdentityRegistration",
    "OpenCVRegistration",
    "RegistrationProvider",
    "build_registration",
    "disk",
    "opencv",
    "simple",
]
