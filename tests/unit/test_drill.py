"""The fault drills (coreos_lab/drill.py, drillbook.py, `fault drill` in cli/fault_cmds.py) with a fake etcd
and a fake fault lab: the writer's bookkeeping (acknowledged, lost, figures), whole drills end to end, the
refusals (unknown drill, node-loss on an inventory or without an engine, a fault already active), and that a
fault the drill made is healed whatever happens (an error, a lost write, Ctrl-C)."""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab import drill as drills
from coreos_lab.cli import app, fault_cmds
from coreos_lab.cluster import Cluster
from coreos_lab.drillbook import (
    Attempt,
    DrillResult,
    WriteLog,
    WriteTally,
    check_drill,
    error_kinds,
    latency_figures,
    longest_gap,
    percentile,
    tally,
)
from coreos_lab.errors import CoreosLabError, EtcdError, UsageError
from coreos_lab.etcd import KV, EndpointStatus, Member
from coreos_lab.fault import Fault, HealLine, HealReport
from coreos_lab.testing import FakeRunner

NAMES = ["core-01", "core-02", "core-03"]


# ---- bookkeeping (pure) ------------------------------------------------------------------------------------
def ack(n: int, start: float = 0.0, end: float | None = None, member: str = "core-01") -> Attempt:
    return Attempt(n, member, start, start + 0.01 if end is None else end, True)


def miss(n: int, start: float = 0.0, end: float = 1.0, error: str = "etcd http://x/v3/kv/put: timed out") -> Attempt:
    return Attempt(n, "core-01", start, end, False, error)


def test_tally_counts_acknowledged_missing_and_unacknowledged_but_committed() -> None:
    log = [ack(1), miss(2), ack(3), ack(4), miss(5)]
    found = {"/p/1": b"1", "/p/2": b"2", "/p/4": b"wrong"}  # 3 missing, 4 has another value: both lost
    t = tally(log, found, "/p/")
    assert (t.attempted, t.acknowledged, t.not_acknowledged) == (5, 3, 2)
    assert t.lost == (3, 4)
    assert t.committed_unacknowledged == 1, "key 2 timed out but was committed: not a loss, not acknowledged"
    assert t.errors == {"timed out": 2}
    assert t.to_json()["lost"] == 2


def test_nothing_lost_when_every_acknowledged_key_is_read_back() -> None:
    log = [ack(n) for n in range(1, 50)]
    assert tally(log, {f"/p/{n}": str(n).encode() for n in range(1, 50)}, "/p/").lost == ()


def test_the_write_log_windows_and_first_acks() -> None:
    log = WriteLog()
    for a in (ack(1, 0.0), miss(2, 0.1, 1.1), ack(3, 1.2, 1.3, "core-02"), ack(4, 1.4, 1.5, "core-02")):
        log.add(a)
    assert log.first_ack_after(0.05) == ack(3, 1.2, 1.3, "core-02"), "a write *sent* after the moment"
    assert log.last_ack_before(1.45) == ack(3, 1.2, 1.3, "core-02")
    assert [a.n for a in log.window(1.0, 1.5)] == [3, 4]
    assert log.acked_count(since=1.0, besides="core-02") == 0


def test_latency_figures_and_percentile() -> None:
    attempts = [ack(i, 0.0, i / 1000) for i in range(1, 101)]
    assert latency_figures(attempts) == {"writes": 100, "median_ms": 50.5, "p90_ms": 90.0}
    assert latency_figures([]) == {"writes": 0, "median_ms": None, "p90_ms": None}
    assert percentile([3.0], 0.9) == 3.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_longest_gap_counts_the_edges_of_the_window() -> None:
    assert longest_gap([], 2.0, 5.0) == 3.0
    assert longest_gap([ack(1, 0, 2.5), ack(2, 0, 3.0)], 2.0, 3.5) == 0.5


