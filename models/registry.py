"""Name -> builder registries, one per kind of model component.

Builders register themselves with a decorator; the package ``__init__`` files import every module that registers,
so a name is known as soon as :mod:`models` is imported. Duplicate names are a programming error; an unknown
name is a user error that lists the known names and suggests the closest one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config.errors import ConfigError, did_you_mean


class Registry:
    """A dict of builders filled by :meth:`register`. Every registry is also listed in :attr:`ALL` by its kind
    (the schema names the registry a config key chooses from; a test checks the two agree)."""

    ALL: dict[str, Registry] = {}

    def __init__(self, kind: str) -> None:
        if kind in Registry.ALL:
            raise ValueError(f"a registry of {kind}s exists already")
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        Registry.ALL[kind] = self

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@BACKBONES.register("resnet18")`` above a builder function or class."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """The builder for ``name``; an unknown name raises a :class:`ConfigError` with the known names."""
        if name not in self._builders:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._builders)}; "
                f"known: {', '.join(sorted(self._builders))}"
            )
        return self._builders[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Build ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


BACKBONES = Registry("backbone")
HEADS = Registry("head")
VIDEO_MODELS = Registry("video model")
FLOW_PROVIDERS = Registry("flow provider")
FLOW_NETWORKS = Registry("trainable flow network")
REGISTRATION_PROVIDERS = Registry("registration provider")
