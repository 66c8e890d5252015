"""Ctrl-C (a real SIGINT) at many moments of `coreos-lab init --tls`: the lab is all there or not there at all.

The installed CLI is started as a subprocess and interrupted after a delay swept across its whole run
(interpreter start-up, rendering, key generation, the writes). Whatever the moment, the outcome is one of:
exit 0 with a complete lab, or an interrupted exit (130 with one `error:` line; or death by the signal itself
while the interpreter is still starting) with no lab directory left behind. Never a partial file, a temp
file, or a traceback from coreos-lab's code. Found: a Ctrl-C while the CLI was loading, or while typer built
its command tree, printed a traceback; and one inside a command exited 130 silently (typer swallows it).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("coreos-lab"))
EXPECTED = {
    "coreos-lab.toml",
    "Vagrantfile",
    "config.rb",
    "cloud-config/core-01.yaml",
    "cloud-config/core-02.yaml",
    "cloud-config/core-03.yaml",
    "tls/ca.pem",
    "tls/ca-key.pem",
    "tls/client.pem",
    "tls/client-key.pem",
    *(f"tls/core-0{i}/{f}" for i in (1, 2, 3) for f in ("server.pem", "server-key.pem", "peer.pem", "peer-key.pem")),
}


def files(lab: Path) -> set[str]:
    return {str(p.relative_to(lab)) for p in lab.rglob("*") if p.is_file()}


def assert_complete(lab: Path, delay: float) -> None:
    assert files(lab) == EXPECTED, (delay, sorted(files(lab)))
    for node in ("core-01", "core-02", "core-03"):
        text = (lab / "cloud-config" / f"{node}.yaml").read_text()
        assert text.startswith("#cloud-config\n")
        assert isinstance(yaml.safe_load(text), dict)
    assert "instances = 3" in (lab / "coreos-lab.toml").read_text()
    assert (lab / "tls" / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_sigint_anywhere_in_init_leaves_all_or_nothing(tmp_path: Path) -> None:
    start = time.monotonic()
    subprocess.run([CLI, "init", str(tmp_path / "timing"), "--tls"], check=True, capture_output=True, timeout=60)
    run_time = time.monotonic() - start
    steps = 24
    outcomes: dict[str, int] = {}
    for i in range(steps):
        delay = run_time * 1.2 * i / (steps - 1)
        lab = tmp_path / f"lab{i:02d}"
        proc = subprocess.Popen(
            [CLI, "init", str(lab), "--tls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            assert "Traceback" not in err, err
            outcomes["complete"] = outcomes.get("complete", 0) + 1
            assert_complete(lab, delay)
        elif proc.returncode == 130:
            assert err.strip().splitlines() == ["error: interrupted"], err  # one line, no traceback
            if lab.exists():  # the signal came after the last file was in place (printing the summary)
                outcomes["interrupted after the writes"] = outcomes.get("interrupted after the writes", 0) + 1
                assert_complete(lab, delay)
            else:
                outcomes["interrupted"] = outcomes.get("interrupted", 0) + 1
        else:
            # Killed by the signal before any coreos-lab code ran: the interpreter's start-up, or the lines
            # of pip's generated launcher before it imports coreos_lab._entry (Python reports a pending
            # SIGINT there). Nothing of ours may show in the traceback, and nothing may be written.
            assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
            assert "coreos_lab" not in err.replace("from coreos_lab._entry import main", ""), err
            outcomes["before coreos-lab ran"] = outcomes.get("before coreos-lab ran", 0) + 1
            assert not lab.exists(), (delay, sorted(files(lab)) if lab.is_dir() else lab)
        leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".coreos-lab-")]
        assert not leftovers, leftovers
    print(f"init --tls ({run_time * 1000:.0f} ms) interrupted at {steps} moments: {outcomes}")
    # the sweep must have hit both sides of the line, or it proved nothing
    assert outcomes.get("interrupted", 0) >= 3, outcomes
    assert outcomes.get("complete", 0) >= 1, outcomes
