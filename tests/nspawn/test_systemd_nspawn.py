"""SystemdClient against a real systemd (PID 1 in nspawn containers), through nsenter and over real SSH."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from coreos_lab.errors import CommandFailed, UnitFileError
from coreos_lab.etcd import EtcdClient, cluster_health
from coreos_lab.runner import Runner
from coreos_lab.systemd import SystemdClient
from tests.nspawn.rig import Node, NspawnRig

pytestmark = pytest.mark.nspawn

HELLO = """\
[Unit]
Description=coreos-lab test unit {tag}

[Service]
ExecStart=/bin/sh -c 'echo "hello from $$GREETING"; exec sleep 600'
"""
DROP_IN = "[Service]\nEnvironment=GREETING={tag}\n"


@pytest.fixture(params=["nsenter", "ssh"])
def runner(request: pytest.FixtureRequest, nspawn_rig: NspawnRig) -> Iterator[Runner]:
    """The same tests through both ways in: nsenter (as user core) and coreos-lab's SSHRunner."""
    node = nspawn_rig.nodes[0]
    if request.param == "nsenter":
        yield node.runner()
        return
    from coreos_lab.ssh import SSHRunner

    with SSHRunner(nspawn_rig.ssh_target(node)) as ssh:
        yield ssh


def _unit_files(runner: Runner) -> set[str]:
    return set(runner.run(["ls", "-1", "/etc/systemd/system"]).check().stdout.split())


def test_install_start_inspect_stop_remove(runner: Runner) -> None:
    client = SystemdClient(runner)
    tag = f"t{time.monotonic_ns()}"
    name = f"lab-hello-{tag}.service"
    client.install(name, HELLO.format(tag=tag), {"10-greeting.conf": DROP_IN.format(tag=tag)})
    try:
        state = client.show(name)
        assert state.load_state == "loaded"
        assert state.active_state == "inactive"
        assert state.fragment_path == f"/etc/systemd/system/{name}"
        assert state.description == f"coreos-lab test unit {tag}"

        client.start(name)
        state = client.wait_active(name, timeout=15)
        assert state.is_active
        assert state.sub_state == "running"
        assert state.main_pid > 0
        assert state.active_enter_timestamp is not None
        assert abs(state.active_enter_timestamp.timestamp() - time.time()) < 120
        assert client.is_active(name)

        deadline = time.monotonic() + 10
        journal = client.journal(name, lines=20)
        while f"hello from {tag}" not in journal and time.monotonic() < deadline:
            time.sleep(0.2)
            journal = client.journal(name, lines=20)
        assert f"hello from {tag}" in journal  # the drop-in's Environment= reached the process
        text, cursor = client.journal_after(name, lines=1)
        assert text.strip()
        assert cursor
        assert client.journal_after(name, cursor=cursor)[0] == ""  # nothing new since

        rows = client.list_units(f"lab-hello-{tag}*")
        assert [(r.unit, r.active, r.sub) for r in rows] == [(name, "active", "running")]

        both = client.show_many([name, "ssh.service"])
        assert [s.active_state for s in both] == ["active", "active"]

        client.stop(name)
        assert client.show(name).active_state == "inactive"
    finally:
        client.remove(name)
    gone = client.show(name)
    assert gone.load_state == "not-found"
    assert not gone.exists
    assert name not in _unit_files(runner)
    assert f"{name}.d" not in _unit_files(runner)
    client.remove(name)  # idempotent


def test_failing_unit_shows_failed(runner: Runner) -> None:
    client = SystemdClient(runner)
    name = f"lab-fail-{time.monotonic_ns()}.service"
    client.install(name, "[Service]\nExecStart=/bin/sh -c 'echo about to fail; exit 3'\n")
    try:
        client.start(name)  # Type=simple: the start job succeeds, the process then fails
        state = client.wait_active(name, timeout=15)
        assert state.is_failed
        assert state.sub_state == "failed"
        assert state.exec_main_status == 3
        assert [r.active for r in client.list_units(name)] == ["failed"]
        oneshot = name.replace("fail", "fail1")
        client.install(oneshot, "[Service]\nType=oneshot\nExecStart=/bin/false\n")
        try:
            with pytest.raises(CommandFailed, match=r"exited 1"):
                client.start(oneshot)  # a oneshot's start job itself fails
            assert client.show(oneshot).is_failed
        finally:
            client.remove(oneshot)
    finally:
        client.remove(name)
    assert client.show(name).load_state == "not-found"  # reset-failed forgot it


