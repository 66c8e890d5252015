"""The CLI shell: one-line errors with exit codes, plain output without a TTY, --version, the command table
(commands load when used), one meaning per short flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import typer

from coreos_lab import __version__
from coreos_lab.cli import app
from coreos_lab.cli._app import COMMANDS, load_commands

CLI = str(Path(sys.executable).parent / "coreos-lab")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"coreos-lab {__version__}"


def test_help_without_a_tty_is_plain_text() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert "Commands:" in proc.stdout
    assert not any(ch in proc.stdout for ch in "╭│╰\x1b"), proc.stdout[:200]
    assert "\\[" not in run("init", "--help").stdout


def test_unknown_command_and_bad_option_are_one_line_usage_errors() -> None:
    for argv in (["no-such-command"], ["init", "--instances", "many"], ["status", "--bogus"]):
        proc = run(*argv)
        assert proc.returncode == 2, argv
        assert proc.stderr.startswith("error: "), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_config_error_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "coreos-lab.toml").write_text("instances = 3\nnot toml at all [\n")
    proc = run("render", "--lab", str(lab))
    assert proc.returncode == 2  # a broken config is bad input
    assert proc.stderr.startswith("error: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    debug = run("--debug", "render", "--lab", str(lab))
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr


# -- the command table: commands load when used ------------------------------------------------------------------
def _all_commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        found.update(load_commands(module))
    return found


def test_the_command_table_names_every_command_with_its_own_help() -> None:
    built = _all_commands()
    assert set(built) == set(COMMANDS)
    for name, (module, text) in COMMANDS.items():
        assert name in load_commands(module), (name, module)
        assert " ".join((built[name].help or "").split("\n\n")[0].split()) == text, name


def test_the_listing_from_the_table_is_clicks_own_listing_of_the_loaded_commands() -> None:
    for width in (80, 200):
        group = typer.main.get_command(app)
        assert isinstance(group, click.Group)
        with click.Context(group, info_name="coreos-lab", terminal_width=width) as ctx:
            lazy, loaded = ctx.make_formatter(), ctx.make_formatter()
            group.format_commands(ctx, lazy)
            assert group.commands == {}, "listing the commands must load none"
            click.Group.format_commands(group, ctx, loaded)  # loads every command, asks each for its short help
            assert set(group.commands) == set(COMMANDS)
            assert lazy.getvalue() == loaded.getvalue()
            assert "list-unit-files" in lazy.getvalue()


def _modules_loaded_by(*argv: str) -> set[str]:
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
        f"sys.argv = ['coreos-lab', *{list(argv)!r}]\n"
        "from coreos_lab._entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    line = proc.stderr.rsplit("\nMODULES ", 1)[1]
    return {m for m in json.loads(line) if m.startswith("coreos_lab")}


def test_help_loads_no_command_module_and_no_library_module() -> None:
    assert _modules_loaded_by("--help") == {
        *("coreos_lab", "coreos_lab._entry", "coreos_lab.errors"),
        *("coreos_lab.cli", "coreos_lab.cli._app", "coreos_lab.cli._common"),
    }


def test_a_command_loads_its_own_module_only(tmp_path: Path) -> None:
    loaded = _modules_loaded_by("exec", "--inventory", str(tmp_path / "missing"), "--", "true")
    cli_modules = {m for m in loaded if m.startswith("coreos_lab.cli.")}
    assert cli_modules == {"coreos_lab.cli._app", "coreos_lab.cli._common", "coreos_lab.cli.nodes"}


def test_each_short_flag_means_one_thing_everywhere() -> None:
    meaning: dict[str, set[str]] = {}

    def walk(command: click.Command) -> None:
        for param in (p for p in command.params if isinstance(p, click.Option)):
            longs = [o for o in param.opts if o.startswith("--")]
            for short in (o for o in param.opts if not o.startswith("--")):
                meaning.setdefault(short, set()).update(longs)
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                walk(sub)

    for command in _all_commands().values():
        walk(command)
    assert {short: longs for short, longs in meaning.items() if len(longs) != 1} == {}
    assert meaning["-N"] == {"--node"}
    assert meaning["-n"] == {"--lines"}
    assert meaning["-f"] == {"--follow"}


def test_old_short_flags_are_usage_errors() -> None:
    for argv in (["init", "-n", "2"], ["inventory", "-f", "json"], ["halt", "-f"]):
        proc = run(*argv)
        assert proc.returncode == 2, argv
        assert proc.stderr.startswith("error: No such option"), proc.stderr


def test_a_mistyped_command_is_matched_against_every_command_loaded_or_not() -> None:
    proc = run("list-unit")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: No such command 'list-unit'."), proc.stderr
    assert "'list-units'" in proc.stderr
    assert "'list-unit-files'" in proc.stderr
