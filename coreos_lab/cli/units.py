"""CLI commands that run units on the cluster, in fleetctl's vocabulary (without clashing with VM lifecycle).

``deploy``, ``undeploy``, ``unit start|stop|cat|status``, ``list-units``, ``list-unit-files``,
``list-machines``, ``journal``, ``reconcile``. The desired state lives in etcd (see :mod:`coreos_lab.units`);
nodes are the lab's Vagrant machines or an ``--inventory``. With fleet (``--backend fleet``, ``--endpoint``,
``--tunnel``), fleet keeps the desired state and the output is fleetctl's, line for line.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    BACKEND_OPTION,
    ENDPOINT_ENV,
    FLEET_ENDPOINT_OPTION,
    FLEET_SSH_USER,
    FLEETCTL_TAB_WIDTH,
    FOLLOW_OPTION,
    INTERVAL_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    NODE_OPTION,
    SSH_USERNAME_OPTION,
    TUNNEL_ENV,
    TUNNEL_OPTION,
    UNIT_TIMEOUT_OPTION,
    emit_json,
    emit_table,
    from_env,
    lab_specs,
    lines_option,
    open_nodes,
    print_journal,
    report_problem,
    tunnel_nodes,
)
from coreos_lab.errors import CoreosLabError, UsageError

if TYPE_CHECKING:
    from coreos_lab.fleet import FleetMachine
    from coreos_lab.units.base import UnitBackend
    from coreos_lab.units.fleet_backend import FleetBackend, Reached
    from coreos_lab.units.results import Listing, Report, StatusText

SETTLE_OPTION = typer.Option(
    1.0,
    "--settle",
    help="Seconds a freshly started unit must stay active (no exit, no restart) to count as launched; 0: no check.",
    min=0.0,
)
NO_BLOCK_OPTION = typer.Option(
    False,
    "--no-block",
    help="fleet: set the desired state and return without waiting (a unit no machine can take yet is left "
    "launched, as fleetctl does). Refused with the systemd backend.",
)
SSH_PORT_OPTION = typer.Option(
    22, "--ssh-port", help="fleet: the SSH port of the unit's machine, reached at its IP.", min=1, max=65535
)
FULL_OPTION = typer.Option(False, "--full", "-l", help="Do not shorten hashes.")
NO_LEGEND_OPTION = typer.Option(False, "--no-legend", help="Do not print the column headers.")
FIELDS_OPTION = typer.Option(
    None, "--fields", help="Columns to print, comma-separated, as fleetctl names them (e.g. unit,machine,active)."
)
UNIT_ARG = typer.Argument(..., help="Unit name, e.g. myapp.service.")
UNITS_ARG = typer.Argument(..., help="Unit names.")
UNIT_FILES_ARG = typer.Argument(..., help="Unit files; the file name is the unit name.")

unit_app = typer.Typer(name="unit", help="Start, stop, show or inspect one deployed unit.", no_args_is_help=True)


@dataclass(frozen=True)
class _Where:
    """Where the units are: the ``--backend`` and its way to fleet, the lab or inventory, how to connect."""

    backend: str
    fleet_endpoint: str | None
    tunnel: str | None
    ssh_username: str | None
    lab: Path | None
    inventory: Path | None
    no_persist: bool
    accept_new: bool


@contextmanager
def _backend(w: _Where, *, report: Report | None = None, block: bool = True) -> Iterator[UnitBackend]:
    """The backend the user asked for (see :func:`coreos_lab.units.base.open_backend`); the nodes are opened
    only when the backend needs them, and closed on the way out. fleetctl's environment variables stand in
    for ``--endpoint`` and ``--tunnel``, unless ``--backend systemd`` says fleet is not wanted."""
    from coreos_lab.units.base import open_backend

    fleet_wanted = w.backend != "systemd"
    endpoint = from_env(w.fleet_endpoint, ENDPOINT_ENV) if fleet_wanted else w.fleet_endpoint
    tunnel = from_env(w.tunnel, TUNNEL_ENV) if fleet_wanted else w.tunnel
    through = None
    if tunnel is not None:
        through = partial(
            tunnel_nodes,
            tunnel,
            w.lab,
            w.inventory,
            ssh_username=w.ssh_username,
            no_persist=w.no_persist,
            accept_new=w.accept_new,
        )
    with open_backend(
        w.backend,
        lambda: open_nodes(w.lab, w.inventory, no_persist=w.no_persist, accept_new=w.accept_new),
        endpoint=endpoint,
        specs=lambda: lab_specs(w.lab, w.inventory),
        tunnel=through,
        report=report,
        block=block,
    ) as chosen:
        yield chosen


def _progress(as_json: bool) -> Report | None:
    """fleetctl's progress lines go to stdout as they happen, except under ``--json``."""
    return None if as_json else typer.echo


