"""CLI commands: status (is my cluster OK?) and doctor (is this host fit for a lab?)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
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
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError


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
    watch: bool = typer.Option(
        False, "--watch", help="Keep checking: a live view on a terminal, else one timestamped line per change."
    ),
    interval: float = typer.Option(2.0, "--interval", help="With --watch: seconds between rounds.", min=0.2),
    count: int | None = typer.Option(None, "--count", hidden=True, min=1),  # --watch stops after N rounds (tests)
) -> None:
    """Is my cluster OK? Nodes (Vagrant, SSH, etcd member, leader), etcd quorum, units desired vs actual.

    Exit code is a bitmask: 0 all good, 1 a node down/unreachable, 2 etcd has no quorum,
    4 a unit not in its desired state.

    With --watch it checks again every --interval seconds until Ctrl-C (exit 0): on a terminal a live view
    (nodes, etcd leader and raft term, member health, units, the engine, the last changes); in a pipe one
    line per change, nothing while nothing changes.

    Example: coreos-lab status --watch --interval 1 | tee watch.log
    """
    from coreos_lab.health import report as status_report

    if watch and as_json:
        raise UsageError("--watch prints a view or one line per change; --json prints one report")
    lab_path = None if inventory is not None else lab_dir(lab)
    specs = lab_specs(lab, inventory)
    cluster = open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new)
    try:
        if watch:
            _watch(
                lambda: status_report(cluster, lab_dir=lab_path, specs=specs, etcd_port=port),
                lambda: _engine(lab_path, inventory),
                interval=interval,
                count=count,
            )
            return
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


def _watch(
    compute: Callable[[], dict[str, Any]],
    engine: Callable[[], Any],
    *,
    interval: float,
    count: int | None,
) -> None:
    """``status --watch``: a round every ``interval`` seconds, through the same report as ``status``."""
    import time

    from coreos_lab import watch

    live = _LiveView(interval) if sys.stdout.isatty() else None
    before: dict[str, str] | None = None
    failed = ""
    rounds = 0
    try:
        with live or contextlib.nullcontext():
            while True:
                began = time.monotonic()
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                try:
                    report = compute()
                except CoreosLabError as exc:  # one bad round (a connection holder restarting) ends no watch
                    if str(exc) != failed:
                        failed = str(exc)
                        _say(live, f"{stamp} status failed: {exc}")
                else:
                    failed = ""
                    eng = engine()
                    now = watch.facts(report, eng.to_json() if eng is not None else None)
                    # The live view shows the whole state itself: its list of changes starts at the second round.
                    if live is None or before is not None:
                        for line in watch.changes(before, now, stamp):
                            _say(live, line)
                    before = now
                    if live is not None:
                        live.show(report, eng, rounds + 1)
                rounds += 1
                if count is not None and rounds >= count:
                    return
                time.sleep(max(0.0, interval - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: exit 0, no traceback


def _say(live: _LiveView | None, line: str) -> None:
    if live is None:
        typer.echo(line)
    else:
        live.changes.append(line)


class _LiveView:
    """The terminal's view (rich): redrawn in place each round, the last changes under it."""

    def __init__(self, interval: float) -> None:
        from collections import deque

        from rich.live import Live

        self.interval = interval
        self.changes: deque[str] = deque(maxlen=8)
        self._live = Live(auto_refresh=False, transient=False)

    def __enter__(self) -> _LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def show(self, report: dict[str, Any], engine: Any, rounds: int) -> None:
        self._live.update(render_watch(report, engine, list(self.changes), rounds, self.interval), refresh=True)


def render_watch(report: dict[str, Any], engine: Any, changes: list[str], rounds: int, interval: float) -> Any:
    """One round as rich renderables: nodes, etcd (leader, term, members), units, engine, the last changes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    yes = {True: "yes", False: "[red]no[/red]"}
    nodes = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NODE", "IP", "SSH", "ETCD", "LEADER"):
        nodes.add_column(column)
    for n in report["nodes"]:
        nodes.add_row(n["name"], n["ip"] or "-", yes[n["ssh"]], yes[n["etcd"]], "*" if n["leader"] else "")
    e = report["etcd"]
    leader = next((n["name"] for n in report["nodes"] if n["leader"]), None) or e["leader"] or "none"
    quorum = "has quorum" if e["has_quorum"] else "[red]NO QUORUM[/red]"
    state = "healthy" if e["healthy"] else "[yellow]unhealthy[/yellow]"
    parts: list[Any] = [
        nodes,
        Text.from_markup(
            f"etcd: {state}, {quorum}, {e['healthy_members']}/{e['member_count']} members healthy, "
            f"leader {leader}, raft term {e.get('raft_term') or '?'}"
        ),
    ]
    if report["units"]:
        units = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("UNIT", "MACHINE", "DSTATE", "ACTIVE", "SUB"):
            units.add_column(column)
        for u in report["units"]:
            active = u["active"] or ("unknown" if u["error"] else "-")
            units.add_row(u["unit"], u["machine"] or "-", u["desired_state"], active, u["sub"] or "-")
        parts.append(units)
    if engine is not None:
        from coreos_lab.cli.engine_cmds import describe

        parts.append(Text(f"engine: {describe(engine)}"))
    if changes:
        parts.append(Text("last changes:", style="bold"))
        parts += [Text(line) for line in changes]
    parts.append(Text(f"round {rounds}, every {interval:g} s; Ctrl-C to stop", style="dim"))
    return Group(*parts)


def _engine(lab_path: Path | None, inventory: Path | None) -> Any:
    """The engine's last report, read from its state dir (no round trip); None when none was ever started."""
    from coreos_lab import engine

    where = engine.state_dir_for(lab_path.resolve() if lab_path else None, inventory)
    return engine.read_status(where) if where.is_dir() else None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("status")(status)
    app.command("doctor")(doctor)
