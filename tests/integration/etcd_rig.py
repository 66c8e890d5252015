"""Real etcd members on loopback for the tests: Debian's etcd 3.4 (/usr/bin/etcd) with --enable-v2.

``EtcdMember`` is one process on 127.0.0.1 free ports with its own temp data dir; ``EtcdCluster`` starts
1 or 3 of them with a static bootstrap. Members are stopped and started again by PID (the data dir stays,
so a restarted member rejoins). Fixtures ``etcd_single`` and ``etcd_cluster3`` wrap them for pytest.

For example (it needs real etcd members, so it is not run as a test)::

    with EtcdCluster(3) as cluster:
        cluster.members[0].stop()                 # quorum kept: 2 of 3
        cluster.members[0].start(); cluster.wait_healthy()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import require_binary

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdMember:
    """One etcd process on 127.0.0.1; ``url`` is its client URL."""

    def __init__(self, name: str, workdir: Path, *, binary: str = ETCD) -> None:
        self.name = name
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = workdir / f"{name}.etcd"
        self.log_path = workdir / f"{name}.log"
        self.initial_cluster = f"{name}=http://127.0.0.1:{self.peer_port}"
        self.cluster_token = f"coreos-lab-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            "--initial-cluster-state=new",
            "--enable-v2=true",
            "--logger=zap",
            "--log-level=warn",
        ]

    def start(self) -> None:
        """Start (or restart, keeping the data dir) the process; returns without waiting for readiness."""
        if self.pid is not None:
            return
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def healthy(self) -> bool:
        try:
            resp = requests.get(self.url + "/health", timeout=1)
            return bool(resp.ok and resp.json().get("health") == "true")
        except (requests.RequestException, ValueError):
            return False


class EtcdCluster:
    """``n`` members bootstrapped statically on loopback (n=1 is a single-member cluster)."""

    def __init__(self, n: int = 1, *, binary: str = ETCD) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="coreos-lab-etcd-"))
        self.members = [EtcdMember(f"m{i}", self.workdir, binary=binary) for i in range(1, n + 1)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        for member in self.members:
            member.start()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait (bounded) until every running member reports healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [m for m in self.members if m.pid is not None]
            dead = [m for m in self.members if m.proc is not None and m.proc.poll() is not None]
            if dead and len(dead) == len(self.members):
                break
            if running and all(m.healthy() for m in running):
                return
            time.sleep(0.2)
        tails = "; ".join(f"{m.name}: {m.log_tail(3)}" for m in self.members)
        raise TimeoutError(f"etcd cluster not healthy after {timeout:g}s: {tails}")

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd_single() -> Iterator[EtcdMember]:
    """One etcd member with v2 enabled, for the module's tests."""
    require_binary("etcd")
    with EtcdCluster(1) as cluster:
        yield cluster.members[0]


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A fresh 3-member loopback cluster per test (tests stop members)."""
    require_binary("etcd")
    with EtcdCluster(3) as cluster:
        yield cluster
