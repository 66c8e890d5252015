"""CLI commands that ask systemd on the nodes directly: ``units [PATTERN]`` and ``logs NODE UNIT``.

They run systemctl/journalctl through each node's runner and know nothing of deployed units (for those:
``list-units``, ``journal`` in :mod:`coreos_lab.cli.units`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    FOLLOW_OPTION,
    INTERVAL_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    NODES_OPTION,
    emit_json,
    emit_table,
    lines_option,
    open_nodes,
    print_journal,
    report_problem,
)
from coreos_lab.errors import CoreosLabError, UsageError


def units(
    pattern: str | None = typer.Argument(None, help="A unit glob, e.g. 'etcd*' or '*.service'."),
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """systemd units across the nodes as one table (a node that fails is reported; exit 1)."""
    from coreos_lab.systemd import SystemdClient
    from coreos_lab.unitfile import validate_unit_pattern

    if pattern is not None:
        validate_unit_pattern(pattern)  # bad input fails before any connection is made
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        outcomes = cluster.map(lambda runner: SystemdClient(runner).list_units(pattern), node)
    records: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name, outcome in outcomes.items():
        if isinstance(outcome, CoreosLabError):
            failed[name] = str(outcome)
            continue
        records.extend({"node": name, **row.to_json()} for row in outcome)
    if as_json:
        emit_json({"units": records, "errors": failed})
    else:
        columns = ["node", "unit", "load", "active", "sub", "description"]
        emit_table([c.upper() for c in columns], ([r[c] for c in columns] for r in records))
        for name, error in failed.items():
            report_problem(error if error.startswith(f"{name}:") else f"{name}: {error}")  # runner errors name the host
    if failed:
        raise typer.Exit(1)


def logs(
    node: str = typer.Argument(..., help="The node."),
    unit: str = typer.Argument(..., help="The unit, e.g. etcd-member.service."),
    lines: int = lines_option(50),
    follow: bool = FOLLOW_OPTION,
    since: str | None = typer.Option(None, "--since", help="journalctl --since, e.g. '-1h' or '2026-01-01'."),
    interval: float = INTERVAL_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """The unit's journal on one node (journalctl -u, short-iso timestamps)."""
    from coreos_lab.systemd import SystemdClient
    from coreos_lab.unitfile import validate_unit_name

    validate_unit_name(unit)
    if lines < 0 or interval <= 0:
        raise UsageError("-n must be >= 0 and --interval > 0")
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        client = SystemdClient(cluster.runner(node))
        print_journal(client, unit, lines=lines, follow=follow, interval=interval, since=since)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("units")(units)
    app.command("logs")(logs)
