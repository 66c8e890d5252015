"""CLI commands: status (is my cluster OK?) and doctor (is this host fit for a lab?)."""

from __future__ import annotations

from pathlib import Path

import typer

from coreos_lab import config as labconfig
from coreos_lab import doctor as doctor_mod
from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table
from coreos_lab.cli.nodes import ACCEPT_NEW_OPTION, INVENTORY_OPTION, NO_PERSIST_OPTION
from coreos_lab.errors import ConfigError


def doctor(
    lab: Path | None = LAB_OPTION,
    provider: str | None = typer.Option(None, "--provider", help="virtualbox or libvirt (default: the lab's)."),
    instances: int | None = typer.Option(None, "--instances", help="Nodes to plan for (default: the lab's)."),
    memory: int | None = typer.Option(None, "--memory", help="MB per node (default: the lab's)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check this host for running a lab: vagrant, provider plugin, network range, libvirt, RAM."""
    try:
        cfg = labconfig.load(lab) if lab is not None else labconfig.load(labconfig.find_lab_dir())
    except ConfigError:
        if lab is not None:
            raise
        cfg = labconfig.LabConfig()
    changes = {k: v for k, v in (("provider", provider), ("instances", instances), ("memory", memory)) if v}
    if changes:
        cfg = cfg.with_changes(**changes)
    checks = doctor_mod.run_checks(cfg)
    failed = [c for c in checks if not c.ok and not c.warning]
    if as_json:
        emit_json(
            {
                "ok": not failed,
                "checks": [
                    {"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix or None} for c in checks
                ],
            }
        )
    else:
        emit_table(["CHECK", "STATUS", "DETAIL"], [(c.name, c.status, c.detail) for c in checks])
        for c in checks:
            if not c.ok and c.fix:
                typer.echo(f"fix {c.name}: {c.fix}")
    if failed:
        raise typer.Exit(1)


def status(
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Is my cluster OK? Nodes (Vagrant, SSH, etcd member, leader), etcd quorum, units desired vs actual.

    Exit code is a bitmask: 0 all good, 1 a node down/unreachable, 2 etcd has no quorum,
    4 a unit not in its desired state.
    """
    from coreos_lab.cli.nodes import open_nodes
    from coreos_lab.cli.units import lab_specs
    from coreos_lab.health import cluster_status

    lab_dir: Path | None = None
    if inventory is None:
        lab_dir = lab if lab is not None else labconfig.find_lab_dir()
    cluster = open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new)
    try:
        report = cluster_status(cluster, lab_dir=lab_dir, specs=lab_specs(lab, inventory))
    finally:
        cluster.close()
    if as_json:
        emit_json(report.to_json())
    else:
        yes = {True: "yes", False: "no"}
        emit_table(
            ["NODE", "IP", "VAGRANT", "SSH", "ETCD", "LEADER"],
            [
                [n.name, n.ip, n.vagrant_state, yes[n.ssh_ok], yes[n.etcd_ok], "*" if n.etcd_leader else None]
                for n in report.nodes
            ],
        )
        e = report.etcd
        quorum = "has quorum" if e.has_quorum else "NO QUORUM"
        state = "healthy" if e.healthy else "unhealthy"
        typer.echo(
            f"etcd: {state}, {quorum}, {e.healthy_members}/{e.member_count} members healthy "
            f"(expected {e.expected_members}), TLS {'on' if e.tls else 'off'}"
        )
        if report.units:
            typer.echo("")
            emit_table(
                ["UNIT", "MACHINE", "DSTATE", "ACTIVE", "SUB", "OK"],
                [
                    [
                        u.unit,
                        u.machine,
                        u.desired_state,
                        u.active_state or ("unknown" if u.error else None),
                        u.sub_state,
                        yes[u.in_desired_state],
                    ]
                    for u in report.units
                ],
            )
        for line in report.problems:
            typer.echo(f"problem: {line}", err=True)
        typer.echo("cluster OK" if report.exit_code == 0 else f"cluster NOT OK (exit {report.exit_code})")
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("status")(status)
    app.command("doctor")(doctor)
