"""fleetctl's habits (issue 14, part 3), against the fleet API double and the real fleetctl v1.0.0 captures.

- ``deploy`` and ``unit start`` with the fleet backend print fleetctl's progress lines, in fleetctl's order
  (every unit submitted, then the global ones triggered, then the others waited for), ``--no-block`` included;
  the systemd backend prints what it printed before and refuses ``--no-block``.
- Global options go before the command, as fleetctl takes them, nested groups included; the command's own
  option (after it) wins, a flag beats fleetctl's environment variable, and a command that lacks the option
  is refused in one line.
- ``--tunnel`` names a node or ``[USER@]HOST[:PORT]`` (the SSH side is in tests/integration/test_fleet_habits_real.py).
- ``unit status``/``journal`` find the unit's machine in fleet (over SSH there: the integration file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.cli._common import parse_tunnel, tunnel_nodes
from coreos_lab.cluster import Cluster
from coreos_lab.errors import UsageError
from coreos_lab.fleet import FleetClient
from coreos_lab.probe import NodeFacts
from coreos_lab.testing import FakeRunner
from coreos_lab.unitfile import UnitFile
from coreos_lab.units.base import NO_BLOCK_REFUSED, get_backend
from coreos_lab.units.fleet_backend import FleetBackend, status_texts
from coreos_lab.units.results import DeployOutcome, NodeOutcome
from tests.fleet_double import FIXTURES, FleetDouble, FleetState, load_fleetctl_runs, load_more_runs

MACHINE = "3d1219c7c4c5404aaa1f6d2a48adfda4"
MORE = load_more_runs()  # fleetctl-more.txt: one machine, metadata rig=hidden,role=worker
FIRST = {r.cmd: r for r in reversed(load_fleetctl_runs())}  # fleetctl.txt; a command run twice: its first run
UNITS = FIXTURES / "unitfiles"
MORE_UNITS = FIXTURES / "unitfiles-more"


def cli(*argv: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(app, list(argv), **kwargs)


def worker() -> FleetState:
    """The machine of fleetctl-more.txt."""
    return FleetState(
        machines=[{"id": MACHINE, "metadata": {"rig": "hidden", "role": "worker"}, "primaryIP": "127.0.0.1"}]
    )


@contextmanager
def registry_of_more() -> Iterator[FleetDouble]:
    """The registry fleetctl-more.txt's listings saw: hello.service and web@1/web@2 (from web@.service), launched."""
    with FleetDouble(worker()) as fd:
        client = FleetClient(fd.url)
        client.create_unit(UnitFile.parse((MORE_UNITS / "hello.service").read_text(), name="hello.service"), "launched")
        for name in ("web@1.service", "web@2.service"):
            client.create_unit(UnitFile.parse((MORE_UNITS / "web@.service").read_text(), name=name), "launched")
        yield fd


def copy_units(tmp_path: Path, source: Path, *names: str) -> list[str]:
    for name in names:
        (tmp_path / name).write_text((source / name).read_text())
    return [str(tmp_path / name) for name in names]


# ---- progress lines ---------------------------------------------------------------------------------------------
def test_deploy_prints_what_fleetctl_start_prints(tmp_path: Path) -> None:
    run = MORE["fleetctl start hello.service"]
    [path] = copy_units(tmp_path, MORE_UNITS, "hello.service")
    with FleetDouble(worker()) as fd:
        result = cli("deploy", path, "--endpoint", fd.url)
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)


def test_instances_are_all_submitted_before_any_is_waited_for(tmp_path: Path) -> None:
    """``fleetctl start web@1.service web@2.service`` from the template. Its two ``inactive`` lines came in the
    order two goroutines happened to finish (web@2 first); ours are in the order given. ``launched`` without a
    machine is fleetctl's line while fleet has not said where the unit is: the double puts web@1 on a machine
    that /machines does not list yet."""
    run = MORE["fleetctl start web@1.service web@2.service"]
    copy_units(tmp_path, MORE_UNITS, "web@.service")
    state = worker()
    state.placements["web@1.service"] = "f" * 32
    with FleetDouble(state) as fd:
        result = cli("deploy", str(tmp_path / "web@1.service"), str(tmp_path / "web@2.service"), "--endpoint", fd.url)
    assert (result.exit_code, result.stderr) == (run.rc, run.stderr)
    ours, theirs = result.stdout.splitlines(), run.stdout.splitlines()
    assert ours[:2] == ["Unit web@1.service inactive", "Unit web@2.service inactive"]
    assert sorted(ours[:2]) == sorted(theirs[:2])
    assert (
        ours[2:]
        == theirs[2:]
        == ["Unit web@1.service launched", f"Unit web@2.service launched on {MACHINE[:8]}.../127.0.0.1"]
    )


