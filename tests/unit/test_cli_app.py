"""The CLI shell: one-line errors with exit codes, plain output without a TTY, --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from coreos_lab import __version__

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
