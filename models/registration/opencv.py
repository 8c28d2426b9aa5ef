"""OpenCV keypoint registration: ``orb``, ``sift``, ``akaze`` + ``cv2.findHomography`` (``ssp.md`` §3.2).

Per pair: grayscale uint8 (``cv2.COLOR_RGB2GRAY``) -> detect and describe (at most ``max_keypoints``; ORB and
SIFT through ``nfeatures``, AKAZE by keeping the strongest responses) -> k = 2 nearest neighbours (binary
descriptors: brute-force Hamming; SIFT: FLANN kd-tree as the reference) -> Lowe ratio test ``ratio`` ->
``cv2.findHomography(prev_pts, cur_pts, RANSAC | USAC_MAGSAC, threshold)`` with ``threshold`` in **pixels**
(OpenCV's reprojection distance, unlike kornia's squared error). Fewer than ``min_matches`` ratio-test matches or
inliers, or no fit, gives the identity (counted).

Streaming: the features of the latest ``cur`` frame are kept with a fingerprint (shape + blake2b of the gray
bytes); when the next call's ``prev`` is that frame they are reused (``stats()["feature_reuse"]``).

Reproducibility: FLANN's randomised kd-trees draw from OpenCV's per-thread RNG, so SIFT matching reseeds it
(``cv2.setRNGSeed(0)``) before each match; without that the same pair gives a different ``H`` on every call.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import cv2
import numpy as np

from config.errors import ConfigError
from config.schema import RegistrationCfg
from data.frames import FramePair
from models.registration.base import RegistrationProvider
from models.registry import REGISTRATION_PROVIDERS

Detector = Literal["orb", "sift", "akaze"]
ESTIMATORS = {"ransac": cv2.RANSAC, "usac_magsac": cv2.USAC_MAGSAC}
_FLANN_INDEX = {"algorithm": 1, "trees": 5}  # FLANN_INDEX_KDTREE
_FLANN_SEARCH = {"checks": 50}

Features = tuple[np.ndarray, np.ndarray | None]  # points [N,2] float32, descriptors [N,D] or None


def _detector(kind: Detector, max_keypoints: int) -> Any:
    if kind == "orb":
        return cv2.ORB_create(nfeatures=max_keypoints)
    if kind == "sift":
        return cv2.SIFT_create(nfeatures=max_keypoints)
    if kind == "akaze":
        if not hasattr(cv2, "AKAZE_create"):
            raise ConfigError(
                f"registration 'akaze' needs cv2.AKAZE_create, which this OpenCV build ({cv2.__version__}) lacks "
                "(OpenCV 5 wheels dropped it): set video_model_cfg.k_registrator_model to orb or sift, or "
                "install opencv-python-headless<5"
            )
        return cv2.AKAZE_create()
    raise ConfigError(f"unknown OpenCV detector '{kind}': use orb, sift or akaze")


class OpenCVRegistration(RegistrationProvider):
    """Keypoint matching + robust homography fit on the CPU; usable in data-loader workers."""

    runs_in_loader = True

    def __init__(
        self,
        detector: Detector,
        *,
        max_keypoints: int = 2048,
        ratio: float = 0.8,
        estimator: Literal["ransac", "usac_magsac"] = "ransac",
        threshold: float = 2.5,
        min_matches: int = 4,
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ConfigError(f"registration.estimator '{estimator}' is not one of {', '.join(ESTIMATORS)}")
        if min_matches < 4 or threshold <= 0:
            raise ConfigError(
                f"registration: min_matches must be >= 4 and threshold > 0, got {min_matches}, {threshold}"
            )
        self.name = detector
        self.max_keypoints, self.ratio, self.estimator = int(max_keypoints), float(ratio), estimator
        self.threshold, self.min_matches = float(threshold), int(min_matches)
        self.binary = detector != "sift"
        self._setup()

    def _setup(self) -> None:
        """The OpenCV objects (not picklable: rebuilt after unpickling, e.g. in spawned loader workers)."""
        self._det = _detector(self.name, self.max_keypoints)
        if self.binary:
            self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        else:
            self._matcher = cv2.FlannBasedMatcher(_FLANN_INDEX, _FLANN_SEARCH)
        self._last: tuple[tuple[Any, ...], Features] | None = None  # fingerprint and features of the last cur

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_det", "_matcher", "_last")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def settings(self) -> dict[str, Any]:
        matcher = "bf_hamming" if self.binary else "flann_kdtree(trees=5, checks=50)"
        return {
            "provider": self.name,
            "detector": self.name,
            "max_keypoints": self.max_keypoints,
            "matcher": f"{matcher}, knn k=2",
            "ratio": self.ratio,
            "estimator": self.estimator,
            "threshold": self.threshold,
            "threshold_semantics": "pixels (one-way reprojection distance, cv2.findHomography)",
            "min_matches": self.min_matches,
            "input": "grayscale uint8 at the frame resolution",
            "opencv": cv2.__version__,
        }

    def _describe(self, gray: np.ndarray) -> Features:
        if self.name == "akaze":  # no nfeatures parameter: keep the strongest responses
            kps = sorted(self._det.detect(gray, None), key=lambda k: -k.response)[: self.max_keypoints]
            kps, desc = self._det.compute(gray, kps)
        else:
            kps, desc = self._det.detectAndCompute(gray, None)
        pts = np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2)
        return pts, desc

    def _features(self, gray: np.ndarray, remember: bool) -> Features:
        """Features of ``gray``, reusing the last ``cur`` frame's when ``gray`` is that frame."""
        key = (gray.shape, hashlib.blake2b(np.ascontiguousarray(gray).data, digest_size=16).digest())
        if self._last is not None and self._last[0] == key:
            self._stats["feature_reuse"] += 1
            feats = self._last[1]
        else:
            feats = self._describe(gray)
        if remember:
            self._last = (key, feats)
        return feats

    def _match(self, d0: np.ndarray, d1: np.ndarray) -> list[tuple[int, int]]:
        """Lowe-ratio-filtered nearest neighbours ``(prev index, cur index)``."""
        if len(d0) < 2 or len(d1) < 2:  # FLANN needs k <= the number of train descriptors
            return []
        if not self.binary:
            cv2.setRNGSeed(0)  # FLANN's randomised kd-trees draw from OpenCV's RNG: reseed for reproducible H
        good = []
        for knn in self._matcher.knnMatch(d0, d1, k=2):
            if len(knn) == 2 and knn[0].distance < self.ratio * knn[1].distance:
                good.append((knn[0].queryIdx, knn[0].trainIdx))
        return good

    def _fit_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None) -> np.ndarray | None:
        p0, d0 = self._features(cv2.cvtColor(prev, cv2.COLOR_RGB2GRAY), remember=False)
        p1, d1 = self._features(cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY), remember=True)
        if d0 is None or d1 is None:
            return None
        good = self._match(d0, d1)
        if len(good) < self.min_matches:
            return None
        idx = np.array(good)
        h, inliers = cv2.findHomography(
            p0[idx[:, 0]], p1[idx[:, 1]], ESTIMATORS[self.estimator], self.threshold
        )
        if h is None or inliers is None or int(inliers.sum()) < self.min_matches:
            return None
        return h


def _builder(kind: Detector) -> Any:
    def build(cfg: RegistrationCfg) -> OpenCVRegistration:
        return OpenCVRegistration(
            kind,
            max_keypoints=cfg.max_keypoints,
            ratio=cfg.ratio,
            estimator=cfg.estimator,
            threshold=cfg.threshold,
            min_matches=cfg.min_matches,
        )

    build.__doc__ = (
        f"OpenCV {kind} registration from a ``RegistrationCfg`` (akaze: ConfigError where absent)."
    )
    return build


for _kind in ("orb", "sift", "akaze"):
    REGISTRATION_PROVIDERS.register(_kind)(_builder(_kind))
