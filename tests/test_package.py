"""The package itself: cheap import, every public name resolves, the console command dispatches."""

import subprocess
import sys

import pytest

import diffusers_edge
from diffusers_edge import cli


def test_import_is_cheap_and_lazy():
    code = (
        "import sys, time, torch\n"
        "t = time.perf_counter(); import diffusers_edge; dt = time.perf_counter() - t\n"
        "heavy = [m for m in ('diffusers', 'transformers', 'datasets', 'evaluate', 'timm') if m in sys.modules]\n"
        "print(dt, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert float(out[0]) < 3.0
    assert out[1].strip() == "[]", f"importing diffusers_edge pulled in heavy modules: {out[1]}"


@pytest.mark.parametrize("name", [n for n in diffusers_edge.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(diffusers_edge, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        diffusers_edge.no_such_name  # noqa: B018


def test_cli_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in out


def test_cli_rejects_unknown_command():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
