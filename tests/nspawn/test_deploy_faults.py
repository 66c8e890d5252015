"""Faults during ``coreos-lab deploy``, on real nodes: Ctrl-C at chosen points, a node powered off mid-deploy, and
a unit that dies right after it became active.

The real CLI runs as a subprocess against the nspawn rig (3 Debian containers with systemd, sshd and one etcd
cluster, in a network namespace the rig creates). The signal is timed by watching etcd and the nodes (through
nsenter, independently of coreos-lab), never by blind sleeps. What is left behind is checked the same way:
no unit file on any node without its desired-state record in etcd, no temp file in /etc/systemd/system.

The module boots its own rig (:class:`tests.nspawn.deploy_rig.DeployRig`); the power-off test comes last.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.nspawn.deploy_rig import CLI, DeployRig, cli
from tests.nspawn.rig import Node

pytestmark = pytest.mark.nspawn

# ExecStartPre opens a window in which the unit is installed and "activating" but not yet running.
SLOW = "[Unit]\nDescription=slow starter\n\n[Service]\nExecStartPre=/bin/sleep {pre}\nExecStart=/bin/sleep infinity\n"
DIES = "[Service]\nExecStart=/bin/sh -c 'echo about to fail; sleep 0.3; exit 3'\n"
FLAPS = "[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 3'\nRestart=always\nRestartSec=0.1\n"
OURS = re.compile(r"^(intr-|off-|dies|flaps|fine)")


def spawn(inventory: Path, *args: str) -> subprocess.Popen[str]:
    argv = [*CLI, *args, "--inventory", str(inventory), "--no-persist"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_unit(d: Path, name: str, text: str) -> str:
    path = d / name
    path.write_text(text)
    return str(path)


def live(rig: DeployRig) -> list[Node]:
    return [n for n in rig.nodes if n.nspawn.poll() is None]


def records(rig: DeployRig) -> dict[str, tuple[str, ...]]:
    """{unit: targets} straight from etcd (through the first live member), not through the CLI."""
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.state import EtcdKV, RecordStore

    node = live(rig)[0]
    return {r.name: r.targets for r in RecordStore(EtcdKV(EtcdClient(node.etcd_url, timeout=5))).list()}


def unit_dir(node: Node) -> list[str]:
    """Every entry of /etc/systemd/system on the node (temp files included), asked as root through nsenter."""
    return node.root("ls -A /etc/systemd/system").stdout.split()


def active_state(node: Node, unit: str) -> str:
    return node.root(f"systemctl is-active {unit}").stdout.strip()


def active_on(rig: DeployRig, unit: str) -> list[str]:
    return [n.name for n in live(rig) if active_state(n, unit) == "active"]


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0, interval: float = 0.02) -> object:
    """Poll ``check`` until it returns something truthy (bounded); the value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def assert_consistent(rig: DeployRig) -> None:
    """No unit file of ours without a record, no temp file in the unit directory, no upload left in /tmp."""
    recorded = records(rig)
    for node in live(rig):
        entries = unit_dir(node)
        assert not [e for e in entries if "coreos-lab" in e], f"{node.name}: temp files {entries}"
        ours = [e for e in entries if OURS.match(e)]
        orphans = [e for e in ours if e not in recorded]
        assert not orphans, f"{node.name}: unit files without a record in etcd: {orphans}"
        uploads = node.root("ls -A /tmp").stdout.split()
        assert not [u for u in uploads if u.startswith(".coreos-lab-")], f"{node.name}: uploads left: {uploads}"


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str, float]:
    """SIGINT (Ctrl-C) to the CLI; its exit code, output and how long it took to exit."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError("deploy did not exit within 30 s of Ctrl-C") from None
    return proc.returncode, out, err, time.monotonic() - sent


def target_of(rig: DeployRig, unit: str) -> Node:
    targets = wait_for(f"the record of {unit}", lambda: records(rig).get(unit))
    assert isinstance(targets, tuple)
    [name] = targets
    return next(n for n in rig.nodes if n.name == name)


# Where the Ctrl-C lands: each waits (bounded) for an observable moment of the deploy.
def _at_record(rig: DeployRig, unit: str) -> None:
    wait_for(f"the record of {unit}", lambda: unit in records(rig))


def _at_upload(rig: DeployRig, unit: str) -> None:
    node = target_of(rig, unit)
    wait_for(f"{unit} on {node.name}", lambda: unit in unit_dir(node))


def _at_activating(rig: DeployRig, unit: str) -> None:
    node = target_of(rig, unit)
    wait_for(f"{unit} activating", lambda: active_state(node, unit) == "activating")


def _at_settle(rig: DeployRig, unit: str) -> None:
    node = target_of(rig, unit)
    wait_for(f"{unit} active", lambda: active_state(node, unit) == "active")


POINTS = {"record": _at_record, "upload": _at_upload, "activating": _at_activating, "settle": _at_settle}
INTERRUPT_SECONDS: dict[str, float] = {}


@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_during_deploy_leaves_nothing_unrecorded_and_a_rerun_finishes(
    rig: DeployRig, inventory: Path, units_dir: Path, point: str
) -> None:
    unit = f"intr-{point}.service"
    # The settle point needs the unit up quickly and a settle window long enough to land in.
    pre = "0.1" if point == "settle" else "3"
    path = write_unit(units_dir, unit, SLOW.format(pre=pre))
    proc = spawn(inventory, "deploy", path, "--timeout", "30", "--settle", "3")
    try:
        POINTS[point](rig, unit)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    code, out, err, took = interrupt(proc)
    INTERRUPT_SECONDS[point] = took
    assert code == 130, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: interrupted"), err
    if point != "record":  # the record was certainly written before the node was touched
        assert lines[0] == (
            f"error: interrupted while starting {unit}: its desired state is recorded in etcd; "
            "run deploy again (or reconcile) to finish"
        )
    assert took < 10, f"deploy took {took:.1f}s to stop after Ctrl-C"
    assert_consistent(rig)
    assert list(records(rig)) == [unit]

    again = cli(inventory, "deploy", path, "--timeout", "30")
    assert again.returncode == 0, again.stderr
    [target] = records(rig)[unit]
    assert active_on(rig, unit) == [target]
    ip = next(n.address for n in rig.nodes if n.name == target)
    first = again.stdout.splitlines()[0]
    assert first in (
        f"Unit {unit} launched on {target} ({ip})",  # the rerun started it
        f"Unit {unit} unchanged: identical content is already deployed (launched on {target} ({ip}))",
    ), again.stdout
    if first.startswith(f"Unit {unit} launched"):
        assert f"Unit {unit}: identical content was recorded but not running on {target}: started it" in again.stdout
    nothing = cli(inventory, "reconcile")
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.strip() == "Nothing to do: every unit is where and how it should be"
    assert_consistent(rig)

    gone = cli(inventory, "undeploy", unit)
    assert gone.returncode == 0, gone.stderr
    assert [n.name for n in live(rig) if unit in unit_dir(n)] == []
    print(f"\nCtrl-C at {point}: exit 130 after {took:.2f}s; rerun: {first}")


def test_interrupted_deploy_is_finished_by_reconcile(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    unit = "intr-reconcile.service"
    path = write_unit(units_dir, unit, SLOW.format(pre="3"))
    proc = spawn(inventory, "deploy", path, "--timeout", "30")
    _at_record(rig, unit)
    code, _, err, _ = interrupt(proc)
    assert code == 130, err
    assert_consistent(rig)
    fix = cli(inventory, "reconcile", "--timeout", "30")
    assert fix.returncode == 0, fix.stderr
    [target] = records(rig)[unit]
    # Either the interrupted start was still queued on the node (nothing to do) or reconcile did it.
    assert active_on(rig, unit) == [target] or f"start {unit} on {target}" in fix.stdout
    wait_for(f"{unit} active", lambda: active_on(rig, unit) == [target], timeout=15, interval=0.3)
    assert cli(inventory, "reconcile").stdout.strip() == "Nothing to do: every unit is where and how it should be"
    assert cli(inventory, "undeploy", unit).returncode == 0


def test_a_unit_that_dies_right_after_start_is_reported_failed(
    rig: DeployRig, inventory: Path, units_dir: Path
) -> None:
    path = write_unit(units_dir, "dies.service", DIES)
    started = time.monotonic()
    result = cli(inventory, "deploy", path)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    [target] = records(rig)["dies.service"]
    ip = next(n.address for n in rig.nodes if n.name == target)
    lines = result.stderr.splitlines()
    # Seen active, then failed during the settle pause; on a busy host the first poll may already see it failed.
    prefix = f"error: Unit dies.service failed on {target} ({ip}): dies.service "
    assert lines[0] in (
        f"{prefix}did not stay active: failed/failed (result exit-code, status 3) on {target}",
        f"{prefix}is failed/failed (result exit-code, status 3) on {target}",
    ), lines[0]
    journal = lines[1:]
    assert journal
    assert all(line.startswith("  ") for line in journal)
    assert any("about to fail" in line for line in journal)
    assert result.stdout == ""
    assert active_state(next(n for n in rig.nodes if n.name == target), "dies.service") == "failed"
    as_json = json.loads(cli(inventory, "deploy", path, "--json").stdout)
    assert as_json[0]["status"] == "failed"
    assert as_json[0]["nodes"][0]["active_state"] == "failed"
    assert as_json[0]["nodes"][0]["journal"]

    # Without the settle check the same unit is "launched": what the check is there to catch.
    assert cli(inventory, "undeploy", "dies.service").returncode == 0
    blind = cli(inventory, "deploy", path, "--settle", "0")
    assert blind.returncode == 0, blind.stderr
    assert re.fullmatch(r"Unit dies\.service launched on core-\d\d \(10\.213\.0\.\d+\)\n", blind.stdout)
    assert cli(inventory, "undeploy", "dies.service").returncode == 0
    print(f"\ndeploy of a unit that dies after 0.3 s: reported failed in {took:.2f}s (settle 1 s):\n{result.stderr}")


def test_a_unit_that_keeps_restarting_is_reported_failed(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    result = cli(inventory, "deploy", write_unit(units_dir, "flaps.service", FLAPS))
    assert result.returncode == 1, result.stdout
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: Unit flaps.service failed on core-0"), result.stderr
    assert re.search(r"flaps\.service (keeps restarting|did not stay active|restarted)", first), first
    assert cli(inventory, "undeploy", "flaps.service").returncode == 0
    fine = cli(inventory, "deploy", write_unit(units_dir, "fine.service", SLOW.format(pre="0")))
    assert fine.returncode == 0, fine.stderr
    assert cli(inventory, "undeploy", "fine.service").returncode == 0


def test_node_powered_off_during_deploy(rig: DeployRig, inventory: Path, units_dir: Path) -> None:
    """Last in the module: the node stays off."""
    unit = "off-during.service"
    path = write_unit(units_dir, unit, SLOW.format(pre="4"))
    proc = spawn(inventory, "deploy", path, "--timeout", "30")
    try:
        victim = target_of(rig, unit)
        wait_for(f"{unit} activating on {victim.name}", lambda: active_state(victim, unit) == "activating")
    except BaseException:
        proc.kill()
        proc.communicate(timeout=10)
        raise
    t0 = time.monotonic()
    off_seconds = rig.power_off(victim)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError("deploy hung after its node was powered off") from None
    reported = time.monotonic() - t0
    assert proc.returncode == 1, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert re.match(
        rf"error: Unit {re.escape(unit)} failed on {victim.name} \({re.escape(victim.address)}\): "
        rf"{victim.name} (became unreachable|is going down \(systemd: [^)]*\)) during the deploy \(",
        errors[0],
    ), err
    assert records(rig) == {unit: (victim.name,)}  # one record, still naming the node: reconcile's input
    print(f"\n{errors[0]}")

    survivors = sorted(n.name for n in live(rig))
    started = time.monotonic()
    fix = cli(inventory, "reconcile", "--timeout", "30")
    reconcile_seconds = time.monotonic() - started
    assert fix.returncode == 0, fix.stderr
    assert f"unschedule {unit} on {victim.name} (node is not healthy)" in fix.stdout
    [new_home] = records(rig)[unit]
    assert new_home in survivors
    assert active_on(rig, unit) == [new_home]
    again = cli(inventory, "reconcile")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "Nothing to do: every unit is where and how it should be"
    assert_consistent(rig)
    print(
        f"\npower off {victim.name} mid-deploy: {off_seconds:.2f}s; deploy exited {reported:.2f}s after it began; "
        f"reconcile moved {unit} to {new_home} in {reconcile_seconds:.2f}s"
    )
