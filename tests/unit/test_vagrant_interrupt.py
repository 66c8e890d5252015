"""Ctrl-C while Vagrant runs: Vagrant gets exactly one SIGINT and time to clean up; a hung Vagrant is killed.

A stand-in ``vagrant`` script (a shell trap) records the signals it gets; the real Vagrant's behaviour on
Ctrl-C is exercised on VMs by tests/vm/test_interrupt_up.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = """
import sys
from pathlib import Path
from coreos_lab import vagrant
vagrant.INTERRUPT_GRACE = float(sys.argv[2])
lab = vagrant.VagrantLab(Path(sys.argv[1]))
try:
    lab.up(parallel=False, on_line=lambda line: print("line:", line, flush=True))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""

GRACEFUL = """#!/bin/sh
cleanup() {
    echo int >> "$LOG"
    echo "==> core-01: Waiting for cleanup before exiting..."
    sleep 0.3
    echo cleaned >> "$LOG"
    exit 1
}
trap cleanup INT
echo "==> core-01: Creating the domain"
echo started >> "$LOG"
i=0
while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
"""

HUNG = """#!/bin/sh
trap 'echo int >> "$LOG"' INT
echo started >> "$LOG"
i=0
while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
"""


def start(tmp_path: Path, script: str, grace: float) -> tuple[subprocess.Popen[str], Path]:
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "Vagrantfile").write_text("# stand-in\n")
    exe = tmp_path / "vagrant"
    exe.write_text(script)
    exe.chmod(0o755)
    log = tmp_path / "log"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(lab), str(grace)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOG": str(log), "PATH": f"{tmp_path}:{os.environ['PATH']}"},  # the stand-in is `vagrant`
    )
    deadline = time.monotonic() + 20
    while "started" not in log.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("the stand-in vagrant did not start")
        time.sleep(0.05)
    return proc, log


def test_ctrl_c_gives_vagrant_one_sigint_and_waits_for_its_clean_up(tmp_path: Path) -> None:
    proc, log = start(tmp_path, GRACEFUL, grace=30)
    proc.send_signal(signal.SIGINT)  # what a terminal does to the foreground group: Vagrant is not in it
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert log.read_text().split() == ["started", "int", "cleaned"]  # exactly one SIGINT, clean-up finished
    assert "line: ==> core-01: Waiting for cleanup before exiting..." in out  # its clean-up lines still shown
    assert out.rstrip().endswith("interrupted")


def test_a_vagrant_that_ignores_ctrl_c_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    proc, log = start(tmp_path, HUNG, grace=1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert 0.9 < time.monotonic() - started < 10
    assert log.read_text().split() == ["started", "int"]


def test_a_second_ctrl_c_kills_vagrant_at_once(tmp_path: Path) -> None:
    proc, log = start(tmp_path, HUNG, grace=60)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 10
    while "int" not in log.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert time.monotonic() - started < 5  # not the 60 s grace
