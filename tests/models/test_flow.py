"""Flow providers: OpenCV accuracy on a known shift, RAFT loading/padding/shape, true flow, builder errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import raft_small

from config.errors import CheckpointError, ConfigError, DataError
from data.catalog import get_dataset_info
from data.frames import read_clip, read_frame
from data.synthetic.io import load_flow
from models.flow import DISFlow, GTFlow, RaftFlow, build_flow
from models.flow.base import file_sha256
from models.flow.gt import resize_flow
from models.registry import FLOW_PROVIDERS
from tests.images import texture, to_tensor

# ------------------------------------------------------------------------------------------------- OpenCV


@pytest.mark.parametrize("backend", ["dis", "farneback"])
def test_opencv_flow_recovers_integer_shift(backend: str) -> None:
    img = texture(96, 128)
    dx, dy = 3, -2
    shifted = np.roll(
        img, (dy, dx), axis=(0, 1)
    )  # shifted(p + (dx, dy)) = img(p): flow img -> shifted = (dx, dy)
    provider = build_flow(backend)
    flow = provider(to_tensor(img, shifted), to_tensor(shifted, img))
    assert flow.shape == (2, 2, 96, 128) and flow.dtype == torch.float32
    interior = flow[..., 16:-16, 16:-16]
    for b, sign in ((0, 1), (1, -1)):
        med = interior[b].flatten(1).median(dim=1).values
        assert abs(med[0].item() - sign * dx) < 0.5 and abs(med[1].item() - sign * dy) < 0.5, (backend, med)
    assert provider.settings()["model"] == backend
    assert torch.equal(pickle.loads(pickle.dumps(provider))(to_tensor(img), to_tensor(shifted)), flow[:1])


def test_flow_output_can_be_used_with_grad() -> None:
    """Providers run under inference_mode but return ordinary tensors: the temporal loss warps along them."""
    img = to_tensor(texture(32, 48))
    flow = DISFlow()(img, img)
    assert not flow.is_inference()
    logits = torch.randn(1, 2, 32, 48, requires_grad=True)
    (logits * flow).sum().backward()  # mul saves the flow for backward: an inference tensor would fail here
    assert logits.grad is not None


# --------------------------------------------------------------------------------------------------- RAFT


@pytest.fixture(scope="module")
def raft_small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised raft_small state dict, named like a torchvision file with its true sha prefix."""
    tmp = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), tmp)
    named = tmp.with_name(f"raft_small_C_T_V1-{file_sha256(tmp)[:8]}.pth")
    tmp.rename(named)
    return named


def test_raft_small_shape_padding_and_settings(raft_small_file: Path) -> None:
    provider = build_flow("raft_small", weights=str(raft_small_file), iters=2)
    img1, img2 = to_tensor(texture(64, 96, 0)), to_tensor(texture(64, 96, 1))  # below RAFT's 128: padded
    flow = provider(img1, img2)
    assert flow.shape == (1, 2, 64, 96) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    s = provider.settings()
    assert s["sha256"] == file_sha256(raft_small_file) and s["weights"] == raft_small_file.name
    assert (s["model"], s["iters"], s["input_norm"]) == ("raft_small", 2, "minus1_1")
    imagenet = build_flow("raft_small", weights=str(raft_small_file), iters=2, input_norm="imagenet")
    assert not torch.allclose(imagenet(img1, img2), flow)  # the normalisation reaches the network


def test_raft_pad_none_needs_divisible_size(raft_small_file: Path) -> None:
    provider = RaftFlow("raft_small", raft_small_file, iters=1, pad="none")
    with pytest.raises(ConfigError, match="flow.pad=replicate"):
        provider(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
    assert provider(torch.rand(1, 3, 128, 136), torch.rand(1, 3, 128, 136)).shape == (1, 2, 128, 136)


def test_raft_weights_errors(raft_small_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"raft_large_C_T_V1-22a6c225\.pth.*download\.pytorch\.org"):
        build_flow("raft_large", weights=str(tmp_path / "raft_large_C_T_V1-22a6c225.pth"))
    bad = tmp_path / "raft_small_C_T_V1-deadbeef.pth"
    bad.write_bytes(raft_small_file.read_bytes())
    with pytest.raises(CheckpointError, match="deadbeef"):
        build_flow("raft_small", weights=str(bad))
    other = tmp_path / "raft_large_random.pth"  # no sha suffix: no digest check, but the keys must fit
    other.write_bytes(raft_small_file.read_bytes())
    with pytest.raises(CheckpointError, match="does not fit torchvision raft_large"):
        build_flow("raft_large", weights=str(other))


# ----------------------------------------------------------------------------------------------- true flow


def test_gt_flow_matches_stored_file(tiny_synthetic: Path) -> None:
    info = get_dataset_info("synthetic")
    name = (tiny_synthetic / "val.txt").read_text().split()[0]
    clip = read_clip(tiny_synthetic / "data" / name, name, info)
    frames = to_tensor(*(read_frame(p) for p in clip.frames))
    provider = build_flow("gt")
    pairs = [clip.pair(1, 2), clip.pair(2, 1)]
    flow = provider(frames[[1, 2]], frames[[2, 1]], pairs)
    fwd = torch.from_numpy(load_flow(clip.dir, clip.frames[1].stem, "forward")).permute(2, 0, 1)
    bwd = torch.from_numpy(load_flow(clip.dir, clip.frames[2].stem, "backward")).permute(2, 0, 1)
    assert torch.equal(flow[0], fwd) and torch.equal(flow[1], bwd)
    # frames at twice the size: the field is resized and the vectors doubled
    big = F.interpolate(frames[[1]], scale_factor=2, mode="bilinear")
    flow2 = provider(big, big, pairs[:1])
    assert flow2.shape[-2:] == big.shape[-2:]
    assert torch.allclose(flow2.mean(dim=(2, 3)), 2 * fwd.mean(dim=(1, 2))[None], atol=1e-3)
    with pytest.raises(DataError, match="adjacent"):
        provider(frames[[0]], frames[[2]], [clip.pair(0, 2)])
    with pytest.raises(ConfigError, match="needs the frame pairs"):
        provider(frames[[0]], frames[[1]])
    assert isinstance(provider, GTFlow)


def test_resize_flow_scales_vectors() -> None:
    flow = torch.stack([torch.full((4, 6), 1.0), torch.full((4, 6), -2.0)])[None]
    out = resize_flow(flow, (8, 18))
    assert out.shape == (1, 2, 8, 18)
    assert torch.allclose(out[0, 0], torch.tensor(3.0)) and torch.allclose(out[0, 1], torch.tensor(-4.0))


# ------------------------------------------------------------------------------------------------- builder


def test_build_flow_errors() -> None:
    assert FLOW_PROVIDERS.names() == ["dis", "farneback", "gt", "raft_large", "raft_small"]
    with pytest.raises(ConfigError, match="did you mean 'raft_small'"):
        build_flow("raft_smal")
    with pytest.raises(ConfigError, match="input_norm"):
        build_flow("dis", input_norm="rgb")
    with pytest.raises(ConfigError, match="pad"):
        build_flow("dis", pad="zeros")
