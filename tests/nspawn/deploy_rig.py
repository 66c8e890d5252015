"""A private nspawn rig for the deploy end-to-end tests, which stop containers and etcd members on purpose.

The session rig (``tests/nspawn/conftest.py``) is shared with other modules, so faults must not be injected
there. This rig is the same :class:`~tests.nspawn.rig.NspawnRig`, in its own network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.nspawn.rig import Node, NspawnRig

CLI = [str(Path(sys.executable).parent / "coreos-lab")]  # the installed console script, as users run it


def cli(inventory: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """The real CLI against the rig's ssh-config, one connection per call (no mux)."""
    argv = [*CLI, *args, "--inventory", str(inventory), "--no-persist"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


class DeployRig(NspawnRig):
    """NspawnRig in a namespace of its own (``coreos-lab-deploy-<pid>``), so it can live beside the session rig."""

    def __init__(self, n: int = 3) -> None:
        super().__init__(n)
        self.netns = f"coreos-lab-deploy-{os.getpid()}"
        self.netns_path = f"/run/netns/{self.netns}"

    def power_off(self, node: Node, timeout: float = 20.0) -> float:
        """Stop one node's container (systemd poweroff, SIGKILL of nspawn by PID if it hangs); returns seconds.

        Its address then gets an ``unreachable`` route in the namespace: connecting fails at once, as to a
        host whose ARP entry is known dead, instead of after ARP's ~3 s per attempt (every later CLI call
        in the test would pay that).
        """
        started = time.monotonic()
        if node.nspawn.poll() is None and node.leader_pid:
            os.kill(node.leader_pid, signal.SIGRTMIN + 4)
        try:
            node.nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            node.nspawn.kill()
            node.nspawn.wait(10)
        elapsed = time.monotonic() - started
        subprocess.run(
            ["ip", "-n", self.netns, "route", "add", "unreachable", f"{node.address}/32"],
            capture_output=True,
            check=True,
            timeout=10,
        )
        return elapsed
