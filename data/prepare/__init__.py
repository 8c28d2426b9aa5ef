"""Converters from the official dataset downloads to the prepared layout (``bash process_dataset.sh``).

``python -m data.prepare`` runs them (see :mod:`data.prepare.cli`). Each converter module defines a module-level
``CONVERTER``; they are imported on first use, so that ``verify`` and the shared helpers load without them.
"""

from __future__ import annotations

import importlib

from data.prepare.common import Converter

NAMES = ("uavid", "ruralscapes", "cityscapes")  # = data_cfg.dataset and the module name under data/prepare/


def get_converter(name: str) -> Converter:
    """The converter of one dataset (imports its module)."""
    return importlib.import_module(f"data.prepare.{name}").CONVERTER


def converters() -> dict[str, Converter]:
    """Every converter, by dataset name, in the order they run."""
    return {name: get_converter(name) for name in NAMES}


def __getattr__(name: str) -> dict[str, Converter]:
    # ``from data.prepare import CONVERTERS`` works, but importing the package does not import every converter
    if name == "CONVERTERS":
        return converters()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