def test_a_global_unit_is_triggered_not_launched_on_one_machine(tmp_path: Path) -> None:
    """``fleetctl start oneshot@1.service global.service`` (fleetctl.txt), global.service already submitted:
    byte for byte, the global unit's line comes before the others are waited for."""
    run = FIRST["fleetctl start oneshot@1.service global.service"]
    paths = copy_units(tmp_path, UNITS, "oneshot@.service", "global.service")
    state = FleetState.from_captures()
    state.units.clear()
    state.states.clear()
    with FleetDouble(state) as fd:
        FleetClient(fd.url).create_unit(
            UnitFile.parse((UNITS / "global.service").read_text()), "inactive", "global.service"
        )
        result = cli("deploy", str(tmp_path / "oneshot@1.service"), paths[1], "--endpoint", fd.url)
        assert fd.state.units["global.service"]["desiredState"] == "launched"
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)


def test_a_new_global_unit_says_what_fleetctl_says_when_it_submits_one(tmp_path: Path) -> None:
    """fleetctl's submitted line for a global unit has no state (fleet reports none for it): ``Unit X `` with
    its trailing space, as fleetctl.txt's ``submit`` shows; then the trigger; no ``launched on``."""
    submitted = FIRST["fleetctl submit unitfiles/oneshot@.service unitfiles/global.service"].stdout.splitlines()[1]
    assert submitted == "Unit global.service "
    [path] = copy_units(tmp_path, UNITS, "global.service")
    with FleetDouble(worker()) as fd:
        result = cli("deploy", path, "--endpoint", fd.url)
        assert [s["machineID"] for s in fd.state.states if s["name"] == "global.service"] == [MACHINE]
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == f"{submitted}\nTriggered global unit global.service start\n"


def test_no_block_leaves_an_unschedulable_unit_launched_as_fleetctl_does(tmp_path: Path) -> None:
    """``fleetctl start --no-block nowhere.service`` (MachineMetadata=role=db, no such machine), byte for byte
    (fleetctl v1.0.0 says ``Triggered`` once per wait it skips), then fleetctl's list-unit-files of that moment."""
    run = MORE["fleetctl start --no-block nowhere.service"]
    [path] = copy_units(tmp_path, MORE_UNITS, "nowhere.service")
    with registry_of_more() as fd:
        result = cli("deploy", "--no-block", path, "--endpoint", fd.url)
        assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)
        listing = MORE["fleetctl list-unit-files"]
        files = cli("list-unit-files", "--endpoint", fd.url)
        assert (files.exit_code, files.stdout, files.stderr) == (listing.rc, listing.stdout, listing.stderr)
        again = cli("deploy", path, "--endpoint", fd.url)  # blocking now: it is launched, identical content
    assert again.exit_code == 0
    assert again.stdout == "Unit nowhere.service unchanged: identical content is already launched (launched on -)\n"


