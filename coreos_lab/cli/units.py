"""CLI commands that run units on the cluster, in fleetctl's vocabulary (without clashing with VM lifecycle).

``deploy``, ``undeploy``, ``unit start|stop|cat|status``, ``list-units``, ``list-unit-files``,
``list-machines``, ``journal``, ``reconcile``. The desired state lives in etcd (see :mod:`coreos_lab.deploy`);
nodes are the lab's Vagrant machines or an ``--inventory``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table
from coreos_lab.cli.nodes import ACCEPT_NEW_OPTION, INVENTORY_OPTION, NO_PERSIST_OPTION, open_nodes
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.deploy import NodeFacts, NodeOutcome
    from coreos_lab.fleet import FleetClient

WAIT_OPTION = typer.Option(60.0, "--timeout", "-t", help="Seconds to wait for each unit to become active.", min=0.1)
SETTLE_OPTION = typer.Option(
    1.0,
    "--settle",
    help="Seconds a freshly started unit must stay active (no exit, no restart) to count as launched; 0: no check.",
    min=0.0,
)
FULL_OPTION = typer.Option(False, "--full", "-l", help="Do not shorten hashes.")
NO_LEGEND_OPTION = typer.Option(False, "--no-legend", help="Do not print the column headers.")
UNIT_ARG = typer.Argument(..., help="Unit name, e.g. myapp.service.")
UNITS_ARG = typer.Argument(..., help="Unit names.")
UNIT_FILES_ARG = typer.Argument(..., help="Unit files; the file name is the unit name.")
BACKENDS = ("auto", "fleet", "systemd")
BACKEND_OPTION = typer.Option(
    "auto", "--backend", help="auto (fleet when the nodes run fleetd, else systemd), fleet or systemd."
)
FLEET_ENDPOINT_OPTION = typer.Option(
    None, "--fleet-endpoint", help="fleet API: http://HOST:PORT, or unix:///var/run/fleet.sock on a node (over SSH)."
)

unit_app = typer.Typer(name="unit", help="Start, stop, show or inspect one deployed unit.", no_args_is_help=True)


def lab_specs(lab: Path | None, inventory: Path | None) -> dict[str, NodeSpec] | None:
    """The lab config's nodes (IP, metadata) when the nodes come from a lab; None for an inventory."""
    if inventory is not None:
        return None
    from coreos_lab import config as labconfig

    try:
        cfg = labconfig.load(lab if lab is not None else labconfig.find_lab_dir())
    except ConfigError:
        return None
    return {n.name: n for n in cfg.nodes}


@contextmanager
def _nodes(lab: Path | None, inventory: Path | None, no_persist: bool, accept_new: bool) -> Iterator[Cluster]:
    cluster = open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new)
    try:
        yield cluster
    finally:
        cluster.close()


@dataclass(frozen=True)
class _Target:
    """Where a command acts: the nodes (systemd backend, ``fleet`` None) or a fleet API (``fleet`` set)."""

    cluster: Cluster | None
    facts: dict[str, NodeFacts]
    fleet: FleetClient | None = None

    @property
    def nodes(self) -> Cluster:
        if self.cluster is None:
            raise UsageError("this needs the nodes (--inventory or a lab), not only a fleet endpoint")
        return self.cluster


@contextmanager
def _target(
    backend: str,
    endpoint: str | None,
    lab: Path | None,
    inventory: Path | None,
    no_persist: bool,
    accept_new: bool,
) -> Iterator[_Target]:
    """Resolve ``--backend``: fleet when asked (or, with auto, when a node runs fleetd), else systemd over SSH.

    An ``http(s)://`` endpoint needs no nodes at all; ``unix:///path`` is that socket on a node, over SSH.
    """
    from coreos_lab import deploy as dep
    from coreos_lab.fleet import FleetClient

    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if endpoint is not None:
        if backend == "systemd":
            raise UsageError("--fleet-endpoint needs --backend fleet (or auto)")
        if not endpoint.startswith(("http://", "https://", "unix:///")):
            raise UsageError(f"--fleet-endpoint must be http://HOST:PORT or unix:///PATH, got {endpoint!r}")
        if not endpoint.startswith("unix:"):
            yield _Target(None, {}, FleetClient(endpoint))
            return
    with _nodes(lab, inventory, no_persist, accept_new) as cluster:
        facts = dep.probe_nodes(cluster, lab_specs(lab, inventory))
        reachable = [f for f in facts.values() if f.reachable]
        with_fleet = [f for f in reachable if f.runs_fleet]
        if backend == "fleet" or endpoint is not None or (backend == "auto" and with_fleet):
            socket_path = endpoint[len("unix://") :] if endpoint else dep.FLEET_SOCKET
            chosen = (with_fleet or reachable)[:1]
            if not chosen:
                raise CoreosLabError("no node is reachable to talk to fleet through")
            yield _Target(cluster, facts, FleetClient.over_runner(cluster.runner(chosen[0].name), socket_path))
        else:
            yield _Target(cluster, facts)