def _emit_listing(listing: Listing, *, as_json: bool, legend: bool) -> None:
    if as_json:
        emit_json(list(listing.records))
    else:
        # fleet's listings are fleetctl's own tables, byte for byte: its tab stops.
        emit_table(
            listing.columns, listing.rows, legend=legend, tab_width=FLEETCTL_TAB_WIDTH if listing.fleetctl else None
        )
        for problem in listing.problems:
            report_problem(problem)
        for note in listing.notes:
            typer.echo(note, err=True)
    if listing.problems:
        raise typer.Exit(1)


def _read_units(paths: list[Path]) -> list[Any]:
    """Each unit file, parsed and checked; an instance with no file of its own comes from its template beside
    it, as fleet does (``deploy app@3.service`` with only ``app@.service`` on disk)."""
    from coreos_lab.unitfile import load_unit, validate_unit_name

    units = []
    for path in paths:
        source = path
        if not path.exists():
            with contextlib.suppress(CoreosLabError):
                template = validate_unit_name(path.name).template
                if template is not None and template != path.name and (path.parent / template).is_file():
                    source = path.parent / template
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{source}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        unit, _ = load_unit(text, path.name)
        units.append(unit)
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise UsageError("the same unit name is given twice")
    return units


def deploy_cmd(
    unit_files: list[Path] = UNIT_FILES_ARG,
    timeout: float = UNIT_TIMEOUT_OPTION,
    settle: float = SETTLE_OPTION,
    no_block: bool = NO_BLOCK_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Place, record (etcd) and start units on the cluster, honouring [X-Fleet]; waits until active or failed."""
    from coreos_lab.units.results import DeployInterrupted

    units = _read_units(unit_files)  # every file is checked before any node is touched
    w = _Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)
    deploying = False
    try:
        with _backend(w, report=_progress(as_json), block=not no_block) as b:
            deploying = True
            outcomes = b.deploy(units, timeout=timeout, settle=settle)
    except DeployInterrupted:
        raise  # it says where it stopped; reached after the nodes were closed (in-flight node steps have stopped)
    except KeyboardInterrupt:
        # fleet's deploy, or a second Ctrl-C while the first one's clean-up ran: the boundary says which.
        if deploying:
            raise KeyboardInterrupt("interrupted while deploying; run deploy again (or reconcile) to finish") from None
        raise KeyboardInterrupt("interrupted before anything was changed") from None
    if as_json:
        emit_json([o.to_json() for o in outcomes])
    else:
        for o in outcomes:
            for w_ in o.warnings:
                report_problem(w_, label="warning")
            if o.status == "unchanged":
                where = ", ".join(b.where(n) for n in o.nodes) or "-"
                typer.echo(f"Unit {o.unit} unchanged: {o.detail} (launched on {where})")
                continue
            for n in o.nodes:
                if not n.ok:
                    report_problem(f"Unit {o.unit} failed on {b.where(n)}: {n.error}", details=n.journal)
                elif not o.reported:
                    verb = "updated and launched" if o.status == "updated" else "launched"
                    typer.echo(f"Unit {o.unit} {verb} on {b.where(n)}")
            if o.detail:
                typer.echo(f"Unit {o.unit}: {o.detail}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def undeploy_cmd(
    units: list[str] = UNITS_ARG,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Stop units, remove them from every node and delete their records (fleetctl destroy). Idempotent."""
    from coreos_lab.unitfile import is_pattern, validate_unit_name

    # fleetctl destroy takes names literally (a glob matches nothing there); our own backend expands nothing
    # either, and refuses a name systemd would not take.
    patterns = [u for u in units if is_pattern(u)]
    for u in units:
        if u not in patterns:
            validate_unit_name(u)
    with _backend(_Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)) as b:
        if b.name != "fleet":
            for u in patterns:
                validate_unit_name(u)
        outcomes = b.undeploy(units)
    if as_json:
        emit_json([o.to_json() for o in outcomes])
    elif b.name == "fleet":
        # fleetctl's words: a line per destroyed unit; none found at all -> one line on stderr, exit 0
        for o in outcomes:
            if o.had_record:
                typer.echo(f"Destroyed {o.unit}")
        if not any(o.had_record for o in outcomes):
            typer.echo("Units not found in registry", err=True)
    else:
        for o in outcomes:
            if o.had_record:
                typer.echo(f"Destroyed {o.unit}" + ("" if o.deleted else " (record kept until every node is clean)"))
            else:
                typer.echo(f"Unit {o.unit} was not deployed; nothing to destroy")
            for node, err in o.errors:
                report_problem(f"{o.unit} on {node}: {err}")
    if not all(o.ok for o in outcomes):
        raise typer.Exit(1)


