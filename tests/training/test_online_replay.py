"""Replay buffers of the online loop (other_methods.md §3.6): each on a tiny case of what it must do."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from config.errors import ConfigError
from training.online.replay import (
    REPLAY_BUFFERS,
    EFIFOBuffer,
    ERBuffer,
    MIRBuffer,
    PrioritizedBuffer,
    UniformBuffer,
    build_replay,
)


def test_registry_names() -> None:
    assert REPLAY_BUFFERS.names() == ["efifo", "er", "fifo", "mir", "prioritized", "uniform"]


def test_fifo_keeps_the_last_n_in_stream_order() -> None:
    buf = build_replay("fifo", capacity=4)
    buf.add([])
    assert buf.train_keys() == [] and len(buf) == 0
    buf.add([("v", 0), ("v", 1)])
    assert buf.train_keys() == [("v", 0), ("v", 1)]
    buf.add([("v", i) for i in range(2, 7)])
    assert buf.train_keys() == [("v", 3), ("v", 4), ("v", 5), ("v", 6)] == buf.keys()
    assert buf.replay_for(buf.train_keys()[:2]) == []


def test_fifo_reproduces_the_reference_window() -> None:
    # train_set = frames[max(0, pos − N) : pos], with the frames since the last window added before training.
    frames, n, step = list(range(50)), 7, 3
    buf = build_replay("fifo", capacity=n)
    for pos in range(0, 50, step):
        buf.add(frames[max(0, pos - step) : pos])
        assert buf.train_keys() == frames[max(0, pos - n) : pos]


def test_uniform_keeps_capacity_and_early_frames_with_the_expected_probability() -> None:
    cap, n, trials = 5, 15, 3000
    survived = Counter()
    for seed in range(trials):
        buf = UniformBuffer(cap, seed=seed)
        buf.add(list(range(n)))
        keys = buf.keys()
        assert len(keys) == cap and len(set(keys)) == cap and keys == sorted(keys)  # arrival order
        assert n - 1 in keys  # the newest frame is always stored
        survived.update(keys)
    # frame i < cap survives n − cap evictions; frame i >= cap survives the n − 1 − i evictions after its own.
    for i in range(n):
        expected = (1 - 1 / cap) ** (n - cap if i < cap else n - 1 - i)
        assert abs(survived[i] / trials - expected) < 0.035, (i, survived[i] / trials, expected)


def test_uniform_is_deterministic_for_a_seed() -> None:
    a, b = UniformBuffer(3, seed=4), UniformBuffer(3, seed=4)
    a.add(list(range(20)))
    b.add(list(range(20)))
    assert a.keys() == b.keys()


def test_prioritized_evicts_low_loss_frames_more_often() -> None:
    losses = {"a": 0.1, "b": 1.0, "c": 1.0, "d": 10.0}
    evicted = Counter()
    for seed in range(2000):
        buf = PrioritizedBuffer(4, alpha=1.0, seed=seed)
        buf.add(list(losses), losses=list(losses.values()))
        buf.add(["new"])
        assert len(buf) == 4 and buf.keys()[-1] == "new"
        (gone,) = set(losses) - set(buf.keys())
        evicted[gone] += 1
    # p ∝ 1/loss: a 10, b 1, c 1, d 0.1 (sum 12.1)
    for key, weight in (("a", 10.0), ("b", 1.0), ("c", 1.0), ("d", 0.1)):
        assert abs(evicted[key] / 2000 - weight / 12.1) < 0.03, (key, evicted)
    assert evicted["a"] > evicted["b"] > evicted["d"]


def test_prioritized_probabilities_alpha_unknown_losses_and_updates() -> None:
    buf = PrioritizedBuffer(3, alpha=2.0)
    buf.add(["x", "y", "z"], losses=[1.0, 2.0, 4.0])
    np.testing.assert_allclose(
        buf.eviction_probabilities(), np.array([1, 1 / 4, 1 / 16]) / (1 + 1 / 4 + 1 / 16)
    )
    buf.update_losses(["x", "gone"], torch.tensor([4.0, 0.5]))  # a key not stored is ignored
    np.testing.assert_allclose(buf.eviction_probabilities(), np.array([1 / 16, 1 / 4, 1 / 16]) / (3 / 8))
    unknown = PrioritizedBuffer(3, alpha=1.0)
    unknown.add(["p", "q"], losses=[1.0, 3.0])
    unknown.add(["r"])  # unknown loss: counts as the mean (2.0)
    np.testing.assert_allclose(unknown.eviction_probabilities(), np.array([1, 1 / 3, 1 / 2]) / (11 / 6))
    flat = PrioritizedBuffer(2, alpha=0.0)
    flat.add(["u", "v"], losses=[0.0, 5.0])  # alpha = 0: uniform, also with a zero loss
    np.testing.assert_allclose(flat.eviction_probabilities(), [0.5, 0.5])


@pytest.mark.parametrize("cls", [ERBuffer, EFIFOBuffer])
def test_er_returns_stream_plus_replay_with_the_right_counts(cls: type) -> None:
    buf = cls(window=3, capacity=4, replay_per_batch=2, seed=0)
    buf.add([0, 1, 2])
    assert buf.train_keys() == [0, 1, 2] and len(buf) == 0
    assert buf.replay_for([0, 1]) == []  # nothing has left the window yet
    buf.add(list(range(3, 10)))
    assert buf.train_keys() == [7, 8, 9]
    assert len(buf) == 4 and set(buf.keys()) <= set(range(7))  # frames that left the window
    if cls is EFIFOBuffer:
        assert buf.keys() == [3, 4, 5, 6]
    for _ in range(20):
        extra = buf.replay_for([7, 8])
        assert len(extra) == 2 and len(set(extra)) == 2 and set(extra) <= set(buf.keys())
    one = cls(window=2, capacity=4, replay_per_batch=3)
    one.add([0, 1, 2])
    assert one.replay_for([1, 2]) == [0]  # fewer stored than asked: all of them


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.w


def test_mir_picks_the_candidates_whose_loss_rises_most() -> None:
    # Squared error of y = w·x. The stream batch (x = e1, y = 1) pushes w1 up; a candidate on e1 with a negative
    # target is hurt (more so the more negative), one on e2 is untouched, one with y = 1 is helped.
    data = {
        "s0": ([1.0, 0.0], 1.0),
        "s1": ([1.0, 0.0], 1.0),
        "hurt": ([1.0, 0.0], -1.0),
        "hurt_more": ([1.0, 0.0], -2.0),
        "other": ([0.0, 1.0], 0.5),
        "helped": ([1.0, 0.0], 1.0),
    }

    def loss_fn(model: nn.Module, keys: list) -> Tensor:
        x = torch.tensor([data[k][0] for k in keys])
        y = torch.tensor([data[k][1] for k in keys])
        return (model(x) - y) ** 2

    buf = MIRBuffer(window=2, capacity=10, candidates=10, k=2, lr=0.1, seed=0)
    buf.add(["hurt", "other", "helped", "hurt_more", "s0", "s1"])
    assert buf.train_keys() == ["s0", "s1"] and sorted(buf.keys()) == ["helped", "hurt", "hurt_more", "other"]
    model = _Linear()
    rise = buf.interference(model, ["s0", "s1"], ["hurt", "hurt_more", "other", "helped"], loss_fn)
    assert rise[0] > 0 and rise[1] > rise[0] and rise[2] == 0 and rise[3] < 0
    assert buf.replay_for(["s0", "s1"], model=model, loss_fn=loss_fn) == ["hurt_more", "hurt"]
    assert torch.equal(model.w, torch.zeros(2)) and model.w.grad is None  # the real model is untouched
    with pytest.raises(ValueError, match="loss_fn"):
        buf.replay_for(["s0"])


def test_mir_with_few_stored_frames_returns_them_all() -> None:
    buf = MIRBuffer(window=1, capacity=5, candidates=4, k=3)
    buf.add(["a", "b", "c"])
    assert buf.replay_for(["c"], model=_Linear(), loss_fn=lambda m, k: torch.zeros(len(k))) == ["a", "b"]


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        build_replay("fifo", capacity=0)
    with pytest.raises(ConfigError, match="did you mean 'uniform'"):
        build_replay("unifrom", capacity=3)
    with pytest.raises(ConfigError, match="unknown argument 'alpah'"):
        build_replay("prioritized", capacity=3, alpah=1.0)
    with pytest.raises(ConfigError, match="missing argument.*replay_per_batch"):
        build_replay("er", window=3, capacity=3)
    with pytest.raises(ConfigError, match="lr"):
        build_replay("mir", window=3, capacity=3, lr=0)
