"""Flags generated from config dataclasses: every kind of field becomes the option it should, with its default."""

import argparse
from dataclasses import dataclass

import pytest

from diffusers_edge.flags import add_flags, flag, flag_fields


@dataclass
class Config:
    model: str = flag("models", help="required: no default")
    size: int | None = flag("data", None, "optional")
    mode: str = flag("data", "a", "one of two", choices=["a", "b"])
    crop: bool = flag("data", False, "off by default")
    progress: bool = flag(default=True, help="hide bars", off_flag="--no_progress")
    widths: list[int] = flag(default_factory=lambda: [1, 2], help="two widths", nargs=2)
    quick: bool = False  # not a flag


def _parser(keep_unset: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_flags(parser, Config, keep_unset=keep_unset)
    return parser


def test_each_field_kind_becomes_its_option():
    assert [f.name for f in flag_fields(Config)] == ["model", "size", "mode", "crop", "progress", "widths"]
    args = vars(_parser().parse_args(["--model", "m"]))
    assert Config(**args) == Config(model="m")  # every default comes from the field
    given = ["--model", "m", "--size", "3", "--mode", "b", "--crop", "--no_progress", "--widths", "5", "6"]
    assert Config(**vars(_parser().parse_args(given))) == Config("m", 3, "b", True, False, [5, 6])
    assert [group.title for group in _parser()._action_groups][2:] == ["models", "data"]


@pytest.mark.parametrize(
    "argv", [[], ["--model", "m", "--mode", "c"], ["--model", "m", "--widths", "1"], ["--model", "m", "--quick"]]
)
def test_bad_or_missing_flags_are_refused(argv):
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _parser().parse_args(argv)


def test_keep_unset_leaves_every_flag_none_and_quotes_defaults_in_the_help():
    parser = _parser(keep_unset=True)
    assert set(vars(parser.parse_args(["--model", "m"])).values()) == {"m", None}
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["mode"] == "one of two (default a)" and helps["widths"] == "two widths (default 1 2)"
    assert helps["size"] == "optional" and helps["crop"] == "off by default"  # None / off: nothing to quote
    assert parser.parse_args(["--model", "m", "--no_progress"]).progress is False
