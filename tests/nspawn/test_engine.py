"""The engine on real nodes: units move by themselves when a node goes away, run once when it comes back, one
engine of several acts, and a standby takes over when the leader is killed.

The module boots its own rig (its last test powers a node off). A node "goes away" in two ways: cut off (an
``unreachable`` route in the rig's namespace: the node still runs, so a copy it keeps is a real stale copy
that must be stopped when it returns) and powered off (its container stopped). What runs where is read
through nsenter, not through coreos-lab; the leader key is read from etcd directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coreos_lab.engine import LEADER_KEY
from coreos_lab.etcd import EtcdClient
from coreos_lab.state import EtcdKV, RecordStore
from tests.nspawn.deploy_rig import CLI, DeployRig, cli
from tests.nspawn.rig import Node
from tests.nspawn.test_deploy_faults import active_on, live, wait_for

pytestmark = pytest.mark.nspawn

SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"
TTL = 3.0  # a short agent TTL keeps the module fast; the default (10 s) is measured by benchmarks/engine.py
INTERVAL = 1.0
LEASE = 5


class EngineProc:
    """One ``coreos-lab engine run`` process with its own state dir (as a second host would have)."""

    def __init__(self, inventory: Path, state_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir.parent / f"{state_dir.name}.out"
        argv = [*CLI, "engine", "run", "--inventory", str(inventory), "--state-dir", str(state_dir)]
        argv += ["--agent-ttl", f"{TTL:g}", "--interval", f"{INTERVAL:g}", "--lease-ttl", str(LEASE), *extra]
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, object]:
        try:
            data = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("pid") == self.proc.pid else {}

    def role(self) -> object:
        return self.status().get("role")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def start_engine(inventory: Path, tmp_path: Path) -> Iterator[Callable[[], EngineProc]]:
    started: list[EngineProc] = []

    def make() -> EngineProc:
        e = EngineProc(inventory, tmp_path / f"engine-{len(started)}")
        started.append(e)
        return e

    yield make
    for e in started:
        e.kill()


def cut_off(rig: DeployRig, node: Node) -> None:
    CUT.add(node.name)
    subprocess.run(["ip", "-n", rig.netns, "route", "add", "unreachable", f"{node.address}/32"], check=True, timeout=10)


def reconnect(rig: DeployRig, node: Node) -> None:
    CUT.discard(node.name)
    subprocess.run(["ip", "-n", rig.netns, "route", "del", "unreachable", f"{node.address}/32"], check=True, timeout=10)


CUT: set[str] = set()  # nodes cut off right now: etcd is read through the others


def etcd(rig: DeployRig) -> EtcdClient:
    return EtcdClient(next(n for n in live(rig) if n.name not in CUT).etcd_url, timeout=5)


def leader_key(rig: DeployRig) -> object:
    with etcd(rig) as client:
        kv = client.get(LEADER_KEY)
    return None if kv is None else json.loads(kv.value)["id"]


def records(rig: DeployRig) -> dict[str, tuple[str, ...]]:
    """{unit: targets} straight from etcd, not through the CLI."""
    with etcd(rig) as client:
        return {r.name: r.targets for r in RecordStore(EtcdKV(client)).list()}


def deploy(inventory: Path, tmp_path: Path, name: str, text: str = SLEEPER) -> str:
    path = tmp_path / name
    path.write_text(text)
    result = cli(inventory, "deploy", str(path))
    assert result.returncode == 0, result.stderr
    [node] = records_of(inventory, name)
    return node


def records_of(inventory: Path, name: str) -> list[str]:
    files = json.loads(cli(inventory, "list-unit-files", "--json").stdout)
    return [t for f in files if f["unit"] == name for t in f["targets"]]


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def node_named(rig: DeployRig, name: str) -> Node:
    return next(n for n in rig.nodes if n.name == name)


def test_engine_start_status_stop_through_the_cli(rig: DeployRig, inventory: Path) -> None:
    started = cli(inventory, "engine", "start", "--agent-ttl", "3", "--interval", "1", "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert info["started"] is True
    try:
        again = cli(inventory, "engine", "start")
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"engine already running (pid {info['pid']})")

        def leading() -> object:
            st = json.loads(cli(inventory, "engine", "status", "--json").stdout)
            return st if st["role"] == "leader" and st["last_reconcile"] else None

        st = wait_for("the engine to lead and reconcile", leading, timeout=20, interval=0.5)
        assert isinstance(st, dict)
        assert st["running"] is True
        assert st["pid"] == info["pid"]
        assert st["leader"].endswith(f":{info['pid']}")
        assert sorted(st["nodes"]) == ["core-01", "core-02", "core-03"]
        assert {n["state"] for n in st["nodes"].values()} == {"alive"}
        assert leader_key(rig) == st["leader"]
        text = cli(inventory, "engine", "status")
        assert text.returncode == 0
        assert text.stdout.startswith(f"engine: leader (pid {info['pid']}), last reconcile ")
        assert Path(info["log"]).read_text().count("leading (") == 1
    finally:
        stopped = cli(inventory, "engine", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"engine stopped (pid {info['pid']})"
    assert gone(info["pid"])
    assert leader_key(rig) is None  # it resigned: no waiting out a lease for the next engine
    after = cli(inventory, "engine", "status")
    assert after.returncode == 3
    assert after.stdout.startswith("engine: not running")
    assert cli(inventory, "engine", "stop").stdout.strip() == "no engine was running"
    bad = cli(inventory, "engine", "start", "--interval", "0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --interval must be between 0.5 and 300 seconds, not 0"


def test_the_engine_ends_by_itself_when_its_cluster_is_gone(inventory: Path, tmp_path: Path) -> None:
    """A lab's engine ends once the lab is destroyed; for an inventory, once the inventory file is gone."""
    copy = tmp_path / "inventory"
    copy.write_text(inventory.read_text())
    started = cli(copy, "engine", "start", "--interval", "1", "--json")
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    wait_for("the engine to lead", lambda: json.loads(cli(copy, "engine", "status", "--json").stdout)["role"], 20, 0.5)
    log = Path(json.loads(started.stdout)["log"])
    copy.unlink()
    wait_for("the engine to exit", lambda: gone(pid), timeout=15, interval=0.2)
    assert log.read_text().splitlines()[-1].endswith(f"exiting: the inventory {copy.resolve()} is gone")


