"""The fault lab's library (coreos_lab/fault.py, faultshell.py) with fake nodes: the command lines each fault
runs where, the records it keeps, expiry, heal, and every refusal (before anything runs, nothing recorded)."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from coreos_lab import faultshell as sh
from coreos_lab.cluster import Cluster
from coreos_lab.errors import ConfigError, CoreosLabError, UnitFileError, UsageError
from coreos_lab.etcd import EndpointStatus, Member
from coreos_lab.fault import (
    Fault,
    FaultBook,
    FaultLab,
    NothingToHeal,
    check_delay,
    check_for,
    check_loss,
    choose_peers,
    end_expirer,
    state_dir_for,
    undo_command,
    unit_to_kill,
)
from coreos_lab.testing import FakeRunner

NAMES = ["core-01", "core-02", "core-03"]
IPS = {"core-01": "192.168.56.101", "core-02": "192.168.56.102", "core-03": "192.168.56.103"}


def detect_out(
    name: str,
    *,
    programs: Sequence[str] = ("iptables", "tc", "systemd-run"),
    ssh: str = "10.0.2.2",
    etcd: str = "etcd-member.service",
) -> str:
    ip = IPS[name]
    lines = [f"have {p}" for p in programs] + [f"ssh {ssh}"]
    lines += ["1: lo    inet 127.0.0.1/8 scope host lo", "2: eth0    inet 10.0.2.15/24 scope global eth0"]
    lines += [f"3: eth1    inet {ip}/24 brd x scope global eth1"]
    lines += [f"unit {u} {'active' if u == etcd else 'inactive'}" for u in sh.ETCD_UNITS]
    return "\n".join(lines) + "\n"


def node(name: str, answers: dict[str, Any] | None = None, **detect: Any) -> FakeRunner:
    """A node that answers the detection and (by default) every root command with success."""
    table: dict[str, Any] = {r"command -v": detect_out(name, **detect)}
    table.update(answers or {})
    return FakeRunner(name, table, default=(0, "", ""))


def nodes(**overrides: FakeRunner) -> dict[str, FakeRunner]:
    return {n: overrides.get(n.replace("-", "_")) or node(n) for n in NAMES}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Power:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], bool]] = []

    def halt(self, nodes: Sequence[str] | None = None, *, force: bool = False) -> None:
        self.calls.append(("halt", list(nodes or []), force))

    def up(self, nodes: Sequence[str] | None = None) -> None:
        self.calls.append(("up", list(nodes or []), False))


def make(
    tmp_path: Path,
    runners: dict[str, FakeRunner],
    *,
    ips: dict[str, str] | None = IPS,
    power: Power | None = None,
    spawn: Callable[[Fault], int] | None = None,
    clock: Clock | None = None,
    gone: Callable[[str], bool] = lambda n: False,
    cluster: Cluster | None = None,
) -> FaultLab:
    book = FaultBook(tmp_path / "state", gone=gone, clock=clock or Clock())
    the_cluster = cluster or Cluster(runners)
    return FaultLab(
        list(runners),
        book=book,
        connect=lambda: the_cluster,
        ips=ips,
        power=(lambda: power) if power is not None else None,
        spawn_expire=spawn,
    )


def root_calls(runner: FakeRunner) -> list[str]:
    """The lines run as root (through ``sudo -n -- sh -c LINE``), unwrapped."""
    return [shlex.split(c)[-1] for c in runner.calls if c.startswith("sudo -n")]


def recorded(lab: FaultLab) -> list[dict[str, Any]]:
    if not lab.book.path.exists():
        return []
    faults: list[dict[str, Any]] = json.loads(lab.book.path.read_text())["faults"]
    return faults


# ---- what the user asks for ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_for(0), "--for must be more than 0"),
        (lambda: check_for(-3), "--for must be more than 0"),
        (lambda: check_delay(0, 0), "the delay must be more than 0"),
        (lambda: check_delay(-5, 0), "the delay must be more than 0"),
        (lambda: check_delay(100, -1), "--jitter must be between 0 and the delay"),
        (lambda: check_delay(100, 150), "--jitter must be between 0 and the delay"),
        (lambda: check_delay(120_000, 0), "at most 60000 ms"),
        (lambda: check_loss(0), "the loss must be more than 0"),
        (lambda: check_loss(100.5), "at most 100 percent"),
        (lambda: choose_peers("core-09", NAMES), "no node named 'core-09'"),
        (lambda: choose_peers("core-01", NAMES, ["core-01"]), "names core-01 itself"),
        (lambda: choose_peers("core-01", NAMES, ["core-07"]), "no node named 'core-07'"),
        (lambda: choose_peers("core-01", ["core-01"]), "no peers"),
    ],
)
def test_bad_input_is_a_usage_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        call()
    assert err.value.exit_code == 2
    assert "\n" not in str(err.value)


def test_good_input_passes() -> None:
    assert check_for(None) is None
    assert check_delay(200, 200) == (200.0, 200.0)
    assert check_loss(100) == 100.0
    assert choose_peers("core-02", NAMES, ["core-03", "core-03"]) == ["core-03"]
    assert unit_to_kill("etcd-member") == "etcd-member.service"
    assert unit_to_kill("web@1.service") == "web@1.service"


@pytest.mark.parametrize("unit", ["a;reboot", "x y.service", "$(id).service", "web@.service", ""])
def test_a_bad_unit_name_is_refused(unit: str) -> None:
    with pytest.raises(UnitFileError) as err:
        unit_to_kill(unit)
    assert err.value.exit_code == 2


# ---- command lines -------------------------------------------------------------------------------------------------
def test_undo_lines_are_safe_for_a_systemd_timer() -> None:
    """systemd expands $VAR in what a transient unit executes: no undo line may contain one (or a %)."""
    for word in ("iptables", "nft", "tc eth1", "unit etcd-member.service", "unit web\\x2d1.service"):
        line = sh.undo_line("0a1b2c3d", word)
        assert "$" not in line, line
        assert "%" not in line, line
        timer = sh.timer_command("0a1b2c3d", 5, line)
        assert "--on-active=5000ms" in timer
        assert "--unit=coreos-lab-fault-heal-0a1b2c3d" in timer
        assert "AccuracySec=100ms" in timer
    with pytest.raises(ValueError, match="unsafe"):
        sh.timer_command("0a1b2c3d", 5, "echo $HOME")


def test_netem_line_sends_only_the_peers_addresses_to_the_netem_band() -> None:
    line = sh.netem_apply("eth1", ["192.168.56.102", "192.168.56.103"], sh.netem_args(delay_ms=200, jitter_ms=20))
    steps = line.split("; ")
    assert steps[0].startswith("tc qdisc add dev eth1 root handle fa17: prio bands 4 priomap 1 2 2 2")
    assert steps[0].endswith("|| exit 10")
    assert steps[1] == "tc qdisc add dev eth1 parent fa17:4 handle fa18: netem delay 200ms 20ms || exit 11"
    assert [s.split(" match ")[1] for s in steps[2:]] == [
        "ip dst 192.168.56.102/32 flowid fa17:4 || exit 12",
        "ip dst 192.168.56.103/32 flowid fa17:4 || exit 12",
    ]
    assert "grep -q '^qdisc prio fa17: root'" in sh.netem_undo("eth1"), "only our own root qdisc is deleted"


def test_detection_reads_programs_addresses_ssh_and_the_etcd_unit() -> None:
    info = sh.parse_detect(detect_out("core-02", programs=("nft",), ssh="", etcd="etcd.service"))
    assert info.programs == frozenset({"nft"})
    assert info.addresses == {"127.0.0.1": "lo", "10.0.2.15": "eth0", "192.168.56.102": "eth1"}
    assert info.ssh_from == ""
    assert info.etcd_unit == "etcd.service"
    veth = sh.parse_detect("5: host0@if12    inet 10.213.0.11/24 brd 10.213.0.255 scope global host0\n")
    assert veth.addresses == {"10.213.0.11": "host0"}
    assert sh.parse_detect("unit etcd-member.service failed\n").etcd_unit is None


# ---- partition ----------------------------------------------------------------------------------------------------
def test_partition_drops_the_peers_on_the_node_and_the_node_on_each_peer(tmp_path: Path) -> None:
    runners = nodes()
    lab = make(tmp_path, runners)
    f = lab.partition("core-01")
    chain = f"COREOS-LAB-FAULT-{f.id}"
    (one,) = root_calls(runners["core-01"])
    for ip in ("192.168.56.102", "192.168.56.103"):
        assert f"iptables -w -A {chain} -s {ip} -j DROP" in one
        assert f"iptables -w -A {chain} -d {ip} -j DROP" in one
    assert f"iptables -w -I INPUT 1 -j {chain}" in one
    assert f"iptables -w -I OUTPUT 1 -j {chain}" in one
    assert "systemd-run" not in one, "no timer without --for"
    for peer in ("core-02", "core-03"):
        (line,) = root_calls(runners[peer])
        assert "-s 192.168.56.101 -j DROP" in line
        assert "192.168.56.10" + peer[-1] not in line
    assert f.hosts == {"core-01": "iptables", "core-02": "iptables", "core-03": "iptables"}
    assert [r["id"] for r in recorded(lab)] == [f.id]
    assert lab.book.path.stat().st_mode & 0o777 == 0o600
    assert [a.id for a in lab.active()] == [f.id]


def test_partition_from_one_peer_leaves_the_others_alone(tmp_path: Path) -> None:
    runners = nodes()
    f = make(tmp_path, runners).partition("core-01", ["core-03"])
    assert set(f.hosts) == {"core-01", "core-03"}
    assert root_calls(runners["core-02"]) == []
    assert "192.168.56.102" not in root_calls(runners["core-01"])[0]


def test_a_second_partition_of_a_node_is_refused_and_records_nothing(tmp_path: Path) -> None:
    runners = nodes()
    lab = make(tmp_path, runners)
    lab.partition("core-02")
    before = [list(r.calls) for r in runners.values()]
    with pytest.raises(UsageError, match="core-02 is already partitioned"):
        lab.partition("core-02", ["core-01"])
    assert [r.calls for r in runners.values()] == before
    assert len(recorded(lab)) == 1
    lab.partition("core-01", ["core-03"])  # another node's partition is its own fault
    assert len(recorded(lab)) == 2


def test_a_partition_that_would_cut_the_labs_own_ssh_is_refused(tmp_path: Path) -> None:
    runners = nodes(core_01=node("core-01", ssh="192.168.56.102"))
    lab = make(tmp_path, runners)
    with pytest.raises(UsageError, match="would cut the lab off"):
        lab.partition("core-01")
    assert all(root_calls(r) == [] for r in runners.values())
    assert recorded(lab) == []


def test_a_node_without_iptables_gets_an_nftables_table(tmp_path: Path) -> None:
    runners = nodes(core_02=node("core-02", programs=("nft", "tc")))
    f = make(tmp_path, runners).partition("core-02", ["core-01"])
    assert f.hosts == {"core-02": "nft", "core-01": "iptables"}
    (line,) = root_calls(runners["core-02"])
    assert f"nft add table inet coreos_lab_fault_{f.id}" in line
    assert "ip saddr '{ 192.168.56.101 }' drop" in line


def test_a_node_without_a_firewall_program_is_named(tmp_path: Path) -> None:
    runners = nodes(core_03=node("core-03", programs=("tc",)))
    lab = make(tmp_path, runners)
    with pytest.raises(CoreosLabError, match=r"core-03 has no iptables \(nor nft\): a partition needs it"):
        lab.partition("core-01")
    assert recorded(lab) == []


def test_a_failing_host_undoes_the_others_and_nothing_is_recorded(tmp_path: Path) -> None:
    bad = node("core-03", {r"iptables -w -N": (4, "", "iptables: Chain already exists.")})
    runners = nodes(core_03=bad)
    lab = make(tmp_path, runners)
    with pytest.raises(CoreosLabError, match=r"core-03: partition failed \(exit 4\): iptables: Chain already exists"):
        lab.partition("core-01")
    for r in runners.values():
        apply, undo = root_calls(r)
        assert "iptables -w -N" in apply
        assert "iptables -w -D INPUT -j" in undo
        assert "systemctl stop coreos-lab-fault-heal-" in undo
    assert recorded(lab) == []


def test_for_starts_a_heal_timer_on_every_host_and_expiry_hides_the_fault(tmp_path: Path) -> None:
    runners = nodes()
    clock = Clock()
    lab = make(tmp_path, runners, clock=clock)
    f = lab.partition("core-01", duration=30)
    assert f.timer
    assert f.expires == clock.now + 30
    for r in runners.values():
        (line,) = root_calls(r)
        assert f"systemd-run --quiet --collect --unit=coreos-lab-fault-heal-{f.id} --on-active=30000ms" in line
    clock.now += 29
    assert [a.id for a in lab.active()] == [f.id]
    clock.now += 2
    assert lab.active() == [], "an expired fault is not listed"
    with pytest.raises(NothingToHeal):
        lab.heal()  # the node-side timers did it
    assert recorded(lab) == [], "the expired record is dropped at the next write"


def test_cluster_addresses_of_an_inventory_come_from_etcds_member_list(tmp_path: Path) -> None:
    class FakeEtcd:
        def __init__(self) -> None:
            self.closed = False

        def member_list(self) -> list[Member]:
            return [Member(i, n, (f"http://10.213.0.{11 + i}:2380",), ()) for i, n in enumerate(NAMES)]

        def close(self) -> None:
            self.closed = True

        def __enter__(self) -> FakeEtcd:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    class EtcdCluster(Cluster):
        def etcd_client(self, name: str, port: int = 2379, *, timeout: float = 5.0) -> Any:
            return FakeEtcd()

    runners = {n: FakeRunner(n, {r"command -v": "have iptables\n"}, default=(0, "", "")) for n in NAMES}
    lab = make(tmp_path, runners, ips=None, cluster=EtcdCluster(runners))
    f = lab.partition("core-02", ["core-01"])
    assert f.params["ips"] == {"core-02": "10.213.0.12", "core-01": "10.213.0.11"}


# ---- delay and loss -----------------------------------------------------------------------------------------------
def test_delay_is_netem_on_the_interface_that_carries_the_cluster_address(tmp_path: Path) -> None:
    runners = nodes()
    lab = make(tmp_path, runners)
    f = lab.shape("core-01", delay_ms=200, jitter_ms=20)
    (line,) = root_calls(runners["core-01"])
    assert "tc qdisc add dev eth1 root handle fa17: prio" in line
    assert "netem delay 200ms 20ms" in line
    assert "ip dst 192.168.56.102/32" in line
    assert "ip dst 192.168.56.103/32" in line
    assert "10.0.2" not in line, "the management network (SSH) is not shaped"
    assert f.hosts == {"core-01": "tc eth1"}
    assert f.detail() == "200ms ±20ms to core-02, core-03 (eth1)"
    with pytest.raises(UsageError, match="already has a delay fault"):
        lab.shape("core-01", loss=10)
    g = lab.shape("core-02", loss=12.5)
    assert "netem loss 12.5%" in root_calls(runners["core-02"])[0]
    assert g.detail() == "12.5% to core-01, core-03 (eth1)"


def test_a_kernel_without_netem_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    said = "Error: Specified qdisc kind is unknown."
    runners = nodes(core_01=node("core-01", {r"netem delay": (11, "", said)}))
    lab = make(tmp_path, runners)
    with pytest.raises(CoreosLabError) as err:
        lab.shape("core-01", delay_ms=100)
    assert str(err.value).startswith("core-01: the kernel has no netem qdisc (sch_netem): Error: Specified qdisc")
    assert "modprobe sch_prio sch_netem cls_u32" in str(err.value)
    assert "tc qdisc del dev eth1 root" in root_calls(runners["core-01"])[-1], "our half-made qdisc is removed"
    assert recorded(lab) == []


def test_a_node_without_tc_is_named(tmp_path: Path) -> None:
    runners = nodes(core_02=node("core-02", programs=("iptables",)))
    with pytest.raises(CoreosLabError, match="core-02 has no tc: loss needs it"):
        make(tmp_path, runners).shape("core-02", loss=50)
    runners = nodes(core_02=node("core-02", programs=("iptables", "tc")))
    with pytest.raises(CoreosLabError, match="core-02 has no systemd-run: --for needs it"):
        make(tmp_path, runners).shape("core-02", loss=50, duration=10)


# ---- kill, leader, stop ----------------------------------------------------------------------------------------------
def test_kill_sigkills_the_main_process_and_records_its_pid(tmp_path: Path) -> None:
    runners = nodes(core_02=node("core-02", {r"systemctl kill": "4242\n"}))
    lab = make(tmp_path, runners)
    f = lab.kill("core-02", "etcd-member")
    (line,) = root_calls(runners["core-02"])
    assert "systemctl kill --kill-who=main --signal=SIGKILL etcd-member.service" in line
    assert len(runners["core-02"].calls) == 1, "no detection needed without --for"
    assert f.params == {"unit": "etcd-member.service", "pid": "4242"}
    assert f.detail() == "etcd-member.service (pid 4242)"


def test_kill_of_a_unit_without_a_main_process_records_nothing(tmp_path: Path) -> None:
    runners = nodes(core_02=node("core-02", {r"systemctl kill": (3, "", "")}))
    lab = make(tmp_path, runners)
    with pytest.raises(CoreosLabError, match=re.escape("core-02: nope.service has no running main process")):
        lab.kill("core-02", "nope.service")
    assert recorded(lab) == []
    with pytest.raises(UnitFileError):
        lab.kill("core-02", "a;reboot")
    assert len(runners["core-02"].calls) == 1


def test_leader_kills_the_etcd_unit_of_the_member_the_others_name(tmp_path: Path) -> None:
    leader_id = 0xB8DCABC25CC3047A

    class FakeEtcd:
        def __init__(self, name: str) -> None:
            self.name = name

        def status(self) -> EndpointStatus:
            mine = {"core-01": 1, "core-02": leader_id, "core-03": 3}[self.name]
            return EndpointStatus(mine, leader_id, 7, 100, "3.4.23", 0)

        def member_list(self) -> list[Member]:
            return [Member(i, n, (), ()) for i, n in enumerate(NAMES)]

        def close(self) -> None:
            return None

    class EtcdCluster(Cluster):
        def etcd_client(self, name: str, port: int = 2379, *, timeout: float = 5.0) -> Any:
            return FakeEtcd(name)

    runners = nodes(core_02=node("core-02", {r"systemctl kill": "99\n"}, etcd="etcd.service"))
    lab = make(tmp_path, runners, cluster=EtcdCluster(runners))
    f = lab.leader()
    assert f.node == "core-02"
    assert f.params == {"unit": "etcd.service", "pid": "99", "member_id": "b8dcabc25cc3047a", "term": 7}
    assert "--signal=SIGKILL etcd.service" in root_calls(runners["core-02"])[0]
    assert all(root_calls(runners[n]) == [] for n in ("core-01", "core-03"))


def test_stop_needs_a_vagrant_lab(tmp_path: Path) -> None:
    lab = make(tmp_path, nodes())
    with pytest.raises(UsageError, match="fault stop needs a Vagrant lab") as err:
        lab.stop("core-01")
    assert err.value.exit_code == 2
    assert recorded(lab) == []


def test_stop_powers_off_records_and_heal_powers_on(tmp_path: Path) -> None:
    power = Power()
    spawned: list[Fault] = []

    def spawn(f: Fault) -> int:
        spawned.append(f)
        return 999_999_999  # no such process: heal must leave it alone

    clock = Clock()
    lab = make(tmp_path, nodes(), power=power, spawn=spawn, clock=clock)
    f = lab.stop("core-03", 60)
    assert power.calls == [("halt", ["core-03"], True)]
    assert [s.id for s in spawned] == [f.id]
    assert f.params == {"expire_pid": 999_999_999}
    assert recorded(lab)[0]["kind"] == "stop"
    assert recorded(lab)[0]["expires_epoch"] == clock.now + 60
    with pytest.raises(UsageError, match="core-03 is already stopped"):
        lab.stop("core-03")
    assert len(power.calls) == 1
    clock.now += 61
    assert lab.active() == [], "expired: not listed as active"
    assert [x.id for x in lab.book.current()] == [f.id], "but kept until its process (or heal) powers it on"
    report = lab.heal("core-03")
    assert power.calls[-1] == ("up", ["core-03"], False)
    assert [line.text for line in report.lines] == ["powered on (vagrant up)"]
    assert recorded(lab) == []


def test_expire_heals_only_a_fault_still_recorded(tmp_path: Path) -> None:
    power = Power()
    lab = make(tmp_path, nodes(), power=power)
    f = lab.stop("core-01", 5)
    report = lab.expire(f.id)
    assert report is not None
    assert [h.id for h in report.healed] == [f.id]
    assert lab.expire(f.id) is None, "healed already"
    assert power.calls == [("halt", ["core-01"], True), ("up", ["core-01"], False)]


# ---- heal ----------------------------------------------------------------------------------------------------------
def test_heal_with_nothing_recorded_is_exit_3(tmp_path: Path) -> None:
    lab = make(tmp_path, nodes())
    with pytest.raises(NothingToHeal, match="nothing to heal: no fault is recorded") as err:
        lab.heal()
    assert err.value.exit_code == 3
    lab.partition("core-01", ["core-02"])
    with pytest.raises(NothingToHeal, match="on core-03"):
        lab.heal("core-03")
    with pytest.raises(UsageError):
        lab.heal("core-09")


def test_heal_undoes_each_fault_where_it_was_made(tmp_path: Path) -> None:
    runners = nodes(core_03=node("core-03", {r"is-active --quiet": "running\n"}))
    lab = make(tmp_path, runners)
    p = lab.partition("core-01", ["core-02"], duration=60)
    d = lab.shape("core-02", delay_ms=50)
    k = lab.kill("core-03", "etcd-member")
    report = lab.heal()
    assert {h.id for h in report.healed} == {p.id, d.id, k.id}
    assert report.failed == ()
    texts = {(line.host, line.text) for line in report.lines}
    assert ("core-01", f"removed iptables chain COREOS-LAB-FAULT-{p.id}") in texts
    assert ("core-02", "removed the netem qdisc on eth1") in texts
    assert ("core-03", "etcd-member.service was running again (systemd restarted it)") in texts
    undo = root_calls(runners["core-01"])[-1]
    assert f"systemctl stop coreos-lab-fault-heal-{p.id}.timer" in undo, "the timer goes with the fault"
    assert recorded(lab) == []


def test_a_heal_step_that_fails_keeps_its_fault_recorded(tmp_path: Path) -> None:
    runners = nodes()
    lab = make(tmp_path, runners)
    p = lab.partition("core-01", ["core-02"])
    k = lab.kill("core-03", "etcd-member")
    runners["core-02"].answers = {r"-D INPUT": (1, "", "iptables: Permission denied"), **runners["core-02"].answers}
    report = lab.heal()
    assert [f.id for f in report.failed] == [p.id]
    assert [f.id for f in report.healed] == [k.id]
    bad = [line for line in report.lines if not line.ok]
    assert [(b.host, b.text) for b in bad] == [
        ("core-02", "core-02: heal failed (exit 1): iptables: Permission denied")
    ]
    assert [r["id"] for r in recorded(lab)] == [p.id]
    report = lab.heal(forget=True)
    assert [f.id for f in report.healed] == [p.id]
    assert recorded(lab) == []


def test_faults_of_a_destroyed_lab_break_nothing(tmp_path: Path) -> None:
    destroyed: set[str] = set()
    power = Power()
    runners = nodes()
    lab = make(tmp_path, runners, power=power, gone=lambda n: n in destroyed)
    lab.partition("core-01")
    lab.stop("core-02")
    destroyed.update(NAMES)
    assert lab.active() == []
    with pytest.raises(NothingToHeal):
        lab.heal()
    assert recorded(lab) == []
    assert ("up", ["core-02"], False) not in power.calls, "a destroyed machine is never recreated by heal"


def test_a_destroyed_target_still_heals_its_peers(tmp_path: Path) -> None:
    destroyed: set[str] = set()
    runners = nodes()
    lab = make(tmp_path, runners, gone=lambda n: n in destroyed)
    lab.partition("core-01")
    destroyed.add("core-01")
    calls = len(runners["core-01"].calls)
    report = lab.heal()
    assert report.failed == ()
    assert len(runners["core-01"].calls) == calls
    assert "iptables -w -D INPUT" in root_calls(runners["core-02"])[-1]


# ---- records -------------------------------------------------------------------------------------------------------
def test_records_round_trip_and_a_broken_file_is_one_line(tmp_path: Path) -> None:
    lab = make(tmp_path, nodes())
    f = lab.partition("core-01", ["core-02"], duration=10)
    again = FaultBook(lab.book.state_dir, clock=lab.book.clock).load()
    assert again == [f]
    lab.book.path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        lab.book.load()
    assert "is not a fault record file" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        {"hosts": {"core-01": "rm -rf /"}},
        {"hosts": {"core-01": "tc eth1; reboot"}},
        {"hosts": {"core-01": "unit x;y.service"}},
        {"id": "../../x"},
        {"kind": "format"},
        {"params": {"delay_ms": "lots"}, "kind": "delay"},
    ],
)
def test_a_tampered_record_is_refused_not_run(tmp_path: Path, change: dict[str, Any]) -> None:
    lab = make(tmp_path, nodes())
    lab.partition("core-01", ["core-02"])
    data = json.loads(lab.book.path.read_text())
    data["faults"][0].update(change)
    lab.book.path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="is not a fault record file"):
        lab.heal()


def test_undo_comes_from_the_records_word_not_a_stored_line() -> None:
    f = Fault("0a1b2c3d", "kill", "core-01", 0.0, hosts={"core-01": "unit etcd.service"}, params={"unit": "x"})
    assert undo_command(f, "core-01") == sh.start_unit("etcd.service")


def test_the_lock_serialises_writers(tmp_path: Path) -> None:
    book = FaultBook(tmp_path / "state")
    order: list[str] = []
    entered = threading.Event()

    def holder() -> None:
        with book.edit():
            entered.set()
            time.sleep(0.3)
            order.append("first")

    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    with book.edit():
        order.append("second")
    t.join()
    assert order == ["first", "second"]


def test_state_dirs_follow_the_engines_layout(tmp_path: Path) -> None:
    inv = tmp_path / "nodes.ssh"
    assert state_dir_for(None, inv) == tmp_path / ".coreos-lab" / "faults-nodes.ssh"
    assert state_dir_for(tmp_path / "lab", None) == (tmp_path / "lab").resolve() / ".coreos-lab"
    with pytest.raises(UsageError):
        state_dir_for(None, None)


def test_end_expirer_leaves_other_processes_alone() -> None:
    import os

    assert end_expirer(os.getpid(), "0a1b2c3d") is False  # pytest's own PID: not an expire process
    assert end_expirer(999_999_999, "0a1b2c3d") is False
