"""GPU registration: kornia DISK keypoints + LightGlue matching + kornia RANSAC (``ssp.md`` §3.2, ``disk``).

Runs in the model on the inputs' device, under ``torch.inference_mode``: DISK on both frames of each pair in one
batch (at most ``max_keypoints``, zero-padded to a multiple of 16 inside kornia), LightGlue for DISK given the
image sizes, then, with at least ``min_matches`` matches, a homography RANSAC from previous- to current-frame
points; otherwise (or with fewer inliers, or a degenerate fit) the identity, counted.

Threshold semantics: ``threshold`` is the reference's kornia ``inl_th``, a bound on the **squared** one-way
transfer error (kornia <= 0.8; 2.5 is about 1.58 px). Later kornia versions square ``inl_th`` themselves, so the
module measures which semantics the installed kornia has (once) and passes ``sqrt(threshold)`` where needed;
:meth:`DiskRegistration.settings` records both numbers.

Weights come only from local files (nothing is downloaded): ``disk_weights``, the cvlab-epfl DISK ``depth``
checkpoint whose entry ``extractor`` is the state dict (a bare state dict is accepted too), and
``lightglue_weights``, cvg's LightGlue-for-DISK weights (old ``self_attn.i``/``cross_attn.i`` names are renamed
as kornia's constructor does). ``input_norm: imagenet`` feeds ImageNet-normalised frames (the reference defect).
The last ``cur`` batch's features are kept and reused when the next ``prev`` is the same tensor (streaming).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from config.errors import CheckpointError, ConfigError
from config.schema import RegistrationCfg
from data.frames import FramePair
from models.flow.base import file_sha256
from models.image.pretrained import read_state_dict, verify_and_load
from models.registration.base import RegistrationProvider
from models.registry import REGISTRATION_PROVIDERS

DISK_URL = "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth (cvlab-epfl DISK release, 'depth')"
LIGHTGLUE_URL = (
    "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv/disk_lightglue.pth (cvg LightGlue)"
)
# LightGlue('disk') without its download: every other entry is kornia's default.
LIGHTGLUE_CONF = {"input_dim": 128}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _kornia() -> tuple[Any, Any, str]:
    try:
        import kornia
        import kornia.feature as kf
        import kornia.geometry as kg
    except ImportError:
        raise ConfigError(
            "registration 'disk' needs kornia (pip install 'kornia>=0.8'); or choose orb, sift or identity"
        ) from None
    return kf, kg, kornia.__version__


@functools.cache
def kornia_threshold_is_squared() -> bool:
    """Whether the installed kornia RANSAC compares ``inl_th`` with the squared transfer error (kornia <= 0.8).

    Measured, not read from the version: 120 exact correspondences plus 80 off by exactly 2 px; with
    ``inl_th = 2.5`` the 80 are inliers only when ``inl_th`` is in pixels (2 <= 2.5 but 4 > 2.5).
    """
    _, kg, _ = _kornia()
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(200, 2, generator=gen, dtype=torch.float64) * 100
    ang = torch.rand(80, generator=gen, dtype=torch.float64) * 2 * math.pi
    q = p.clone()
    q[:80] += 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    _, inliers = _ransac(kg, 2.5)(p.float(), q.float())
    return int(inliers.sum()) < 160


def _ransac(kg: Any, inl_th: float) -> Any:
    kwargs: dict[str, Any] = {"model_type": "homography", "inl_th": inl_th}
    # kornia >= 0.9: a seeded RANSAC uses a private generator and leaves the global RNG (training draws) alone.
    if "seed" in inspect.signature(kg.RANSAC).parameters:
        kwargs["seed"] = 0
    return kg.RANSAC(**kwargs)


def _weights(path: str | Path, what: str, url: str) -> tuple[Path, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"{what} weights '{p}' not found: download {url} into base_checkpoints/ "
            "(tcseg never downloads weights) or set video_model_cfg.registration"
        )
    return p, read_state_dict(p)


def _lightglue_keys(sd: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """kornia's renaming of old LightGlue files: ``self_attn.i.*`` -> ``transformers.i.self_attn.*`` (and cross)."""
    pat = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
    out = {}
    for k, v in sd.items():
        m = pat.match(k)
        new = f"transformers.{m.group(2)}.{m.group(1)}.{k[m.end() :]}" if m else k
        out[new if m and int(m.group(2)) < n_layers else k] = v
    return out


