"""Replay buffers of the online loop (``other_methods.md`` §3.2 and §3.6), over *frame keys*.

A key is any hashable id of a teacher frame (e.g. ``(video, frame_index)``); the loop loads the frames itself.
Every buffer answers two questions for the loop:

- :meth:`ReplayBuffer.train_keys`: the keys of this window's epoch, in order (the loop batches them, no
  shuffle in the reference);
- :meth:`ReplayBuffer.replay_for`: the keys to add to one batch of those (replay; empty for the plain buffers).

Call sequence, per window (``new`` = the frames that arrived since the last window, in stream order)::

    buffer.add(new, losses=None)              # prioritized: losses of `new` under the current student, if known
    for batch in chunks(buffer.train_keys(), B):
        extra = buffer.replay_for(batch, model=student, loss_fn=per_sample_loss)   # mir needs model and loss_fn
        losses = per-sample losses of batch + extra; optimiser step on their mean (+ regulariser)
        buffer.update_losses(batch + extra, losses)   # only prioritized uses them; cheap no-op otherwise

Buffers:

========== ===============================================================================================
``fifo``   the last ``capacity`` frames, in stream order: the reference protocol (window of the last N frames)
``uniform`` when full, each new frame evicts a uniformly random stored frame; trained on the whole buffer
``prioritized`` when full, evicts with probability ∝ (1/loss)^alpha; unknown losses count as the mean
``er``     trained on the stream window (the last ``window`` frames) + per batch ``replay_per_batch`` random
           frames of a uniform-eviction store that frames enter when they leave the window
``efifo``  as ``er`` with a FIFO store
``mir``    as ``er``, but per batch the top-``k`` of ``candidates`` random store frames by loss increase under a
           virtual SGD step on the batch (maximally interfered retrieval)
========== ===============================================================================================

The reference draws its replay frames once per window (N − s_S of them, appended after the stream frames) and
runs the MIR simulation as one Adam epoch over the stream; here both happen per batch, as in ER and MIR.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from config.errors import ConfigError
from models.registry import Registry
from training.online.students import build_checked

REPLAY_BUFFERS = Registry("replay buffer")

# loss_fn(model, keys) -> per-sample losses [len(keys)] (with a graph when grad is enabled)
LossFn = Callable[[nn.Module, Sequence[Hashable]], Tensor]


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"replay buffer: {name} must be an integer >= {minimum}, got {value!r}")
    return value


class ReplayBuffer:
    """The common part: ``capacity`` stored keys at most, in arrival order, and a seeded generator.

    Args:
        capacity: the most keys the buffer stores (>= 1).
        seed: seed of :attr:`rng` (every random choice of the buffer draws from it, so runs repeat).
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = _count("capacity", capacity)
        self.rng = np.random.default_rng(seed)
        self._keys: list[Hashable] = []

    def add(self, keys: Sequence[Hashable], losses: Sequence[float] | None = None) -> None:
        """Add the new frames of the stream, in stream order; ``losses`` [len(keys)] when the loop knows them."""
        if losses is not None and len(losses) != len(keys):
            raise ValueError(f"add: {len(keys)} keys but {len(losses)} losses")
        for i, key in enumerate(keys):
            self._insert(key, None if losses is None else float(losses[i]))

    def _insert(self, key: Hashable, loss: float | None) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list[Hashable]:
        """The stored keys, in arrival order."""
        return list(self._keys)

    def train_keys(self) -> list[Hashable]:
        """The keys of this window's epoch, in order (here: the whole buffer, in arrival order)."""
        return self.keys()

    def replay_for(
        self, stream_keys: Sequence[Hashable], model: nn.Module | None = None, loss_fn: LossFn | None = None
    ) -> list[Hashable]:
        """Keys to add to the batch ``stream_keys`` (none for buffers that are trained on as a whole)."""
        return []

    def update_losses(self, keys: Sequence[Hashable], losses: Sequence[float] | Tensor) -> None:
        """Per-sample losses the loop measured (used by ``prioritized``; ignored by the others)."""

    def sample(self, n: int) -> list[Hashable]:
        """``min(n, len(self))`` distinct stored keys drawn uniformly, in arrival order."""
        n = min(n, len(self._keys))
        idx = np.sort(self.rng.choice(len(self._keys), size=n, replace=False)) if n else []
        return [self._keys[int(i)] for i in idx]