def test_error_kinds_drop_the_endpoint() -> None:
    errors = [miss(1, error="etcd http://127.0.0.1:1/v3/kv/put: timed out after 1s"), miss(2, error="ssh: gone")]
    assert error_kinds([*errors, ack(3)]) == {"timed out after 1s": 1, "ssh: gone": 1}


def result(lost: tuple[int, ...] = (), problems: tuple[str, ...] = ()) -> DrillResult:
    writes = WriteTally(10, 9, 1, lost, 0, {"timed out after 1s": 1})
    figures = {"moved_s": {"web.service": 12.0}, "latency_before": {"writes": 20, "median_ms": 4.5}, "x_s": None}
    return DrillResult(
        "node-loss", "0a1b2c3d", "core-02", "runs units", 1.5, "d", None, "r", writes, figures, problems=problems
    )


def test_the_summary_ends_with_lost_writes_and_names_units() -> None:
    lines = result().summary()
    assert lines[-1] == "lost writes: 0"
    assert "  detection: 1.50 s (d)" in lines
    assert "  recovery:  - (r)" in lines
    assert "  moved: web.service 12 s" in lines
    assert "  latency before: writes 20, median 4.5 ms" in lines
    assert "  x: -" in lines
    assert "    not acknowledged 1x: timed out after 1s" in lines
    assert result().ok
    bad = result(lost=(3, 7))
    assert not bad.ok
    assert bad.summary()[-1] == "lost writes: 2 (keys 3, 7)"
    assert bad.to_json()["lost_writes"] == 2
    assert not result(problems=("x",)).ok


def test_the_json_carries_the_documented_defaults() -> None:
    data = result().to_json()
    assert data["defaults"] == {"etcd_heartbeat_ms": 100, "etcd_election_timeout_ms": 1000, "fleet_agent_ttl_s": 30}
    assert data["writes"]["errors"] == {"timed out after 1s": 1}


def test_unknown_drill_names_the_drills() -> None:
    with pytest.raises(UsageError, match=r"no drill named 'x' \(drills: leader-loss, partition-minority, node-loss"):
        check_drill("x")


# ---- a fake etcd and fault lab ---------------------------------------------------------------------------------
class FakeEtcd:
    """Three members in one process: a killed member refuses, a cut one times out and sees no leader, a member
    that finds its leader dead elects the first live one (a newer term)."""

    def __init__(self) -> None:
        self.ids = {n: i + 1 for i, n in enumerate(NAMES)}
        self.leader = "core-01"
        self.term = 2
        self.index = 10
        self.dead: set[str] = set()
        self.cut: set[str] = set()
        self.data: dict[str, bytes] = {}
        self.swallow: tuple[str, ...] = ()  # key endings acknowledged and never stored: lost writes
        self.lock = threading.Lock()

    def elect(self) -> None:
        if self.leader in self.dead or self.leader in self.cut:
            self.leader = next(n for n in NAMES if n not in self.dead and n not in self.cut)
            self.term += 1


class FakeClient:
    def __init__(self, etcd: FakeEtcd, name: str) -> None:
        self.etcd, self.name = etcd, name

    def _up(self) -> None:
        if self.name in self.etcd.dead:
            raise EtcdError(f"etcd http://fake-{self.name}/v3/kv/put: connection refused")

    def api_prefix(self) -> str:
        return "/v3"

    def status(self) -> EndpointStatus:
        self._up()
        e = self.etcd
        with e.lock:
            if self.name in e.cut:
                return EndpointStatus(e.ids[self.name], 0, 2, 5, "3.4.23", 0)
            e.elect()
            return EndpointStatus(e.ids[self.name], e.ids[e.leader], e.term, e.index, "3.4.23", 0)

    def member_list(self) -> list[Member]:
        self._up()
        return [Member(i, n, (), ()) for n, i in self.etcd.ids.items()]

    def put(self, key: str, value: str) -> int:
        self._up()
        e = self.etcd
        if self.name in e.cut:
            raise EtcdError(f"etcd http://fake-{self.name}/v3/kv/put: timed out after 1s")
        with e.lock:
            e.elect()
            if not key.endswith(e.swallow) or not e.swallow:
                e.data[key] = value.encode()
            e.index += 1
            return e.index

    def get(self, key: str) -> KV | None:
        self._up()
        value = self.etcd.data.get(key)
        return None if value is None else KV(key.encode(), value, 1, 1, 1)

    def range(self, prefix: str) -> list[KV]:
        self._up()
        return [KV(k.encode(), v, 1, 1, 1) for k, v in sorted(self.etcd.data.items()) if k.startswith(prefix)]

    def delete(self, key: str, prefix: bool = False) -> int:
        self._up()
        gone = [k for k in self.etcd.data if (k.startswith(key) if prefix else k == key)]
        for k in gone:
            del self.etcd.data[k]
        return len(gone)