def test_unit_start_with_and_without_no_block() -> None:
    hello = UnitFile.parse((MORE_UNITS / "hello.service").read_text(), name="hello.service")
    glob = UnitFile.parse((UNITS / "global.service").read_text(), name="global.service")
    with FleetDouble(worker()) as fd:
        client = FleetClient(fd.url)
        client.create_unit(hello, "loaded")
        client.create_unit(glob, "loaded")
        triggered = cli("unit", "start", "--no-block", "hello.service", "--endpoint", fd.url)
        assert (triggered.exit_code, triggered.stderr) == (0, "")
        assert triggered.stdout == "Triggered unit hello.service start\n" * 2
        assert fd.state.units["hello.service"]["desiredState"] == "launched"
        already = cli("unit", "start", "--no-block", "hello.service", "--endpoint", fd.url)
        assert (already.exit_code, already.stdout) == (0, "")  # not triggered again: fleetctl says nothing
        stopped = cli("unit", "stop", "hello.service", "--endpoint", fd.url)
        assert stopped.stdout == FIRST["fleetctl stop hello.service"].stdout
        started = cli("unit", "start", "hello.service", "--endpoint", fd.url)
        assert started.stdout == FIRST["fleetctl start hello.service"].stdout
        everywhere = cli("unit", "start", "global.service", "--endpoint", fd.url)
    assert (everywhere.exit_code, everywhere.stdout) == (0, "Triggered global unit global.service start\n")


def test_json_has_no_progress_lines(tmp_path: Path) -> None:
    [path] = copy_units(tmp_path, MORE_UNITS, "nowhere.service")
    with FleetDouble(worker()) as fd:
        result = cli("deploy", "--no-block", "--json", path, "--endpoint", fd.url)
    assert result.exit_code == 0, result.output
    [out] = json.loads(result.stdout)
    assert (out["unit"], out["status"], out["ok"], out["nodes"]) == ("nowhere.service", "triggered", True, [])


def test_the_systemd_backend_refuses_no_block_before_anything_is_read(tmp_path: Path) -> None:
    [path] = copy_units(tmp_path, MORE_UNITS, "hello.service")
    missing = str(tmp_path / "no-inventory")
    result = cli("deploy", path, "--no-block", "--backend", "systemd", "--inventory", missing)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {NO_BLOCK_REFUSED}\n")
    start = cli("unit", "start", "hello.service", "--no-block", "--backend", "systemd", "--inventory", missing)
    assert (start.exit_code, start.stderr) == (2, f"error: {NO_BLOCK_REFUSED}\n")


def test_auto_that_finds_no_fleet_refuses_no_block_after_the_probe_only() -> None:
    node = FakeRunner("core-01", default=(0, "", ""))
    with pytest.raises(UsageError, match="--no-block needs the fleet backend"):
        get_backend("auto", Cluster({"core-01": node}), block=False)
    assert len(node.calls) == 1  # the probe, nothing else
    assert "systemctl" not in node.calls[0]


def test_the_systemd_backends_lines_stay_as_they_were(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A backend that reports nothing as it goes (the systemd one) gets coreos-lab's own lines, as before."""
    from coreos_lab.units import base

    class Quiet:
        name = "systemd"

        def deploy(self, units: Any, **_: Any) -> tuple[DeployOutcome, ...]:
            return (DeployOutcome("hello.service", "h", "launched", (NodeOutcome("core-01", "10.0.0.1", True),)),)

        def where(self, n: NodeOutcome) -> str:
            return f"{n.node} ({n.ip})"

    @contextmanager
    def quiet(*_: Any, report: Any = None, **__: Any) -> Iterator[Quiet]:
        assert report is not None  # offered; this backend does not use it
        yield Quiet()

    monkeypatch.setattr(base, "open_backend", quiet)
    [path] = copy_units(tmp_path, MORE_UNITS, "hello.service")
    result = cli("deploy", path, "--backend", "systemd")
    assert (result.exit_code, result.stdout) == (0, "Unit hello.service launched on core-01 (10.0.0.1)\n")


# ---- global options before the command ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cmd",
    [
        "fleetctl list-machines --no-legend",
        "fleetctl list-units --no-legend --fields=unit,sub",
        "fleetctl cat web@1.service",
    ],
)
def test_global_options_before_the_command_like_fleetctl(cmd: str) -> None:
    run = MORE[cmd]
    argv = ["unit", *run.argv] if run.argv[0] == "cat" else list(run.argv)
    with registry_of_more() as fd:
        result = cli("--backend", "fleet", "--endpoint", fd.url, *argv)
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)


