"""deploy's start-and-settle decision, the finishing of an interrupted deploy, and Ctrl-C handling, with fakes.

A scripted fake systemd answers ``systemctl show`` from a list of states (one per call, the last repeating),
so each test fixes what systemd says at each poll. The same behaviour on real systemd is proven in
tests/nspawn/test_deploy_faults.py.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab.cluster import Cluster
from coreos_lab.errors import CoreosLabError
from coreos_lab.state import RecordStore, UnitRecord
from coreos_lab.systemd import UnitState, parse_show
from coreos_lab.testing import FakeRunner, InMemoryKV
from coreos_lab.unitfile import UnitFile
from coreos_lab.units import launch as nodeside
from coreos_lab.units import results
from coreos_lab.units import systemd_backend as sb

UNIT = "app.service"
TEXT = "[Service]\nExecStart=/bin/sleep infinity\n"


def live(active: str, sub: str, result: str, pid: int, restarts: int, status: int, inv: str | None) -> UnitState:
    return UnitState(
        UNIT,
        load_state="loaded",
        active_state=active,
        sub_state=sub,
        result=result,
        main_pid=pid,
        n_restarts=restarts,
        exec_main_status=status,
        invocation_id=inv,
    )


def one(text: str) -> UnitState:
    """One unit's ``systemctl show`` answer, parsed the way deploy reads it."""
    return parse_show(text, [UNIT])[0]


def state(active: str, sub: str = "", inv: str | None = "i1", pid: int = 0, restarts: int = 0, **kw: Any) -> str:
    """One ``systemctl show -p ...`` answer."""
    lines = [
        "LoadState=loaded",
        f"ActiveState={active}",
        f"SubState={sub or {'active': 'running', 'failed': 'failed'}.get(active, 'dead')}",
        f"Result={kw.get('result', 'success')}",
        f"MainPID={pid}",
        f"NRestarts={restarts}",
        f"ExecMainStatus={kw.get('status', 0)}",
    ]
    if inv is not None:
        lines.append(f"InvocationID={inv}")
    return "\n".join(lines) + "\n"


