"""The propagator of keyframe + flow propagation (``other_methods.md`` §4.2-4.3): the ``light`` flow network and
the guided spatially varying (GSV) refinement, both working at the propagation resolution ``P`` (1/8 of the
input in the reference).

Flow units: :class:`LightFlowNet` outputs a field ``F`` in *flow-net units*; logits move by ``F / flow_scale_div``
pixels of ``P`` (the reference constant 4). A flow provider (pixels) is brought to the same units by
:func:`to_net_units`, so :func:`propagate` moves logits by exactly the provider's displacement at any
``flow_scale_div`` (tested with a synthetic translation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.flow.gt import resize_flow
from models.warp import flow_warp

# The guide's weights are normalised to sum to 1; where they are all zero (ReLU), all weight goes to the warped
# prediction itself instead of dividing by zero.
GUIDE_EPS = 1e-6


def to_net_units(flow_px: Tensor, size: tuple[int, int], flow_scale_div: float) -> Tensor:
    """A provider's flow ``[B,2,h,w]`` in pixels of ``h x w`` -> ``[B,2,*size]`` in flow-net units at ``size``."""
    return resize_flow(flow_px.float(), size) * flow_scale_div


def propagate(logits: Tensor, flow: Tensor, flow_scale_div: float) -> Tensor:
    """Backward-warp ``logits`` [B,K,h,w] (the previous frame's, at ``P``) onto the current frame along ``flow``
    [B,2,h,w] (flow-net units, current -> previous): ``out(p) = logits(p + flow(p) / flow_scale_div)``, bilinear,
    zero outside the frame."""
    return flow_warp(logits, flow / flow_scale_div, mode="bilinear", grid="exact")[0]


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation)