def test_the_option_after_the_command_wins_and_a_flag_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    run = MORE["fleetctl list-machines --no-legend"]
    dead = "http://127.0.0.1:9"
    with registry_of_more() as fd:
        after = cli("--endpoint", dead, "list-machines", "--no-legend", "--endpoint", fd.url)
        before = cli("--endpoint", fd.url, "list-machines", "--no-legend", "--endpoint", dead)
        monkeypatch.setenv("FLEETCTL_ENDPOINT", dead)
        over_env = cli("--endpoint", fd.url, "list-machines", "--no-legend")
        nested = cli("--endpoint", dead, "unit", "cat", "web@1.service", "--endpoint", fd.url)
        assert (nested.exit_code, nested.stdout) == (0, MORE["fleetctl cat web@1.service"].stdout)
        from_env = cli("list-machines", "--no-legend")
    assert (after.exit_code, after.stdout) == (0, run.stdout)
    assert (over_env.exit_code, over_env.stdout) == (0, run.stdout)
    for failed in (before, from_env):
        assert failed.exit_code == 1
        assert failed.stderr.startswith(f"error: cannot reach fleet at {dead} ")
        assert len(failed.stderr.splitlines()) == 1


def test_json_before_the_command() -> None:
    with registry_of_more() as fd:
        before = cli("--json", "--endpoint", fd.url, "list-machines")
        after = cli("list-machines", "--json", "--endpoint", fd.url)
    assert before.exit_code == after.exit_code == 0
    assert before.stdout == after.stdout
    assert json.loads(before.stdout)[0]["metadata"] == {"rig": "hidden", "role": "worker"}


def test_lab_and_inventory_before_the_command_reach_it(tmp_path: Path) -> None:
    lab = str(tmp_path / "lab")
    for argv in (["status"], ["engine", "status"]):  # a command, and one in a group
        before, after = cli("--lab", lab, *argv), cli(*argv, "--lab", lab)
        assert (before.exit_code, before.output) == (after.exit_code, after.output)
        assert lab in before.output
    inventory = str(tmp_path / "inventory")
    for argv in (["-i", inventory, "list-units"], ["--inventory", inventory, "unit", "status", "x.service"]):
        result = cli(*argv, "--backend", "systemd")
        assert (result.exit_code, result.stderr) == (
            2,
            f"error: cannot read inventory {inventory}: No such file or directory\n",
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--json", "ssh", "core-01"], "ssh takes no --json"),
        (["--tunnel", "core-01", "init", "lab"], "init takes no --tunnel"),
        (["--backend", "fleet", "etcd", "health"], "etcd health takes no --backend"),
        (["--lab", "lab", "unit", "cat", "x.service"], None),  # unit cat takes it: no refusal
    ],
)
def test_a_global_option_the_command_does_not_take_is_one_line(argv: list[str], message: str | None) -> None:
    result = cli(*argv)
    if message is None:
        assert "takes no" not in result.stderr
        return
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"error: {message}\n")


def test_the_global_options_are_in_the_root_help() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for option in ("--backend", "--endpoint", "--tunnel", "--ssh-username", "--lab", "--inventory", "--json"):
        assert option in result.stdout


