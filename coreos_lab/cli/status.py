"""CLI commands: status (is my cluster OK?) and doctor (is this host fit for a lab?)."""

from __future__ import annotations

from pathlib import Path

import typer

from coreos_lab import config as labconfig
from coreos_lab import doctor as doctor_mod
from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table
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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("doctor")(doctor)
