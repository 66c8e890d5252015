"""The systemd backend's decisions against fake nodes (a stateful fake systemd behind FakeRunner) and InMemoryKV."""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab import probe, unitfile
from coreos_lab.cli import app
from coreos_lab.cluster import Cluster
from coreos_lab.errors import EtcdError, SchedulingError, SSHError, UnitFileError
from coreos_lab.state import PREFIX, EtcdKV, RecordStore, UnitRecord
from coreos_lab.testing import FakeRunner, InMemoryKV
from coreos_lab.unitfile import UnitFile
from coreos_lab.units import systemd_backend as sb

HELLO = "[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n"


@dataclass
class FakeNode:
    """Just enough systemd for deploy: unit files from puts, start/stop/restart, show, remove."""

    name: str
    machine_id: str
    metadata: str = ""
    failing: set[str] = field(default_factory=set)
    down: bool = False
    active: dict[str, str] = field(default_factory=dict)
    runner: FakeRunner = field(init=False)
    on_start: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runner = FakeRunner(self.name, {".": self.answer})
        self.down = self.down  # FakeNode(down=True) starts down

    def __setattr__(self, key: str, value: object) -> None:
        super().__setattr__(key, value)
        if key == "down" and "runner" in self.__dict__:
            # A node that is down answers every command and every put with the error a real runner raises.
            gone = SSHError(f"{self.name}: cannot connect")
            self.runner.answers = {".": gone} if value else {".": self.answer}

    def installed(self, unit: str) -> bool:
        return f"/etc/systemd/system/{unitfile.file_name(unit)}" in self.runner.files

    def answer(self, line: str) -> tuple[int, str, str]:
        words = shlex.split(line)
        if words[:2] == ["sudo", "-n"]:
            line = words[-1]
        if "@@coreos-lab@@" in line:
            sep = "@@coreos-lab@@\n"
            return 0, f"{self.machine_id}\n{sep}{self.metadata}{sep}{self.name}\n{sep}10.0.0.{self.name[-1]}\n", ""
        if line.startswith("systemctl stop --") and line.endswith("; true"):  # an instance's stop script
            self.active.pop(shlex.split(line.split(";")[0])[-1], None)
            return 0, "", ""
        if ";" in line and "rm -rf" in line:  # SystemdClient.remove's script
            unit = shlex.split(line.split(";")[0])[-1]
            rm = next(shlex.split(part) for part in line.split(";") if part.strip().startswith("rm "))
            self.runner.files.pop(rm[3], None)  # rm -rf -- PATH PATH.d
            if "@*." in unit:  # a template: its instances stop with it
                prefix = unit.split("@", 1)[0] + "@"
                for name in [n for n in self.active if n.startswith(prefix)]:
                    del self.active[name]
            else:
                self.active.pop(unit, None)
            return 0, "", ""
        argv = shlex.split(line)
        if argv[:2] == ["systemctl", "show"]:
            names = argv[argv.index("--") + 1 :]
            blocks = []
            for n in names:
                load = "loaded" if self.installed(n) else "not-found"
                state = self.active.get(n, "inactive")
                sub = {"active": "running", "failed": "failed"}.get(state, "dead")
                blocks.append(f"Id={n}\nLoadState={load}\nActiveState={state}\nSubState={sub}\n")
            return 0, "\n".join(blocks), ""
        if argv[:2] == ["systemctl", "daemon-reload"]:
            return 0, "", ""
        if argv[0] == "systemctl" and argv[1] in ("start", "restart", "stop"):
            unit = argv[-1]
            if argv[1] == "stop":
                self.active.pop(unit, None)
                return 0, "", ""
            if not self.installed(unit):
                return 5, "", f"Failed to start {unit}: Unit {unit} not found."
            self.on_start.append(unit)
            self.active[unit] = "failed" if unit in self.failing else "active"
            return 0, "", ""
        return 127, "", f"fake node: no answer for {line!r}"


@pytest.fixture
def nodes() -> dict[str, FakeNode]:
    return {
        "core-01": FakeNode("core-01", "a" * 32, "role=web\n"),
        "core-02": FakeNode("core-02", "b" * 32, "role=db\n"),
        "core-03": FakeNode("core-03", "c" * 32, "role=web\n"),
    }


