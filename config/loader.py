"""Strict config loading: YAML (+ one ``base:`` level) + ``key.path=value`` overrides -> typed dataclasses.

Each layer (base file, experiment file, command-line overrides) is checked on its own against the schema, so an
error names where the bad key came from: ``config error: base_uavid.yaml: training_cfg.lrr: unknown key (did you
mean 'lr'?)``. The checked layers are merged section by section, then turned into the dataclasses of
:mod:`config.schema`. Nothing here imports from the rest of the project.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from config.errors import ConfigError, did_you_mean
from config.files import atomic_write_text
from config.schema import KINDS

CONFIG_ROOT = Path(__file__).resolve().parent


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key written twice in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is written twice")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict:
    """Parse a YAML mapping safely; errors name the file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    try:
        loader = _UniqueKeyLoader(text)  # a SafeLoader subclass: plain data only, never Python objects
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def resolve_config_path(name: str, kind: str) -> Path:
    """A path that exists, or a bare name (with or without ``.yaml``) in ``config/<kind>/``."""
    as_path = Path(name)
    if as_path.is_file():
        return as_path
    stem = as_path.name.removesuffix(".yaml").removesuffix(".yml")
    candidate = CONFIG_ROOT / kind / f"{stem}.yaml"
    if candidate.is_file() and as_path.parent == Path("."):
        return candidate
    known = sorted(p.stem for p in (CONFIG_ROOT / kind).glob("*.yaml"))
    raise ConfigError(
        f"config '{name}' not found (looked for the path and for config/{kind}/{stem}.yaml){did_you_mean(stem, known)}"
    )


# ----------------------------------------------------------------------------------------------- type checks


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check_value(value: Any, tp: Any, key: str, meta: dict) -> Any:
    """Return ``value`` converted to ``tp`` or raise a :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], key, meta)
    if origin is Literal:
        choices = typing.get_args(tp)
        if meta.get("ignore_case") and isinstance(value, str):
            # the reference compares some names case-insensitively (model_architecture: Segformer, UPerNet)
            value = next((c for c in choices if str(c).lower() == value.lower()), value)
        if value not in choices:
            typed = str(value).lower() if meta.get("ignore_case") else str(value)
            hint = did_you_mean(typed, [str(c) for c in choices])
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(f"{key}: expected {meta['length']} values, got {len(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_check_value(v, item_tp, f"{key}[{i}]", meta) for i, v in enumerate(value)]
    out = _check_scalar(value, tp, key)
    if "min" in meta and isinstance(out, int | float) and not isinstance(out, bool) and out < meta["min"]:
        raise ConfigError(f"{key}: must be at least {meta['min']}, got {out}")
    return out


def _check_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads 5e-5 (no dot in the mantissa) as a string; accept it as the number it means.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")


def section_type(tp: Any) -> type | None:
    """The section dataclass of a field type ``Section`` or ``Section | None`` (an optional method section)."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _fields(cls: type) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def check_layer(data: dict, cls: type, prefix: str = "") -> dict:
    """Check one partial config layer against the schema class ``cls``; return it with values converted."""
    fields = _fields(cls)
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in aliases and key not in fields:
            out[key] = value  # a reference spelling: checked once its method is known (resolve_aliases)
            continue
        if key not in fields:
            raise ConfigError(f"{path}: unknown key{did_you_mean(str(key), [*fields, *aliases])}")
        tp, fld = fields[key]
        section = section_type(tp)
        if section is not None:
            if value is None:
                continue  # an empty section in YAML ("data_cfg:") means "all defaults" (or "not set")
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (a mapping of keys), got {value!r}")
            out[key] = check_layer(value, section, f"{path}.")
        else:
            out[key] = _check_value(value, tp, path, dict(fld.metadata))
    return out


def alias_targets(cls: type, alias: str) -> list[tuple[str, str]]:
    """(method, section field) of every method section of ``cls`` that has the key ``cls.ALIASES[alias]``."""
    dest = cls.ALIASES[alias]  # type: ignore[attr-defined]
    out = []
    for name, (tp, fld) in _fields(cls).items():
        method, section = fld.metadata.get("method"), section_type(tp)
        if method is not None and section is not None and dest in _fields(section):
            out.append((method, name))
    return out