class LightFlowNet(nn.Module):
    """The ``light`` flow network (§4.2): ``(a, b) [B,3,h,w] each -> F [B,2,h,w]`` (flow-net units, ``a``'s pixels
    pointing into ``b``).

    Two stride-2 convs; four dilated 3x3 convs (dilations 1, 2, 4, 8) whose outputs are summed cumulatively; a 1x1
    merge of the four sums with a residual; a 3x3 conv to 2 channels, upsampled to ``h x w``. The last conv starts
    at zero, so an untrained network is the identity warp (trained end to end from the segmentation loss).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = int(width)
        self.down = nn.Sequential(_conv(6, width, stride=2), nn.ReLU(inplace=True),
                                  _conv(width, width, stride=2), nn.ReLU(inplace=True))  # fmt: skip
        self.dilated = nn.ModuleList(_conv(width, width, dilation=d) for d in (1, 2, 4, 8))
        self.merge = nn.Conv2d(4 * width, width, 1)
        self.out = _conv(width, 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def settings(self) -> dict:
        return {"model": "light", "width": self.width, "trained": "end to end, segmentation loss"}

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x = self.down(torch.cat([a, b], 1))
        y, total, sums = x, None, []
        for conv in self.dilated:
            y = F.relu(conv(y))
            total = y if total is None else total + y  # cumulative sums of the dilated stages
            sums.append(total)
        x = F.relu(x + self.merge(torch.cat(sums, 1)))
        return F.interpolate(self.out(x), size=a.shape[-2:], mode="bilinear", align_corners=False)


def edge_map(logits: Tensor) -> Tensor:
    """``[B,K,h,w] -> [B,1,h,w]``: 1 where the Laplacian of the argmax label map is non-zero (class boundaries).
    Replicate padding, so that the frame border is not an edge."""
    labels = logits.max(
        1, keepdim=True
    ).indices.float()  # = argmax (first maximum), several times faster on CPU
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=logits.device)
    lap = F.conv2d(F.pad(labels, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3))
    return (lap != 0).to(logits.dtype)


def shift_kernels() -> Tensor:
    """``[9,1,3,3]``: the 8 one-pixel shifts (ideal delays) and the all-zero filter of the reference (§4.3)."""
    k = torch.zeros(9, 1, 3, 3)
    positions = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for j, (r, c) in enumerate(positions):
        k[j, 0, r, c] = 1.0
    return k  # filter 8 stays zero


class GuideNet(nn.Module):
    """``[B,K+1,h,w] -> g [B,11,h,w]`` weights summing to 1 per pixel: conv to ``w`` (32); two stride-2 convs
    (``2w``, ``4w``); two bilinear x2 + conv stages back to ``w``, plus a residual; conv to 11, BN, ReLU;
    normalised."""

    def __init__(self, cin: int, n_out: int = 11, width: int = 32) -> None:
        super().__init__()
        w = int(width)
        self.stem = nn.Sequential(_conv(cin, w), nn.ReLU(inplace=True))
        self.enc1 = nn.Sequential(_conv(w, 2 * w, stride=2), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(_conv(2 * w, 4 * w, stride=2), nn.ReLU(inplace=True))
        self.dec1 = nn.Sequential(_conv(4 * w, 2 * w), nn.ReLU(inplace=True))
        self.dec2 = nn.Sequential(_conv(2 * w, w), nn.ReLU(inplace=True))
        self.head = nn.Sequential(_conv(w, n_out), nn.BatchNorm2d(n_out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        e1 = self.enc1(s)
        y = self.enc2(e1)
        y = self.dec1(F.interpolate(y, size=e1.shape[-2:], mode="bilinear", align_corners=False))
        y = self.dec2(F.interpolate(y, size=s.shape[-2:], mode="bilinear", align_corners=False))
        w = self.head(y + s)
        fallback = torch.zeros_like(w)
        fallback[:, 0] = GUIDE_EPS  # an all-zero pixel keeps the warped prediction
        w = w + fallback
        return w / w.sum(1, keepdim=True)


class GSVRefiner(nn.Module):
    """Guided spatially varying filtering (§4.3): ``(warped [B,K,h,w], frame [B,3,h,w]) -> refined [B,K,h,w]``.

    ``Y = g_0 warped + sum_j g_j shift_j(warped) + g_10 intra(frame)``: a per-pixel, class-shared 3x3 dynamic
    filter on the warped prediction blended with a current-frame estimate. ``use_edge`` feeds the boundary map of
    the warped labels to the guide (off: a zero map, same weights); ``train_ideal_delay`` trains the shift filters;
    ``width`` is the intra net's and the guide's base width (reference 32).
    """

    def __init__(
        self, num_classes: int, use_edge: bool = True, train_ideal_delay: bool = False, width: int = 32
    ) -> None:
        super().__init__()
        k, w = int(num_classes), int(width)
        self.use_edge, self.width = bool(use_edge), w
        self.intra = nn.Sequential(_conv(3, w), nn.ReLU(inplace=True), _conv(w, w), nn.ReLU(inplace=True),
                                   _conv(w, k))  # fmt: skip
        self.guide = GuideNet(k + 1, width=w)
        self.shifts = nn.Parameter(shift_kernels(), requires_grad=bool(train_ideal_delay))

    def weights(self, warped: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
        """``(g [B,11,h,w], intra [B,K,h,w])``."""
        intra = self.intra(frame)
        edge = edge_map(warped) if self.use_edge else warped.new_zeros(warped[:, :1].shape)
        return self.guide(torch.cat([intra, edge], 1)), intra

    def forward(self, warped: Tensor, frame: Tensor) -> Tensor:
        b, k, h, w = warped.shape
        g, intra = self.weights(warped, frame)
        shifted = F.conv2d(warped.reshape(b * k, 1, h, w), self.shifts.to(warped.dtype), padding=1)
        shifted = shifted.view(b, k, -1, h, w)  # [B,K,9,h,w]
        out = g[:, :1] * warped + (g[:, None, 1:10] * shifted).sum(2) + g[:, 10:11] * intra
        return out
