"""The inference fast path: the same outputs as the plain model (fp32, within :data:`TOLERANCE`), in less time.

:func:`prepare_inference` is what every command that only runs a model calls on it once, after moving it to its
device (``eval.vis.*``, ``eval.benchmark``, ``eval.compare``, the pseudo-labeller, the online teacher, the KD
teacher): the training code never does, so training is unchanged. Each step is one switch of :class:`FastPath`,
kept because it was measured to pay (``docs/benchmarks.md``, "Inference fast path"):

- ``fold_bn``: a BatchNorm that only normalises a convolution's output is folded into that convolution's weight
  and bias and replaced by an identity. Pairs are found by running the image network once on a small probe and
  recording which BatchNorm consumed which convolution's output, so any backbone or head qualifies (timm's
  ResNet blocks as well as ``nn.Sequential`` conv-BN-ReLU); convolution-BatchNorm pairs inside ``nn.Sequential``
  containers elsewhere (the video modules) are folded too.
- ``channels_last``: weights (and hence activations) in NHWC, which oneDNN's CPU convolutions and cuDNN's tensor
  cores prefer: no layout reorders around every conv, and vectorised pooling.
- ``fast_modules``: every module with a ``fast_inference(on)`` method switches to its inference form (UPerNet's
  fuse conv at the coarse levels' own resolutions, Hiera's cached position embedding).
- ``compile``: ``torch.compile`` of the image network's backbone and head (off by default: it pays only for long
  runs, and not on every device; :func:`compile_supported` says whether this torch can).

The image network's output on the probe is compared before and after; a difference above :data:`TOLERANCE`
undoes the folding and raises, so the fast path never changes what a model computes.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from config.errors import ConfigError

# Largest allowed difference between the plain and the fast model's outputs, relative to their largest value.
TOLERANCE = 1e-4
PROBE_SIZE = (64, 64)  # a multiple of every backbone's input multiple (32)


@dataclass(frozen=True)
class FastPath:
    """Which fast-path steps :func:`prepare_inference` applies (all on but ``compile``)."""

    fold_bn: bool = True
    channels_last: bool = True
    fast_modules: bool = True
    compile: bool = False

    @classmethod
    def off(cls) -> FastPath:
        """The plain model, as trained (for comparisons)."""
        return cls(fold_bn=False, channels_last=False, fast_modules=False, compile=False)

    @classmethod
    def from_flags(cls, enabled: bool, compile_model: bool = False) -> FastPath:
        """From the CLI flags ``--fast-path/--no-fast-path`` and ``--compile``."""
        return dataclasses.replace(cls() if enabled else cls.off(), compile=compile_model)


def add_fast_path_args(p: argparse.ArgumentParser) -> None:
    """``--fast-path/--no-fast-path`` and ``--compile``, for every command that runs a trained model."""
    p.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=True,
                   help="inference fast path: BatchNorm folded into convs, channels_last, fast module forms; the "
                        "same outputs (default: on; --no-fast-path runs the plain model)")  # fmt: skip
    p.add_argument(
        "--compile",
        action="store_true",
        help="also torch.compile the image network (minutes of compilation; pays on long runs only)",
    )


def fast_path_of(args: argparse.Namespace) -> FastPath:
    """The :class:`FastPath` of the flags :func:`add_fast_path_args` added."""
    return FastPath.from_flags(args.fast_path, args.compile)


def compile_supported(device: torch.device) -> str | None:
    """None when ``torch.compile`` can run on ``device`` here, else why not (one line)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on the CPU needs a C++ compiler (g++), and none is installed"
    return None


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor | None]:
    """Fold ``bn`` (eval statistics) into ``conv``; returns the conv's previous (weight, bias) for undoing."""
    old = (conv.weight, conv.bias)
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps
        )
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype), False)
        conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + shift).to(conv.weight.dtype), False)
    return old


