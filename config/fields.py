"""The schema's field helper, shared by :mod:`config.schema` and :mod:`config.video_sections`."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, doc: str, **meta: Any) -> Any:
    """A schema field: ``default`` (lists are copied per instance), a one-line ``doc`` and extra checks.

    Extra checks: ``length`` (exact list length), ``min`` (lower bound for numbers and list items).
    ``registry`` names the registry (its kind, e.g. ``"flow provider"``) whose names a ``Literal`` key lists, and
    ``registry_extra`` the choices that are not in it; a test checks that the two lists agree.
    """
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"doc": doc, **meta})
    return field(default=default, metadata={"doc": doc, **meta})