def test_a_cut_off_node_loses_its_unit_and_stops_the_stale_copy_on_return(
    rig: DeployRig, inventory: Path, tmp_path: Path, start_engine: Callable[[], EngineProc]
) -> None:
    make = start_engine
    home = deploy(inventory, tmp_path, "moving.service")
    first, second = make(), make()
    wait_for("one engine leading, one standing by", lambda: {first.role(), second.role()} == {"leader", "standby"}, 20)
    leader, standby = (first, second) if first.role() == "leader" else (second, first)
    assert standby.status()["leader"] == leader.status()["leader"] == leader_key(rig)

    victim = node_named(rig, home)
    cut = time.monotonic()
    cut_off(rig, victim)
    try:
        wait_for(
            "moving.service to run on another node",
            lambda: [n for n in active_on(rig, "moving.service") if n != home],
            timeout=TTL + 15,
            interval=0.2,
        )
        moved = time.monotonic() - cut
        [new_home] = [n for n in active_on(rig, "moving.service") if n != home]
        assert records(rig)["moving.service"] == (new_home,)
        assert home in active_on(rig, "moving.service")  # cut off, not stopped: the stale copy still runs
        assert moved >= TTL  # held for the agent TTL first: a slow node does not make units flap
    finally:
        reconnect(rig, victim)
    back = time.monotonic()
    wait_for("the stale copy to stop", lambda: active_on(rig, "moving.service") == [new_home], timeout=20)
    stale_stopped = time.monotonic() - back
    for _ in range(6):  # and it stays that way: no flapping back
        assert active_on(rig, "moving.service") == [new_home]
        time.sleep(0.5)
    log = leader.log()
    assert f"{home} is lost: no answer for " in log
    assert f"schedule moving.service on {new_home} (placed by the scheduler): ok" in log
    assert f"start moving.service on {new_home} (desired launched): ok" in log
    assert f"stop moving.service on {home} (not wanted here): ok" in log
    assert " on core-" not in standby.log()  # the standby acted on nothing
    assert "standing by: " in standby.log()

    # The leader dies without a word: the standby takes over once the lease runs out.
    killed = time.monotonic()
    leader.kill()
    wait_for("the standby to take over", lambda: standby.role() == "leader", timeout=LEASE + 10, interval=0.2)
    takeover = time.monotonic() - killed
    assert leader_key(rig) == standby.status()["id"]
    assert standby.stop() == 0
    assert leader_key(rig) is None
    cli(inventory, "undeploy", "moving.service")
    print(
        f"\nengine (agent TTL {TTL:g}s, interval {INTERVAL:g}s): cut off -> running elsewhere {moved:.1f}s; "
        f"back -> stale copy stopped {stale_stopped:.1f}s; leader SIGKILLed -> standby leads {takeover:.1f}s "
        f"(lease {LEASE}s)"
    )