class FakeCluster:
    def __init__(self, etcd: FakeEtcd) -> None:
        self.etcd = etcd

    def etcd_client(self, name: str, port: int = 2379, *, timeout: float = 5.0) -> FakeClient:
        return FakeClient(self.etcd, name)


class FakeFaults:
    """What a drill asks of FaultLab, on the fake etcd; records what was made and healed."""

    def __init__(self, etcd: FakeEtcd, active: list[Fault] | None = None) -> None:
        self.etcd = etcd
        self.names = list(NAMES)
        self.cluster: Any = FakeCluster(etcd)
        self._active = active or []
        self.made: list[Fault] = []
        self.healed: list[str] = []
        self.shape_error: CoreosLabError | None = None

    def __enter__(self) -> FakeFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def active(self, node: str | None = None) -> list[Fault]:
        return self._active

    def _record(self, f: Fault) -> Fault:
        self.made.append(f)
        return f

    def leader(self, duration: float | None = None) -> Fault:
        node = self.etcd.leader
        self.etcd.dead.add(node)
        params = {"unit": "etcd.service", "pid": "42", "member_id": f"{self.etcd.ids[node]:x}", "term": self.etcd.term}
        return self._record(Fault("0000000a", "kill", node, 0.0, duration, {node: "unit etcd.service"}, True, params))

    def partition(self, node: str, given: tuple[str, ...] = (), duration: float | None = None) -> Fault:
        self.etcd.cut.add(node)
        peers = [n for n in NAMES if n != node]
        hosts = dict.fromkeys([node, *peers], "iptables")
        return self._record(Fault("0000000b", "partition", node, 0.0, duration, hosts, True, {"peers": peers}))

    def stop(self, node: str, duration: float | None = None) -> Fault:
        return self._record(Fault("0000000c", "stop", node, 0.0, duration))

    def shape(self, node: str, **kwargs: Any) -> Fault:
        if self.shape_error is not None:
            raise self.shape_error
        raise AssertionError("not faked")

    def heal(self, node: str | None = None, *, only: str | None = None, forget: bool = False) -> HealReport:
        f = next(f for f in self.made if f.id == only)
        self.healed.append(f.id)
        self.etcd.dead.discard(f.node)
        self.etcd.cut.discard(f.node)
        return HealReport((HealLine(f, f.node, True, "undone"),), (f,), ())


@pytest.fixture
def etcd() -> FakeEtcd:
    return FakeEtcd()


def make(faults: FakeFaults, **kwargs: Any) -> drills.Drill:
    kwargs.setdefault("writer_interval", 0.005)
    return drills.Drill(faults, timeout=20, **kwargs)  # type: ignore[arg-type]


