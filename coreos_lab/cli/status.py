"""CLI commands: status (is my cluster OK?) and doctor (is this host fit for a lab?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    ETCD_PORT_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    emit_json,
    emit_table,
    lab_dir,
    lab_specs,
    open_nodes,
    report_problem,
)
from coreos_lab.errors import ConfigError


def doctor(
    lab: Path | None = LAB_OPTION,
    provider: str | None = typer.Option(None, "--provider", help="virtualbox or libvirt (default: the lab's)."),
    instances: int | None = typer.Option(None, "--instances", help="Nodes to plan for (default: the lab's)."),
    memory: int | None = typer.Option(None, "--memory", help="MB per node (default: the lab's)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Check this host for running a lab: vagrant, provider plugin, network range, libvirt, RAM."""
    from coreos_lab import config as labconfig
    from coreos_lab import doctor as doctor_mod

    lab_path: Path | None = None
    try:
        lab_path = lab_dir(lab)
        cfg = labconfig.load(lab_path)
    except ConfigError:
        if lab is not None:
            raise
        lab_path = None
        cfg = labconfig.LabConfig()
    changes = {k: v for k, v in (("provider", provider), ("instances", instances), ("memory", memory)) if v}
    if changes:
        cfg = cfg.with_changes(**changes)
    checks = doctor_mod.run_checks(cfg, lab_dir=lab_path)
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
    port: int = ETCD_PORT_OPTION,
) -> None:
    """Is my cluster OK? Nodes (Vagrant, SSH, etcd member, leader), etcd quorum, units desired vs actual.

    Exit code is a bitmask: 0 all good, 1 a node down/unreachable, 2 etcd has no quorum,
    4 a unit not in its desired state.
    """
    from coreos_lab.health import report as status_report

    lab_path = None if inventory is not None else lab_dir(lab)
    specs = lab_specs(lab, inventory)
    cluster = open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new)
    try:
        report = status_report(cluster, lab_dir=lab_path, specs=specs, etcd_port=port)
    finally:
        cluster.close()
    code = int(report["exit_code"])
    engine_status = _engine(lab_path, inventory)
    if as_json:
        emit_json({**report, "engine": engine_status.to_json() if engine_status else None})
    else:
        yes = {True: "yes", False: "no"}
        emit_table(
            ["NODE", "IP", "VAGRANT", "SSH", "ETCD", "LEADER", "PROVISIONED"],
            [
                [
                    n["name"],
                    n["ip"],
                    n["vagrant_state"],
                    yes[n["ssh"]],
                    yes[n["etcd"]],
                    "*" if n["leader"] else None,
                    n.get("provisioned_by"),
                ]
                for n in report["nodes"]
            ],
        )
        e = report["etcd"]
        quorum = "has quorum" if e["has_quorum"] else "NO QUORUM"
        state = "healthy" if e["healthy"] else "unhealthy"
        typer.echo(
            f"etcd: {state}, {quorum}, {e['healthy_members']}/{e['member_count']} members healthy "
            f"(expected {e['expected_members']}), TLS {'on' if e['tls'] else 'off'}"
        )
        if engine_status is not None:
            from coreos_lab.cli.engine_cmds import describe

            typer.echo(f"engine: {describe(engine_status)}")
        if report["units"]:
            typer.echo("")
            emit_table(
                ["UNIT", "MACHINE", "DSTATE", "ACTIVE", "SUB", "OK"],
                [
                    [
                        u["unit"],
                        u["machine"],
                        u["desired_state"],
                        u["active"] or ("unknown" if u["error"] else None),
                        u["sub"],
                        yes[u["ok"]],
                    ]
                    for u in report["units"]
                ],
            )
        for line in report["problems"]:
            report_problem(line, label="problem")
        typer.echo("cluster OK" if code == 0 else f"cluster NOT OK (exit {code})")
    if code:
        raise typer.Exit(code)


def _engine(lab_path: Path | None, inventory: Path | None) -> Any:
    """The engine's last report, read from its state dir (no round trip); None when none was ever started."""
    from coreos_lab import engine

    where = engine.state_dir_for(lab_path.resolve() if lab_path else None, inventory)
    return engine.read_status(where) if where.is_dir() else None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("status")(status)
    app.command("doctor")(doctor)