@REPLAY_BUFFERS.register("fifo")
class FIFOBuffer(ReplayBuffer):
    """The last ``capacity`` frames in stream order: the reference window ``frames[max(0, pos − N) : pos]``."""

    def _insert(self, key: Hashable, loss: float | None) -> None:
        self._keys.append(key)
        if len(self._keys) > self.capacity:
            del self._keys[0]


@REPLAY_BUFFERS.register("uniform")
class UniformBuffer(ReplayBuffer):
    """When full, each new frame evicts a uniformly random stored frame, so a frame survives ``m`` later
    insertions into a full buffer with probability ``(1 − 1/capacity)^m``. Every new frame is stored (unlike
    reservoir sampling, which keeps the new frame with probability ``capacity/seen``)."""

    def _insert(self, key: Hashable, loss: float | None) -> None:
        if len(self._keys) >= self.capacity:
            del self._keys[int(self.rng.integers(len(self._keys)))]
        self._keys.append(key)


@REPLAY_BUFFERS.register("prioritized")
class PrioritizedBuffer(ReplayBuffer):
    """When full, each new frame evicts a stored one with probability ∝ (1/loss)^alpha (normalised): frames the
    student already fits well leave first. Frames without a known loss count as the mean of the known ones (all
    unknown: uniform eviction). ``alpha = 0`` is uniform eviction."""

    def __init__(self, capacity: int, alpha: float = 1.0, seed: int = 0) -> None:
        super().__init__(capacity, seed)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
            raise ConfigError(f"replay buffer: alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self._loss: dict[Hashable, float] = {}

    def eviction_probabilities(self) -> np.ndarray:
        """``[len(self)]``: the probability of each stored key (arrival order) to be evicted next."""
        known = [self._loss[k] for k in self._keys if k in self._loss]
        fill = float(np.mean(known)) if known else 1.0
        loss = np.array([self._loss.get(k, fill) for k in self._keys], dtype=np.float64)
        # (1/l)^alpha in log space: a zero loss must not give inf/inf.
        logits = -self.alpha * np.log(np.maximum(loss, 1e-12))
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def _insert(self, key: Hashable, loss: float | None) -> None:
        if len(self._keys) >= self.capacity:
            j = int(self.rng.choice(len(self._keys), p=self.eviction_probabilities()))
            self._loss.pop(self._keys.pop(j), None)
        self._keys.append(key)
        if loss is not None:
            self._loss[key] = loss

    def update_losses(self, keys: Sequence[Hashable], losses: Sequence[float] | Tensor) -> None:
        """Record the latest loss of each stored key (keys no longer stored are ignored)."""
        values = losses.detach().cpu().tolist() if isinstance(losses, Tensor) else list(losses)
        if len(values) != len(keys):
            raise ValueError(f"update_losses: {len(keys)} keys but {len(values)} losses")
        stored = set(self._keys)
        for key, value in zip(keys, values, strict=True):
            if key in stored:
                self._loss[key] = float(value)


class WindowReplay(ReplayBuffer):
    """Stream window + store: trained on the last ``window`` frames; a frame enters the store when it leaves the
    window (with ``window`` = s_S, the reference's "stream" = the frames since the last window, which enter the
    store after that window's training). ``len`` / :meth:`keys` describe the store; ``capacity`` is its size.
    """

    store_type: type[ReplayBuffer] = UniformBuffer

    def __init__(self, window: int, capacity: int, seed: int = 0) -> None:
        super().__init__(capacity, seed)
        self.window = _count("window", window)
        self.store = self.store_type(capacity)
        self.store.rng = self.rng  # one generator for the whole buffer: one seed repeats the run
        self._window: list[Hashable] = []

    def _insert(self, key: Hashable, loss: float | None) -> None:
        self._window.append(key)
        if len(self._window) > self.window:
            self.store.add([self._window.pop(0)])

    def __len__(self) -> int:
        return len(self.store)

    def keys(self) -> list[Hashable]:
        """The store's keys, in arrival order (the window is :meth:`train_keys`)."""
        return self.store.keys()

    def train_keys(self) -> list[Hashable]:
        """The stream window, in stream order."""
        return list(self._window)

    def sample(self, n: int) -> list[Hashable]:
        """``min(n, len(store))`` distinct store keys drawn uniformly."""
        return self.store.sample(n)


class _SampledReplay(WindowReplay):
    """Stream window + ``replay_per_batch`` uniformly drawn store frames per batch."""

    def __init__(self, window: int, capacity: int, replay_per_batch: int, seed: int = 0) -> None:
        super().__init__(window, capacity, seed)
        self.replay_per_batch = _count("replay_per_batch", replay_per_batch, minimum=0)

    def replay_for(
        self, stream_keys: Sequence[Hashable], model: nn.Module | None = None, loss_fn: LossFn | None = None
    ) -> list[Hashable]:
        """``min(replay_per_batch, len(store))`` distinct store keys, drawn uniformly."""
        return self.sample(self.replay_per_batch)


@REPLAY_BUFFERS.register("er")
class ERBuffer(_SampledReplay):
    """Experience replay: the store evicts a uniformly random frame when full."""

    store_type = UniformBuffer


@REPLAY_BUFFERS.register("efifo")
class EFIFOBuffer(_SampledReplay):
    """Experience replay with a FIFO store (the oldest frame leaves first)."""

    store_type = FIFOBuffer


@REPLAY_BUFFERS.register("mir")
class MIRBuffer(WindowReplay):
    """Maximally interfered retrieval (Aljundi et al., 2019) over a uniform-eviction store.

    Per batch: draw ``candidates`` store frames, take one virtual SGD step (learning rate ``lr``) on the stream
    batch, and return the ``k`` candidates whose loss rises most. The ranking does not depend on ``lr`` to first
    order (the rise is ≈ lr · ∇ℓ_i · ∇ℓ_batch); too small an ``lr`` only drowns the rises in float noise.
    """

    def __init__(
        self, window: int, capacity: int, candidates: int = 50, k: int = 10, lr: float = 0.01, seed: int = 0
    ) -> None:
        super().__init__(window, capacity, seed)
        self.candidates = _count("candidates", candidates)
        self.k = _count("k", k, minimum=0)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ConfigError(f"replay buffer: lr must be a number > 0, got {lr!r}")
        self.lr = float(lr)

    def interference(
        self,
        model: nn.Module,
        stream_keys: Sequence[Hashable],
        candidates: Sequence[Hashable],
        loss_fn: LossFn,
    ) -> Tensor:
        """Loss rise ``[len(candidates)]`` of each candidate under one virtual SGD step on ``stream_keys``.

        The step is taken on a deep copy of ``model``: ``loss_fn`` takes a module, and the copy leaves the real
        parameters, buffers (BatchNorm running statistics), gradients and optimiser state untouched, whatever
        the student is (``torch.func.functional_call`` would need a loss function over a parameter dict). It
        costs one model's memory. The candidate losses are measured in eval mode so that dropout does not add
        noise to the rises; the virtual step runs in the model's own mode, as the real step will.
        """
        virtual = copy.deepcopy(model)
        params = [p for p in virtual.parameters() if p.requires_grad]
        virtual.eval()
        with torch.no_grad():
            before = loss_fn(virtual, candidates).detach().float()
        virtual.train(model.training)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(virtual, stream_keys).mean(), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.sub_(self.lr * g)
            virtual.eval()
            after = loss_fn(virtual, candidates).detach().float()
        return after - before

    def replay_for(
        self, stream_keys: Sequence[Hashable], model: nn.Module | None = None, loss_fn: LossFn | None = None
    ) -> list[Hashable]:
        """The top-``k`` of ``candidates`` random store keys by loss rise (largest first; all of them when the
        store holds at most ``k``)."""
        if model is None or loss_fn is None:
            raise ValueError(
                "mir: replay_for needs the student (model=) and a per-sample loss_fn(model, keys)"
            )
        pool = self.sample(self.candidates)
        if len(pool) <= self.k:
            return pool  # nothing to choose between: skip the virtual step
        rise = self.interference(model, stream_keys, pool, loss_fn)
        order = torch.argsort(rise, descending=True, stable=True)[: self.k]
        return [pool[int(i)] for i in order]


def build_replay(name: str, **kwargs: Any) -> ReplayBuffer:
    """The replay buffer ``name`` (``fifo``, ``uniform``, ``prioritized``, ``er``, ``efifo``, ``mir``) with its
    keyword arguments (``capacity``, ``seed``; ``alpha``; ``window``, ``replay_per_batch``; ``candidates``,
    ``k``, ``lr``)."""
    return build_checked(REPLAY_BUFFERS, name, kwargs)


__all__ = [
    "EFIFOBuffer",
    "ERBuffer",
    "FIFOBuffer",
    "LossFn",
    "MIRBuffer",
    "PrioritizedBuffer",
    "REPLAY_BUFFERS",
    "ReplayBuffer",
    "UniformBuffer",
    "WindowReplay",
    "build_replay",
]