@dataclass
class ScriptedNode:
    """A node whose systemd answers ``show`` from ``states`` in order; records starts; has a journal."""

    name: str
    states: list[str]
    journal: str = "about to fail\napp.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED\n"
    starts: list[str] = field(default_factory=list)
    put_hook: Any = None
    runner: FakeRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = FakeRunner(self.name, {".": self.answer})
        original_put = self.runner.put

        def put(data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
            if self.put_hook is not None:
                self.put_hook()
            original_put(data, path, mode=mode, sudo=sudo)

        self.runner.put = put  # type: ignore[method-assign]

    def answer(self, line: str) -> tuple[int, str, str]:
        words = shlex.split(line)
        if words[:2] == ["sudo", "-n"]:
            words = shlex.split(words[-1])
        if "@@coreos-lab@@" in line:
            sep = "@@coreos-lab@@\n"
            return 0, f"{'a' * 32}\n{sep}{sep}{self.name}\n{sep}10.0.0.{self.name[-1]}\n", ""
        if words[:2] == ["systemctl", "show"]:
            return 0, self.states.pop(0) if len(self.states) > 1 else self.states[0], ""
        if words[:1] == ["journalctl"]:
            return 0, self.journal, ""
        if words[:2] in (["systemctl", "start"], ["systemctl", "restart"]):
            self.starts.append(" ".join(words[1:]))
            return 0, "", ""
        if words[:2] == ["systemctl", "daemon-reload"]:
            return 0, "", ""
        return 127, "", f"no answer for {line!r}"


def launch(node: ScriptedNode, *, restart: bool = False, settle: float = 0.01, timeout: float = 2.0) -> Any:
    record = UnitRecord.new(UnitFile.parse(TEXT, name=UNIT), "launched", (node.name,))
    return nodeside.launch_on(node.runner, record, restart=restart, timeout=timeout, settle=settle)


# ---- the pure decision -----------------------------------------------------------------------------------------
UP = live("active", "running", "success", 100, 0, 0, "i1")


@pytest.mark.parametrize(
    ("later", "why"),
    [
        (UP, None),
        (
            live("failed", "failed", "exit-code", 0, 0, 3, "i1"),
            "app.service did not stay active: failed/failed (result exit-code, status 3)",
        ),
        (
            live("inactive", "dead", "success", 0, 0, 0, "i1"),
            "app.service did not stay active: inactive/dead",
        ),
        (
            live("activating", "auto-restart", "exit-code", 0, 1, 3, "i2"),
            "app.service did not stay active: activating/auto-restart (result exit-code, status 3, 1 restart)",
        ),
        (
            live("active", "running", "success", 140, 2, 0, "i3"),
            "app.service keeps restarting: active/running (2 restarts)",
        ),
        (
            live("active", "running", "success", 140, 0, 0, "i2"),
            "app.service restarted right after starting: active/running",
        ),
        (
            live("active", "running", "success", 140, 0, 0, None),
            "app.service restarted right after starting (main PID 100 -> 140)",
        ),
    ],
)
def test_settle_verdict(later: UnitState, why: str | None) -> None:
    assert nodeside.settle_verdict(UP, later) == why


def test_settle_verdict_a_unit_seen_active_after_restarts_already_failed() -> None:
    restarted = live("active", "running", "success", 100, 1, 0, "i2")
    assert nodeside.settle_verdict(restarted, restarted) == "app.service keeps restarting: active/running (1 restart)"


def test_parse_liveness_tolerates_missing_and_garbled_fields() -> None:
    got = one("ActiveState=active\nMainPID=x\nnoise\n")
    assert (got.active_state, got.main_pid, got.invocation_id) == ("active", 0, None)  # old systemd: no InvocationID
    assert one("InvocationID=\n").invocation_id == ""


def test_a_stale_state_is_not_the_result_of_the_new_start() -> None:
    before = one(state("failed", inv="old"))
    assert not nodeside.has_result(one(state("failed", inv="old")), before)  # job not begun yet
    assert not nodeside.has_result(one(state("inactive", inv="")), before)
    assert nodeside.has_result(one(state("failed", inv="new")), before)
    assert nodeside.has_result(one(state("failed", inv=None)), before)  # no IDs: take it as is
    assert not nodeside.has_result(one(state("activating", inv="new")), before)


# ---- start and watch on a scripted node ---------------------------------------------------------------------------
def test_a_unit_that_dies_during_settle_fails_with_its_state_and_journal() -> None:
    node = ScriptedNode(
        "core-01",
        [
            "LoadState=not-found\nActiveState=inactive\nInvocationID=\n",  # before: never ran
            state("activating", "start-pre", inv="n1"),
            state("active", inv="n1", pid=10),
            state("failed", inv="n1", result="exit-code", status=3),  # after the settle pause
        ],
    )
    res = launch(node)
    assert res.error == "app.service did not stay active: failed/failed (result exit-code, status 3)"
    assert res.state.active_state == "failed"
    assert res.journal == ("about to fail", "app.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED")
    assert node.starts == ["start --no-block -- app.service"]


def test_a_unit_that_stays_up_is_launched_without_reading_the_journal() -> None:
    node = ScriptedNode("core-01", ["ActiveState=inactive\nInvocationID=\n", state("active", inv="n1", pid=10)])
    res = launch(node)
    assert (res.error, res.state.active_state, res.journal) == (None, "active", ())
    assert not [c for c in node.runner.calls if "journalctl" in c]


def test_restarting_a_failed_unit_waits_for_the_new_run() -> None:
    """systemd may still show the old run's "failed" right after ``restart --no-block``: not the answer."""
    node = ScriptedNode(
        "core-01",
        [
            state("failed", inv="old"),
            state("failed", inv="old"),
            state("activating", inv="new"),
            state("active", inv="new"),
        ],
    )
    res = launch(node, restart=True, settle=0)
    assert res.error is None
    assert node.starts == ["restart --no-block -- app.service"]


def test_a_start_that_never_comes_up_times_out_naming_the_node() -> None:
    node = ScriptedNode(
        "core-02", ["ActiveState=inactive\nInvocationID=\n", state("activating", "start-pre", inv="n1")]
    )
    with pytest.raises(CoreosLabError, match=r"^core-02: app.service not active after 0.5s \(activating/start-pre\)"):
        launch(node, timeout=0.5)


# ---- deploy: finishing an identical record, Ctrl-C ---------------------------------------------------------------
@pytest.fixture
def kv() -> InMemoryKV:
    return InMemoryKV()


def cluster_of(*nodes: ScriptedNode) -> Cluster:
    return Cluster({n.name: n.runner for n in nodes})


def recorded(kv: InMemoryKV, target: str) -> RecordStore:
    store = RecordStore(kv)
    record = UnitRecord.new(UnitFile.parse(TEXT, name=UNIT), "launched", (target,))
    assert store.put(record, expected_revision=0) is not None
    return store


def test_redeploy_starts_an_identical_unit_that_an_interrupted_deploy_left_unstarted(
    kv: InMemoryKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sb, "GRACE_SECONDS", 0.2)
    node = ScriptedNode("core-01", ["LoadState=not-found\nActiveState=inactive\nInvocationID=\n"] * 3)
    node.states += [state("active", inv="n1", pid=7)]
    store = recorded(kv, "core-01")
    with cluster_of(node) as cluster:
        [out] = sb.deploy(cluster, [UnitFile.parse(TEXT, name=UNIT)], store=store, settle=0)
    assert out.status == "launched"
    assert out.ok
    assert out.detail == "identical content was recorded but not running on core-01: started it"
    assert node.starts == ["start --no-block -- app.service"]
    assert any(c.startswith("put /etc/systemd/system/app.service") for c in node.runner.calls)


def test_redeploy_of_a_running_identical_unit_changes_nothing(kv: InMemoryKV) -> None:
    node = ScriptedNode("core-01", [state("active", inv="n1", pid=7)])
    store = recorded(kv, "core-01")
    with cluster_of(node) as cluster:
        [out] = sb.deploy(cluster, [UnitFile.parse(TEXT, name=UNIT)], store=store, settle=0)
    assert (out.status, out.ok, out.detail) == ("unchanged", True, "identical content is already deployed")
    assert node.starts == []


def test_redeploy_waits_for_a_concurrent_start_instead_of_starting_twice(kv: InMemoryKV) -> None:
    node = ScriptedNode(
        "core-01",
        ["LoadState=not-found\nActiveState=inactive\n", state("activating", inv="n1"), state("active", inv="n1")],
    )
    store = recorded(kv, "core-01")
    with cluster_of(node) as cluster:
        [out] = sb.deploy(cluster, [UnitFile.parse(TEXT, name=UNIT)], store=store, settle=0)
    assert out.status == "unchanged"
    assert node.starts == []


def test_ctrl_c_while_recording_touches_no_node(kv: InMemoryKV) -> None:
    node = ScriptedNode("core-01", ["ActiveState=inactive\n"])

    class Interrupting(RecordStore):
        def put(self, record: UnitRecord, *, expected_revision: int) -> UnitRecord | None:
            raise KeyboardInterrupt

    with cluster_of(node) as cluster, pytest.raises(results.DeployInterrupted) as caught:
        sb.deploy(cluster, [UnitFile.parse(TEXT, name=UNIT)], store=Interrupting(kv))
    assert (caught.value.unit, caught.value.phase) == (UNIT, "recording")
    assert str(caught.value) == f"interrupted while recording {UNIT} in etcd (no node was touched); run deploy again"
    assert all("@@coreos-lab@@" in c for c in node.runner.calls)  # the probe only


def test_ctrl_c_while_starting_stops_the_other_nodes_at_their_next_step(kv: InMemoryKV) -> None:
    """Ctrl-C lands while a global unit starts on two nodes: the record is there, and the node still waiting
    for its (never active) unit stops polling at once instead of after the 30 s timeout."""

    def ctrl_c() -> None:
        time.sleep(0.2)  # let the other node reach its polling loop
        raise KeyboardInterrupt

    interrupted = ScriptedNode("core-01", ["ActiveState=inactive\nInvocationID=\n"], put_hook=ctrl_c)
    waiting = ScriptedNode("core-02", ["ActiveState=inactive\nInvocationID=\n", state("activating", inv="n1")])
    store = RecordStore(kv)
    unit = UnitFile.parse(TEXT + "\n[X-Fleet]\nGlobal=true\n", name=UNIT)
    cluster = cluster_of(interrupted, waiting)
    started = time.monotonic()
    try:
        with pytest.raises(results.DeployInterrupted) as caught:
            sb.deploy(cluster, [unit], store=store, timeout=30)
    finally:
        cluster.close()  # waits for node work: must be quick once cancelled
    assert time.monotonic() - started < 3
    assert caught.value.phase == "recorded"
    assert "its desired state is recorded in etcd" in str(caught.value)
    assert store.get(UNIT) is not None
    assert store.get(UNIT).targets == ("core-01", "core-02")  # type: ignore[union-attr]
    assert interrupted.starts == []


# ---- the CLI ---------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    from coreos_lab.cli import units as cli_units

    @contextmanager
    def target(*_: Any, **__: Any) -> Iterator[Any]:
        yield sb.SystemdBackend(Cluster({}), {})

    monkeypatch.setattr(cli_units, "_backend", target)


def run_cli(tmp_path: Path, *args: str) -> Any:
    from coreos_lab.cli import app

    path = tmp_path / UNIT
    path.write_text(TEXT)
    return CliRunner().invoke(app, ["deploy", str(path), "--inventory", str(tmp_path / "inv"), *args])


def test_cli_ctrl_c_is_one_line_and_exit_130(
    tmp_path: Path, fake_target: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: Any, **__: Any) -> Any:
        raise results.DeployInterrupted(UNIT, "recorded")

    monkeypatch.setattr(sb, "deploy", interrupted)
    result = run_cli(tmp_path)
    assert result.exit_code == 130
    assert result.stdout == ""
    assert result.stderr == (
        f"error: interrupted while starting {UNIT}: its desired state is recorded in etcd; "
        "run deploy again (or reconcile) to finish\n"
    )


def test_cli_prints_the_failed_units_journal_and_passes_settle(
    tmp_path: Path, fake_target: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def failed(*_: Any, **kw: Any) -> Any:
        seen.update(kw)
        node = results.NodeOutcome("core-01", "10.0.0.1", False, "failed", "failed", "app.service died", ("l1", "l2"))
        return (results.DeployOutcome(UNIT, "0" * 40, "failed", (node,)),)

    monkeypatch.setattr(sb, "deploy", failed)
    result = run_cli(tmp_path, "--settle", "2.5")
    assert result.exit_code == 1
    assert seen["settle"] == 2.5
    assert result.stderr == "error: Unit app.service failed on core-01 (10.0.0.1): app.service died\n  l1\n  l2\n"


def test_interrupt_report_before_anything_happened() -> None:
    assert str(results.DeployInterrupted("", "preparing")) == "interrupted before anything was changed"
    assert isinstance(results.DeployInterrupted("a.service", "recorded"), KeyboardInterrupt)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("deploy", "error: interrupted while deploying; run deploy again (or reconcile) to finish\n"),
        ("connect", "error: interrupted before anything was changed\n"),
    ],
)
def test_cli_plain_ctrl_c_says_whether_the_deploy_had_begun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, message: str
) -> None:
    from contextlib import contextmanager

    from coreos_lab.cli import units as cli_units

    def ctrl_c(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    @contextmanager
    def target(*_: Any, **__: Any) -> Iterator[Any]:
        if where == "connect":
            ctrl_c()
        yield sb.SystemdBackend(Cluster({}), {})

    monkeypatch.setattr(cli_units, "_backend", target)
    monkeypatch.setattr(sb, "deploy", ctrl_c)  # e.g. a second Ctrl-C during the first one's clean-up
    result = run_cli(tmp_path)
    assert (result.exit_code, result.stdout, result.stderr) == (130, "", message)


def test_a_node_that_breaks_mid_deploy_is_named_as_going_away() -> None:
    from coreos_lab.errors import SSHError

    assert (
        nodeside.node_gone(FakeRunner("n1", {"is-system-running": (1, "stopping\n", "")}))
        == "n1 is going down (systemd: stopping)"
    )
    assert nodeside.node_gone(FakeRunner("n1", {"is-system-running": (0, "running\n", "")})) is None

    assert nodeside.node_gone(FakeRunner("n2", {".": SSHError("n2: connection lost")})) == "n2 became unreachable"
    no_bus = FakeRunner("n3", {"is-system-running": (1, "", "Failed to connect to bus: Broken pipe\n")})
    assert nodeside.node_gone(no_bus) == "n3 is going down (systemd: Failed to connect to bus: Broken pipe)"
