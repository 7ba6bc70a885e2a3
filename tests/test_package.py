"""The package itself: cheap import, every public name resolves, the console command dispatches."""

import importlib
import json
import runpy
import subprocess
import sys
import types
from importlib.metadata import entry_points

import pytest

import diffusers_edge
from diffusers_edge import cli


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "absent"),
    [
        # the settings of a run, read without the libraries the run itself needs
        ("diffusers_edge.training.config", ("diffusers", "accelerate", "datasets", "peft")),
        ("diffusers_edge.evaluation.protocol", ("timm", "transformers", "datasets")),
        ("diffusers_edge.shapes.demo.config", ("diffusers", "accelerate", "datasets", "peft")),
    ],
)
def test_subpackages_hand_on_names_lazily(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing {module} pulled in {out}"


@pytest.mark.parametrize("package", ["diffusers_edge.training", "diffusers_edge.evaluation"])
def test_subpackage_names_resolve_and_unknown_ones_raise(package):
    module = importlib.import_module(package)
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        assert getattr(module, name) is getattr(importlib.import_module(module._EXPORTS[name], package), name)
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", [n for n in diffusers_edge.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    defined = getattr(importlib.import_module(diffusers_edge._LAZY_NAMES[name]), name)
    assert getattr(diffusers_edge, name) is defined
    assert getattr(defined, "__name__", name) == name  # a function or class is exported under its own name


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


def test_cli_dispatches_and_returns_the_commands_code(monkeypatch):
    calls = []
    fake = types.ModuleType("fake_command")
    fake.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fake_command", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "a command that fails with code 3"))
    assert cli.main(["fake", "--flag", "x"]) == 3 and calls == [["--flag", "x"]]
    fake.main = lambda argv: None  # a command that returns nothing succeeded
    assert cli.main(["fake"]) == 0


def _shapes_flags(tmp_path):
    return ["--num_train", "6", "--num_val", "1", "--num_test", "3", "--output_dir", str(tmp_path / "preview"),
            "--cache_dir", str(tmp_path / "cache")]  # fmt: skip


def _check_shapes_preview(tmp_path):
    stats = json.loads((tmp_path / "preview" / "statistics.json").read_text())
    assert {k: v["images"] for k, v in stats["splits"].items()} == {"train": 6, "validation": 1, "test": 3}
    assert (tmp_path / "preview" / "preview.png").is_file()


def test_cli_runs_a_real_command(tmp_path, capsys):
    assert cli.main(["shapes", *_shapes_flags(tmp_path)]) == 0
    _check_shapes_preview(tmp_path)
    assert "a random 6-image subset of train covers" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "distill", "evaluate", "shapes", "train"])
@pytest.mark.filterwarnings("ignore:'diffusers_edge.commands.*' found in sys.modules:RuntimeWarning")  # re-run
def test_command_modules_run_as_scripts(command, monkeypatch, capsys):
    """`python -m diffusers_edge.commands.NAME`: the module's `__main__` block exits with `main`'s code."""
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(cli.COMMANDS[command][0], run_name="__main__")
    assert exit_.value.code == 0 and f"usage: diffusers-edge {command}" in capsys.readouterr().out


@pytest.mark.slow
def test_installed_console_script_runs_commands_and_returns_their_codes(tmp_path):
    """The `diffusers-edge` entry point as installed: its metadata names `cli.main`, and loading it the way the
    console-script wrapper does (`sys.exit(main())`) runs a command in a fresh interpreter. The entry point is
    loaded through `importlib.metadata` rather than the `diffusers-edge` file on PATH so that the code under test
    (PYTHONPATH) is what runs, whichever checkout the package was installed from."""
    (script,) = entry_points(group="console_scripts", name="diffusers-edge")
    assert script.value == "diffusers_edge.cli:main"
    wrapper = (
        "import sys; from importlib.metadata import entry_points; "
        "(script,) = entry_points(group='console_scripts', name='diffusers-edge'); sys.exit(script.load()())"
    )

    def run(*argv):
        return subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, timeout=300)

    done = run("shapes", *_shapes_flags(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    _check_shapes_preview(tmp_path)
    unknown = run("no-such-command")
    assert unknown.returncode == 2 and "invalid choice: 'no-such-command'" in unknown.stderr
    as_module = subprocess.run([sys.executable, "-m", "diffusers_edge.cli", "--help"], capture_output=True, text=True)
    assert as_module.returncode == 0 and "evaluate" in as_module.stdout
