"""Deploy, schedule, reconcile and status end to end: the real CLI against 3 real systemd nodes with one etcd.

The module boots its own rig (:class:`tests.nspawn.deploy_rig.DeployRig`, a few seconds from the cached
rootfs) because its last tests break things on purpose: etcd members are stopped and one node's container
is powered off. Tests run in file order and share that rig; the destructive ones come last.

What the nodes run is checked independently of coreos-lab, through nsenter (``systemctl is-active`` inside
each container), never only through the code under test.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.nspawn.deploy_rig import CLI, DeployRig, cli
from tests.nspawn.rig import Node

pytestmark = pytest.mark.nspawn

HELLO = (
    "[Unit]\nDescription=Hello World\n\n"
    "[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n"
)
SLEEPER = "[Service]\nExecStart=/bin/sleep infinity\n"


def write_unit(d: Path, name: str, text: str) -> str:
    path = d / name
    path.write_text(text)
    return str(path)


def fleet_unit(xfleet: str) -> str:
    return SLEEPER + "\n[X-Fleet]\n" + xfleet


def active_on(rig: DeployRig, unit: str) -> list[str]:
    """Nodes whose systemd says the unit is active (asked through nsenter, not through coreos-lab)."""
    out = []
    for node in rig.nodes:
        if node.nspawn.poll() is not None:
            continue
        if node.root(f"systemctl is-active {unit}").stdout.strip() == "active":
            out.append(node.name)
    return out


def installed_on(rig: DeployRig, unit: str) -> list[str]:
    return [
        n.name
        for n in rig.nodes
        if n.nspawn.poll() is None and n.root(f"test -e /etc/systemd/system/{unit}").returncode == 0
    ]


def launched(stdout: str, unit: str) -> list[str]:
    """Node names from fleetctl-style ``Unit X launched on core-02 (10.213.0.12)`` lines."""
    pattern = re.compile(rf"^Unit {re.escape(unit)} launched on (core-\d\d) \(10\.213\.0\.\d+\)$")
    return [m.group(1) for m in map(pattern.match, stdout.splitlines()) if m]


def test_deploy_hello_world_runs_on_exactly_one_node(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    started = time.monotonic()
    result = cli(inventory, "deploy", write_unit(units_dir, "myapp.service", HELLO))
    deploy_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    [node] = launched(result.stdout, "myapp.service")
    assert active_on(rig, "myapp.service") == [node]
    ip = {n.name: n.address for n in rig.nodes}[node]
    assert result.stdout.strip() == f"Unit myapp.service launched on {node} ({ip})"

    units = cli(inventory, "list-units")
    assert units.returncode == 0, units.stderr
    assert [line.split() for line in units.stdout.splitlines()] == [
        ["UNIT", "MACHINE", "ACTIVE", "SUB"],
        ["myapp.service", f"{node}/{ip}", "active", "running"],
    ]
    files = json.loads(cli(inventory, "list-unit-files", "--json").stdout)
    assert [(f["unit"], f["dstate"], f["state"], f["targets"]) for f in files] == [
        ("myapp.service", "launched", "launched", [node])
    ]

    # Hello World reaches the journal of the node it runs on (bounded wait: the loop prints every second).
    deadline = time.monotonic() + 15
    journal = cli(inventory, "journal", "myapp.service", "-n", "5")
    while "Hello World" not in journal.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        journal = cli(inventory, "journal", "myapp.service", "-n", "5")
    assert journal.returncode == 0, journal.stderr
    lines = journal.stdout.splitlines()
    assert lines
    assert all(f" {node} " in line for line in lines)  # short-iso lines carry the host name
    assert any(line.endswith("]: Hello World") for line in lines)

    again = cli(inventory, "deploy", str(units_dir / "myapp.service"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Unit myapp.service unchanged: identical content is already deployed")
    assert active_on(rig, "myapp.service") == [node]
    cat = cli(inventory, "unit", "cat", "myapp.service")
    assert cat.stdout == HELLO
    print(f"\ndeploy myapp.service: {deploy_seconds:.2f}s (CLI process, 3 SSH logins, etcd CAS, start, wait)")


def test_journal_follow_shows_new_lines(inventory: Path) -> None:
    argv = [*CLI, "journal", "myapp.service", "-n", "0", "-f", "--interval", "0.3"]
    follower = subprocess.Popen(
        [*argv, "--inventory", str(inventory), "--no-persist"], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3.5)  # the unit prints every second
    finally:
        follower.send_signal(signal.SIGINT)
        try:
            out, _ = follower.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            follower.kill()
            out, _ = follower.communicate(timeout=5)
    assert out.count("Hello World") >= 1


def test_concurrent_deploys_of_one_unit_have_one_winner(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    path = write_unit(units_dir, "race.service", SLEEPER)
    argv = [*CLI, "deploy", path, "--inventory", str(inventory), "--no-persist", "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=90) for p in procs]
    statuses = sorted(json.loads(out)[0]["status"] for out, _ in outs)
    assert statuses == ["launched", "unchanged"], [err for _, err in outs]
    assert len(active_on(rig, "race.service")) == 1


def test_etcd_compare_and_swap_has_exactly_one_winner(rig: DeployRig) -> None:
    """The store's CAS on the real etcd cluster: writers racing through different members, forced to overlap."""
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.state import EtcdKV, RecordStore, UnitRecord
    from coreos_lab.unitfile import UnitFile

    stores = [RecordStore(EtcdKV(EtcdClient(n.etcd_url))) for n in rig.nodes]
    records = [
        UnitRecord.new(UnitFile.parse(SLEEPER + f"Environment=N={i}\n", name="cas.service"), "launched", (n.name,))
        for i, n in enumerate(rig.nodes)
    ]
    barrier = threading.Barrier(len(stores), timeout=10)
    won: list[UnitRecord | None] = [None] * len(stores)

    def write(i: int) -> None:
        barrier.wait()
        won[i] = stores[i].put(records[i], expected_revision=0)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    winners = [w for w in won if w is not None]
    assert len(winners) == 1
    stored = stores[0].get("cas.service")
    assert stored is not None
    assert stored.hash == winners[0].hash
    assert stored.revision == winners[0].revision  # the revision put_if reported is the key's mod_revision
    assert stores[1].put(records[1], expected_revision=stored.revision - 1) is None  # stale revision: refused
    assert not stores[2].delete("cas.service", expected_revision=stored.revision - 1)
    assert stores[2].delete("cas.service", expected_revision=stored.revision)
    assert stores[0].get("cas.service") is None


