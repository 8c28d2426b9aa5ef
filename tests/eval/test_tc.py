"""TC engine (``metrics.md`` §3.7): hand computations, an independent re-implementation, torchmetrics oracle."""

from __future__ import annotations

import gc
import json
import math
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from packaging.version import Version
from torchmetrics.classification import MulticlassJaccardIndex

from config.errors import ConfigError
from data.frames import FramePair
from eval.tc import PRESETS, TCAccumulator, TemporalConsistency, pair_confusion, pair_score, protocol
from models.warp import fwd_bwd_occlusion

FAKE = {"model": "precomputed"}  # flow override that matches the fake providers' settings()


class FakeFlow:
    """A duck-typed flow provider: ``fn(img1, img2, pairs) -> [B,2,H,W]``; counts its calls."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls, self.pairs_seen = fn, 0, []

    def __call__(self, img1: torch.Tensor, img2: torch.Tensor, pairs: list | None = None) -> torch.Tensor:
        self.calls += 1
        self.pairs_seen.append(pairs)
        return self.fn(img1, img2, pairs)

    def settings(self) -> dict:
        return {"model": "precomputed", "weights": "none"}


def zero_flow(img1: torch.Tensor, img2: torch.Tensor, pairs: list | None) -> torch.Tensor:
    b, _, h, w = img1.shape
    return torch.zeros(b, 2, h, w)


def const(dx: float, dy: float, h: int, w: int) -> torch.Tensor:
    """[2,H,W] constant flow."""
    return torch.stack((torch.full((h, w), float(dx)), torch.full((h, w), float(dy))))


def fpair(clip: str, t: int) -> FramePair:
    return FramePair(Path(f"{clip}/origin/{t:03d}.png"), Path(f"{clip}/origin/{t + 1:03d}.png"), t, t + 1)


# --------------------------------------------------------------------------------------------- presets


def test_presets_and_overrides() -> None:
    def switches(name: str) -> str:
        p = PRESETS[name]
        f = p.flow
        return f"{f.input_norm} {f.pad} {f.iters} {p.grid} {p.out_of_frame} {p.occlusion} {p.aggregation} {p.miou_mode}"

    assert switches("tc_reference") == "imagenet none 20 reference class0 none clip_mean nan_exclude"
    assert PRESETS["tc_reference"].per_pair_score == "miou_nan_exclude"
    assert switches("strict") == "minus1_1 replicate 20 exact ignore fwd_bwd pooled nan_exclude"
    assert switches("vspw") == "minus1_1 replicate 20 reference class0 none pooled nan_exclude"
    assert switches("etc") == "imagenet none 20 reference class0 none pooled zero"
    p = protocol("strict", flow={"iters": 12}, frames="stride:3", resolution=[8, 12])
    assert p.flow.iters == 12 and p.flow.input_norm == "minus1_1" and p.resolution == (8, 12)
    assert p.modified == ("flow", "frames", "resolution") and p.preset == "strict"
    with pytest.raises(ConfigError, match="tc_reference, strict, vspw, etc"):
        protocol("vspv")
    bad_overrides = (
        {"grid": "exactly"},
        {"frames": "stride:0"},
        {"flow": {"input_norm": "rgb"}},
        {"gird": "x"},
    )
    for bad in bad_overrides:
        with pytest.raises(ConfigError):
            protocol("tc_reference", **bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- one pair


def test_zero_flow_identical_predictions() -> None:
    c, h, w = 2, 4, 4
    pred = torch.zeros(h, w, dtype=torch.long)
    pred[:, 2:] = 1  # left half class 0, right half class 1
    flow = torch.zeros(2, h, w)
    strict = protocol("strict", flow=FAKE)
    assert pair_score(pair_confusion(pred, pred, flow, c, strict, flow_bwd=flow), "miou_nan_exclude") == 1.0
    # tc_reference: the last column and the last row round out of the frame (even W, H) and become class 0.
    # Warped class 1: column 2, rows 0..2 -> 3 px. Class 1: I = 3, U = 8. Class 0: I = 8, U = 16 - 3 = 13.
    cm = pair_confusion(pred, pred, flow, c, PRESETS["tc_reference"])
    assert cm.tolist() == [[8, 0], [5, 3]]
    assert pair_score(cm, "miou_nan_exclude") == pytest.approx((8 / 13 + 3 / 8) / 2, abs=1e-12)
    # odd sizes: half-to-even rounding keeps the last row/column inside, so the reference grid is exact there
    odd = torch.randint(0, 3, (5, 7))
    odd_cm = pair_confusion(odd, odd, torch.zeros(2, 5, 7), 3, PRESETS["tc_reference"])
    assert pair_score(odd_cm, "pixel_acc") == 1.0

    # the same through the streaming driver with a zero-flow provider
    frames = torch.rand(2, 3, h, w)
    tc = TemporalConsistency(
        c,
        {"ref": protocol("tc_reference", flow=FAKE), "strict": strict},
        {"ref": FakeFlow(zero_flow), "strict": FakeFlow(zero_flow)},
    )
    tc.start_clip("a")
    for i in range(2):
        tc.add(frames[i], pred, fpair("a", i), i)
    res = tc.results()
    assert res["strict"]["value"] == 1.0
    assert res["ref"]["value"] == pytest.approx((8 / 13 + 3 / 8) / 2, abs=1e-12)


def test_integer_translation_exact_grid() -> None:
    g = torch.Generator().manual_seed(0)
    c, h, w, dx, dy = 4, 9, 12, 2, 1
    nxt = torch.randint(0, c, (h, w), generator=g)
    shifted = torch.zeros(h, w, dtype=torch.long)  # expected warp: nxt(x + dx, y + dy), class 0 outside
    shifted[: h - dy, : w - dx] = nxt[dy:, dx:]
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[: h - dy, : w - dx] = True
    cur = shifted.clone()
    n_out = int((~inside).sum())
    cur[~inside] = torch.randint(1, c, (n_out,), generator=g)  # disagrees with the class-0 fill
    flow = const(dx, dy, h, w)

    ign = pair_confusion(cur, nxt, flow, c, protocol("strict", flow=FAKE, occlusion="none"))
    # the shifted map is reproduced on the in-frame pixels, the others are left out
    assert int(ign.sum()) == (h - dy) * (w - dx) and int(ign.trace()) == int(ign.sum())
    assert pair_score(ign, "miou_nan_exclude") == 1.0

    class0 = protocol("strict", flow=FAKE, occlusion="none", out_of_frame="class0")
    cls0 = pair_confusion(cur, nxt, flow, c, class0)
    expected = torch.bincount(cur.flatten() * c + shifted.flatten(), minlength=c * c).view(c, c)
    assert torch.equal(cls0, expected) and int(cls0.sum()) == h * w
    assert int(cls0[:, 0].sum() - cls0[0, 0]) == n_out  # every out-of-frame pixel became class 0


def test_fwd_bwd_occluder() -> None:
    # background static; an occluder (rows 2..5, columns a..a+ow-1) moves right by s px between t and t+1
    h, w, a, ow, s = 8, 20, 4, 6, 3
    rows = slice(2, 6)
    fwd = torch.zeros(1, 2, h, w)
    fwd[0, 0, rows, a : a + ow] = s  # on frame t: the occluder moves by +s
    bwd = torch.zeros(1, 2, h, w)
    bwd[0, 0, rows, a + s : a + s + ow] = -s  # on frame t+1: it came from -s
    occ = fwd_bwd_occlusion(fwd, bwd)[0]
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[rows, a + ow : a + ow + s] = True  # background covered by the occluder's leading edge
    assert torch.equal(occ, expected)
    # simplified: reads bwd at x instead of x + fwd(x); the occluder's trailing s columns see background flow
    # there (bwd = 0 at x), so they are flagged too: true mask + columns a..a+s-1
    simp = fwd_bwd_occlusion(fwd, bwd, simplified=True)[0]
    also = torch.zeros(h, w, dtype=torch.bool)
    also[rows, a : a + s] = True
    assert torch.equal(simp, expected | also)
    # pair_confusion leaves exactly those pixels out (flow stays in frame, exact grid)
    pred = torch.zeros(h, w, dtype=torch.long)
    for occlusion, mask in (("fwd_bwd", expected), ("fwd_bwd_simplified", expected | also)):
        cm = pair_confusion(pred, pred, fwd[0], 2, protocol("strict", flow=FAKE, occlusion=occlusion), bwd[0])
        assert int(cm.sum()) == h * w - int(mask.sum())
    with pytest.raises(ValueError, match="backward flow"):
        pair_confusion(pred, pred, fwd[0], 2, PRESETS["strict"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_score_matches_torchmetrics_macro(seed: int) -> None:
    # oracle semantics pinned: torchmetrics 1.4-1.9 macro averages over classes with a non-empty union
    if not Version("1.4") <= Version(torchmetrics.__version__) < Version("2.0"):
        pytest.skip(f"torchmetrics {torchmetrics.__version__}: macro semantics not pinned for this version")
    g = torch.Generator().manual_seed(seed)
    c, h, w = 7, 24, 32
    cur = torch.randint(0, 4, (h, w), generator=g)  # classes 5, 6 absent from both maps
    nxt = torch.randint(1, 6, (h, w), generator=g)
    cm = pair_confusion(cur, nxt, torch.zeros(2, h, w), c, protocol("strict", flow=FAKE, occlusion="none"))
    oracle = MulticlassJaccardIndex(num_classes=c, average="macro", ignore_index=255)
    assert pair_score(cm, "miou_nan_exclude") == pytest.approx(float(oracle(nxt[None], cur[None])), abs=1e-6)


# ------------------------------------------------------------------------------------------ aggregation


def test_aggregation_three_values() -> None:
    c = 4  # class 3 never appears
    z = torch.zeros(c, c, dtype=torch.int64)
    a0, b0, b1 = z.clone(), z.clone(), z.clone()
    a0[0, 0], a0[0, 1] = 3, 1  # clip a: class 0 3/4, class 1 0/1 -> 0.375
    b0[1, 1] = 2  # clip b pair 0: class 1 -> 1.0
    b1[1, 1], b1[1, 2] = 1, 1  # clip b pair 1: class 1 1/2, class 2 0/1 -> 0.25; clip b -> 0.625
    # pooled [[3,1,0],[0,3,1],[0,0,0]]: IoU 3/4, 3/5, 0 (class 3 absent)
    expected = {"clip_mean": 0.5, "nan_exclude": (0.75 + 0.6 + 0) / 3, "zero": (0.75 + 0.6 + 0) / 4}
    for key, proto in (
        ("clip_mean", PRESETS["tc_reference"]),
        ("nan_exclude", PRESETS["vspw"]),
        ("zero", PRESETS["etc"]),
    ):
        acc = TCAccumulator(c, proto)
        acc.add("a", 0, a0)
        acc.add("b", 0, b0)
        acc.add("b", 1, b1)
        assert acc.value() == pytest.approx(expected[key], abs=1e-12), key
        assert [r["n_pairs"] for r in acc.per_clip()] == [1, 2]
    assert len({round(v, 9) for v in expected.values()}) == 3
    with pytest.raises(ValueError, match="added after"):
        acc.add("b", 1, b1)  # a pair counted twice


def test_empty_pairs_are_excluded_not_zero() -> None:
    acc = TCAccumulator(2, protocol("tc_reference", per_pair_score="miou_zero"))
    acc.add("a", 0, torch.zeros(2, 2, dtype=torch.int64))  # every pixel out of frame / occluded
    assert math.isnan(acc.value()) and acc.per_clip()[0]["tc"] is None
    acc.add("a", 1, torch.tensor([[2, 0], [0, 0]]))
    assert acc.value() == 0.5  # miou_zero: (1 + 0) / 2, the empty pair does not count


# ------------------------------------------------------------- independent re-implementation of §3.2


def reference_tc(clips: dict[str, torch.Tensor], flows: dict, c: int) -> float:
    """SSP TC written out plainly: grid_sample nearest with 2x/(W-1)-1, zero padding -> class 0, per-pair macro
    Jaccard over classes with a non-empty union, mean per clip, mean over clips."""
    clip_scores = []
    for name, preds in clips.items():
        n, h, w = preds.shape
        ys, xs = torch.meshgrid(torch.arange(h) * 1.0, torch.arange(w) * 1.0, indexing="ij")
        scores = []
        for t in range(n - 1):
            f = flows[fpair(name, t)]
            gx = 2 * (xs + f[0]) / (w - 1) - 1
            gy = 2 * (ys + f[1]) / (h - 1) - 1
            grid = torch.stack((gx, gy), -1)[None]
            src = preds[t + 1][None, None].float()
            warped = F.grid_sample(src, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            p, q = preds[t].numpy(), warped[0, 0].numpy().astype(np.int64)
            ious = []
            for k in range(c):
                inter, union = np.sum((p == k) & (q == k)), np.sum((p == k) | (q == k))
                if union > 0:
                    ious.append(inter / union)
            scores.append(np.mean(ious))
        clip_scores.append(np.mean(scores))
    return float(np.mean(clip_scores))


def test_tc_reference_equals_independent_implementation() -> None:
    g = torch.Generator().manual_seed(3)
    c, h, w = 5, 12, 16
    lengths = {"short": 3, "long": 6}  # unequal lengths: the clip mean weights clips, not pairs
    clips, flows = {}, {}
    for name, n in lengths.items():
        blocks = torch.randint(0, c, (h // 4, w // 4), generator=g)
        base = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 4x4 blocks, like real segments
        preds = base[None].repeat(n, 1, 1)
        noise = torch.rand(n, h, w, generator=g) < 0.15
        preds[noise] = torch.randint(0, c, (int(noise.sum()),), generator=g)
        clips[name] = preds
        for t in range(n - 1):
            # non-integer flows of up to 3 px, some pointing out of the frame
            flows[fpair(name, t)] = (torch.rand(2, h, w, generator=g) - 0.5) * 6
    provider = FakeFlow(lambda a, b, pairs: flows[pairs[0]][None])
    tc = TemporalConsistency(c, {"ref": protocol("tc_reference", flow=FAKE)}, {"ref": provider})
    for name, preds in clips.items():
        tc.start_clip(name)
        for t in range(len(preds)):
            tc.add(torch.rand(3, h, w, generator=g), preds[t], fpair(name, t), t)
    value = tc.results()["ref"]["value"]
    assert value == pytest.approx(reference_tc(clips, flows, c), abs=1e-6)
    assert provider.calls == sum(n - 1 for n in lengths.values())
    assert value < 0.99  # the flows really move things


# ------------------------------------------------------------------------------------- streaming driver


def test_streaming_memory_skips_and_shared_flow() -> None:
    c, h, w = 3, 6, 8
    shared, strict_prov = FakeFlow(zero_flow), FakeFlow(zero_flow)
    tc = TemporalConsistency(
        c,
        {
            "tc_reference": protocol("tc_reference", flow=FAKE),
            "etc": protocol("etc", flow=FAKE),
            "strict": protocol("strict", flow=FAKE),
            "first": protocol("tc_reference", flow=FAKE, frames="first_n_clips:1"),
            "stride": protocol("tc_reference", flow=FAKE, frames="stride:3"),
        },
        {"tc_reference": shared, "etc": shared, "strict": strict_prov, "first": shared, "stride": shared},
    )
    refs = []
    tc.start_clip("dense")
    for i in range(10):
        frame, pred = torch.rand(3, h, w), torch.randint(0, c, (h, w))
        refs.append((weakref.ref(frame), weakref.ref(pred)))
        tc.add(frame, pred, fpair("dense", i), i)
        del frame, pred
    gc.collect()
    alive = [i for i, (f, p) in enumerate(refs) if f() is not None or p() is not None]
    assert alive == [9]  # only the previous frame and prediction are held
    assert shared.calls == 9  # one forward flow per pair for the four protocols that share the provider
    assert strict_prov.calls == 18  # strict: forward and backward flow per pair

    tc.start_clip("skipped")  # --skip-frames 3: frames i with i % 3 in {0, 1}
    for i in (0, 1, 3, 4, 6, 7, 9):
        tc.add(torch.rand(3, h, w), torch.randint(0, c, (h, w)), fpair("skipped", i), i)
    rows = {r["clip"]: r for r in tc.per_clip_rows()}
    assert rows["dense"]["n_pairs"] == 9 and rows["skipped"]["n_pairs"] == 3  # (0,1), (3,4), (6,7) only
    assert shared.calls == 12
    res = tc.results(model_inference="per frame (image)", software={"tcseg": "test"})
    json.dumps(res)  # JSON-ready
    card = res["strict"]["tc_protocol"]
    assert card["frames"] == {"rule": "all_consecutive", "n_clips": 2, "n_pairs": 12}
    assert card["flow"]["model"] == "precomputed" and card["flow"]["input_norm"] == "minus1_1"
    assert card["resolution"] == [h, w] and card["occlusion"] == "fwd_bwd" and card["preset"] == "strict"
    assert res["first"]["tc_protocol"]["frames"]["n_pairs"] == 9 and rows["skipped"]["first"] is None
    assert res["stride"]["tc_protocol"]["frames"]["n_pairs"] == 3 + 3  # t = 0, 3, 6 in both clips


def test_backward_pair_and_provider_checks() -> None:
    prov = FakeFlow(zero_flow)
    tc = TemporalConsistency(2, {"s": protocol("strict", flow=FAKE)}, {"s": prov})
    tc.start_clip("a")
    for i in range(2):
        tc.add(torch.rand(3, 4, 4), torch.zeros(4, 4, dtype=torch.long), fpair("a", i), i)
    fwd_pairs, bwd_pairs = prov.pairs_seen
    assert fwd_pairs == [fpair("a", 0)]
    back = bwd_pairs[0]
    assert (back.first, back.second, back.first_path) == (1, 0, fpair("a", 0).second_path)
    wrong = FakeFlow(zero_flow)
    wrong.settings = lambda: {
        "model": "raft_large",
        "input_norm": "imagenet",
    }  # a provider built for tc_reference
    with pytest.raises(ConfigError, match="input_norm"):
        TemporalConsistency(2, {"s": PRESETS["strict"]}, {"s": wrong})
    with pytest.raises(ConfigError, match="no flow provider"):
        TemporalConsistency(2, {"s": PRESETS["strict"]}, {})