def list_units_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = typer.Option(False, "--full", "-l", help="With the fleet backend: full machine IDs."),
    no_legend: bool = NO_LEGEND_OPTION,
    fields: str | None = FIELDS_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Deployed units where they run: UNIT MACHINE ACTIVE SUB (desired state from etcd, live state from systemd)."""
    from coreos_lab.units.results import parse_fields

    chosen = parse_fields("list-units", fields) if fields is not None else None  # checked before any node is asked
    with _backend(_Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)) as b:
        listing = b.list_units(full=full, fields=chosen)
    _emit_listing(listing, as_json=as_json, legend=not no_legend)


def list_unit_files_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = FULL_OPTION,
    no_legend: bool = NO_LEGEND_OPTION,
    fields: str | None = FIELDS_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Deployed unit files: UNIT HASH DSTATE STATE TARGET."""
    from coreos_lab.units.results import parse_fields

    chosen = parse_fields("list-unit-files", fields) if fields is not None else None  # checked before any node is asked
    with _backend(_Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)) as b:
        listing = b.list_unit_files(full=full, fields=chosen)
    _emit_listing(listing, as_json=as_json, legend=not no_legend)


def list_machines_cmd(
    as_json: bool = JSON_OPTION,
    full: bool = typer.Option(False, "--full", "-l", help="Also show each node's machine ID."),
    no_legend: bool = NO_LEGEND_OPTION,
    fields: str | None = FIELDS_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """The nodes: MACHINE IP METADATA (exit 1 when a node cannot be reached)."""
    from coreos_lab.units.results import parse_fields

    chosen = parse_fields("list-machines", fields) if fields is not None else None  # checked before any node is asked
    with _backend(_Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)) as b:
        listing = b.list_machines(full=full, fields=chosen)
    _emit_listing(listing, as_json=as_json, legend=not no_legend)


def journal_cmd(
    unit: str = UNIT_ARG,
    lines: int = lines_option(10),
    follow: bool = FOLLOW_OPTION,
    interval: float = INTERVAL_OPTION,
    node: str | None = NODE_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    ssh_port: int = SSH_PORT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """The unit's journal from the node it runs on (fleetctl journal)."""
    from coreos_lab.systemd import SystemdClient
    from coreos_lab.unitfile import validate_unit_name
    from coreos_lab.units.fleet_backend import FleetBackend
    from coreos_lab.units.systemd_backend import SystemdBackend, journal_node

    validate_unit_name(unit)
    if lines < 0 or interval <= 0:
        raise UsageError("-n must be >= 0 and --interval > 0")
    w = _Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)
    with _backend(w) as b:
        if isinstance(b, FleetBackend):
            # as fleetctl journal: on the (first) machine fleet says holds the unit
            with _reach(b, b.machines_of(unit, node)[:1], w, ssh_port) as reached:
                client = SystemdClient(reached[0].runner)
                print_journal(client, unit, lines=lines, follow=follow, interval=interval)
            return
        if not isinstance(b, SystemdBackend):
            raise UsageError(f"journal: the {b.name} backend has no journal")
        client = SystemdClient(b.cluster.runner(node or journal_node(b.cluster, unit)))
        print_journal(client, unit, lines=lines, follow=follow, interval=interval)


