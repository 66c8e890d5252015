"""`coreos-lab fault ...` (cli/fault_cmds.py) with fake nodes: one-line refusals with exit 2 and nothing run or
recorded, heal's exit codes, the outputs (text and --json), and a Vagrant lab's records and stop."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

import coreos_lab.cluster
from coreos_lab import config as labconfig
from coreos_lab import fault, vagrant
from coreos_lab.cli import app
from coreos_lab.cli._app import load_commands
from coreos_lab.cluster import Cluster
from coreos_lab.testing import FakeRunner
from tests.unit.test_fault import IPS, NAMES, node


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.ssh"
    path.write_text("".join(f"Host {n}\n  HostName 127.0.0.1\n  Port {2200 + i}\n" for i, n in enumerate(NAMES)))
    return path


@pytest.fixture
def runners(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeRunner]:
    made = {n: node(n) for n in NAMES}
    monkeypatch.setattr(coreos_lab.cluster, "open_cluster", lambda **kwargs: Cluster(made))
    monkeypatch.setattr(fault.FaultLab, "ips", lambda self, nodes: {n: IPS[n] for n in nodes})
    return made


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def records(inv: Path) -> list[dict[str, Any]]:
    path = fault.state_dir_for(None, inv) / fault.STATE_FILE
    return json.loads(path.read_text())["faults"] if path.exists() else []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["partition", "core-09"], "no node named 'core-09'"),
        (["partition", "core-01", "--from", "core-01"], "--from names core-01 itself"),
        (["partition", "core-01", "--from", "nope"], "no node named 'nope'"),
        (["partition", "core-01", "--for", "0"], "--for must be more than 0"),
        (["partition", "core-01", "--for", "-5"], "--for must be more than 0"),
        (["delay", "core-01", "0"], "the delay must be more than 0"),
        (["delay", "core-01", "-20"], "the delay must be more than 0"),
        (["delay", "core-01", "100", "--jitter", "200"], "--jitter must be between 0 and the delay"),
        (["delay", "core-01", "100", "--jitter", "-1"], "--jitter must be between 0 and the delay"),
        (["delay", "core-09", "100"], "no node named 'core-09'"),
        (["loss", "core-01", "0"], "the loss must be more than 0"),
        (["loss", "core-01", "101"], "at most 100 percent"),
        (["loss", "core-01", "-3"], "the loss must be more than 0"),
        (["kill", "core-01", "a;reboot"], "invalid unit name"),
        (["kill", "core-01", "web@.service"], "a template (name@.type) cannot be used here"),
        (["kill", "core-09", "etcd"], "no node named 'core-09'"),
        (["kill", "core-01", "etcd", "--for", "0"], "--for must be more than 0"),
        (["stop", "core-01"], "fault stop needs a Vagrant lab"),
        (["heal", "core-09"], "no node named 'core-09'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_runs(
    inv: Path, runners: dict[str, FakeRunner], args: list[str], said: str
) -> None:
    code, out, err = run("fault", args[0], "--inventory", str(inv), *args[1:])
    assert code == 2, (out, err)
    assert err.startswith("error: "), err
    assert said in err
    assert len(err.strip().splitlines()) == 1, err
    assert all(r.calls == [] for r in runners.values())
    assert records(inv) == []


def test_a_second_partition_is_refused_in_one_line(inv: Path, runners: dict[str, FakeRunner]) -> None:
    assert run("fault", "partition", "core-01", "--inventory", str(inv))[0] == 0
    code, _, err = run("fault", "partition", "core-01", "--from", "core-02", "--inventory", str(inv))
    assert code == 2
    assert err.startswith("error: core-01 is already partitioned (fault ")
    assert len(err.strip().splitlines()) == 1
    assert len(records(inv)) == 1


def test_heal_with_nothing_active_is_exit_3(inv: Path, runners: dict[str, FakeRunner]) -> None:
    code, out, err = run("fault", "heal", "--inventory", str(inv))
    assert code == 3
    assert out == ""
    assert err.startswith("error: nothing to heal: no fault is recorded")
    assert len(err.strip().splitlines()) == 1


def test_partition_list_and_heal(inv: Path, runners: dict[str, FakeRunner]) -> None:
    code, out, err = run("fault", "partition", "core-02", "--for", "60", "--inventory", str(inv))
    assert code == 0, err
    lines = out.splitlines()
    fid = records(inv)[0]["id"]
    chain = f"iptables chain COREOS-LAB-FAULT-{fid} on core-02, core-01, core-03"
    assert lines[0] == f"fault {fid}: core-02 cut off from core-01, core-03 ({chain})"
    assert lines[1].startswith("expires ")
    assert lines[2] == "heal: coreos-lab fault heal core-02"
    code, out, _ = run("fault", "list", "--inventory", str(inv))
    assert code == 0
    table = out.splitlines()
    assert table[0].split() == ["ID", "KIND", "NODE", "DETAIL", "SINCE", "EXPIRES"]
    assert table[1].split()[1:5] == ["partition", "core-02", "from", "core-01,"]
    code, out, _ = run("--inventory", str(inv), "fault", "list", "--json")  # the global option, fleetctl's habit
    assert code == 0
    (listed,) = json.loads(out)["faults"]
    assert listed["kind"] == "partition"
    assert listed["timer"] is True
    code, out, err = run("fault", "heal", "core-02", "--inventory", str(inv))
    assert code == 0, err
    assert out.splitlines()[-1] == "healed 1 fault(s)"
    assert run("fault", "list", "--inventory", str(inv))[1] == "no fault is active\n"


def test_fault_commands_print_json(inv: Path, runners: dict[str, FakeRunner]) -> None:
    runners["core-03"].answers = {r"systemctl kill": "321\n", **runners["core-03"].answers}
    code, out, err = run("fault", "kill", "core-03", "etcd-member", "--json", "--inventory", str(inv))
    assert code == 0, err
    data = json.loads(out)
    assert (data["kind"], data["node"], data["params"]) == (
        "kill",
        "core-03",
        {"unit": "etcd-member.service", "pid": "321"},
    )
    assert data["expires"] is None
    code, out, _ = run("fault", "heal", "--json", "--inventory", str(inv))
    assert code == 0
    assert json.loads(out)["healed"] == [data["id"]]


def test_a_failed_heal_step_is_exit_1_and_keeps_the_record(inv: Path, runners: dict[str, FakeRunner]) -> None:
    assert run("fault", "partition", "core-01", "--from", "core-02", "--inventory", str(inv))[0] == 0
    runners["core-02"].answers = {r"-D INPUT": (1, "", "iptables: Permission denied"), **runners["core-02"].answers}
    code, out, err = run("fault", "heal", "--inventory", str(inv))
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: core-02: core-02: heal failed (exit 1): iptables: Permission denied (fault {records(inv)[0]['id']}, "
        "partition)"
    ]
    assert out.splitlines()[-1] == "healed 0 fault(s), 1 not"
    assert len(records(inv)) == 1


def test_every_fault_command_has_help_with_an_example() -> None:
    (group,) = load_commands("fault_cmds").values()
    commands = group.commands  # type: ignore[attr-defined]
    shown = {name for name, cmd in commands.items() if not cmd.hidden}
    assert shown == {"partition", "delay", "loss", "kill", "leader", "stop", "list", "heal", "drill"}
    for name in shown:
        assert "Example: coreos-lab fault " in (commands[name].help or ""), name
    assert "3 when nothing was recorded" in " ".join((commands["heal"].help or "").split())


# ---- a Vagrant lab -------------------------------------------------------------------------------------------------
class FakeVagrant:
    calls: ClassVar[list[tuple[str, list[str], bool]]] = []

    def __init__(self, lab_dir: Path, provider: str | None = None, **kwargs: object) -> None:
        self.lab_dir = lab_dir

    def halt(self, nodes: Sequence[str] | None = None, *, force: bool = False, **kwargs: object) -> None:
        self.calls.append(("halt", list(nodes or []), force))

    def up(self, nodes: Sequence[str] | None = None, **kwargs: object) -> None:
        self.calls.append(("up", list(nodes or []), False))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "lab"
    path.mkdir()
    labconfig.save(path, labconfig.validate(labconfig.LabConfig(instances=3)))
    FakeVagrant.calls = []
    monkeypatch.setattr(vagrant, "VagrantLab", FakeVagrant)
    monkeypatch.setattr(vagrant, "created_machines", lambda lab_dir: list(NAMES))
    monkeypatch.setattr(fault, "spawn_expire", lambda state, f, where, cwd: 4_000_000_000)
    return path


def test_stop_on_a_vagrant_lab_is_recorded_in_its_private_dir(lab: Path) -> None:
    code, out, err = run("fault", "stop", "core-02", "--for", "120", "--lab", str(lab))
    assert code == 0, err
    assert FakeVagrant.calls == [("halt", ["core-02"], True)]
    assert "core-02 powered off (vagrant halt --force)" in out
    data = json.loads((lab / ".coreos-lab" / "faults.json").read_text())
    (rec,) = data["faults"]
    assert (rec["kind"], rec["node"], rec["params"]) == ("stop", "core-02", {"expire_pid": 4_000_000_000})
    assert (lab / ".coreos-lab" / "faults.json").stat().st_mode & 0o777 == 0o600
    code, _, err = run("fault", "stop", "core-02", "--lab", str(lab))
    assert code == 2
    assert "already stopped" in err
    code, out, err = run("fault", "heal", "--lab", str(lab))
    assert code == 0, err
    assert FakeVagrant.calls[-1] == ("up", ["core-02"], False)
    assert "core-02: powered on (vagrant up)" in out


def test_a_destroyed_labs_records_are_dropped(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("fault", "stop", "core-01", "--lab", str(lab))[0] == 0
    monkeypatch.setattr(vagrant, "created_machines", lambda lab_dir: [])
    assert run("fault", "list", "--lab", str(lab))[1] == "no fault is active\n"
    code, _, err = run("fault", "heal", "--lab", str(lab))
    assert code == 3, err
    assert FakeVagrant.calls == [("halt", ["core-01"], True)], "a destroyed machine is not brought back"


def test_a_vagrant_labs_unknown_node_is_refused_before_vagrant_runs(lab: Path) -> None:
    code, _, err = run("fault", "stop", "core-07", "--lab", str(lab))
    assert code == 2
    assert err.startswith("error: no node named 'core-07' (nodes: core-01, core-02, core-03)")
    assert FakeVagrant.calls == []


def test_the_expire_process_starts_detached_and_finds_its_fault_healed(inv: Path, tmp_path: Path) -> None:
    """What `stop --for` leaves behind, run for real: our interpreter, `fault expire ID`, output in its log."""
    state = fault.state_dir_for(None, inv)
    gone = fault.Fault("0a1b2c3d", "stop", "core-01", time.time(), time.time())
    pid = fault.spawn_expire(state, gone, ["--inventory", str(inv)], cwd=tmp_path)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    log = (state / fault.EXPIRE_LOG).read_text()
    assert log.strip().endswith("fault 0a1b2c3d: healed already"), log
