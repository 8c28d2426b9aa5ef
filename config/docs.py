"""Generate ``docs/configs.md`` from the schema: ``python -m config.docs --write`` (or print without a flag).

A test compares the file with :func:`render`, so the reference of config keys cannot go stale.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from config.cli import CliParser
from config.loader import alias_targets, section_type, type_name
from config.schema import KINDS

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "configs.md"

_HEADER = """# Config keys

Generated from `config/schema.py` by `python -m config.docs --write`; do not edit by hand (a test checks it).

Configs are YAML files in `config/<kind>/`. A file may name one `base:` file and list only what differs.
Override any key on the command line with `section.key=value`, e.g.
`python -m training.train_image base_synthetic training_cfg.lr=1.0e-3`. Unknown keys, wrong types and bad
values are errors (exit code 2) that name the key. Write floats with a dot (`5.0e-5`); `5e-5` is read as a
string by YAML and accepted as a number only where the key is a float.
"""


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        value = f.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _section(lines: list[str], path: str, sec: type, doc: str) -> None:
    """A table of ``sec``'s plain keys, then one table per nested section (recursively)."""
    hints = typing.get_type_hints(sec)
    fields = dataclasses.fields(sec)
    plain = [f for f in fields if section_type(hints[f.name]) is None]
    if path:
        lines.append(f"### `{path}`: {doc}\n")
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in plain:
        tp = type_name(hints[f.name]).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {tp} | `{_default(f)}` | {f.metadata['doc']} |")
    lines.append("")
    _aliases(lines, path, sec)
    for f in fields:
        nested = section_type(hints[f.name])
        if nested is not None:
            optional = " (optional: null = not set)" if nested is not hints[f.name] else ""
            title = (nested.__doc__ or "").split(":", 1)[-1].strip().split("\n")[0]
            _section(lines, f"{path}.{f.name}" if path else f.name, nested, title + optional)


def _aliases(lines: list[str], path: str, sec: type) -> None:
    """The reference's flat spellings of method keys that ``sec`` accepts, and where each one goes."""
    aliases: dict[str, str] = getattr(sec, "ALIASES", {})
    if not aliases:
        return
    lines += [
        f"Reference spellings: reference files write these method keys flat in `{path}`. They are moved into the",
        "section of `model_name`; the flat key and the section key in one file must agree, and a key of another",
        "method is an error.",
        "",
        "| reference key | becomes |",
        "|---|---|",
    ]
    for alias, dest in aliases.items():
        where = ", ".join(f"`{path}.{name}.{dest}` ({method})" for method, name in alias_targets(sec, alias))
        lines.append(f"| `{alias}` | {where} |")
    lines.append("")


def render() -> str:
    """The Markdown text of ``docs/configs.md``."""
    lines = [_HEADER]
    for kind, schema in KINDS.items():
        lines.append(f"## {kind} configs (`config/{kind}/`)\n")
        _section(lines, "", schema, "")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = CliParser(prog="python -m config.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name} instead of printing it")
    args = parser.parse_args(argv)
    if args.write:
        DOC_PATH.parent.mkdir(exist_ok=True)
        DOC_PATH.write_text(render())
        print(f"wrote {DOC_PATH}")
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
