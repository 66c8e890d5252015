"""The CLI end to end against the nspawn nodes: `coreos-lab etcd ...`, `units`, `logs` over real SSH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.etcd_rig import free_port
from tests.nspawn.rig import NspawnRig

pytestmark = pytest.mark.nspawn

CLI = [str(Path(sys.executable).parent / "coreos-lab")]  # the installed entry point, as a user runs it


@pytest.fixture(scope="module")
def inventory(nspawn_rig: NspawnRig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inv") / "ssh_config"
    path.write_text(nspawn_rig.ssh_config())
    return path


def cli(inventory: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, *args, "--inventory", str(inventory), "--no-persist"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def test_etcd_health_and_members(inventory: Path) -> None:
    result = cli(inventory, "etcd", "health", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["healthy"] is True
    assert data["has_quorum"] is True
    assert [m["name"] for m in data["members"]] == ["core-01", "core-02", "core-03"]
    assert len({m["leader"] for m in data["members"]}) == 1
    table = cli(inventory, "etcd", "health")
    assert table.returncode == 0
    assert table.stdout.splitlines()[-1] == "cluster is healthy (has quorum, 3 members)"
    members = cli(inventory, "etcd", "members")
    assert members.returncode == 0, members.stderr
    lines = members.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PEER", "URLS", "CLIENT", "URLS"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["core-01", "core-02", "core-03"]


def test_etcd_keys_round_trip(inventory: Path) -> None:
    base = f"/cli/{time.monotonic_ns()}"
    put = cli(inventory, "etcd", "put", f"{base}/a", "héllo world; $(id)", "--node", "core-02")
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("OK (revision ")
    assert cli(inventory, "etcd", "put", f"{base}/b", "2").returncode == 0
    got = cli(inventory, "etcd", "get", f"{base}/a", "--json", "--node", "core-03")
    assert got.returncode == 0, got.stderr
    [kv] = json.loads(got.stdout)
    assert kv["key"] == f"{base}/a"
    assert kv["value"] == "héllo world; $(id)"
    listed = cli(inventory, "etcd", "get", base + "/", "--prefix")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["KEY", f"{base}/a", f"{base}/b"]
    deleted = cli(inventory, "etcd", "del", base + "/", "--prefix", "--json")
    assert json.loads(deleted.stdout) == {"key": base + "/", "deleted": 2}
    missing = cli(inventory, "etcd", "get", f"{base}/a")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: key not found: {base}/a"
    assert missing.stdout == ""


def test_etcd_watch_prints_a_put(inventory: Path) -> None:
    key = f"/cli-watch/{time.monotonic_ns()}"
    argv = [*CLI, "etcd", "watch", key, "--inventory", str(inventory), "--no-persist", "--count", "1", "--for", "30"]
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # let it connect and start the watch
        assert cli(inventory, "etcd", "put", key, "seen").returncode == 0
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            os.kill(watcher.pid, signal.SIGKILL)
            watcher.wait(5)
    assert watcher.returncode == 0, err
    assert out.strip() == f"PUT {key} seen"


def test_units_across_nodes_and_a_down_node(inventory: Path, tmp_path: Path) -> None:
    result = cli(inventory, "units", "ssh*", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["errors"] == {}
    assert sorted((u["node"], u["unit"], u["active"]) for u in data["units"]) == [
        (n, "ssh.service", "active") for n in ("core-01", "core-02", "core-03")
    ]
    # A fourth node nobody listens for: reported on stderr, exit 1, the others still listed.
    broken = tmp_path / "ssh_config"
    broken.write_text(
        inventory.read_text() + f"\nHost ghost\n  HostName 127.0.0.1\n  Port {free_port()}\n  User core\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  ConnectTimeout 3\n"
    )
    partial = cli(broken, "units", "etcd.service")
    assert partial.returncode == 1
    rows = partial.stdout.splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == ["core-01", "core-02", "core-03"]
    assert partial.stderr.startswith("error: ghost: ")
    assert len(partial.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("pattern", ["*; reboot", "$(id)", "a b"])
def test_units_rejects_hostile_patterns(inventory: Path, pattern: str) -> None:
    result = cli(inventory, "units", pattern)
    assert result.returncode == 2
    assert result.stderr.startswith("error: invalid unit pattern")
    assert len(result.stderr.strip().splitlines()) == 1


def test_logs_and_follow(inventory: Path) -> None:
    result = cli(inventory, "logs", "core-01", "ssh.service", "-n", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 1 <= len(lines) <= 5
    assert all(" core-01 " in line for line in lines)
    bad = cli(inventory, "logs", "core-01", "x;id.service")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: invalid unit name")
    # -f: a new SSH login (by another CLI call) shows up while following.
    argv = [*CLI, "logs", "--inventory", str(inventory), "--no-persist", "core-01", "ssh.service"]
    follower = subprocess.Popen([*argv, "-n", "0", "-f", "--interval", "0.3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        assert cli(inventory, "etcd", "members", "--node", "core-01").returncode == 0
        time.sleep(1.5)
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            out, _ = follower.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(follower.pid, signal.SIGKILL)
            out, _ = follower.communicate(timeout=5)
    assert "Accepted publickey for core" in out