def test_conflicts_pair_lands_on_different_nodes(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    paths = [write_unit(units_dir, f"pair-{x}.service", fleet_unit("Conflicts=pair-*.service\n")) for x in "ab"]
    result = cli(inventory, "deploy", *paths)
    assert result.returncode == 0, result.stderr
    a, b = active_on(rig, "pair-a.service"), active_on(rig, "pair-b.service")
    assert len(a) == 1
    assert len(b) == 1
    assert a != b
    assert launched(result.stdout, "pair-a.service") == a


def test_template_instances_spread_by_conflicts(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    text = fleet_unit("Conflicts=hello@*.service\n").replace("/bin/sleep infinity", "/bin/sh -c 'echo %i; sleep 1d'")
    paths = [write_unit(units_dir, f"hello@{i}.service", text) for i in (1, 2, 3)]
    result = cli(inventory, "deploy", *paths)
    assert result.returncode == 0, result.stderr
    homes = [active_on(rig, f"hello@{i}.service") for i in (1, 2, 3)]
    assert sorted(h[0] for h in homes) == ["core-01", "core-02", "core-03"]  # one per node, as Conflicts asks
    assert installed_on(rig, "hello@.service") == ["core-01", "core-02", "core-03"]  # instances run from the template
    assert all(len(h) == 1 for h in homes)
    fourth = cli(inventory, "deploy", write_unit(units_dir, "hello@4.service", text))
    assert fourth.returncode == 1
    assert "Conflicts=hello@*.service (hello@" in fourth.stderr
    template = cli(inventory, "deploy", write_unit(units_dir, "hello@.service", text))
    assert template.returncode == 2
    assert template.stderr.startswith("error: hello@.service is a template")
    gone = cli(inventory, "undeploy", "hello@3.service")
    assert gone.returncode == 0, gone.stderr
    assert active_on(rig, "hello@3.service") == []
    assert homes[2][0] not in installed_on(rig, "hello@.service")
    assert [active_on(rig, f"hello@{i}.service") for i in (1, 2)] == homes[:2]


def test_global_unit_runs_on_every_node(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    result = cli(inventory, "deploy", write_unit(units_dir, "everywhere.service", fleet_unit("Global=true\n")))
    assert result.returncode == 0, result.stderr
    assert sorted(launched(result.stdout, "everywhere.service")) == ["core-01", "core-02", "core-03"]
    assert active_on(rig, "everywhere.service") == ["core-01", "core-02", "core-03"]
    files = cli(inventory, "list-unit-files")
    row = next(line.split() for line in files.stdout.splitlines() if line.startswith("everywhere.service"))
    assert row[2:] == ["launched", "launched", "global"]
    journal = cli(inventory, "journal", "everywhere.service", "--node", "core-02", "-n", "5")
    assert journal.returncode == 0, journal.stderr
    assert journal.stdout
    assert all(" core-02 " in line for line in journal.stdout.splitlines())


def test_machine_metadata_role_web_only_on_web_nodes(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    roles = {"core-01": "web", "core-02": "db", "core-03": "web"}
    for node in rig.nodes:
        assert node.root(f"printf 'role={roles[node.name]}\\n' > /etc/coreos-lab/metadata").returncode == 0
    machines = json.loads(cli(inventory, "list-machines", "--json").stdout)
    assert {m["name"]: m["metadata"] for m in machines} == {n: {"role": r} for n, r in roles.items()}
    assert all(re.fullmatch(r"[0-9a-f]{32}", m["machine_id"]) for m in machines)
    table = cli(inventory, "list-machines").stdout.splitlines()
    assert table[0].split() == ["MACHINE", "IP", "METADATA"]
    assert table[2].split() == ["core-02", "10.213.0.12", "role=db"]

    web_global = write_unit(units_dir, "web-all.service", fleet_unit("Global=true\nMachineMetadata=role=web\n"))
    web_one = write_unit(units_dir, "web-one.service", fleet_unit("MachineMetadata=role=web\n"))
    result = cli(inventory, "deploy", web_global, web_one)
    assert result.returncode == 0, result.stderr
    assert active_on(rig, "web-all.service") == ["core-01", "core-03"]
    assert active_on(rig, "web-one.service")[0] in ("core-01", "core-03")
    assert len(active_on(rig, "web-one.service")) == 1

    nowhere = cli(inventory, "deploy", write_unit(units_dir, "gpu.service", fleet_unit("MachineMetadata=role=gpu\n")))
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("error: cannot place gpu.service: no eligible node (core-01: MachineMetadata")
    assert installed_on(rig, "gpu.service") == []

    # MachineID is the node's /etc/machine-id
    mid = next(m["machine_id"] for m in machines if m["name"] == "core-02")
    pinned = cli(inventory, "deploy", write_unit(units_dir, "pinned.service", fleet_unit(f"MachineID={mid}\n")))
    assert pinned.returncode == 0, pinned.stderr
    assert active_on(rig, "pinned.service") == ["core-02"]


def test_unit_stop_start_status_and_undeploy(rig: DeployRig, inventory: Path) -> None:
    [node] = active_on(rig, "pinned.service")
    stop = cli(inventory, "unit", "stop", "pinned.service")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.startswith(f"Unit pinned.service loaded on {node} (")
    assert active_on(rig, "pinned.service") == []
    assert installed_on(rig, "pinned.service") == [node]
    st = cli(inventory, "unit", "status", "pinned.service")
    assert st.returncode == 3  # systemctl status: not running
    assert "inactive (dead)" in st.stdout
    start = cli(inventory, "unit", "start", "pinned.service")
    assert start.returncode == 0, start.stderr
    assert active_on(rig, "pinned.service") == [node]
    assert cli(inventory, "unit", "status", "pinned.service").returncode == 0

    for _ in range(2):  # idempotent
        gone = cli(inventory, "undeploy", "pinned.service", "race.service")
        assert gone.returncode == 0, gone.stderr
    assert gone.stdout.splitlines() == [
        "Unit pinned.service was not deployed; nothing to destroy",
        "Unit race.service was not deployed; nothing to destroy",
    ]
    assert installed_on(rig, "pinned.service") == []
    assert installed_on(rig, "race.service") == []
    missing = cli(inventory, "unit", "cat", "pinned.service")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: unit pinned.service is not deployed"


def status(inventory: Path) -> tuple[int, dict[str, object]]:
    result = cli(inventory, "status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_status_ok_then_a_failed_unit_is_bit_4(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    started = time.monotonic()
    code, report = status(inventory)
    took = time.monotonic() - started
    assert code == 0, report["problems"]
    assert report["etcd"]["has_quorum"] is True  # type: ignore[index]
    assert sum(n["leader"] for n in report["nodes"]) == 1  # type: ignore[attr-defined, union-attr]
    broken = cli(inventory, "deploy", write_unit(units_dir, "broken.service", "[Service]\nExecStart=/bin/false\n"))
    assert broken.returncode == 1
    assert "error: Unit broken.service failed on core-0" in broken.stderr
    code, report = status(inventory)
    assert code == 4
    assert any("unit broken.service" in p for p in report["problems"])  # type: ignore[attr-defined]
    table = cli(inventory, "status")
    assert table.returncode == 4
    assert table.stdout.splitlines()[-1] == "cluster NOT OK (exit 4)"
    assert cli(inventory, "undeploy", "broken.service").returncode == 0
    assert status(inventory)[0] == 0
    print(f"\nstatus on a healthy 3-node cluster: {took:.2f}s (CLI process included)")


def test_status_computed_by_the_mux_matches_the_in_process_one(
    rig: DeployRig, inventory: Path, units_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With persistent connections the mux process computes `status`; same answer as `--no-persist`."""
    import os

    from coreos_lab.cluster import open_cluster
    from coreos_lab.mux import MuxClient, MuxRunner

    assert cli(inventory, "deploy", write_unit(units_dir, "muxed.service", SLEEPER)).returncode == 0
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "COREOS_LAB_NO_PERSIST"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["COREOS_LAB_MUX_IDLE"] = "3"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "3")
    monkeypatch.delenv("COREOS_LAB_NO_PERSIST", raising=False)
    try:
        persisted = subprocess.run(
            [*CLI, "status", "--json", "--inventory", str(inventory)],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
        assert persisted.returncode == 0, persisted.stderr
        cluster = open_cluster(inventory=inventory)
        try:
            first = cluster.runner(cluster.names[0])
            assert isinstance(first, MuxRunner)  # persistent connections: the mux holds them
            by_mux = first.client.request({"op": "status", "lab_dir": None, "specs": None}, timeout=120)["report"]
        finally:
            cluster.close()
        assert isinstance(by_mux, dict)  # the mux answered the status request itself
        code, in_process = status(inventory)  # --no-persist
        assert code == 0

        def essence(report: dict[str, object]) -> object:
            # "engine" is the CLI's (read from the engine's state dir, beside the report), not the report's
            return {k: v for k, v in report.items() if k not in ("duration", "engine")}

        assert json.loads(persisted.stdout)["engine"] is None  # no engine was ever started for this inventory
        assert essence(json.loads(persisted.stdout)) == essence(in_process) == essence(by_mux)
        units = {(u["unit"], u["node"], u["ok"]) for u in by_mux["units"]}
        assert ("muxed.service", units_on(units, "muxed.service"), True) in units
        # computing status must not keep the mux busy: it still exits by itself once idle (3 s here)
        client = MuxClient(inventory.read_text())
        pid = int(client.ping()["pid"])
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(f"/proc/{pid}"), "the mux did not idle out after serving status"
    finally:
        client = MuxClient(inventory.read_text())
        if client.socket_path.exists():
            pid = int(client.ping()["pid"])
            client.shutdown()
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
        assert cli(inventory, "undeploy", "muxed.service").returncode == 0


def units_on(units: set[tuple[str, str, bool]], unit: str) -> str:
    return next(node for name, node, _ in units if name == unit)


def _etcd_healthy(nodes: list[Node], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(requests.get(n.etcd_url + "/health", timeout=2).json().get("health") == "true" for n in nodes):
                return True
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    return False


def test_status_two_etcd_members_stopped_is_bit_2(rig: DeployRig, inventory: Path) -> None:
    one_down = rig.nodes[2]
    assert one_down.root("systemctl stop etcd").returncode == 0
    try:
        code, report = status(inventory)
        assert code == 0, report["problems"]  # one member of three down: still quorum, not a failure
        assert report["etcd"]["healthy_members"] == 2  # type: ignore[index]
        assert rig.nodes[1].root("systemctl stop etcd").returncode == 0
        code, report = status(inventory)
        assert code == 2, report["problems"]
        assert report["etcd"]["has_quorum"] is False  # type: ignore[index]
    finally:
        for node in rig.nodes[1:]:
            node.root("systemctl start etcd")
        assert _etcd_healthy(rig.nodes)
    assert status(inventory)[0] == 0


def test_node_down_then_reconcile_moves_its_units(rig: DeployRig, inventory: Path) -> None:
    [home] = active_on(rig, "myapp.service")
    victim = next(n for n in rig.nodes if n.name == home)
    survivors = sorted(n.name for n in rig.nodes if n is not victim)
    candidates = ("pair-a.service", "pair-b.service", "web-one.service", "hello@1.service", "hello@2.service")
    moving = [u for u in candidates if active_on(rig, u) == [home]]
    off_seconds = rig.power_off(victim)
    t0 = time.monotonic()

    code, report = status(inventory)
    assert code & 1
    assert not code & 2  # two of three etcd members still make quorum
    assert code & 4  # its units are not running any more
    down = {n["name"]: n["ssh"] for n in report["nodes"]}  # type: ignore[attr-defined, union-attr]
    assert down == {n.name: n.name != home for n in rig.nodes}

    print(f"\nstatus with {home} down: {time.monotonic() - t0:.2f}s")
    started = time.monotonic()
    fix = cli(inventory, "reconcile")
    reconcile_seconds = time.monotonic() - started
    assert fix.returncode == 0, fix.stderr
    assert f"unschedule myapp.service on {home} (node is not healthy)" in fix.stdout
    [new_home] = active_on(rig, "myapp.service")
    assert new_home in survivors
    for unit in moving:
        assert active_on(rig, unit)
        assert active_on(rig, unit)[0] in survivors
    a, b = active_on(rig, "pair-a.service"), active_on(rig, "pair-b.service")
    assert a != b  # still apart after the move
    assert active_on(rig, "everywhere.service") == survivors

    again = cli(inventory, "reconcile")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "Nothing to do: every unit is where and how it should be"
    units = cli(inventory, "list-units", "--json")
    rows = json.loads(units.stdout)
    assert all(r["node"] != home for r in rows)
    assert all(r["active"] == "active" for r in rows)
    code, _ = status(inventory)
    assert code == 1  # the node is still down; everything on it has moved
    moved = [*moving, "myapp.service"]
    print(f"\npower off {home}: {off_seconds:.2f}s; reconcile: {reconcile_seconds:.2f}s (moved {moved})")