def _reach(
    b: FleetBackend, machines: tuple[FleetMachine, ...], w: _Where, port: int
) -> AbstractContextManager[list[Reached]]:
    """:meth:`FleetBackend.reach` as fleetctl logs in to a machine at its IP: ``--ssh-username`` (core)."""
    user = w.ssh_username or FLEET_SSH_USER
    return b.reach(machines, user=user, port=port, accept_new=w.accept_new, persist=not w.no_persist)


def reconcile_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be done."),
    timeout: float = UNIT_TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Reschedule units off gone/unhealthy nodes and stop units running where they should not. Idempotent."""
    from coreos_lab.units.systemd_backend import reconcile

    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        result = reconcile(cluster, specs=lab_specs(lab, inventory), dry_run=dry_run, timeout=timeout)
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
                report_problem(f"{a.action}: {a.error}")
        for name in result.deleted_records:
            typer.echo(f"Destroyed {name} (pending undeploy finished)")
        for name, why in result.unplaceable:
            report_problem(f"{name} cannot be placed: {why}")
    if not result.ok:
        raise typer.Exit(1)


# ---- unit start|stop|cat|status ------------------------------------------------------------------------------------
def _state_change(
    unit: str, desired: Literal["launched", "loaded"], timeout: float, as_json: bool, w: _Where, block: bool = True
) -> None:
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    with _backend(w, report=_progress(as_json), block=block) as b:
        change = b.set_state(unit, desired, timeout=timeout)
    if as_json:
        emit_json(change.to_json())
    else:
        for n in change.nodes:
            if not n.ok:
                report_problem(f"Unit {unit} on {b.where(n)}: {n.error}")
            elif not change.reported:
                typer.echo(f"Unit {unit} {desired} on {b.where(n)}")
    if not change.ok:
        raise typer.Exit(1)


@unit_app.command("start")
def unit_start(
    unit: str = UNIT_ARG,
    timeout: float = UNIT_TIMEOUT_OPTION,
    no_block: bool = NO_BLOCK_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Set the unit's desired state to launched and start it on its node(s)."""
    w = _Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)
    _state_change(unit, "launched", timeout, as_json, w, block=not no_block)


@unit_app.command("stop")
def unit_stop(
    unit: str = UNIT_ARG,
    timeout: float = UNIT_TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Set the unit's desired state to loaded and stop it (it stays installed)."""
    w = _Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)
    _state_change(unit, "loaded", timeout, as_json, w)


@unit_app.command("cat")
def unit_cat(
    unit: str = UNIT_ARG,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Print the unit file as deployed (its record in etcd, or fleet's copy)."""
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    with _backend(_Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)) as b:
        content = b.cat(unit)
    sys.stdout.write(content if content.endswith("\n") else content + "\n")


@unit_app.command("status")
def unit_status(
    unit: str = UNIT_ARG,
    as_json: bool = JSON_OPTION,
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    ssh_port: int = SSH_PORT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Show systemctl status of the unit on its node(s); exits like systemctl (3: not running)."""
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    w = _Where(backend, fleet_endpoint, tunnel, ssh_username, lab, inventory, no_persist, accept_new)
    with _backend(w) as b:
        texts = _status_texts(b, unit, w, ssh_port)
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


def _status_texts(b: UnitBackend, unit: str, w: _Where, ssh_port: int) -> tuple[StatusText, ...]:
    """``systemctl status`` where the unit is: on the machines fleet says (as fleetctl status), or on the
    targets of its record (the systemd backend)."""
    from coreos_lab.units.fleet_backend import FleetBackend, status_texts
    from coreos_lab.units.systemd_backend import SystemdBackend, unit_status

    if isinstance(b, FleetBackend):
        with _reach(b, b.machines_of(unit), w, ssh_port) as reached:
            return status_texts(reached, unit)
    if not isinstance(b, SystemdBackend):
        raise UsageError(f"unit status: the {b.name} backend has no status")
    return unit_status(b.cluster, unit, facts=b.facts)


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