def _where(o: NodeOutcome, fleet: bool = False) -> str:
    if fleet:
        from coreos_lab.fleet import machine_cell

        return machine_cell(o.node, o.ip) if o.node else "-"
    return f"{o.node} ({o.ip})" if o.ip else o.node


def _read_units(paths: list[Path]) -> list[Any]:
    from coreos_lab.deploy import load_unit

    units = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        unit, _ = load_unit(text, path.name)
        units.append(unit)
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise UsageError("the same unit name is given twice")
    return units


def deploy_cmd(
    unit_files: list[Path] = UNIT_FILES_ARG,
    timeout: float = WAIT_OPTION,
    settle: float = SETTLE_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Place, record (etcd) and start units on the cluster, honouring [X-Fleet]; waits until active or failed."""
    from coreos_lab import deploy as dep

    units = _read_units(unit_files)  # every file is checked before any node is touched
    deploying = False
    try:
        with _target(backend, fleet_endpoint, lab, inventory, no_persist, accept_new) as t:
            deploying = True
            if t.fleet is not None:
                outcomes = dep.fleet_deploy(t.fleet, units, timeout=timeout)
            else:
                outcomes = dep.deploy(t.nodes, units, facts=t.facts, timeout=timeout, settle=settle)
            on_fleet = t.fleet is not None
    except dep.DeployInterrupted as exc:
        # Reached after the nodes were closed (in-flight node steps have stopped): say where it stopped.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        if deploying:  # fleet's deploy, or a second Ctrl-C while the first one's clean-up ran
            typer.echo("error: interrupted while deploying; run deploy again (or reconcile) to finish", err=True)
        else:
            typer.echo("error: interrupted before anything was changed", err=True)
        raise typer.Exit(130) from None
    if as_json:
        emit_json([o.to_json() for o in outcomes])
    else:
        for o in outcomes:
            for w in o.warnings:
                typer.echo(f"warning: {w}", err=True)
            if o.status == "unchanged":
                where = ", ".join(_where(n, on_fleet) for n in o.nodes) or "-"
                typer.echo(f"Unit {o.unit} unchanged: {o.detail} (launched on {where})")
                continue
            for n in o.nodes:
                if n.ok:
                    verb = "updated and launched" if o.status == "updated" else "launched"
                    typer.echo(f"Unit {o.unit} {verb} on {_where(n, on_fleet)}")
                else:
                    typer.echo(f"error: Unit {o.unit} failed on {_where(n, on_fleet)}: {n.error}", err=True)
                    for line in n.journal:
                        typer.echo(f"  {line}", err=True)
            if o.detail:
                typer.echo(f"Unit {o.unit}: {o.detail}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def undeploy_cmd(
    units: list[str] = UNITS_ARG,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Stop units, remove them from every node and delete their records (fleetctl destroy). Idempotent."""
    from coreos_lab import deploy as dep
    from coreos_lab.unitfile import validate_unit_name

    for u in units:
        validate_unit_name(u)
    with _target(backend, fleet_endpoint, lab, inventory, no_persist, accept_new) as t:
        if t.fleet is not None:
            outcomes = dep.fleet_undeploy(t.fleet, units)
        else:
            outcomes = dep.undeploy(t.nodes, units, facts=t.facts)
    if as_json:
        emit_json([o.to_json() for o in outcomes])
    else:
        for o in outcomes:
            if o.had_record:
                typer.echo(f"Destroyed {o.unit}" + ("" if o.deleted else " (record kept until every node is clean)"))
            else:
                typer.echo(f"Unit {o.unit} was not deployed; nothing to destroy")
            for node, err in o.errors:
                typer.echo(f"error: {o.unit} on {node}: {err}", err=True)
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def vars_state(s: Any) -> dict[str, Any]:
    """A fleet unit state as JSON (fleet's own field names)."""
    return {
        "name": s.name,
        "machineID": s.machine_id,
        "hash": s.hash,
        "systemdLoadState": s.load_state,
        "systemdActiveState": s.active_state,
        "systemdSubState": s.sub_state,
    }


def _rows_units(rows: list[Any]) -> list[list[Any]]:
    return [[r.unit, r.machine, r.active_state if r.error is None else "unknown", r.sub_state] for r in rows]


def list_units_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = typer.Option(False, "--full", "-l", help="With the fleet backend: full machine IDs."),
    no_legend: bool = NO_LEGEND_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Deployed units where they run: UNIT MACHINE ACTIVE SUB (desired state from etcd, live state from systemd)."""
    from coreos_lab import deploy as dep

    with _target(backend, fleet_endpoint, lab, inventory, no_persist, accept_new) as t:
        if t.fleet is not None:
            from coreos_lab import fleet

            states, machines = t.fleet.states(), t.fleet.machines()
            if as_json:
                emit_json([vars_state(s) for s in states])
            else:
                typer.echo(fleet.list_units_table(states, machines, full=full, legend=not no_legend), nl=False)
            return
        rows = dep.list_units(t.nodes, facts=t.facts)
    if as_json:
        emit_json([r.to_json() for r in rows])
    else:
        emit_table(["UNIT", "MACHINE", "ACTIVE", "SUB"], _rows_units(rows), legend=not no_legend)


def list_unit_files_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = FULL_OPTION,
    no_legend: bool = NO_LEGEND_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Deployed unit files: UNIT HASH DSTATE STATE TARGET."""
    from coreos_lab import deploy as dep

    with _target(backend, fleet_endpoint, lab, inventory, no_persist, accept_new) as t:
        if t.fleet is not None:
            from coreos_lab import fleet

            funits, machines = t.fleet.units(), t.fleet.machines()
            if as_json:
                emit_json([{**u.to_json(), "hash": u.hash} for u in funits])
            else:
                typer.echo(fleet.list_unit_files_table(funits, machines, full=full, legend=not no_legend), nl=False)
            return
        facts = t.facts
        rows = dep.list_unit_files(t.nodes, facts=facts)
    if as_json:
        emit_json([r.to_json() for r in rows])
        return

    def target(r: Any) -> str:
        if r.is_global:
            return "global"
        return ",".join(facts[t].machine if t in facts else t for t in r.targets)

    table = [[r.unit, r.hash if full else r.hash[:7], r.desired_state, r.state, target(r)] for r in rows]
    emit_table(["UNIT", "HASH", "DSTATE", "STATE", "TARGET"], table, legend=not no_legend)


def list_machines_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = typer.Option(False, "--full", "-l", help="Also show each node's machine ID."),
    no_legend: bool = NO_LEGEND_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """The nodes: MACHINE IP METADATA (exit 1 when a node cannot be reached)."""

    with _target(backend, fleet_endpoint, lab, inventory, no_persist, accept_new) as t:
        if t.fleet is not None:
            from coreos_lab import fleet

            machines = t.fleet.machines()
            if as_json:
                emit_json([{"id": m.id, "ip": m.primary_ip, "metadata": dict(m.metadata)} for m in machines])
            else:
                typer.echo(fleet.list_machines_table(machines, full=full, legend=not no_legend), nl=False)
            return
        facts = t.facts
    if as_json:
        emit_json([f.to_json() for f in facts.values()])
    else:
        rows = []
        for f in facts.values():
            meta = ",".join(f"{k}={v}" for k, v in sorted(f.metadata.items()))
            rows.append([f.name, f.ip, meta, f.machine_id] if full else [f.name, f.ip, meta])
        emit_table(["MACHINE", "IP", "METADATA", "MACHINE ID"][: 4 if full else 3], rows, legend=not no_legend)
        for f in facts.values():
            if not f.reachable:
                typer.echo(f"error: {f.name}: {f.error}", err=True)
    if not all(f.reachable for f in facts.values()):
        raise typer.Exit(1)


def journal_cmd(
    unit: str = UNIT_ARG,
    lines: int = typer.Option(10, "-n", "--lines", help="How many of the last lines."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl-C to stop)."),
    interval: float = typer.Option(1.0, "--interval", help="With -f: seconds between polls."),
    node: str | None = typer.Option(None, "--node", "-N", help="This node (e.g. for a global unit)."),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """The unit's journal from the node it runs on (fleetctl journal)."""
    from coreos_lab import deploy as dep
    from coreos_lab.systemd import SystemdClient
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    if lines < 0 or interval <= 0:
        raise UsageError("-n must be >= 0 and --interval > 0")
    with _nodes(lab, inventory, no_persist, accept_new) as cluster:
        client = SystemdClient(cluster.runner(node or dep.journal_node(cluster, unit)))
        text, cursor = client.journal_after(unit, lines=lines)
        typer.echo(text, nl=False)
        while follow:
            sys.stdout.flush()
            time.sleep(interval)
            text, cursor = client.journal_after(unit, cursor=cursor, lines=None if cursor else lines)
            typer.echo(text, nl=False)


def reconcile_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be done."),
    timeout: float = WAIT_OPTION,
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Reschedule units off gone/unhealthy nodes and stop units running where they should not. Idempotent."""
    from coreos_lab import deploy as dep

    with _nodes(lab, inventory, no_persist, accept_new) as cluster:
        result = dep.reconcile(cluster, specs=lab_specs(lab, inventory), dry_run=dry_run, timeout=timeout)
    if as_json:
        emit_json(result.to_json())
    else:
        if not result.changed:
            typer.echo("Nothing to do: every unit is where and how it should be")
        for a in result.actions:
            prefix = "would " if result.dry_run else ""
            if a.ok:
                typer.echo(f"{prefix}{a.action}")
            else:
                typer.echo(f"error: {a.action}: {a.error}", err=True)
        for name in result.deleted_records:
            typer.echo(f"Destroyed {name} (pending undeploy finished)")
        for name, why in result.unplaceable:
            typer.echo(f"error: {name} cannot be placed: {why}", err=True)
    if not result.ok:
        raise typer.Exit(1)


# ---- unit start|stop|cat|status ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Where:
    backend: str
    fleet_endpoint: str | None
    lab: Path | None
    inventory: Path | None
    no_persist: bool
    accept_new: bool


def _state_change(unit: str, desired: Literal["launched", "loaded"], timeout: float, as_json: bool, w: _Where) -> None:
    from coreos_lab import deploy as dep
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    with _target(w.backend, w.fleet_endpoint, w.lab, w.inventory, w.no_persist, w.accept_new) as t:
        if t.fleet is not None:
            change = dep.fleet_set_state(t.fleet, unit, desired, timeout=timeout)
        else:
            change = dep.set_state(t.nodes, unit, desired, facts=t.facts, timeout=timeout)
        on_fleet = t.fleet is not None
    if as_json:
        emit_json(change.to_json())
    else:
        for n in change.nodes:
            if n.ok:
                typer.echo(f"Unit {unit} {desired} on {_where(n, on_fleet)}")
            else:
                typer.echo(f"error: Unit {unit} on {_where(n, on_fleet)}: {n.error}", err=True)
    if not change.ok:
        raise typer.Exit(1)


@unit_app.command("start")
def unit_start(
    unit: str = UNIT_ARG,
    timeout: float = WAIT_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Set the unit's desired state to launched and start it on its node(s)."""
    w = _Where(backend, fleet_endpoint, lab, inventory, no_persist, accept_new)
    _state_change(unit, "launched", timeout, as_json, w)


@unit_app.command("stop")
def unit_stop(
    unit: str = UNIT_ARG,
    timeout: float = WAIT_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Set the unit's desired state to loaded and stop it (it stays installed)."""
    w = _Where(backend, fleet_endpoint, lab, inventory, no_persist, accept_new)
    _state_change(unit, "loaded", timeout, as_json, w)


@unit_app.command("cat")
def unit_cat(
    unit: str = UNIT_ARG,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Print the unit file as deployed (from etcd)."""
    from coreos_lab import deploy as dep

    with _nodes(lab, inventory, no_persist, accept_new) as cluster:
        record = dep.get_record(cluster, unit)
    sys.stdout.write(record.content if record.content.endswith("\n") else record.content + "\n")


@unit_app.command("status")
def unit_status(
    unit: str = UNIT_ARG,
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Show systemctl status of the unit on its node(s); exits like systemctl (3: not running)."""
    from coreos_lab import deploy as dep
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    with _nodes(lab, inventory, no_persist, accept_new) as cluster:
        texts = dep.unit_status(cluster, unit, facts=dep.probe_nodes(cluster, lab_specs(lab, inventory)))
    if as_json:
        emit_json([t.to_json() for t in texts])
    else:
        for t in texts:
            if len(texts) > 1:
                typer.echo(f"# {t.node} ({t.ip})" if t.ip else f"# {t.node}")
            sys.stdout.write(t.text)
    worst = next((t.exit_code for t in texts if t.exit_code), 0)
    if worst:
        raise typer.Exit(worst if 0 < worst < 256 else 1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("deploy")(deploy_cmd)
    app.command("undeploy")(undeploy_cmd)
    app.add_typer(unit_app, name="unit")
    app.command("list-units")(list_units_cmd)
    app.command("list-unit-files")(list_unit_files_cmd)
    app.command("list-machines")(list_machines_cmd)
    app.command("journal")(journal_cmd)
    app.command("reconcile")(reconcile_cmd)
