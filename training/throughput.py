"""Training throughput settings the loop applies, shared with the step benchmark (:mod:`training.step_bench`):
the precision name, ``training_cfg.channels_last`` and ``compile``, and the time spent waiting for the data loader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from config.errors import ConfigError
from eval.evaluate import amp_dtype
from eval.timing import peak_rss_mb

_END = object()  # the end of a loader, for timed()


def precision_name(dtype: torch.dtype | None) -> str:
    """The precision a step runs in: the autocast dtype (``training_cfg.amp`` resolved) or fp32."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def channels_last_enabled(setting: str | bool, device: torch.device) -> bool:
    """``training_cfg.channels_last`` on ``device``: auto = on, on CUDA (bf16 tensor cores) and on the CPU (oneDNN's
    convolutions without layout reorders: a base_synthetic training step 1.34x, ssp_synthetic 1.14x on the 2-core
    development CPU; docs/benchmarks.md)."""
    return True if setting == "auto" else bool(setting)


def settings(tcfg: Any, device: torch.device) -> dict[str, Any]:
    """The effective settings of a run (recorded in ``metrics.json``): precision, channels_last, compile."""
    return {"precision": precision_name(amp_dtype(tcfg.amp, device)), "compile": tcfg.compile,
            "channels_last": channels_last_enabled(tcfg.channels_last, device)}  # fmt: skip


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-D weights to ``torch.channels_last`` in place, and make its forward convert 4-D tensor
    inputs ([B,3,H,W] images) too: on the device, after a step function moved them there, so every step function
    gets it from this one place. State-dict keys and values are unchanged (checkpoints load in either layout). A
    video batch's [B,T,3,H,W] frames are left alone: a convolution with channels_last weights returns
    channels_last features whatever its input's layout."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_inputs)
    return model


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)  # fmt: skip


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(model)``, after compiling and running a tiny function on ``device`` so that a missing C++
    compiler or Triton is a one-line error before the first epoch. The model itself compiles at its first forward
    (and its backward at the first backward): wrap those in :func:`compile_errors`."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(8, device=device))
        return torch.compile(model)
    except Exception as err:  # no model code has run: any failure here is torch.compile's
        raise ConfigError(_compile_message(err, device)) from err


@contextmanager
def compile_errors(enabled: bool, device: torch.device) -> Iterator[None]:
    """Turn an error of torch.compile's machinery (dynamo, inductor, triton) into a ConfigError naming
    ``training_cfg.compile``: never a silent eager fallback in the middle of training."""
    try:
        yield
    except Exception as err:
        if not enabled or not type(err).__module__.startswith(("torch._dynamo", "torch._inductor", "triton")):
            raise
        raise ConfigError(_compile_message(err, device)) from err


def _compile_message(err: BaseException, device: torch.device) -> str:
    for _ in range(8):  # the root cause: dynamo wraps the compiler's error ("backend='inductor' raised:")
        inner = getattr(err, "inner_exception", None) or err.__cause__
        if inner is None:
            break
        err = inner
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return (f"training_cfg.compile: torch.compile does not work on {device.type} here "
            f"({type(err).__name__}: {first[:200]}); set training_cfg.compile: false")  # fmt: skip


def timed(batches: Iterator[Any], waited: list[float]) -> Iterator[Any]:
    """``batches``, adding the host seconds each ``next()`` blocks to ``waited[0]``: ``perf_counter`` only, so on
    CUDA it adds no synchronisation to the step."""
    while True:
        start = time.perf_counter()
        item = next(batches, _END)
        waited[0] += time.perf_counter() - start
        if item is _END:
            return
        yield item


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(peak_rss_mb(), 1)