# ---- whole drills --------------------------------------------------------------------------------------------
def test_leader_loss_measures_the_election_and_reads_every_write_back(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    said: list[str] = []
    got = make(faults, progress=lambda p: said.append(p.text)).run("leader-loss")
    assert got.ok, got.summary()
    assert got.node == "core-01"
    assert got.detection_s is not None
    assert got.recovery_s is not None
    assert got.figures["new_leader"].startswith("core-02 (member 2, term 3)")
    assert got.writes.acknowledged >= 5
    assert got.writes.lost == ()
    assert got.summary()[-1] == "lost writes: 0"
    assert faults.healed == ["0000000a"]
    assert etcd.data == {}, "the drill's keys are deleted"
    assert got.keys_deleted == got.writes.acknowledged + got.writes.committed_unacknowledged
    assert said[0].startswith("writer started: keys under /coreos-lab/drill/")
    assert any(t.startswith("killed etcd.service on core-01, the leader") for t in said)


def test_partition_minority_cuts_a_follower_and_the_write_through_it_fails(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    got = make(faults).run("partition-minority")
    assert got.ok, got.summary()
    assert got.node == "core-02", "the first follower (core-01 leads)"
    assert got.figures["write_through_the_cut_off_member"].startswith("failed after")
    assert got.figures["majority_writes_during_the_cut"] >= 5
    assert faults.healed == ["0000000b"]
    assert etcd.data == {}


def test_a_lost_write_is_counted_and_makes_the_drill_fail(etcd: FakeEtcd) -> None:
    etcd.swallow = ("/3",)  # etcd acknowledges write 3 and keeps nothing
    got = make(FakeFaults(etcd)).run("leader-loss")
    assert got.writes.lost == (3,)
    assert not got.ok
    assert got.summary()[-1] == "lost writes: 1 (keys 3)"


def test_the_fault_labs_own_error_passes_unchanged_and_nothing_is_left(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    faults.shape_error = CoreosLabError("core-01: the kernel has no prio qdisc (sch_prio): unknown")
    with pytest.raises(CoreosLabError) as caught:
        make(faults, samples=3).run("slow-network")
    assert caught.value is faults.shape_error
    assert etcd.data == {}, "keys deleted on the way out"


def test_an_interrupt_mid_drill_heals_first(etcd: FakeEtcd, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = FakeFaults(etcd)

    def interrupted(d: drills.Drill, before: Any, made: list[Fault]) -> None:
        made.append(faults.leader())
        raise KeyboardInterrupt

    monkeypatch.setattr(drills, "leader_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(faults).run("leader-loss")
    assert faults.healed == ["0000000a"]
    assert etcd.dead == set()
    assert etcd.data == {}


def test_a_drill_that_runs_out_of_time_heals_and_says_what_it_waited_for(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    now = [0.0]

    def sleep(seconds: float) -> None:  # the drill's time passes as it waits; the writer's writes take real time
        now[0] += seconds
        time.sleep(0.002)

    d = make(faults, clock=lambda: now[0], sleep=sleep)
    etcd.elect = lambda: None  # type: ignore[method-assign]  # nobody is ever elected
    with pytest.raises(drills.DrillTimeout, match="ran out of its 20 s waiting for a new leader"):
        d.run("leader-loss")
    assert faults.healed == ["0000000a"]


class UnitWorld:
    """Where each unit is active, as systemd on each node answers ``systemctl show``; an engine (``status()``)
    that holds the stopped node, gives it up on its fourth round and moves its units to core-03."""

    def __init__(self, faults: FakeFaults) -> None:
        self.active = {"web.service": {"core-02"}, "pinned.service": {"core-02"}, "everywhere.service": set(NAMES)}
        self.faults = faults
        self.rounds = 0

    def runner(self, name: str) -> FakeRunner:
        def show(line: str) -> tuple[int, str, str]:
            units = shlex.split(line)[shlex.split(line).index("--") + 1 :]
            blocks = [
                f"Id={u}\nLoadState=loaded\nActiveState={'active' if name in self.active.get(u, ()) else 'inactive'}\n"
                for u in units
            ]
            return 0, "\n".join(blocks), ""

        return FakeRunner(name, {r"systemctl show": show})

    def status(self) -> dict[str, Any]:
        stopped = [f.node for f in self.faults.made if f.kind == "stop" and f.id not in self.faults.healed]
        state = "alive"
        if stopped:
            self.rounds += 1
            state = "held" if self.rounds < 4 else "lost"
            if state == "lost":
                self.active["web.service"] = {"core-03"}
        return {
            "running": True,
            "role": "leader",
            "nodes": {"core-02": {"state": state}},
            "settings": {"agent_ttl": 10},
        }


def records(etcd: FakeEtcd) -> None:
    from coreos_lab.state import PREFIX, UnitRecord
    from coreos_lab.unitfile import UnitFile

    units = {
        "web.service": ("[Service]\nExecStart=/bin/sleep 1d\n", ("core-02",)),
        "pinned.service": ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=0123456789abcdef\n", ("core-02",)),
        "everywhere.service": ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\n", tuple(NAMES)),
    }
    for name, (text, targets) in units.items():
        record = UnitRecord.new(UnitFile.parse(text, name), "launched", targets)
        etcd.data[PREFIX + name] = record.to_json()


def test_node_loss_powers_off_a_follower_with_units_and_times_the_move(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    world = UnitWorld(faults)
    faults.cluster = Cluster({n: world.runner(n) for n in NAMES})
    records(etcd)
    d = make(faults, vagrant=True, engine=world.status, client=lambda n, t: FakeClient(etcd, n), sleep=lambda s: None)
    got = d.run("node-loss")
    assert got.ok, got.summary()
    assert got.node == "core-02", "the node with units that does not lead etcd (core-01 leads)"
    assert "not the etcd leader" in got.why
    assert set(got.figures["moved_s"]) == {"web.service"}, "pinned and global units cannot move"
    assert got.figures["copies_after_heal"] == {"web.service": 1}
    assert got.detection_s is not None
    assert got.recovery_s is not None
    assert got.figures["engine_held_s"] is not None
    assert got.figures["engine_agent_ttl_s"] == 10
    assert faults.healed == ["0000000c"]
    assert [k for k in etcd.data if k.startswith("/coreos-lab/drill/")] == []


def test_node_loss_without_a_unit_to_move_says_deploy(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    world = UnitWorld(faults)
    faults.cluster = Cluster({n: world.runner(n) for n in NAMES})
    d = make(faults, vagrant=True, engine=world.status, client=lambda n, t: FakeClient(etcd, n))
    with pytest.raises(UsageError, match=r"needs a deployed unit running on a node \(coreos-lab deploy UNIT\)"):
        d.run("node-loss")
    assert faults.made == []


# ---- refusals (nothing is done) ----------------------------------------------------------------------------------
def test_node_loss_needs_a_vagrant_lab(etcd: FakeEtcd) -> None:
    faults = FakeFaults(etcd)
    with pytest.raises(UsageError, match="node-loss drill needs a Vagrant lab: an inventory's nodes cannot"):
        make(faults, vagrant=False).run("node-loss")
    assert faults.made == []


@pytest.mark.parametrize("engine", [None, {"running": False, "role": "stopped"}])
def test_node_loss_needs_the_engine_running(etcd: FakeEtcd, engine: dict[str, Any] | None) -> None:
    faults = FakeFaults(etcd)
    d = make(faults, vagrant=True, engine=lambda: engine)
    with pytest.raises(UsageError, match="needs the engine running: start it with coreos-lab engine start"):
        d.run("node-loss")
    assert faults.made == []


def test_a_drill_does_not_start_on_a_faulted_cluster(etcd: FakeEtcd) -> None:
    other = Fault("0badc0de", "partition", "core-03", 0.0, hosts={"core-03": "iptables"})
    faults = FakeFaults(etcd, active=[other])
    with pytest.raises(UsageError, match=r"a fault is active \(0badc0de \(partition on core-03\)\): heal it first"):
        make(faults).run("leader-loss")
    assert etcd.data == {}


def test_a_drill_does_not_start_on_an_unhealthy_etcd(etcd: FakeEtcd) -> None:
    etcd.cut.add("core-03")
    now = [0.0]
    d = make(FakeFaults(etcd), clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(EtcdError, match="etcd is not healthy, a drill starts from a healthy cluster"):
        d.run("leader-loss")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [({"timeout": 5}, "--timeout must be between 10 and 3600"), ({"samples": 2}, "--samples must be between 3")],
)
def test_bad_limits_are_refused(etcd: FakeEtcd, kwargs: dict[str, Any], said: str) -> None:
    with pytest.raises(UsageError, match=said):
        drills.Drill(FakeFaults(etcd), **kwargs)  # type: ignore[arg-type]


# ---- the command -------------------------------------------------------------------------------------------------
@pytest.fixture
def inv(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.ssh"
    path.write_text("".join(f"Host {n}\n  HostName 127.0.0.1\n  Port {2200 + i}\n" for i, n in enumerate(NAMES)))
    return path


@pytest.fixture
def opened(etcd: FakeEtcd, monkeypatch: pytest.MonkeyPatch) -> FakeFaults:
    faults = FakeFaults(etcd)
    monkeypatch.setattr(fault_cmds, "open_faults", lambda *a, **k: faults)
    return faults


def run(*args: str) -> tuple[int, str, str]:
    got = CliRunner().invoke(app, list(args))
    return got.exit_code, got.stdout, got.stderr


def test_the_command_prints_phases_then_figures_and_lost_writes(inv: Path, opened: FakeFaults) -> None:
    code, out, err = run("fault", "drill", "leader-loss", "--inventory", str(inv))
    assert code == 0, err
    lines = out.splitlines()
    assert "writer started: keys under /coreos-lab/drill/" in lines[0]
    assert lines[-1] == "lost writes: 0"
    assert any(line.startswith("drill leader-loss (run ") for line in lines)


def test_the_command_with_json_gives_the_figures_and_the_phases_on_stderr(inv: Path, opened: FakeFaults) -> None:
    code, out, err = run("fault", "drill", "partition-minority", "--json", "--inventory", str(inv))
    assert code == 0, err
    data = json.loads(out)
    assert (data["drill"], data["node"], data["lost_writes"], data["ok"]) == ("partition-minority", "core-02", 0, True)
    assert "writer started" in err


def test_a_lost_write_is_exit_1(inv: Path, opened: FakeFaults, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drills, "tally", lambda *a: WriteTally(3, 3, 0, (2,), 0))
    code, out, _ = run("fault", "drill", "leader-loss", "--inventory", str(inv))
    assert code == 1
    assert out.splitlines()[-1] == "lost writes: 1 (keys 2)"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["nope"], "no drill named 'nope' (drills: leader-loss, partition-minority, node-loss, slow-network)"),
        (["node-loss"], "the node-loss drill needs a Vagrant lab"),
        (["leader-loss", "--timeout", "1"], "--timeout must be between 10 and 3600 seconds, not 1"),
    ],
)
def test_refusals_are_one_line_exit_2(inv: Path, opened: FakeFaults, args: list[str], said: str) -> None:
    code, out, err = run("fault", "drill", *args, "--inventory", str(inv))
    assert code == 2, (out, err)
    assert err.startswith("error: ")
    assert said in err
    assert len(err.strip().splitlines()) == 1
    assert opened.made == []


def test_node_loss_on_a_vagrant_lab_without_an_engine_names_engine_start(tmp_path: Path, opened: FakeFaults) -> None:
    from coreos_lab import config as labconfig

    lab = tmp_path / "lab"
    lab.mkdir()
    labconfig.save(lab, labconfig.validate(labconfig.LabConfig(instances=3)))
    code, _, err = run("fault", "drill", "node-loss", "--lab", str(lab))
    assert code == 2
    assert err.strip() == "error: the node-loss drill needs the engine running: start it with coreos-lab engine start"
