"""Rendering frames, labels and exact optical flow of one video (a world, a flight, moving objects).

Per frame t: the world raster is warped with the homography H_t (world -> image) at ``supersample`` x the
output size and box-filtered down (anti-aliasing); labels are warped with nearest sampling at the output size.
Moving objects are composited on top (hidden under tree crowns and buildings, which stand above the ground).
The sensor stage (per-video colour response and vignetting, per-frame brightness flicker, occasional blur,
noise) is separate, so tests can compare the clean renders geometrically.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from data.synthetic.camera import Flight
from data.synthetic.objects import Sprite, make_sprite, mover_poses
from data.synthetic.params import SyntheticParams
from data.synthetic.world import CLS, World

_OVERHEAD = np.array([CLS["tree"], CLS["building"], CLS["roof"]], np.uint8)  # stand above moving objects


@dataclass
class Frame:
    """A clean render: rgb float32 [H, W, 3] in 0..1, labels uint8 [H, W], owner int16 [H, W].

    ``owner`` is the index of the moving object seen at each pixel, -1 for the static scene.
    """

    rgb: np.ndarray
    labels: np.ndarray
    owner: np.ndarray


@dataclass
class _Sensor:
    """Per-frame sensor draws of one video (drawn up front, so frames can be rendered in any order)."""

    gain: np.ndarray  # [T, 3] per-frame, per-channel brightness gain (flicker, exposure steps)
    blur: list[tuple[str, float, float]]  # per frame: ("none"|"gauss"|"motion", size, angle)
    noise: np.ndarray  # [T] noise std (0..1 scale)
    seeds: list[np.random.SeedSequence]  # per-frame noise streams
    wb: np.ndarray  # [3] white balance gains (per-video colour jitter)
    saturation: float
    gamma: float
    vignette: np.ndarray  # [H, W] multiplicative falloff


def _sensor(rng: np.random.Generator, ss: np.random.SeedSequence, n: int, params: SyntheticParams) -> _Sensor:
    h, w = params.height, params.width
    log_gain = np.zeros(n)
    level, step = 0.0, 0.0
    for t in range(n):
        # auto-exposure: an AR(1) wander plus occasional steps that decay over a few frames
        if rng.random() < 0.06:
            step = rng.choice([-1, 1]) * rng.uniform(0.06, 0.14)
        step *= 0.7
        level = 0.8 * level + rng.normal(0.0, params.flicker)
        log_gain[t] = level + step
    gain = np.exp(log_gain)[:, None] * (1 + rng.normal(0, 0.01, (n, 3)))
    blur = []
    for _ in range(n):
        r = rng.random()
        if r < params.blur_prob * 0.6:
            blur.append(("gauss", rng.uniform(0.6, 1.3), 0.0))
        elif r < params.blur_prob:
            blur.append(("motion", rng.uniform(2.5, 5.0), rng.uniform(0, np.pi)))
        else:
            blur.append(("none", 0.0, 0.0))
    sigma = rng.uniform(*params.noise_sigma) / 255.0
    noise = sigma * rng.uniform(0.8, 1.2, n)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rr = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    vignette = (1 - rng.uniform(0.0, 0.25) * rr).astype(np.float32)
    wb = rng.uniform(0.96, 1.04, 3)
    return _Sensor(
        gain,
        blur,
        noise,
        ss.spawn(n),
        wb,
        float(rng.uniform(0.9, 1.1)),
        float(rng.uniform(0.92, 1.08)),
        vignette,
    )


class VideoScene:
    """One continuous flight over one world, with its moving objects and sensor. Frames are 0..T-1."""

    def __init__(
        self,
        world: World,
        flight: Flight,
        params: SyntheticParams,
        sensor_rng: np.random.Generator,
        sensor_ss: np.random.SeedSequence,
    ) -> None:
        self.world, self.flight, self.params = world, flight, params
        self.n_frames = len(flight.homographies)
        self.size = (params.height, params.width)
        lay = world.layout
        self.sprites: list[Sprite] = [make_sprite(m.thing, world.scale) for m in lay.movers]
        self.poses = [mover_poses(m, lay.roads, self.n_frames) for m in lay.movers]  # each [T, 3, 3]
        self.sensor = _sensor(sensor_rng, sensor_ss, self.n_frames, params)

    def render(self, t: int) -> Frame:
        """The clean frame t (geometry and textures only, no sensor effects)."""
        h, w = self.size
        k = self.params.supersample
        hom = self.flight.homographies[t]
        raster_to_img = hom @ np.linalg.inv(self.world.wu_to_raster)
        # supersampled pixel u <-> output pixel (u - (k-1)/2) / k: the centre of a k x k box
        to_ss = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1.0]])
        big = cv2.warpPerspective(
            self.world.rgb,
            to_ss @ raster_to_img,
            (w * k, h * k),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT,
        )
        labels = cv2.warpPerspective(
            self.world.labels, raster_to_img, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
            borderValue=255,
        )  # fmt: skip
        owner = np.full((h, w), -1, np.int16)
        if self.sprites:
            over_big = np.isin(
                cv2.warpPerspective(
                    self.world.labels, to_ss @ raster_to_img, (w * k, h * k), flags=cv2.INTER_NEAREST
                ),
                _OVERHEAD,
            )
            over = np.isin(labels, _OVERHEAD)
            for i, sprite in enumerate(self.sprites):
                # sprite px -> object-local wu -> world wu (pose at frame t) -> image px
                obj_to_img = hom @ self.poses[i][t] @ np.linalg.inv(sprite.local_to_px)
                self._composite(big, sprite, to_ss @ obj_to_img, ~over_big, None)
                self._composite(labels, sprite, obj_to_img, ~over, (owner, i))
        rgb = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA) if k > 1 else big
        return Frame(rgb, labels, owner)

    @staticmethod
    def _composite(
        dst: np.ndarray,
        sprite: Sprite,
        m: np.ndarray,
        visible: np.ndarray,
        owner: tuple[np.ndarray, int] | None,
    ) -> None:
        """Draw a sprite into ``dst`` through homography ``m`` (sprite px -> dst px), only where ``visible``.

        For an rgb ``dst`` [h, w, 3] the sprite is alpha-blended; for a label ``dst`` [h, w] the sprite's class
        is written where its alpha >= 0.5 and ``owner`` (map, index) records which object is seen there.
        """
        hh, ww = dst.shape[:2]
        sh, sw = sprite.alpha.shape
        outline = np.array(
            [[-0.5, -0.5, 1], [sw - 0.5, -0.5, 1], [sw - 0.5, sh - 0.5, 1], [-0.5, sh - 0.5, 1]]
        )
        c = m @ outline.T
        c = c[:2] / c[2]
        x0, y0 = np.floor(c.min(1)).astype(int) - 1
        x1, y1 = np.ceil(c.max(1)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, ww), min(y1, hh)
        if x1 <= x0 or y1 <= y0:
            return
        mm = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ m
        alpha = cv2.warpPerspective(sprite.alpha, mm, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        alpha *= visible[y0:y1, x0:x1]
        if owner is None:
            rgb = cv2.warpPerspective(sprite.rgb, mm, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
            a = alpha[..., None]
            dst[y0:y1, x0:x1] = dst[y0:y1, x0:x1] * (1 - a) + rgb * a
        else:
            hit = alpha >= 0.5
            dst[y0:y1, x0:x1][hit] = CLS[sprite.label]
            owner[0][y0:y1, x0:x1][hit] = owner[1]

    def sensor_image(self, frame: Frame, t: int) -> np.ndarray:
        """Apply the camera sensor to a clean frame: uint8 RGB [H, W, 3]."""
        s = self.sensor
        img = frame.rgb * s.wb.astype(np.float32)
        lum = img.mean(axis=2, keepdims=True)
        img = lum + s.saturation * (img - lum)  # per-video colour response
        img = np.clip(img, 0, 1) ** np.float32(s.gamma)
        img = img * s.vignette[..., None] * s.gain[t].astype(np.float32)
        kind, size, angle = s.blur[t]
        if kind == "gauss":
            img = cv2.GaussianBlur(img, (0, 0), size)
        elif kind == "motion":
            n = int(np.ceil(size)) | 1
            kern = np.zeros((n, n), np.float32)
            c = (n - 1) / 2
            d = np.array([np.cos(angle), np.sin(angle)]) * size / 2
            cv2.line(
                kern,
                (int(round(c - d[0])), int(round(c - d[1]))),
                (int(round(c + d[0])), int(round(c + d[1]))),
                1.0,
                1,
            )
            img = cv2.filter2D(img, -1, kern / kern.sum(), borderType=cv2.BORDER_REFLECT)
        rng = np.random.default_rng(s.seeds[t])
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(s.noise[t])
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def flow(self, owner: np.ndarray, t: int, s: int) -> np.ndarray:
        """True flow float64 [H, W, 2] from frame t to frame s on frame t's pixels (x + F(x) = position in s).

        Static pixels move by H_s H_t^-1; a pixel showing moving object i moves by H_s M_i(s) M_i(t)^-1 H_t^-1.
        """
        h, w = self.size
        homs = self.flight.homographies
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        pts = np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
        own = owner.ravel()
        inv_t = np.linalg.inv(homs[t])
        out = np.empty((2, h * w))
        for i in np.unique(own):
            sel = own == i
            m = (
                homs[s] @ inv_t
                if i < 0
                else homs[s] @ self.poses[i][s] @ np.linalg.inv(self.poses[i][t]) @ inv_t
            )
            q = m @ pts[:, sel]
            out[:, sel] = q[:2] / q[2] - pts[:2, sel]
        return out.T.reshape(h, w, 2)
