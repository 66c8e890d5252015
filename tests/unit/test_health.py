"""health.py: the status bitmask and the etcd/Vagrant folding, from data and from fake nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from coreos_lab import health
from coreos_lab.cluster import Cluster
from coreos_lab.etcd import ClusterHealth, MemberHealth
from coreos_lab.health import ClusterStatus, EtcdStatus, NodeStatus
from coreos_lab.testing import FakeRunner, InMemoryKV
from coreos_lab.units.results import UnitRow

LEADER = 0xA1


def members(*ok: bool) -> tuple[MemberHealth, ...]:
    return tuple(
        MemberHealth(f"core-0{i}", True, member_id=0xA0 + i, leader=LEADER)
        if good
        else MemberHealth(f"core-0{i}", False, error="connection refused")
        for i, good in enumerate(ok, start=1)
    )


def etcd(*ok: bool) -> EtcdStatus:
    agreeing = sum(ok)
    ch = ClusterHealth(members(*ok), LEADER if agreeing > len(ok) // 2 else 0, len(ok))
    return health.etcd_summary(ch, len(ok))


def node(name: str, *, ssh: bool = True, vagrant: str | None = None) -> NodeStatus:
    return NodeStatus(name, "10.0.0.1", vagrant, ssh, ssh, False, None if ssh else "down")


def row(active: str, desired: str = "launched", error: str | None = None, node: str = "core-01") -> UnitRow:
    return UnitRow("myapp.service", node, "10.0.0.1", desired, "loaded", active, "running", "0" * 40, error)


def status(nodes: list[NodeStatus], e: EtcdStatus, units: list[UnitRow], units_error: str | None = None) -> int:
    return ClusterStatus(tuple(nodes), e, tuple(units), units_error, 0.1).exit_code


ALL_UP = [node("core-01"), node("core-02"), node("core-03")]


def test_all_good_is_zero() -> None:
    assert status(ALL_UP, etcd(True, True, True), [row("active")]) == 0


def test_one_member_of_three_down_keeps_quorum_and_is_not_bit_2() -> None:
    e = etcd(True, True, False)
    assert e.has_quorum
    assert not e.healthy
    assert (e.healthy_members, e.member_count, e.expected_members) == (2, 3, 3)
    assert status(ALL_UP, e, []) == 0


def test_two_members_down_is_bit_2_only() -> None:
    e = etcd(True, False, False)
    assert not e.has_quorum
    # without quorum the desired state is unknown: reported, but it is etcd's fault (bit 2), not a unit's (bit 4)
    assert status(ALL_UP, e, [], "etcd has no quorum") == 2


def test_node_down_sets_bit_1_and_its_units_bit_4() -> None:
    nodes = [node("core-01", ssh=False), node("core-02"), node("core-03")]
    assert status(nodes, etcd(False, True, True), []) == 1
    assert status(nodes, etcd(False, True, True), [row("", error="unreachable")]) == 5


@pytest.mark.parametrize(
    ("desired", "active", "ok"),
    [
        ("launched", "active", True),
        ("launched", "failed", False),
        ("launched", "inactive", False),
        ("loaded", "inactive", True),
        ("loaded", "active", False),
    ],
)
def test_unit_desired_vs_actual(desired: str, active: str, ok: bool) -> None:
    assert row(active, desired).in_desired_state is ok
    assert status(ALL_UP, etcd(True, True, True), [row(active, desired)]) == (0 if ok else 4)


def test_unplaced_unit_is_not_in_desired_state() -> None:
    unplaced = UnitRow("x.service", "", "", "launched", "", "", "", "0" * 40)
    assert status(ALL_UP, etcd(True, True, True), [unplaced]) == 4


def test_vagrant_state_counts_only_when_known() -> None:
    assert status([node("core-01", vagrant="running")], etcd(True), []) == 0
    assert status([node("core-01", vagrant="unknown")], etcd(True), []) == 0
    assert status([node("core-01", vagrant="poweroff")], etcd(True), []) == 1


def test_everything_wrong_is_seven_and_problems_name_each_fault() -> None:
    report = ClusterStatus(
        (node("core-01", ssh=False), node("core-02")),
        etcd(False, False, True),
        (row("failed", node="core-02"),),
        None,
        0,
    )
    assert report.exit_code == 7
    text = "\n".join(report.problems)
    assert "node core-01 is down" in text
    assert "etcd has no quorum" in text
    assert "unit myapp.service on core-02/10.0.0.1: desired launched, is failed/running" in text
    assert report.to_json()["exit_code"] == 7


def test_vagrant_states_tolerates_absence_and_failure(tmp_path: Path) -> None:
    assert health.vagrant_states(None) is None
    assert health.vagrant_states(tmp_path) is None  # not a Vagrant lab
    (tmp_path / "Vagrantfile").write_text("this is not ruby")
    states = health.vagrant_states(tmp_path)  # vagrant missing or failing: every machine 'unknown'
    assert states == {}


def test_cluster_status_on_fake_nodes_without_etcd() -> None:
    answer = "m\n@@coreos-lab@@\nrole=web\n@@coreos-lab@@\ncore-01\n@@coreos-lab@@\n10.1.1.1\n"
    up = FakeRunner("core-01", {"@@coreos-lab@@": answer})
    down = FakeRunner("core-02", {"@@coreos-lab@@": (255, "", "connection refused")})
    with Cluster({"core-01": up, "core-02": down}) as cluster:
        report = health.cluster_status(cluster)
    by = {n.name: n for n in report.nodes}
    assert by["core-01"].ssh_ok
    assert by["core-01"].ip == "10.1.1.1"
    assert not by["core-02"].ssh_ok
    assert not by["core-01"].etcd_ok  # a FakeRunner cannot forward ports: no etcd reachable
    assert report.exit_code == 1 | 2
    assert report.units_error is not None


def test_vagrant_is_asked_only_about_nodes_ssh_cannot_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Vagrantfile").write_text("# a lab\n")
    asked: list[Path | None] = []

    def fake_states(lab_dir: Path | None) -> dict[str, str]:
        asked.append(lab_dir)
        return {"core-01": "running", "core-02": "poweroff"}

    monkeypatch.setattr(health, "vagrant_states", fake_states)
    answer = "m\n@@coreos-lab@@\n\n@@coreos-lab@@\ncore-01\n@@coreos-lab@@\n10.1.1.1\n"
    up = FakeRunner("core-01", {"@@coreos-lab@@": answer})
    with Cluster({"core-01": up}) as cluster:
        report = health.cluster_status(cluster, lab_dir=tmp_path)
    assert asked == []  # every node answered over SSH: no Vagrant call (Ruby start-up costs 1.5-2 s)
    assert [n.vagrant_state for n in report.nodes] == ["running"]
    down = FakeRunner("core-02", {"@@coreos-lab@@": (255, "", "connection refused")})
    up2 = FakeRunner("core-01", {"@@coreos-lab@@": answer})
    with Cluster({"core-01": up2, "core-02": down}) as cluster:
        report = health.cluster_status(cluster, lab_dir=tmp_path)
    assert asked == [tmp_path]
    assert {n.name: n.vagrant_state for n in report.nodes} == {"core-01": "running", "core-02": "poweroff"}


# ---- the speculative unit round: repeated `status` asks each node once ------------------------------------------
class FakeEtcd:
    """Just enough of EtcdClient for cluster_health: every member sees the same leader."""

    def __init__(self, member_id: int) -> None:
        self.member_id = member_id

    def status(self) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(member_id=self.member_id, leader=LEADER, raft_term=2, version="3.4.23")

    def member_list(self) -> list[object]:
        return [object()]

    def close(self) -> None:
        pass


PROBE = "m\n@@coreos-lab@@\n\n@@coreos-lab@@\ncore-01\n@@coreos-lab@@\n10.1.1.1\n@@coreos-lab@@\n"
SHOW = "Id=myapp.service\nLoadState=loaded\nActiveState=active\nSubState=running\nMainPID=42\n"


@pytest.fixture
def one_node_with_myapp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeRunner:
    from coreos_lab.state import RecordStore, UnitRecord
    from coreos_lab.unitfile import UnitFile

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    kv = InMemoryKV()
    unit = UnitFile.parse("[Service]\nExecStart=/bin/sleep infinity\n", name="myapp.service")
    RecordStore(kv).put(UnitRecord.new(unit, "launched", ("core-01",)), expected_revision=0)
    monkeypatch.setattr(health, "_etcd_probe", lambda cluster, name, timeout, port: FakeEtcd(0xA1))
    monkeypatch.setattr(health, "EtcdKV", lambda client: kv)
    # the probe (with or without a speculative `systemctl show` appended), then a plain `systemctl show`
    return FakeRunner(
        "core-01",
        {
            r"@@coreos-lab-extra@@": PROBE + "@@coreos-lab-extra@@\n" + SHOW,
            r"@@coreos-lab@@": PROBE,
            r"^systemctl show": SHOW,
        },
    )


def run_status(runner: FakeRunner, config: str = "Host core-01\n  HostName 10.1.1.1\n") -> health.ClusterStatus:
    with Cluster({"core-01": runner}, config_text=config) as cluster:
        return health.cluster_status(cluster)


def test_second_status_gets_unit_states_from_the_probe_itself(one_node_with_myapp: FakeRunner) -> None:
    runner = one_node_with_myapp
    first = run_status(runner)
    assert len(runner.calls) == 2  # probe, then systemctl show (nothing cached yet)
    assert "@@coreos-lab-extra@@" not in runner.calls[0]
    runner.calls.clear()
    second = run_status(runner)
    assert len(runner.calls) == 1, runner.calls  # one command: the probe carries the show
    assert "systemctl show" in runner.calls[0]
    assert "myapp.service" in runner.calls[0]
    assert [(u.unit, u.active_state, u.in_desired_state) for u in second.units] == [("myapp.service", "active", True)]
    assert [u.to_json() for u in first.units] == [u.to_json() for u in second.units]
    assert second.exit_code == 0


def test_a_garbled_speculative_answer_is_asked_again(one_node_with_myapp: FakeRunner) -> None:
    runner = one_node_with_myapp
    run_status(runner)
    runner.answers[r"@@coreos-lab-extra@@"] = PROBE + "@@coreos-lab-extra@@\n"  # no show block
    runner.calls.clear()
    report = run_status(runner)
    assert len(runner.calls) == 2  # the speculative answer had no block: plain systemctl show
    assert [(u.unit, u.active_state) for u in report.units] == [("myapp.service", "active")]


@pytest.mark.parametrize(
    "content", ['{"not": "a list"}', "[1, 2]", '["$(reboot).service", "a b.service"]', "not json", ""]
)
def test_a_hostile_or_broken_cache_is_ignored(one_node_with_myapp: FakeRunner, tmp_path: Path, content: str) -> None:
    runner = one_node_with_myapp
    run_status(runner)
    caches = list((tmp_path / "coreos-lab").glob("units-*.json"))
    assert len(caches) == 1
    assert caches[0].stat().st_mode & 0o077 == 0
    caches[0].write_text(content)
    runner.calls.clear()
    report = run_status(runner)
    assert "reboot" not in " ".join(runner.calls)
    assert [(u.unit, u.active_state) for u in report.units] == [("myapp.service", "active")]
    assert len(runner.calls) == 2  # nothing usable cached: probe, then the ordinary show
