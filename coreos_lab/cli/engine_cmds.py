"""CLI commands: ``engine start|stop|status|run``, the engine that reschedules units by itself (see
:mod:`coreos_lab.engine`)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from coreos_lab.cli._common import INVENTORY_OPTION, JSON_OPTION, LAB_OPTION, emit_json, lab_dir, lab_specs

# The engine always connects from its own process; accepted so that scripts can pass it to every command.
NO_PERSIST_OPTION = typer.Option(False, "--no-persist", hidden=True)

engine_app = typer.Typer(
    name="engine",
    help="The engine that reschedules units by itself when a node goes away (fleet's engine; one leader per lab).",
    no_args_is_help=True,
)

AGENT_TTL_OPTION = typer.Option(
    10.0, "--agent-ttl", help="Seconds a node may stay silent (and at least two missed probes) before its units move."
)
INTERVAL_OPTION = typer.Option(2.0, "--interval", help="Seconds between the engine's rounds (probe + reconcile).")
LEASE_TTL_OPTION = typer.Option(
    10, "--lease-ttl", help="Seconds the leader's etcd lease lasts without renewal (takeover time if it dies)."
)
STATE_DIR_OPTION = typer.Option(
    None, "--state-dir", help="Where the engine keeps its lock, status and log (default: the lab's .coreos-lab/engine)."
)


def _where(lab: Path | None, inventory: Path | None, state_dir: Path | None = None) -> tuple[Path | None, Path]:
    from coreos_lab import engine

    the_lab = None if inventory is not None else lab_dir(lab).resolve()
    return the_lab, (state_dir or engine.state_dir_for(the_lab, inventory))


def _settings(agent_ttl: float, interval: float, lease_ttl: int) -> Any:
    from coreos_lab.engine import EngineSettings

    return EngineSettings(agent_ttl=agent_ttl, interval=interval, lease_ttl=lease_ttl).check()


def start_engine(
    lab: Path | None,
    inventory: Path | None,
    *,
    agent_ttl: float = 10.0,
    interval: float = 2.0,
    lease_ttl: int = 10,
) -> tuple[int, bool, Path]:
    """Start the lab's engine detached unless one runs (``up`` calls this); returns (pid, started, log)."""
    from coreos_lab import engine

    _settings(agent_ttl, interval, lease_ttl)
    the_lab, state_dir = _where(lab, inventory)
    args = ["--inventory", str(inventory.resolve())] if inventory is not None else ["--lab", str(the_lab)]
    args += ["--agent-ttl", f"{agent_ttl:g}", "--interval", f"{interval:g}", "--lease-ttl", str(lease_ttl)]
    cwd = the_lab if the_lab is not None else Path.cwd()
    pid, started = engine.spawn(state_dir, args, cwd=cwd)
    return pid, started, state_dir / engine.LOG_FILE


def stop_engine(lab: Path | None, inventory: Path | None = None) -> int | None:
    """Stop the lab's engine if one runs here (``halt``/``destroy`` call this); returns its PID."""
    from coreos_lab import engine

    _, state_dir = _where(lab, inventory)
    return engine.stop(state_dir)


@engine_app.command("start")
def start(
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    agent_ttl: float = AGENT_TTL_OPTION,
    interval: float = INTERVAL_OPTION,
    lease_ttl: int = LEASE_TTL_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Start the engine in the background (it outlives this command; `up` starts it too).

    Example: coreos-lab engine start --agent-ttl 20
    """
    pid, started, log = start_engine(lab, inventory, agent_ttl=agent_ttl, interval=interval, lease_ttl=lease_ttl)
    if as_json:
        emit_json({"pid": pid, "started": started, "log": str(log)})
        return
    typer.echo(f"engine {'started' if started else 'already running'} (pid {pid}); log: {log}")


@engine_app.command("stop")
def stop(
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop this lab's engine (it hands the leadership over at once). Idempotent."""
    pid = stop_engine(lab, inventory)
    if as_json:
        emit_json({"stopped": pid})
        return
    typer.echo(f"engine stopped (pid {pid})" if pid else "no engine was running")


def describe(status: Any) -> str:
    """One line for ``status``: role, leader, last reconcile, actions."""
    data = status.to_json()
    if not status.running:
        return "not running (coreos-lab engine start)"
    role = data["role"] or "starting"
    bits = [f"{role} (pid {status.pid})"]
    if data["leader"] and role != "leader":
        bits.append(f"leader {data['leader']}")
    bits.append(f"last reconcile {data['last_reconcile'] or 'never'}")
    bits.append(f"{data['actions_taken']} action(s)")
    if data["last_error"]:
        bits.append(f"error: {str(data['last_error']).splitlines()[0][:120]}")
    return ", ".join(bits)


@engine_app.command("status")
def status_cmd(
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    actions: int = typer.Option(10, "--actions", help="How many of the last actions to show.", min=0),
    as_json: bool = JSON_OPTION,
) -> None:
    """Is the engine running here, does it lead, when did it last reconcile, what did it do (exit 3: not running)."""
    from coreos_lab import engine

    _, state_dir = _where(lab, inventory)
    st = engine.read_status(state_dir)
    if as_json:
        emit_json(st.to_json())
    else:
        data = st.to_json()
        typer.echo(f"engine: {describe(st)}")
        if st.running:
            for name, node in sorted(data["nodes"].items()):
                typer.echo(f"  {name}: {node['state']} (last seen {node['last_seen'] or 'never'})")
            shown = data["actions"][-actions:] if actions else []
            if shown:
                typer.echo("actions:")
                for line in shown:
                    typer.echo(f"  {line}")
        typer.echo(f"log: {st.log_path}")
    if not st.running:
        raise typer.Exit(3)


@engine_app.command("run")
def run(
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    agent_ttl: float = AGENT_TTL_OPTION,
    interval: float = INTERVAL_OPTION,
    lease_ttl: int = LEASE_TTL_OPTION,
    state_dir: Path | None = STATE_DIR_OPTION,
) -> None:
    """Run the engine in the foreground, logging each action (what `engine start` runs detached; Ctrl-C stops).

    Example: coreos-lab engine run --inventory nodes.ssh --agent-ttl 5
    """
    from coreos_lab import engine

    settings = _settings(agent_ttl, interval, lease_ttl)
    the_lab, where = _where(lab, inventory, state_dir)
    lock = engine.hold_lock(where)
    stop_event = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster = engine.open_engine_cluster(the_lab, inventory, settings)
        with cluster:
            eng = engine.Engine(
                cluster,
                state_dir=where,
                specs=lab_specs(the_lab, inventory),
                settings=settings,
                alive=engine.lab_gone(the_lab, inventory),
                out=sys.stdout,
            )
            eng.run(stop_event)
    finally:
        lock.close()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.add_typer(engine_app, name="engine")