class DiskRegistration(RegistrationProvider):
    """DISK + LightGlue + RANSAC in the model; no CPU data-loader path."""

    name = "disk"
    runs_in_loader = False

    def __init__(
        self,
        disk_weights: str | Path,
        lightglue_weights: str | Path,
        *,
        max_keypoints: int = 2048,
        threshold: float = 2.5,
        min_matches: int = 4,
        input_norm: Literal["rgb01", "imagenet"] = "rgb01",
    ) -> None:
        super().__init__()
        kf, kg, self.kornia_version = _kornia()
        if input_norm not in ("rgb01", "imagenet"):
            raise ConfigError(f"registration.input_norm '{input_norm}' is not one of rgb01, imagenet")
        if min_matches < 4 or threshold <= 0:
            raise ConfigError(
                f"registration: min_matches must be >= 4 and threshold > 0, got {min_matches}, {threshold}"
            )
        self.max_keypoints, self.threshold = int(max_keypoints), float(threshold)
        self.min_matches, self.input_norm = int(min_matches), input_norm
        self.disk_path, sd = _weights(disk_weights, "DISK", DISK_URL)
        self.disk = kf.DISK()
        sd = sd["extractor"] if isinstance(sd.get("extractor"), dict) else sd
        verify_and_load(self.disk, sd, path=self.disk_path, what="kornia DISK", expected=DISK_URL)
        self.lg_path, sd = _weights(lightglue_weights, "LightGlue-for-DISK", LIGHTGLUE_URL)
        # features=None: built from the configuration alone, no download; the local weights are loaded below.
        self.matcher = kf.LightGlue(None, **LIGHTGLUE_CONF)
        sd = _lightglue_keys(sd, self.matcher.conf.n_layers)
        for k, v in self.matcher.state_dict().items():
            if k == "confidence_thresholds" and k not in sd:  # derived buffer, absent from the released file
                sd[k] = v
        verify_and_load(
            self.matcher, sd, path=self.lg_path, what="kornia LightGlue (disk)", expected=LIGHTGLUE_URL
        )
        for net in (self.disk, self.matcher):
            net.eval().requires_grad_(False)
        squared = kornia_threshold_is_squared()
        self.inl_th = self.threshold if squared else math.sqrt(self.threshold)
        self.ransac = _ransac(kg, self.inl_th)
        self._sha = {"disk": file_sha256(self.disk_path), "lightglue": file_sha256(self.lg_path)}
        self._last: tuple[Tensor, list[Any]] | None = None  # last cur batch (clone) and its DISK features

    def settings(self) -> dict[str, Any]:
        return {
            "provider": "disk",
            "max_keypoints": self.max_keypoints,
            "matcher": "lightglue(disk)",
            "lightglue_filter_threshold": self.matcher.conf.filter_threshold,
            "estimator": "kornia RANSAC homography",
            "threshold": self.threshold,
            "threshold_semantics": "squared one-way transfer error (px^2, kornia <= 0.8 inl_th)",
            "kornia_inl_th": self.inl_th,
            "min_matches": self.min_matches,
            "input_norm": self.input_norm,
            "disk_weights": self.disk_path.name,
            "disk_sha256": self._sha["disk"],
            "lightglue_weights": self.lg_path.name,
            "lightglue_sha256": self._sha["lightglue"],
            "kornia": self.kornia_version,
        }

    def estimate_np(self, prev: np.ndarray, cur: np.ndarray, pair: FramePair | None = None) -> np.ndarray:
        raise ConfigError(
            "registration 'disk' runs in the model (GPU), not in the data loader: "
            "set data_cfg.opencv_homos=false, or use orb/sift for loader homographies"
        )

    def _features(self, x: Tensor) -> list[Any]:
        if self.input_norm == "imagenet":
            mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - mean) / std
        return self.disk(
            x, n=self.max_keypoints, window_size=5, score_threshold=0.0, pad_if_not_divisible=True
        )

    def _fit_batch(
        self, prev: Tensor, cur: Tensor, pairs: Sequence[FramePair] | None
    ) -> list[np.ndarray | None]:
        dev = prev.device
        for net in (self.disk, self.matcher):
            if next(net.parameters()).device != dev:
                net.to(dev)
        b = prev.shape[0]
        with torch.inference_mode():
            prev, cur = prev.float(), cur.float()
            last = self._last
            same = last is not None and last[0].shape == prev.shape and last[0].device == dev
            if last is not None and same and torch.equal(last[0], prev):
                self._stats["feature_reuse"] += b
                f0, f1 = last[1], self._features(cur)
            else:
                feats = self._features(torch.cat([prev, cur]))  # both frames in one batch, as the reference
                f0, f1 = feats[:b], feats[b:]
            self._last = (cur.clone(), f1)
            size = torch.tensor([[prev.shape[-1], prev.shape[-2]]], device=dev)  # LightGlue wants (W, H)
            return [self._pair(a, c, size) for a, c in zip(f0, f1, strict=True)]

    def _pair(self, f0: Any, f1: Any, size: Tensor) -> np.ndarray | None:
        if len(f0.keypoints) < self.min_matches or len(f1.keypoints) < self.min_matches:
            return None
        out = self.matcher(
            {
                "image0": {
                    "keypoints": f0.keypoints[None],
                    "descriptors": f0.descriptors[None],
                    "image_size": size,
                },
                "image1": {
                    "keypoints": f1.keypoints[None],
                    "descriptors": f1.descriptors[None],
                    "image_size": size,
                },
            }
        )
        idx = out["matches"][0]
        if len(idx) < self.min_matches:
            return None
        try:
            h, inliers = self.ransac(f0.keypoints[idx[:, 0]].float(), f1.keypoints[idx[:, 1]].float())
        except torch.linalg.LinAlgError:  # degenerate correspondences (e.g. collinear): identity, counted
            return None
        if int(inliers.sum()) < self.min_matches:
            return None
        return h.double().cpu().numpy()


@REGISTRATION_PROVIDERS.register("disk")
def build_disk(cfg: RegistrationCfg) -> DiskRegistration:
    """DISK + LightGlue + RANSAC from a ``RegistrationCfg`` (local weight files)."""
    return DiskRegistration(
        cfg.disk_weights,
        cfg.lightglue_weights,
        max_keypoints=cfg.max_keypoints,
        threshold=cfg.threshold,
        min_matches=cfg.min_matches,
        input_norm=cfg.input_norm,
    )
