"""CLI commands: ``snapshot save|restore|list|delete``, whole-lab snapshots on libvirt (:mod:`coreos_lab.snapshot`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table, lab_dir, report_problem
from coreos_lab.errors import UsageError

if TYPE_CHECKING:
    from coreos_lab.snapshot import SnapshotLab

snapshot_app = typer.Typer(
    name="snapshot",
    help="Snapshots of the whole lab (every node at one moment, memory included): save, restore, list, delete.",
    no_args_is_help=True,
)
NAME_ARG = typer.Argument(..., help="The snapshot's name (letters, digits, '.', '_', '-').")
WAIT_TIMEOUT_OPTION = typer.Option(
    300.0, "--wait-timeout", help="Seconds to wait for a healthy cluster after a restore."
)


def _lab(lab: Path | None) -> tuple[Path, SnapshotLab]:
    from coreos_lab import config as labconfig
    from coreos_lab.snapshot import SnapshotLab, VagrantSnapshotLab
    from coreos_lab.vagrant import VagrantLab

    path = lab_dir(lab).resolve()
    cfg = labconfig.load(path)
    if cfg.provider == "libvirt":
        return path, SnapshotLab(path)
    if cfg.provider == "virtualbox":
        return path, VagrantSnapshotLab(path, VagrantLab(path, provider="virtualbox"))
    raise UsageError(f"snapshots are made for libvirt and VirtualBox labs; this lab uses {cfg.provider}")


@snapshot_app.command("save")
def save(name: str = NAME_ARG, lab: Path | None = LAB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Pause every node, save each one's disk and memory, resume them all.

    Example: coreos-lab snapshot save clean
    """
    from coreos_lab.snapshot import check_name

    check_name(name)
    _, snaps = _lab(lab)
    started = time.monotonic()
    snap, pause = snaps.save(name, on_step=None if as_json else lambda m: typer.echo(f"snapshot {name}: {m}", err=True))
    took = time.monotonic() - started
    if as_json:
        emit_json(
            {
                "name": snap.name,
                "nodes": sorted(snap.domains),
                "paused_seconds": round(pause, 1),
                "seconds": round(took, 1),
            }
        )
        return
    typer.echo(f"saved snapshot {name} of {len(snap.domains)} nodes in {took:.0f}s (nodes paused {pause:.1f}s)")


@snapshot_app.command("restore")
def restore(
    name: str = NAME_ARG,
    lab: Path | None = LAB_OPTION,
    wait_timeout: float = WAIT_TIMEOUT_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Put every node back to the snapshot at once, then wait until etcd is healthy.

    What was written to etcd and deployed after the snapshot is gone from etcd and from the nodes. The engine,
    if it ran, is stopped for the restore and started again.

    Example: coreos-lab snapshot restore clean
    """
    from coreos_lab import config as labconfig
    from coreos_lab.cli.engine_cmds import start_engine, stop_engine
    from coreos_lab.cli.vm import _connect
    from coreos_lab.cluster import forget_connections
    from coreos_lab.health import wait_ready
    from coreos_lab.snapshot import check_name

    check_name(name)
    path, snaps = _lab(lab)
    snaps.check_restorable(name)  # refused before the engine is touched
    say = None if as_json else (lambda m: typer.echo(f"snapshot {name}: {m}", err=True))
    started = time.monotonic()
    engine_pid = stop_engine(path)
    reverted = snaps.restore(name, on_step=say)
    # The nodes' SSH sessions of after the snapshot are gone with it: stop the background process holding
    # them (it would wait out each dead one on the next command). The machines and their addresses are those
    # of the snapshot, so the cached ssh-config stays valid (re-reading it costs a Vagrant run, ~8 s).
    forget_connections(path)
    cfg = labconfig.load(path)
    nodes = [n.name for n in cfg.nodes]
    ready, _ = wait_ready(
        lambda: _connect(path, nodes),
        nodes,
        etcd_unit="etcd-member.service" if cfg.os == "flatcar" else "etcd2.service",
        expected_members=cfg.instances,
        etcd=True,
        timeout=wait_timeout,
        interval=1.0,
        tls=cfg.tls,
    )
    total = time.monotonic() - started
    engine = None
    if engine_pid is not None and ready:
        engine = start_engine(path, None)[0]
    if as_json:
        emit_json(
            {
                "name": name,
                "ready": ready,
                "revert_seconds": round(reverted, 1),
                "seconds": round(total, 1),
                "engine": engine,
            }
        )
    else:
        typer.echo(
            f"restored snapshot {name} in {reverted:.1f}s; "
            + (f"etcd healthy after {total:.0f}s" if ready else f"etcd not healthy after {total:.0f}s")
        )
        if engine is not None:
            typer.echo(f"engine started again (pid {engine})")
    if not ready:
        report_problem(f"the cluster was not healthy within {wait_timeout:g}s of the restore (coreos-lab status)")
        raise typer.Exit(1)


def human_size(n: int) -> str:
    """Bytes for a person.

    >>> human_size(512), human_size(3 * 1024**3 // 2)
    ('512 B', '1.5 GiB')
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@snapshot_app.command("list")
def list_cmd(lab: Path | None = LAB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The lab's snapshots: when, which nodes, the memory each saved and the disk the nodes' images take.

    Example: coreos-lab snapshot list --json
    """
    from coreos_lab.snapshot import lab_domains, shape_change

    path, snaps = _lab(lab)
    now = lab_domains(path)
    rows: list[dict[str, Any]] = []
    for snap in snaps.snapshots():
        memory, disk = snaps.sizes(snap) if not shape_change(snap, now) else (0, 0)
        rows.append(
            {
                "name": snap.name,
                "created": datetime.fromtimestamp(snap.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "nodes": sorted(snap.domains),
                "memory_bytes": memory,
                "images_bytes": disk,
                "restorable": shape_change(snap, now) is None,
            }
        )
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ["NAME", "CREATED", "NODES", "MEMORY", "IMAGES", "RESTORABLE"],
        [
            (
                r["name"],
                r["created"],
                str(len(r["nodes"])),
                human_size(r["memory_bytes"]) if r["memory_bytes"] else "-",
                human_size(r["images_bytes"]) if r["images_bytes"] else "-",
                "yes" if r["restorable"] else "no (the lab changed)",
            )
            for r in rows
        ],
    )


@snapshot_app.command("delete")
def delete(name: str = NAME_ARG, lab: Path | None = LAB_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Remove a snapshot from every node and from the lab's record.

    Example: coreos-lab snapshot delete clean
    """
    from coreos_lab.snapshot import check_name

    check_name(name)
    _, snaps = _lab(lab)
    cleaned = snaps.delete(name)
    if as_json:
        emit_json({"name": name, "nodes": cleaned})
        return
    typer.echo(f"deleted snapshot {name} ({cleaned} node(s))")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.add_typer(snapshot_app, name="snapshot")