def test_a_unit_pinned_by_machine_id_waits_for_its_machine(
    rig: DeployRig, inventory: Path, tmp_path: Path, start_engine: Callable[[], EngineProc]
) -> None:
    make = start_engine
    target = rig.nodes[1]
    machine_id = target.root("cat /etc/machine-id").stdout.strip()
    deploy(inventory, tmp_path, "pinned.service", SLEEPER + f"\n[X-Fleet]\nMachineID={machine_id}\n")
    free = deploy(inventory, tmp_path, "free.service")
    eng = make()
    wait_for("the engine to lead", lambda: eng.role() == "leader", 20)
    cut_off(rig, target)
    try:
        wait_for("the engine to give the node up", lambda: f"{target.name} is lost" in eng.log(), TTL + 15, 0.2)
        time.sleep(3 * INTERVAL)  # rounds after the loss: nothing may start pinned.service elsewhere
        assert [n for n in active_on(rig, "pinned.service") if n != target.name] == []
        assert "pinned.service cannot be placed: " in eng.log()
        if free == target.name:
            wait_for("free.service elsewhere", lambda: [n for n in active_on(rig, "free.service") if n != free], 15)
    finally:
        reconnect(rig, target)
    wait_for("pinned.service recorded on its machine again", lambda: records(rig)["pinned.service"] == (target.name,))
    assert active_on(rig, "pinned.service") == [target.name]
    assert len(active_on(rig, "free.service")) == 1
    assert eng.stop() == 0
    assert cli(inventory, "undeploy", "pinned.service", "free.service").returncode == 0


def test_a_powered_off_node_loses_its_units_with_the_default_settings(
    rig: DeployRig, inventory: Path, tmp_path: Path
) -> None:
    """Last in the module: the node stays off. Default agent TTL (10 s) and interval (2 s), as `up` starts it."""
    home = deploy(inventory, tmp_path, "hello.service")
    started = cli(inventory, "engine", "start", "--json")
    assert started.returncode == 0, started.stderr
    try:
        wait_for(
            "the engine to lead",
            lambda: json.loads(cli(inventory, "engine", "status", "--json").stdout)["role"] == "leader",
            20,
            0.5,
        )
        off = time.monotonic()
        rig.power_off(node_named(rig, home))
        wait_for("hello.service elsewhere", lambda: active_on(rig, "hello.service"), timeout=30, interval=0.2)
        moved = time.monotonic() - off
        [new_home] = active_on(rig, "hello.service")
        assert new_home != home
        st = json.loads(cli(inventory, "engine", "status", "--json").stdout)
        assert st["nodes"][home]["state"] == "lost"
        assert any(f"start hello.service on {new_home}" in a for a in st["actions"])
        assert moved <= 15 + 5, moved  # the goal is 15 s; 5 s of slack for a loaded CI host
    finally:
        cli(inventory, "engine", "stop")
    print(f"\nengine (defaults): power-off of {home} -> hello.service running on {new_home} after {moved:.1f}s")