@pytest.fixture
def cluster(nodes: dict[str, FakeNode]) -> Iterator[Cluster]:
    c = Cluster({n: f.runner for n, f in nodes.items()})
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake systemd cannot die after starting; the settle check has its own tests (test_deploy_settle.py)."""
    monkeypatch.setattr(sb, "SETTLE_SECONDS", 0.0)


@pytest.fixture
def kv() -> InMemoryKV:
    return InMemoryKV()


@pytest.fixture
def store(kv: InMemoryKV) -> RecordStore:
    return RecordStore(kv)


def unit(name: str, text: str = HELLO) -> UnitFile:
    return UnitFile.parse(text, name=name)


def fleet(name: str, xfleet: str) -> UnitFile:
    return unit(name, "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\n" + xfleet)


def where(nodes: dict[str, FakeNode], name: str) -> list[str]:
    return sorted(n for n, f in nodes.items() if f.active.get(name) == "active")


# ---- probing -----------------------------------------------------------------------------------------------------
def test_probe_reads_machine_id_metadata_and_address(cluster: Cluster) -> None:
    facts = probe.probe_nodes(cluster)
    f = facts["core-01"]
    assert (f.reachable, f.machine_id, dict(f.metadata), f.ip) == (True, "a" * 32, {"role": "web"}, "10.0.0.1")
    assert f.machine == "core-01/10.0.0.1"


def test_probe_falls_back_to_lab_config_and_reports_down_nodes(nodes: dict[str, FakeNode], cluster: Cluster) -> None:
    from coreos_lab.config import NodeSpec

    nodes["core-02"].metadata = ""
    nodes["core-03"].down = True
    specs = {
        "core-02": NodeSpec(2, "core-02", "192.168.56.102", {"role": "cache"}),
        "core-03": NodeSpec(3, "core-03", "192.168.56.103"),
    }
    facts = probe.probe_nodes(cluster, specs)
    assert dict(facts["core-02"].metadata) == {"role": "cache"}  # no metadata file: the lab's
    assert facts["core-02"].ip == "192.168.56.102"  # the lab's address beats whatever `hostname -I` lists
    assert not facts["core-03"].reachable
    assert facts["core-03"].error is not None
    assert "cannot connect" in facts["core-03"].error
    assert facts["core-03"].ip == "192.168.56.103"


def test_parse_probe_skips_loopback_addresses() -> None:
    out = "m1\n@@coreos-lab@@\n@@coreos-lab@@\nh\n@@coreos-lab@@\n127.0.0.1 fe80::1 10.213.0.12 10.0.2.15\n"
    assert probe.parse_probe("n", out, ssh_host="127.0.0.1").ip == "10.213.0.12"
    assert probe.parse_probe("n", out, ssh_host="192.168.56.7").ip == "192.168.56.7"
    assert probe.parse_metadata("a=b\n\n#c=d\nbad\n k = v \n") == {"a": "b", "k": "v"}


# ---- deploy ------------------------------------------------------------------------------------------------------
def test_deploy_launches_on_exactly_one_node_and_records_first(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore, kv: InMemoryKV
) -> None:
    seen_record_at_start: list[bool] = []
    for f in nodes.values():
        f.on_start = _Recorder(lambda: seen_record_at_start.append(kv.get(PREFIX + "myapp.service") is not None))
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    assert out.status == "launched"
    assert out.ok
    assert [n.node for n in out.nodes] == where(nodes, "myapp.service")
    assert len(out.nodes) == 1
    assert seen_record_at_start == [True]  # desired state was in etcd before systemd was touched
    rec = store.get("myapp.service")
    assert rec is not None
    assert rec.targets == (out.nodes[0].node,)
    assert rec.desired_state == "launched"
    assert rec.hash == unit("myapp.service").hash


class _Recorder(list[str]):
    """A list whose append also calls a hook (lets a test look at etcd at the moment a unit starts)."""

    def __init__(self, hook: object) -> None:
        super().__init__()
        self.hook = hook

    def append(self, item: str) -> None:
        super().append(item)
        self.hook()  # type: ignore[operator]


def test_redeploy_of_identical_content_is_a_no_op(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    [first] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    calls = {n: len(f.runner.calls) for n, f in nodes.items()}
    rev = store.get("myapp.service").revision  # type: ignore[union-attr]
    [again] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    assert again.status == "unchanged"
    assert "identical" in again.detail
    assert [n.node for n in again.nodes] == [n.node for n in first.nodes]
    assert store.get("myapp.service").revision == rev  # type: ignore[union-attr]
    # only the probe and a look at the target ran on the nodes: no install, no start
    for n, f in nodes.items():
        later = f.runner.calls[calls[n] :]
        assert all("@@coreos-lab@@" in c or c.startswith("systemctl show") for c in later)
        assert not [c for c in later if c.startswith("put ") or "systemctl start" in c]


def test_changed_content_updates_in_place(cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore) -> None:
    [first] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    node = first.nodes[0].node
    [second] = sb.deploy(cluster, [unit("myapp.service", HELLO + "Restart=always\n")], store=store, timeout=2)
    assert second.status == "updated"
    assert [n.node for n in second.nodes] == [node]
    assert any("systemctl restart" in c for c in nodes[node].runner.calls)
    assert store.get("myapp.service").generation == 2  # type: ignore[union-attr]


def test_least_loaded_node_wins(cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore) -> None:
    outs = sb.deploy(cluster, [unit(f"u{i}.service") for i in range(6)], store=store, timeout=2)
    counts = [len([o for o in outs if o.nodes[0].node == n]) for n in nodes]
    assert counts == [2, 2, 2]


def test_conflicts_global_metadata_and_machine_id(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    sb.deploy(
        cluster,
        [
            fleet("pair-a.service", "Conflicts=pair-*.service\n"),
            fleet("pair-b.service", "Conflicts=pair-*.service\n"),
            fleet("everywhere.service", "Global=true\n"),
            fleet("web.service", "MachineMetadata=role=web\nGlobal=true\n"),
            fleet("pinned.service", f"MachineID={'b' * 32}\n"),
        ],
        store=store,
        timeout=2,
    )
    a, b = where(nodes, "pair-a.service"), where(nodes, "pair-b.service")
    assert len(a) == len(b) == 1
    assert a != b
    assert where(nodes, "everywhere.service") == ["core-01", "core-02", "core-03"]
    assert where(nodes, "web.service") == ["core-01", "core-03"]
    assert where(nodes, "pinned.service") == ["core-02"]


def test_replaces_takes_the_node_and_pushes_the_old_unit_away(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    [old] = sb.deploy(cluster, [unit("old.service")], store=store, timeout=2)
    home = old.nodes[0].node
    [new] = sb.deploy(cluster, [fleet("new.service", "Replaces=old.service\n")], store=store, timeout=2)
    assert new.ok
    assert [n.node for n in new.nodes] == [home]
    assert "replaced" in new.detail
    assert where(nodes, "new.service") == [home]
    moved = where(nodes, "old.service")
    assert len(moved) == 1
    assert moved != [home]
    assert store.get("old.service").targets == tuple(moved)  # type: ignore[union-attr]
    assert not sb.reconcile(cluster, store=store).changed


def test_unplaceable_unit_says_why_and_writes_nothing(cluster: Cluster, store: RecordStore) -> None:
    with pytest.raises(SchedulingError, match=r"core-02: MachineMetadata role=gpu \(node has role=db\)"):
        sb.deploy(cluster, [fleet("gpu.service", "MachineMetadata=role=gpu\n")], store=store, timeout=2)
    assert store.get("gpu.service") is None


def test_invalid_x_fleet_is_rejected_before_anything_happens(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    bad = fleet("bad.service", "Global=true\nMachineOf=x.service\n")
    with pytest.raises(UnitFileError, match="Global cannot be used with MachineOf"):
        sb.deploy(cluster, [unit("ok.service"), bad], store=store, timeout=2)
    assert store.list() == []
    assert all(f.runner.calls == [] for f in nodes.values())


def test_failed_unit_and_failing_node_are_reported_and_recorded(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    for f in nodes.values():
        f.failing.add("broken.service")
    [out] = sb.deploy(cluster, [unit("broken.service")], store=store, timeout=2)
    assert out.status == "failed"
    assert not out.ok
    assert out.nodes[0].active_state == "failed"
    assert "failed" in (out.nodes[0].error or "")
    # A node that breaks between probe and install: reported, the record still names it for reconcile.
    facts = probe.probe_nodes(cluster)  # core-02 still answers here ...
    nodes["core-02"].down = True  # ... and is gone by the time deploy installs
    [out2] = sb.deploy(cluster, [fleet("pin.service", "MachineID=core-02\n")], store=store, facts=facts, timeout=2)
    assert not out2.ok
    assert out2.nodes[0].node == "core-02"
    assert "cannot connect" in (out2.nodes[0].error or "")
    assert store.get("pin.service").targets == ("core-02",)  # type: ignore[union-attr]


def test_concurrent_deploys_of_one_unit_cannot_both_win(
    cluster: Cluster, nodes: dict[str, FakeNode], kv: InMemoryKV
) -> None:
    barrier = threading.Barrier(2, timeout=5)

    class SlowStore(RecordStore):
        def list(self) -> list[UnitRecord]:
            records = super().list()
            barrier.wait()  # both deploys have read "not deployed" before either writes
            return records

    facts = probe.probe_nodes(cluster)
    results: list[object] = []

    def go() -> None:
        try:
            results.extend(sb.deploy(cluster, [unit("myapp.service")], store=SlowStore(kv), facts=facts, timeout=2))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    statuses = sorted(getattr(r, "status", repr(r)) for r in results)
    assert statuses == ["launched", "unchanged"]
    assert len(where(nodes, "myapp.service")) == 1
    assert sum(f.on_start.count("myapp.service") for f in nodes.values()) == 1


def test_concurrent_deploys_of_different_content_the_loser_fails(cluster: Cluster, kv: InMemoryKV) -> None:
    barrier = threading.Barrier(2, timeout=5)

    class SlowStore(RecordStore):
        def list(self) -> list[UnitRecord]:
            records = super().list()
            barrier.wait()
            return records

    facts = probe.probe_nodes(cluster)
    results: list[object] = []

    def go(text: str) -> None:
        try:
            results.extend(sb.deploy(cluster, [unit("x.service", text)], store=SlowStore(kv), facts=facts, timeout=2))
        except EtcdError as exc:
            results.append(exc)

    threads = [threading.Thread(target=go, args=(HELLO + f"Environment=V={i}\n",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(isinstance(r, EtcdError) for r in results) == 1
    assert sum(getattr(r, "status", "") == "launched" for r in results) == 1
    assert "another client changed its record" in str(next(r for r in results if isinstance(r, EtcdError)))


# ---- template instances (fleet's hello@1.service) -------------------------------------------------------------------
def test_instances_share_their_template_file(cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore) -> None:
    spread = [fleet(f"hello@{i}.service", "Conflicts=hello@*.service\n") for i in (1, 2)]
    pinned = [fleet(f"web@{i}.service", "MachineID=core-01\n") for i in (1, 2)]
    outs = sb.deploy(cluster, [*spread, *pinned], store=store, timeout=2)
    assert all(o.ok for o in outs)
    h1, h2 = where(nodes, "hello@1.service"), where(nodes, "hello@2.service")
    assert len(h1) == len(h2) == 1
    assert h1 != h2
    assert "/etc/systemd/system/hello@.service" in nodes[h1[0]].runner.files
    assert where(nodes, "web@1.service") == where(nodes, "web@2.service") == ["core-01"]
    assert not sb.reconcile(cluster, store=store).changed  # a sibling's template does not look like a stray copy
    # undeploying one instance keeps the template while a sibling on that node still needs it
    sb.undeploy(cluster, ["web@1.service"], store=store)
    assert where(nodes, "web@1.service") == []
    assert where(nodes, "web@2.service") == ["core-01"]
    assert nodes["core-01"].installed("web@2.service")
    sb.undeploy(cluster, ["web@2.service", "hello@1.service"], store=store)
    assert "/etc/systemd/system/web@.service" not in nodes["core-01"].runner.files
    assert "/etc/systemd/system/hello@.service" not in nodes[h1[0]].runner.files
    assert where(nodes, "hello@2.service") == h2
    assert not sb.reconcile(cluster, store=store).changed


def test_a_bare_template_cannot_be_deployed(cluster: Cluster, store: RecordStore) -> None:
    with pytest.raises(UnitFileError, match=r"hello@\.service is a template: deploy instances of it instead"):
        sb.deploy(cluster, [unit("hello@.service")], store=store)
    with pytest.raises(UnitFileError, match="is a template"):
        unitfile.load_unit(HELLO, "hello@.service")


# ---- undeploy, start/stop ----------------------------------------------------------------------------------------
def test_undeploy_removes_everywhere_and_is_idempotent(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    sb.deploy(cluster, [fleet("g.service", "Global=true\n")], store=store, timeout=2)
    [out] = sb.undeploy(cluster, ["g.service"], store=store)
    assert out.ok
    assert out.had_record
    assert out.deleted
    assert store.get("g.service") is None
    assert not any(f.installed("g.service") for f in nodes.values())
    assert where(nodes, "g.service") == []
    [again] = sb.undeploy(cluster, ["g.service"], store=store)
    assert (again.ok, again.had_record, again.deleted) == (True, False, False)


def test_undeploy_with_a_target_down_keeps_an_inactive_record_that_reconcile_finishes(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    sb.deploy(cluster, [fleet("p.service", "MachineID=core-03\n")], store=store, timeout=2)
    nodes["core-03"].down = True
    [u] = sb.undeploy(cluster, ["p.service"], store=store)
    assert not u.ok
    assert not u.deleted
    assert store.get("p.service").desired_state == "inactive"  # type: ignore[union-attr]
    nodes["core-03"].down = False
    result = sb.reconcile(cluster, store=store, timeout=2)
    assert result.deleted_records == ("p.service",)
    assert not nodes["core-03"].installed("p.service")
    assert not sb.reconcile(cluster, store=store, timeout=2).changed


def test_stop_and_start_change_desired_state(cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore) -> None:
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    node = out.nodes[0].node
    stopped = sb.set_state(cluster, "myapp.service", "loaded", store=store)
    assert stopped.ok
    assert stopped.changed
    assert store.get("myapp.service").desired_state == "loaded"  # type: ignore[union-attr]
    assert where(nodes, "myapp.service") == []
    assert nodes[node].installed("myapp.service")
    assert not sb.reconcile(cluster, store=store).changed  # loaded and stopped is what was asked for
    started = sb.set_state(cluster, "myapp.service", "launched", store=store, timeout=2)
    assert started.ok
    assert where(nodes, "myapp.service") == [node]


# ---- reconcile ---------------------------------------------------------------------------------------------------
def test_reconcile_moves_units_off_a_dead_node_and_then_has_nothing_to_do(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    outs = sb.deploy(
        cluster,
        [
            fleet("pair-a.service", "Conflicts=pair-*.service\n"),
            fleet("pair-b.service", "Conflicts=pair-*.service\n"),
            unit("myapp.service"),
        ],
        store=store,
        timeout=2,
    )
    victim = outs[0].nodes[0].node
    nodes[victim].down = True
    nodes[victim].active.clear()
    result = sb.reconcile(cluster, store=store, timeout=2)
    assert result.ok
    assert result.changed
    kinds = {(a.action.kind, a.action.unit) for a in result.actions}
    assert ("unschedule", "pair-a.service") in kinds
    assert ("start", "pair-a.service") in kinds
    a, b = where(nodes, "pair-a.service"), where(nodes, "pair-b.service")
    assert a
    assert victim not in a
    assert a != b  # the conflict still holds after the move
    rec = store.get("pair-a.service")
    assert rec is not None
    assert rec.targets == tuple(a)
    second = sb.reconcile(cluster, store=store, timeout=2)
    assert not second.changed
    assert second.actions == ()


def test_reconcile_stops_a_stale_copy_and_dry_run_changes_nothing(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    home = out.nodes[0].node
    stray = next(n for n in nodes if n != home)
    nodes[stray].runner.put(HELLO.encode(), "/etc/systemd/system/myapp.service")
    nodes[stray].active["myapp.service"] = "active"
    dry = sb.reconcile(cluster, store=store, dry_run=True)
    assert dry.dry_run
    assert {(a.action.kind, a.action.node) for a in dry.actions} == {("stop", stray), ("unload", stray)}
    assert where(nodes, "myapp.service") == sorted([home, stray])
    real = sb.reconcile(cluster, store=store)
    assert real.ok
    assert where(nodes, "myapp.service") == [home]
    assert not nodes[stray].installed("myapp.service")
    assert not sb.reconcile(cluster, store=store).changed


def test_list_units_and_unit_files_join_desired_and_live_state(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    home = out.nodes[0].node
    rows = sb.list_units(cluster, store=store)
    assert [(r.unit, r.machine, r.active_state, r.sub_state) for r in rows] == [
        ("myapp.service", f"{home}/10.0.0.{home[-1]}", "active", "running")
    ]
    files = sb.list_unit_files(cluster, store=store)
    assert [(f.unit, f.desired_state, f.state, f.targets) for f in files] == [
        ("myapp.service", "launched", "launched", (home,))
    ]
    nodes[home].active["myapp.service"] = "failed"
    [row] = sb.list_units(cluster, store=store)
    assert not row.in_desired_state
    assert sb.list_unit_files(cluster, store=store)[0].state == "loaded"


def test_etcd_kv_maps_the_store_protocol_onto_the_client() -> None:
    class FakeEtcd:
        def __init__(self) -> None:
            self.data: dict[str, tuple[bytes, int]] = {}
            self.rev = 10

        def get(self, key: str) -> object:
            from coreos_lab.etcd import KV

            if key not in self.data:
                return None
            v, r = self.data[key]
            return KV(key.encode(), v, r, r, 1)

        def txn_put_if(self, key: str, value: bytes, *, expect_mod_revision: int | None) -> bool:
            cur = self.data.get(key)
            if (cur[1] if cur else None) != (expect_mod_revision or None):
                return False
            self.rev += 1
            self.data[key] = (value, self.rev)
            return True

    fake = FakeEtcd()
    kv = EtcdKV(fake)  # type: ignore[arg-type]
    assert kv.put_if("/k", b"v1", 0) == 11
    assert kv.put_if("/k", b"v2", 0) is None  # must not exist yet
    assert kv.put_if("/k", b"v2", 11) == 12
    assert kv.put_if("/k", b"v3", 11) is None
    assert kv.get("/k") == (b"v2", 12)


# ---- CLI input errors (no nodes needed) ----------------------------------------------------------------------------
def test_cli_deploy_rejects_a_bad_unit_file_in_one_line(tmp_path: Path) -> None:
    d = tmp_path
    bad = d / "bad.service"
    bad.write_text("[Sevice]\nExecStart=/bin/true\n")
    result = CliRunner().invoke(app, ["deploy", str(bad), "--inventory", str(d / "none")])
    assert result.exit_code == 2
    assert result.output.startswith("error: bad.service:1: unknown section [Sevice]")
    assert len(result.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(app, ["deploy", str(d / "nope.service"), "--inventory", str(d / "none")])
    assert missing.exit_code == 2
    assert "no such file" in missing.output
    badname = d / "x;id.service"
    badname.write_text(HELLO)
    named = CliRunner().invoke(app, ["deploy", str(badname), "--inventory", str(d / "none")])
    assert named.exit_code == 2
    assert "invalid unit name" in named.output


# ---- the fleet backend (against the fleet v1.0.0 API double) -----------------------------------------------------
def test_probe_detects_fleetd() -> None:
    out = "m\n@@coreos-lab@@\n@@coreos-lab@@\nh\n@@coreos-lab@@\n10.1.1.1\n@@coreos-lab@@\nfleet\n"
    assert probe.parse_probe("n", out).runs_fleet
    assert not probe.parse_probe("n", out.replace("fleet\n", "")).runs_fleet


def test_cli_drives_fleet_like_fleetctl(tmp_path: Path) -> None:
    from tests.fleet_double import running_double

    unit_path = tmp_path / "hello.service"
    unit_path.write_text(HELLO)
    runner = CliRunner()
    with running_double() as fd:

        def run(*args: str) -> Any:
            return runner.invoke(app, [*args, "--backend", "fleet", "--fleet-endpoint", fd.url])

        first = run("deploy", str(unit_path), "--timeout", "5")
        assert first.exit_code == 0, first.output
        assert first.output == "Unit hello.service inactive\nUnit hello.service launched on 3d1219c7.../127.0.0.1\n"
        assert fd.state.units["hello.service"]["desiredState"] == "launched"
        again = run("deploy", str(unit_path))
        assert again.exit_code == 0
        assert "unchanged" in again.output
        unit_path.write_text(HELLO + "Restart=always\n")
        clash = run("deploy", str(unit_path))
        assert clash.exit_code == 1
        assert "already exists in fleet with different content" in clash.output
        stop = run("unit", "stop", "hello.service")
        assert stop.exit_code == 0, stop.output
        assert fd.state.units["hello.service"]["desiredState"] == "loaded"
        units = run("list-units")
        assert units.exit_code == 0
        rows = [line.split() for line in units.output.splitlines()]
        assert rows[0] == ["UNIT", "MACHINE", "ACTIVE", "SUB"]
        assert ["hello.service", "3d1219c7.../127.0.0.1", "inactive", "dead"] in rows
        files = run("list-unit-files", "--no-legend")
        assert any(
            line.split()[:3] == ["hello.service", unit("hello.service").hash[:7], "loaded"]
            for line in files.output.splitlines()
        )
        machines = run("list-machines", "--json")
        assert json.loads(machines.output) == [
            {"id": fd.state.machines[0]["id"], "ip": "127.0.0.1", "metadata": {"role": "probe"}}
        ]
        gone = run("undeploy", "hello.service")
        assert gone.output == "Destroyed hello.service\n"
        assert "hello.service" not in fd.state.units
        again = run("undeploy", "hello.service")  # fleetctl's words (fleetctl.txt: destroy nosuch.service)
        assert (again.exit_code, again.stdout, again.stderr) == (0, "", "Units not found in registry\n")
    bad = runner.invoke(app, ["list-units", "--backend", "fleet", "--fleet-endpoint", "ftp://x"])
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --fleet-endpoint must be http://HOST:PORT or unix:///PATH")


def test_fleet_deploy_asks_for_the_unit_once_and_the_machines_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14's tidy-up: one GET of the unit before the PUT, /machines once per wait (not on every poll)."""
    from collections import Counter

    from coreos_lab.fleet import FleetClient
    from coreos_lab.units import fleet_backend
    from tests.fleet_double import running_double

    calls: Counter[str] = Counter()
    for name in ("machines", "unit", "states"):
        original = getattr(FleetClient, name)

        def counted(self: FleetClient, *a: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(FleetClient, name, counted)
    with running_double() as fd:
        [out] = fleet_backend.deploy(FleetClient(fd.url), [unit("tidy.service", HELLO)], timeout=5)
    assert out.status == "launched", out
    assert [n.ip for n in out.nodes] == ["127.0.0.1"]
    assert calls["unit"] == 1
    assert calls["machines"] == 1


def test_fleet_wait_reads_the_machines_again_only_for_a_machine_it_has_not_seen() -> None:
    from types import SimpleNamespace

    from coreos_lab.units import fleet_backend

    def state(machine: str, active: str) -> Any:
        return SimpleNamespace(name="w.service", machine_id=machine, active_state=active, sub_state="x")

    class Fleet:
        """Three polls: activating on m1, then also on m2 (a machine that joined), then active on both."""

        def __init__(self) -> None:
            self.polls = [[state("m1", "activating")], [state("m1", "activating"), state("m2", "activating")]]
            self.polls.append([state("m1", "active"), state("m2", "active")])
            self.machine_calls = 0

        def states(self, unit_name: str) -> list[Any]:
            return self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]

        def machines(self) -> list[Any]:
            self.machine_calls += 1
            return [SimpleNamespace(id="m1", primary_ip="10.0.0.1"), SimpleNamespace(id="m2", primary_ip="10.0.0.2")]

    fleet = Fleet()
    out = fleet_backend.wait(fleet, "w.service", "launched", timeout=5, interval=0.01)  # type: ignore[arg-type]
    assert [(o.node, o.ip, o.ok) for o in out] == [("m1", "10.0.0.1", True), ("m2", "10.0.0.2", True)]
    assert fleet.machine_calls == 1  # three polls, one /machines: m2 was already in the first answer
