"""The fault drills and ``status --watch`` on real nodes, through the CLI over real SSH (an inventory of the
shared nspawn nodes, the fixtures of test_fault.py).

Each drill runs end to end: it must print ``lost writes: 0``, exit 0, and leave no fault recorded, no rule,
qdisc or timer of ours on the nodes (the ``heal`` fixture checks that from inside the containers) and no key
under ``/coreos-lab/drill/`` (checked with our own etcd client straight to a member). The watch runs without a
TTY, so it prints one line per change: the first round names every fact, an unchanged cluster adds nothing,
a partition made during the watch adds a line about it.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coreos_lab.etcd import EtcdClient
from tests.nspawn.rig import Node
from tests.nspawn.test_fault import CLI, fault, heal, healthy, inventory, netem_in_kernel, wait_for

pytestmark = pytest.mark.nspawn

__all__ = ["heal", "inventory"]  # fixtures, used by name


def drill(inventory: Path, name: str, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, "fault", "drill", name, *args, "--inventory", str(inventory), "--no-persist"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def drill_keys(nodes: list[Node]) -> list[str]:
    with EtcdClient(nodes[0].etcd_url, timeout=10) as client:
        return [kv.key_text for kv in client.range("/coreos-lab/drill/")]


def assert_left_clean(inventory: Path, nodes: list[Node]) -> None:
    assert fault(inventory, "list", "--json").stdout.count('"id"') == 0, "no fault recorded"
    assert drill_keys(nodes) == []


@pytest.mark.parametrize("name", ["leader-loss", "partition-minority"])
def test_a_drill_runs_end_to_end_and_loses_no_write(
    inventory: Path, nspawn_nodes: list[Node], heal: None, name: str
) -> None:
    assert wait_for(lambda: healthy(nspawn_nodes), 45)
    started = time.monotonic()
    result = drill(inventory, name)
    print(result.stdout, result.stderr, f"({time.monotonic() - started:.1f} s)", sep="\n")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "lost writes: 0" in lines
    assert any("writer started: keys under /coreos-lab/drill/" in line for line in lines)
    assert any(line.strip().startswith("detection: ") and "detection: -" not in line for line in lines)
    assert any(line.strip().startswith("recovery: ") and "recovery:  -" not in line for line in lines)
    if name == "partition-minority":
        assert any("as it must" in line for line in lines), "the write through the cut-off member failed"
    assert_left_clean(inventory, nspawn_nodes)


def test_slow_network_without_netem_passes_the_fault_labs_error_through(
    inventory: Path, nspawn_nodes: list[Node], heal: None
) -> None:
    assert wait_for(lambda: healthy(nspawn_nodes), 45)
    result = drill(inventory, "slow-network", "--samples", "5")
    print(result.stdout, result.stderr, sep="\n")
    if netem_in_kernel():
        assert result.returncode == 0, result.stdout + result.stderr
        assert "lost writes: 0" in result.stdout.splitlines()
    else:
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "qdisc (sch_" in result.stderr
    assert_left_clean(inventory, nspawn_nodes)


class Watch:
    """``status --watch`` in a pipe, its lines read by a thread (so a test can wait for one with a limit)."""

    def __init__(self, inventory: Path, rounds: int) -> None:
        argv = [*CLI, "status", "--watch", "--interval", "1", "--count", str(rounds)]
        self.proc = subprocess.Popen(
            [*argv, "--inventory", str(inventory), "--no-persist"], stdout=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, check: object, limit: float) -> str | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if callable(check) and check(line):
                return line
        return None

    def finish(self, limit: float = 60) -> int:
        code = self.proc.wait(timeout=limit)
        time.sleep(0.2)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


def test_watch_without_a_tty_prints_the_state_then_nothing_while_nothing_changes(
    inventory: Path, nspawn_nodes: list[Node]
) -> None:
    assert wait_for(lambda: healthy(nspawn_nodes), 45)
    watch = Watch(inventory, rounds=4)
    assert watch.finish() == 0
    print("\n".join(watch.seen))
    stamps = {line.split(" ", 1)[0] for line in watch.seen}
    assert len(stamps) == 1, "every line comes from the first round: nothing changed after it"
    keys = [line.split(" ", 1)[1].split(":", 1)[0] for line in watch.seen]
    assert {"node core-01", "node core-02", "node core-03", "etcd leader", "etcd"} <= set(keys)


def test_watch_prints_a_line_when_a_fault_is_made(inventory: Path, nspawn_nodes: list[Node], heal: None) -> None:
    assert wait_for(lambda: healthy(nspawn_nodes), 45)
    watch = Watch(inventory, rounds=12)
    try:
        assert watch.until(lambda line: " etcd: " in line, 30), "the first round"
        made = fault(inventory, "partition", "core-03", "--for", "60")
        assert made.returncode == 0, made.stderr
        changed = watch.until(lambda line: " -> " in line, 20)
        assert changed, watch.seen
    finally:
        fault(inventory, "heal")
        code = watch.finish()
    print("\n".join(watch.seen))
    assert code == 0
    assert any("core-03" in line and " -> " in line for line in watch.seen) or any(
        "etcd" in line and " -> " in line for line in watch.seen
    )
    assert wait_for(lambda: healthy(nspawn_nodes), 45)