def resolve_aliases(layer: dict, cls: type, final: dict, prefix: str = "") -> dict:
    """Move the reference's flat method keys of a checked layer into the section of the method.

    ``final`` is the merged config of all layers, whose ``model_name`` is the method that will be built (a base
    file may set it, the experiment file the flat keys). A flat key and its section key in the same layer must
    agree; across layers the later one wins, as for any key. A flat key of another method is an error.
    """
    out = dict(layer)
    for name, (tp, _) in _fields(cls).items():
        section = section_type(tp)
        if section is not None and isinstance(out.get(name), dict):
            out[name] = resolve_aliases(out[name], section, final.get(name) or {}, f"{prefix}{name}.")
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    fields = _fields(cls)
    for alias in [k for k in out if k in aliases and k not in fields]:
        value = out.pop(alias)
        method = final.get("model_name", fields["model_name"][1].default)
        targets = dict(alias_targets(cls, alias))
        if method not in targets:
            users = ", ".join(targets)
            raise ConfigError(
                f"{prefix}{alias}: this reference key configures model_name {users}, but model_name is "
                f"'{method}'; remove it"
            )
        section_name, dest = targets[method], aliases[alias]
        tp, fld = _fields(section_type(fields[section_name][0]))[dest]
        value = _check_value(value, tp, f"{prefix}{alias}", dict(fld.metadata))
        section_data = dict(out.get(section_name) or {})
        if dest in section_data and section_data[dest] != value:
            raise ConfigError(
                f"{prefix}{alias}: {value!r} contradicts {prefix}{section_name}.{dest}: {section_data[dest]!r} "
                "(the same setting); keep only one of the two"
            )
        section_data[dest] = value
        out[section_name] = section_data
    return out


def merge_layers(base: dict, top: dict) -> dict:
    """Section-wise merge: nested dicts merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            merge_layers(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _build(cls: type, data: dict) -> Any:
    kwargs = {}
    for name, (tp, _) in _fields(cls).items():
        if name in data:
            section = section_type(tp)
            kwargs[name] = _build(section, data[name]) if section is not None else data[name]
    return cls(**kwargs)


# -------------------------------------------------------------------------------------------------- overrides


def parse_overrides(overrides: list[str]) -> dict:
    """``["training_cfg.lr=1e-4", "data_cfg.crop_size=[64,64]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key.path=value, e.g. training_cfg.lr=1.0e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is set both as a value and as a section")
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------------------------------------- public API


def load_layers(name_or_path: str, kind: str, overrides: list[str] | None = None) -> tuple[dict, Path]:
    """Resolve, read and check the base file, the experiment file and the overrides; return the merged dict."""
    if kind not in KINDS:
        raise ConfigError(f"unknown config kind '{kind}'")
    schema = KINDS[kind]
    path = resolve_config_path(name_or_path, kind)
    data = read_yaml(path)
    layers: list[tuple[str, dict]] = []
    base_name = data.pop("base", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path.name}: base: expected a config name or path, got {base_name!r}")
        sibling = path.parent / (base_name if base_name.endswith(".yaml") else f"{base_name}.yaml")
        base_path = sibling if sibling.is_file() else resolve_config_path(base_name, kind)
        base_data = read_yaml(base_path)
        if "base" in base_data:
            raise ConfigError(f"{base_path.name}: base: only one level of inheritance is allowed")
        layers.append((base_path.name, base_data))
    layers.append((path.name, data))
    if overrides:
        layers.append(("command line", parse_overrides(overrides)))
    checked: list[tuple[str, dict]] = []
    final: dict = {}
    for source, layer in layers:
        try:
            checked.append((source, check_layer(layer, schema)))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        final = merge_layers(final, checked[-1][1])
    merged: dict = {}
    for source, layer in checked:
        try:
            merged = merge_layers(merged, resolve_aliases(layer, schema, final))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return merged, path


def load(name_or_path: str, kind: str = "image", overrides: list[str] | None = None) -> Any:
    """Load a config by bare name (``config/<kind>/NAME.yaml``) or path, apply overrides, return the dataclass."""
    merged, _ = load_layers(name_or_path, kind, overrides)
    return from_dict(merged, kind)


def from_dict(data: dict, kind: str = "image") -> Any:
    """A checked dataclass from a plain dict (e.g. the ``config`` stored in a checkpoint)."""
    schema = KINDS[kind]
    checked = check_layer(data, schema)
    return _build(schema, resolve_aliases(checked, schema, checked))


def to_dict(cfg: Any) -> dict:
    """The dataclass as a plain, YAML-safe dict (section order kept)."""
    return dataclasses.asdict(cfg)


def dump(cfg: Any) -> str:
    """YAML text of the resolved config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def save(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    atomic_write_text(path, dump(cfg), fix="set save_dir to a writable folder")