def _traced_pairs(network: nn.Module, probe: Tensor) -> list[tuple[nn.Conv2d, str]]:
    """(conv, BatchNorm name) for every BatchNorm of ``network`` whose input was a conv's output on ``probe``."""
    made: dict[
        int, tuple[nn.Conv2d, Tensor]
    ] = {}  # id(output) -> (conv, output kept alive so ids stay unique)
    pairs: list[tuple[nn.Conv2d, str]] = []
    hooks = []
    for name, mod in network.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(lambda m, i, o: made.__setitem__(id(o), (m, o))))
        elif isinstance(mod, nn.BatchNorm2d) and mod.track_running_stats:

            def record(m: nn.Module, i: tuple, o: Tensor, name: str = name) -> None:
                source = made.get(id(i[0]))
                if source is not None:
                    pairs.append((source[0], name))

            hooks.append(mod.register_forward_hook(record))
    try:
        with torch.no_grad():
            network(probe)
    finally:
        for h in hooks:
            h.remove()
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, str]]:
    """(conv, BatchNorm name) for a conv directly followed by a BatchNorm inside an ``nn.Sequential``."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (_, a), (bn_name, b) in zip(kids, kids[1:], strict=False):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                    out.append((a, f"{name}.{bn_name}" if name else bn_name))
    return out


def fold_batchnorm(
    model: nn.Module, network: nn.Module | None = None, probe: Tensor | None = None
) -> list[Any]:
    """Fold conv-BatchNorm pairs of ``model`` (in eval mode); ``network(probe)`` finds pairs beyond
    ``nn.Sequential``. Returns undo records ``(parent, attr, bn, conv, old weight, old bias)``."""
    pairs = _sequential_pairs(model)
    if network is not None and probe is not None:
        prefix = next((n for n, m in model.named_modules() if m is network), None)
        if prefix is not None:
            pairs += [(c, f"{prefix}.{n}" if prefix else n) for c, n in _traced_pairs(network, probe)]
    undo, seen, folded = [], set(), set()
    for conv, bn_name in pairs:
        if bn_name in seen or id(conv) in folded:  # a conv feeding two BatchNorms keeps both (never seen)
            continue
        seen.add(bn_name)
        folded.add(id(conv))
        parent, attr = _parent(model, bn_name)
        bn = getattr(parent, attr)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        undo.append((parent, attr, bn, conv, *_fold(conv, bn)))
        setattr(parent, attr, nn.Identity())
    return undo


def _unfold(undo: list[Any]) -> None:
    for parent, attr, bn, conv, weight, bias in reversed(undo):
        conv.weight, conv.bias = weight, bias
        setattr(parent, attr, bn)


def _network_of(model: nn.Module) -> nn.Module:
    return getattr(model, "image_model", model)


def _probe_output(network: nn.Module, probe: Tensor) -> Tensor | None:
    with torch.no_grad():
        out = network(probe)
    return out if isinstance(out, Tensor) else None


def _difference(network: nn.Module, probe: Tensor, before: Tensor) -> float:
    """Largest difference of ``network(probe)`` to ``before``, relative to the largest value of ``before``."""
    with torch.inference_mode():
        after = _probe_output(network, probe)
    if after is None:
        return 0.0
    return float((after.float() - before.float()).abs().max() / before.float().abs().max().clamp_min(1.0))


def prepare_inference(model: nn.Module, device: torch.device | str, options: FastPath | None = None) -> dict:
    """Apply the fast path to ``model`` (already on ``device``, put in eval mode here) in place.

    ``model`` is a video model (its ``image_model`` is probed) or an image network. Returns what was done: the
    settings, ``bn_folded`` (count), ``fold`` (what became of the folding), ``switched`` (modules in their fast
    form), ``probe_diff`` (relative difference of the image network's output on the probe, plain to fast).
    """
    options = options or FastPath()
    device = torch.device(device)
    model.eval()
    network = _network_of(model)
    probe = torch.randn(1, 3, *PROBE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        before = _probe_output(network, probe)
    except Exception:  # an unusual network (no plain forward): nothing traced, nothing compared
        before = None
    report: dict[str, Any] = {**dataclasses.asdict(options), "bn_folded": 0, "fold": "off", "switched": [],
                              "probe_diff": None}  # fmt: skip
    if options.fold_bn:
        undo = fold_batchnorm(model, network, probe if before is not None else None)
        diff = 0.0 if before is None else _difference(network, probe, before)
        if diff > TOLERANCE:  # e.g. a conv output also used beside its BatchNorm: keep the model as it was
            _unfold(undo)
            report["fold"] = f"undone: folding changed the output by {diff:.1e}"
        else:
            report["bn_folded"], report["fold"] = len(undo), "applied"
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    if options.fast_modules:
        for name, mod in model.named_modules():
            if callable(getattr(mod, "fast_inference", None)):
                mod.fast_inference(True)
                report["switched"].append(f"{name or type(mod).__name__} ({type(mod).__name__})")
    if before is not None:
        report["probe_diff"] = diff = _difference(network, probe, before)
        if diff > TOLERANCE:
            raise RuntimeError(
                f"the inference fast path changed {type(network).__name__}'s output by {diff:.2e} (> "
                f"{TOLERANCE:.0e}); run with --no-fast-path and report this model"
            )
    if options.compile:
        reason = compile_supported(device)
        if reason is not None:
            raise ConfigError(f"--compile: {reason}; run without --compile")
        for attr in ("backbone", "head"):
            if isinstance(getattr(network, attr, None), nn.Module):
                setattr(network, attr, torch.compile(getattr(network, attr)))
    return report


def describe(report: dict) -> str:
    """One line for logs: what the fast path did."""
    if not (report.get("fold_bn") or report.get("channels_last") or report.get("fast_modules")):
        return "inference fast path: off (the plain model)"
    parts = [f"{report['bn_folded']} BatchNorms folded" if report.get("fold_bn") else None,
             "channels_last" if report.get("channels_last") else None,
             f"fast inference forms of {len(report['switched'])} modules" if report.get("switched") else None,
             "torch.compile" if report.get("compile") else None]  # fmt: skip
    return "inference fast path: " + ", ".join(p for p in parts if p)
