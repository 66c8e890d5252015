"""The VM rig as a session fixture: reuse a running rig, else start one and stop it afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require, require_binary, require_root

REPO = Path(__file__).resolve().parents[2]
RIG = REPO / "scripts" / "vm-rig"
NS = os.environ.get("COREOS_LAB_RIG_NS", "coreos-lab-rig")
STATE = Path(os.environ.get("COREOS_LAB_RIG_DIR", "/run/coreos-lab-rig"))


@dataclass(frozen=True)
class Rig:
    """Runs commands inside the rig's network namespace (the only place the VMs can be reached from)."""

    ns: str
    etcd_url: str  # the rig's etcd as the VMs see it (for --bootstrap self-hosted)

    def run(
        self, argv: Sequence[str], *, timeout: float, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
                f"--- stderr\n{proc.stderr[-3000:]}"
            )
        return proc


def _rig_running() -> bool:
    return subprocess.run([str(RIG), "status"], capture_output=True, check=False, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    require_root()
    for tool in ("vagrant", "libvirtd", "virtlogd", "qemu-system-x86_64", "debootstrap", "etcd"):
        require_binary(tool)
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, check=False, timeout=120)
    require("vagrant-libvirt" in plugins.stdout, "vagrant-libvirt plugin not installed")
    started = False
    if not _rig_running():
        proc = subprocess.run([str(RIG), "start"], capture_output=True, text=True, check=False, timeout=180)
        assert proc.returncode == 0, f"vm-rig start failed: {proc.stderr}"
        started = True
    try:
        yield Rig(NS, "http://192.168.121.1:2379")
    finally:
        if started:
            proc = subprocess.run([str(RIG), "stop"], capture_output=True, text=True, check=False, timeout=300)
            assert proc.returncode == 0, f"vm-rig stop failed: {proc.stderr}"
            pid_file = STATE / "libvirtd.pid"
            assert not pid_file.exists()
            netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
            assert NS not in netns.split()


@pytest.fixture(scope="session")
def lab_root() -> Iterator[Path]:
    """Lab directories outside pytest's basetemp: concurrent pytest runs prune old basetemps, and a lab
    directory vanishing under a running Vagrant leaves its VMs orphaned."""
    root = Path(tempfile.mkdtemp(prefix="coreos-lab-e2e-", dir="/var/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
