"""Command-line flags generated from a config dataclass, so that each setting's default is written once.

A field made with `flag(...)` is the option `--<field name>`: its default (or `default_factory`) is the field's, and
its argument group, help text, choices, extra names and `nargs` ride in the field's metadata. `add_flags` adds one
option per such field to an `argparse` parser; fields made without `flag` are not options. `TrainingConfig` (the
train command) and `DemoConfig` (the demo) are both read this way.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     steps: int = flag(default=100, help="Optimiser steps.", aliases=["--train_steps"])
    ...     seeds: list[int] = flag(default_factory=lambda: [0, 1], help="Seeds.")
    >>> parser = argparse.ArgumentParser()
    >>> add_flags(parser, Config)
    >>> Config(**vars(parser.parse_args(["--train_steps", "7", "--seeds", "3"])))
    Config(steps=7, seeds=[3])
    >>> parser = argparse.ArgumentParser()
    >>> add_flags(parser, Config, keep_unset=True)
    >>> vars(parser.parse_args([])), parser._actions[1].help
    ({'steps': None, 'seeds': None}, 'Optimiser steps. (default 100)')
"""

from __future__ import annotations

import argparse
import functools
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any


def flag(
    group: str | None = None,
    default: Any = MISSING,
    help: str | None = None,
    choices: Sequence[str] | None = None,
    *,
    aliases: Sequence[str] = (),
    off_flag: str | None = None,
    nargs: int | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field that is also a flag.

    Args:
        group: the argument group it is listed under (`None`: the parser's own list).
        default: its default; neither this nor `default_factory` makes a required flag.
        help: its help text.
        choices: the values it accepts.
        aliases: further option strings, e.g. an earlier name that stays accepted.
        off_flag: for a `bool` that defaults to on: the option that turns it off (e.g. `--no_progress`).
        nargs: how many values a list field takes (default: one or more).
        default_factory: the default of a list field.
    """
    metadata = {"group": group, "help": help, "choices": choices, "aliases": tuple(aliases), "off_flag": off_flag}
    metadata["nargs"] = nargs
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_fields(cls: type) -> list[Field]:
    """The fields of dataclass `cls` that are flags (made with `flag`)."""
    return [config_field for config_field in fields(cls) if "off_flag" in config_field.metadata]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolves every annotation of the class: once per class, not per field


def _hint(cls: type, config_field: Field) -> Any:
    """A field's annotation without `| None`."""
    hint = _type_hints(cls)[config_field.name]
    if isinstance(hint, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def flag_type(cls: type, config_field: Field) -> type:
    """What a field's flag parses each value to: its annotation without `| None`, a list's item type, or `bool`."""
    hint = _hint(cls, config_field)
    if typing.get_origin(hint) is list:
        (hint,) = typing.get_args(hint)
    return hint


def _is_list(cls: type, config_field: Field) -> bool:
    return typing.get_origin(_hint(cls, config_field)) is list


def _default(config_field: Field) -> Any:
    if config_field.default_factory is not MISSING:
        return config_field.default_factory()
    return config_field.default


def _quoted(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, keep_unset: bool = False) -> None:
    """Adds one option per flag field of `cls` to `parser`, in field order, each in its argument group.

    Args:
        parser: the parser to extend.
        cls: the config dataclass.
        keep_unset: every option defaults to `None`, so the caller can tell which flags were given and keep its own
            values (e.g. a preset's) for the rest; the help then quotes the field's default.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for config_field in flag_fields(cls):
        meta = config_field.metadata
        target = parser
        if meta["group"] is not None:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        names = [f"--{config_field.name}", *meta["aliases"]]
        default, help_text = _default(config_field), meta["help"]
        if meta["off_flag"] is not None:
            target.add_argument(meta["off_flag"], dest=config_field.name, action="store_false", help=help_text,
                                default=None if keep_unset else default)
            continue
        if keep_unset and default not in (MISSING, None, False):
            help_text = f"{help_text} (default {_quoted(default)})"
        options: dict[str, Any] = {"dest": config_field.name, "help": help_text}
        if keep_unset:
            options["default"] = None
        kind = flag_type(cls, config_field)
        if kind is bool:
            target.add_argument(*names, action="store_true", **options)
            continue
        options["type"] = kind
        if _is_list(cls, config_field):
            options["nargs"] = meta["nargs"] or "+"
        if meta["choices"] is not None:
            options["choices"] = meta["choices"]
        if default is MISSING:
            options["required"] = True
        elif not keep_unset:
            options["default"] = default
        target.add_argument(*names, **options)