# ---- --tunnel: which host -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["core@", "@host", "host:ssh", "[::1", "[::1]x", "a b", "host:0", "host:70000"])
def test_a_malformed_tunnel_is_one_line(spec: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_tunnel(spec)
    assert "\n" not in str(refused.value)


def test_a_tunnel_names_a_node_of_the_inventory_or_a_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COREOS_LAB_DIR", raising=False)
    inventory = tmp_path / "inventory"
    inventory.write_text("Host node-a\n  HostName 10.9.9.9\n  Port 2200\n  User admin\n")
    cluster, node = tunnel_nodes("node-a", None, inventory, no_persist=True)
    assert (node, cluster.names, cluster.targets["node-a"].port) == ("node-a", ["node-a"], 2200)
    cluster.close()
    cases = {
        ("10.0.0.5", None): ("10.0.0.5", 22, "core"),  # fleetctl's defaults
        ("10.0.0.5", "ops"): ("10.0.0.5", 22, "ops"),
        ("admin@10.0.0.5:2222", "ops"): ("10.0.0.5", 2222, "admin"),
        ("node-b", None): ("node-b", 22, "core"),  # not in the inventory: a host name
    }
    for (spec, user), (host, port, login) in cases.items():
        cluster, node = tunnel_nodes(spec, None, inventory, ssh_username=user, no_persist=True)
        target = cluster.targets[node]
        assert (target.hostname, target.port, target.user, target.strict_host_key_checking) == (
            host,
            port,
            login,
            "yes",
        )
        cluster.close()


def test_a_tunnel_is_for_fleets_socket_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("list-units", "--tunnel", "core-01", "--backend", "systemd")
    assert (result.exit_code, result.stderr) == (2, "error: --tunnel needs --backend fleet (or auto)\n")
    http = cli("list-units", "--tunnel", "core-01", "--endpoint", "http://10.0.0.1:4002")
    assert (http.exit_code, http.stderr) == (
        2,
        "error: --tunnel reaches fleet's unix socket on the far side: give no endpoint, or unix:///PATH\n",
    )
    # fleetctl's variables do not override an explicit systemd backend: the inventory is read, as without them
    monkeypatch.setenv("FLEETCTL_TUNNEL", "core-01")
    monkeypatch.setenv("FLEETCTL_ENDPOINT", "http://127.0.0.1:9")
    inventory = str(tmp_path / "inventory")
    quiet = cli("list-units", "--backend", "systemd", "-i", inventory)
    assert quiet.stderr == f"error: cannot read inventory {inventory}: No such file or directory\n"


# ---- unit status / journal: the unit's machine, from fleet --------------------------------------------------------
def test_status_and_journal_find_the_machine_in_fleet_before_any_ssh(tmp_path: Path) -> None:
    [path] = copy_units(tmp_path, MORE_UNITS, "nowhere.service")
    with FleetDouble(worker()) as fd:
        assert cli("deploy", "--no-block", path, "--endpoint", fd.url).exit_code == 0
        for argv in (["unit", "status"], ["journal"]):
            unknown = cli(*argv, "nope.service", "--endpoint", fd.url)
            assert (unknown.exit_code, unknown.stderr) == (2, "error: unit nope.service is not deployed\n")
            nowhere = cli(*argv, "nowhere.service", "--endpoint", fd.url)
            assert (nowhere.exit_code, nowhere.stderr) == (
                1,
                "error: unit nowhere.service is on no machine: fleet has not scheduled it\n",
            )
        cli("deploy", str(MORE_UNITS / "hello.service"), "--endpoint", fd.url)
        elsewhere = cli("journal", "hello.service", "--node", "abcdef", "--endpoint", fd.url)
    assert (elsewhere.exit_code, elsewhere.stderr) == (
        2,
        "error: unit hello.service is not on 'abcdef' (it is on 3d1219c7...)\n",
    )


def test_a_machine_that_is_a_node_is_reached_through_the_node() -> None:
    """fleet reached through the lab: its machine IDs are the nodes' machine IDs, so status runs over the node's
    own connection (here a fake one), not over a new SSH connection to the machine's IP."""
    node = FakeRunner(
        "core-01", {r"^systemctl status --no-pager --full --lines=10 -- hello.service$": (3, "inactive\n", "")}
    )
    facts = {"core-01": NodeFacts("core-01", True, "10.0.0.1", MACHINE, {})}
    hello = UnitFile.parse((MORE_UNITS / "hello.service").read_text(), name="hello.service")
    with FleetDouble(worker()) as fd:
        client = FleetClient(fd.url)
        client.create_unit(hello, "launched")
        backend = FleetBackend(client, Cluster({"core-01": node}), facts=facts)
        machines = backend.machines_of("hello.service")
        assert [m.id for m in machines] == [MACHINE]
        assert backend.machines_of("hello.service", "core-01") == backend.machines_of("hello.service", "3d12")
        with backend.reach(machines, port=1) as reached:  # port 1: a direct SSH attempt would fail loudly
            [text] = status_texts(reached, "hello.service")
    assert (text.node, text.ip, text.exit_code, text.text) == ("core-01", "127.0.0.1", 3, "inactive\n")