def test_template_instances(runner: Runner) -> None:
    client = SystemdClient(runner)
    base = f"lab-tpl-{time.monotonic_ns()}"
    template = f"{base}@.service"
    client.install(template, "[Service]\nExecStart=/bin/sh -c 'echo instance %i; exec sleep 600'\n")
    try:
        client.start(f"{base}@one.service")
        client.start(f"{base}@two.service")
        states = client.show_many([f"{base}@one.service", f"{base}@two.service"])
        assert all(s.is_active for s in states)
    finally:
        client.remove(template)  # stops the instances too
    rows = client.list_units(f"{base}@*")
    assert all(r.active != "active" for r in rows)


@pytest.mark.parametrize(
    "hostile",
    ["x; touch /tmp/pwned #.service", "$(touch /tmp/pwned).service", "../../../tmp/pwned.service", "a b.service"],
)
def test_hostile_names_rejected_and_nothing_written(runner: Runner, hostile: str) -> None:
    client = SystemdClient(runner)
    before = _unit_files(runner)
    with pytest.raises(UnitFileError):
        client.install(hostile, "[Service]\nExecStart=/bin/true\n")
    with pytest.raises(UnitFileError):
        client.start(hostile)
    assert _unit_files(runner) == before
    assert runner.run(["test", "-e", "/tmp/pwned"]).exit_code == 1


def test_hostile_values_stay_data(runner: Runner) -> None:
    """Unit content and drop-ins with shell metacharacters land byte for byte (put, never a shell string)."""
    client = SystemdClient(runner)
    name = f"lab-data-{time.monotonic_ns()}.service"
    content = "[Unit]\nDescription=$(touch /tmp/pwned2) `id` ; ' \" \\\n[Service]\nExecStart=/bin/true\n"
    client.install(name, content)
    try:
        stored = runner.run(["cat", f"/etc/systemd/system/{name}"]).check().stdout
        assert stored == content
        assert runner.run(["test", "-e", "/tmp/pwned2"]).exit_code == 1
    finally:
        client.remove(name)


def test_without_sudo_a_privileged_command_fails(nspawn_nodes: list[Node]) -> None:
    """The runner really is user core: proves the client's sudo=True is what makes start work."""
    result = nspawn_nodes[0].runner().run(["systemctl", "start", "ssh.service"])
    assert result.exit_code != 0
    assert nspawn_nodes[0].runner().run(["id", "-un"]).stdout.strip() == "core"


def test_etcd_cluster_on_nodes_survives_one_member_stop(nspawn_rig: NspawnRig) -> None:
    """Real systemd + real etcd: stop etcd.service on one node, quorum holds; start it, healthy again."""
    nodes = nspawn_rig.nodes
    clients = {n.name: EtcdClient(n.etcd_url, timeout=3) for n in nodes}
    health = cluster_health(clients)
    assert health.healthy, health
    assert health.member_count == 3
    assert sorted(m.name for m in clients[nodes[0].name].member_list()) == [n.name for n in nodes]

    victim = nodes[2]
    systemd = SystemdClient(victim.runner())
    assert systemd.show("etcd.service").is_active
    systemd.stop("etcd.service")
    try:
        assert systemd.show("etcd.service").active_state == "inactive"
        deadline = time.monotonic() + 15
        health = cluster_health(clients)
        while not (health.has_quorum and health.leader) and time.monotonic() < deadline:
            time.sleep(0.3)
            health = cluster_health(clients)
        assert health.has_quorum
        assert not health.healthy
        assert [m.name for m in health.members if not m.ok] == [victim.name]
        assert clients[nodes[0].name].put("/nspawn/k", b"\xffv") > 0
    finally:
        systemd.start("etcd.service")
    state = systemd.wait_active("etcd.service", timeout=30)
    assert state.is_active
    deadline = time.monotonic() + 20
    health = cluster_health(clients)
    while not health.healthy and time.monotonic() < deadline:
        time.sleep(0.3)
        health = cluster_health(clients)
    assert health.healthy
    kv = clients[victim.name].get("/nspawn/k")
    assert kv is not None
    assert kv.value == b"\xffv"


def test_nodes_have_no_python_as_on_flatcar(nspawn_nodes: list[Node]) -> None:
    """The deploy and status suites run here: a node command of ours that needs Python must fail here too."""
    result = nspawn_nodes[0].runner().run(["sh", "-c", "command -v python3 python3.11 python || echo none"])
    assert result.stdout.strip() == "none", result.stdout
