"""CLI commands: ``etcd health|members|get|put|del|watch``, ``units [PATTERN]``, ``logs NODE UNIT``.

etcd is reached over each node's SSH connection (a forward to 127.0.0.1:2379 on the node, see
``Cluster.etcd_client``: https with the lab's client certificate for a TLS lab); units and logs run
systemctl/journalctl on the nodes through their runners.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table
from coreos_lab.errors import CoreosLabError, EtcdError, UsageError

INVENTORY_OPTION = typer.Option(
    None, "--inventory", "-i", help="OpenSSH client config naming the nodes (default: the lab's Vagrant nodes)."
)
NODE_OPTION = typer.Option(None, "--node", "-N", help="Only this node (repeatable).")
ACCEPT_NEW_OPTION = typer.Option(False, "--accept-new", help="Record unknown host keys (like accept-new).")
NO_PERSIST_OPTION = typer.Option(False, "--no-persist", help="Do not keep SSH connections in a background process.")
PORT_OPTION = typer.Option(2379, "--port", help="etcd's client port on the nodes (reached via 127.0.0.1 there).")
TIMEOUT_OPTION = typer.Option(5.0, "--timeout", help="Seconds to wait for each etcd request.")

etcd_app = typer.Typer(
    name="etcd",
    help="Ask the cluster's etcd: health, members, keys (through each node's SSH connection).",
    no_args_is_help=True,
)


@contextmanager
def _cluster(lab: Path | None, inventory: Path | None, accept_new: bool, no_persist: bool) -> Iterator[Any]:
    from coreos_lab.cluster import open_cluster

    cluster = open_cluster(lab=lab, inventory=inventory, accept_new=accept_new, persist=not no_persist)
    try:
        yield cluster
    finally:
        cluster.close()


def _client(cluster: Any, node: str, port: int, timeout: float) -> Any:
    return cluster.etcd_client(node, port, timeout=timeout)


def _first_answering(cluster: Any, nodes: list[str] | None, port: int, timeout: float) -> Any:
    """The etcd client of the first selected node that answers /version (nodes in cluster order)."""
    errors = []
    for name in cluster.select(nodes):
        try:
            client = _client(cluster, name, port, timeout)
            client.version()
            return client
        except CoreosLabError as exc:
            errors.append(f"{name}: {exc}")
    raise EtcdError("no node's etcd answered: " + "; ".join(errors))


def _kv_row(kv: Any) -> list[Any]:
    return [kv.key_text, kv.value_text, kv.mod_revision, kv.version]


@etcd_app.command("health")
def health(
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Status of every member at once; exit 1 unless every member answers and they agree on a leader."""
    from coreos_lab.etcd import EtcdClient, cluster_health

    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        clients: dict[str, EtcdClient] = {}
        unreachable: dict[str, str] = {}
        for name in cluster.select(node):
            try:
                clients[name] = _client(cluster, name, port, timeout)
            except CoreosLabError as exc:
                unreachable[name] = str(exc)
        result = cluster_health(clients)
    data = result.to_json()
    for name, error in unreachable.items():
        data["members"].append({"name": name, "ok": False, "error": error})
    healthy = result.healthy and not unreachable
    data["healthy"] = healthy
    if as_json:
        emit_json(data)
    else:
        rows = [
            [
                m["name"],
                "yes" if m["ok"] else "no",
                m.get("member_id"),
                m.get("leader"),
                m.get("raft_term"),
                m.get("error"),
            ]
            for m in data["members"]
        ]
        emit_table(["NODE", "OK", "MEMBER", "LEADER", "TERM", "ERROR"], rows)
        quorum = "has quorum" if result.has_quorum else "NO QUORUM"
        typer.echo(f"cluster is {'healthy' if healthy else 'unhealthy'} ({quorum}, {result.member_count} members)")
    if not healthy:
        raise typer.Exit(1)


@etcd_app.command("members")
def members(
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """The cluster's members, as the first answering node knows them."""
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        found = _first_answering(cluster, node, port, timeout).member_list()
    if as_json:
        emit_json([m.to_json() for m in found])
    else:
        rows = [[m.id_hex, m.name, ",".join(m.peer_urls), ",".join(m.client_urls)] for m in found]
        emit_table(["ID", "NAME", "PEER URLS", "CLIENT URLS"], rows)


@etcd_app.command("get")
def get(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = typer.Option(False, "--prefix", help="Every key starting with KEY."),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Read a key (exit 1 if it does not exist) or, with --prefix, every key under it."""
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        client = _first_answering(cluster, node, port, timeout)
        if prefix:
            kvs = client.range(key)
        else:
            one = client.get(key)
            if one is None:
                raise EtcdError(f"key not found: {key}")
            kvs = [one]
    if as_json:
        emit_json([kv.to_json() for kv in kvs])
    else:
        emit_table(["KEY", "VALUE", "MOD_REVISION", "VERSION"], [_kv_row(kv) for kv in kvs])


@etcd_app.command("put")
def put(
    key: str = typer.Argument(..., help="The key."),
    value: str = typer.Argument(..., help="The value (stored as UTF-8)."),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Write a key; prints the revision of the write."""
    if not key:
        raise UsageError("the key must not be empty")
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        revision = _first_answering(cluster, node, port, timeout).put(key, value)
    if as_json:
        emit_json({"key": key, "revision": revision})
    else:
        typer.echo(f"OK (revision {revision})")


@etcd_app.command("del")
def delete(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = typer.Option(False, "--prefix", help="Every key starting with KEY."),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Delete a key (or a prefix); prints how many keys were deleted."""
    if not key:
        raise UsageError("the key must not be empty (use --prefix with a prefix)")
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        deleted = _first_answering(cluster, node, port, timeout).delete(key, prefix=prefix)
    if as_json:
        emit_json({"key": key, "deleted": deleted})
    else:
        typer.echo(f"deleted {deleted}")


@etcd_app.command("watch")
def watch(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = typer.Option(False, "--prefix", help="Every key starting with KEY."),
    duration: float = typer.Option(0.0, "--for", help="Stop after this many seconds (0: until Ctrl-C)."),
    count: int = typer.Option(0, "--count", help="Stop after this many events (0: no limit)."),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = PORT_OPTION,
    timeout: float = TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Print changes as they happen (``PUT key value`` / ``DELETE key``; --json: one object per line)."""
    if duration < 0 or count < 0:
        raise UsageError("--for and --count must be >= 0")
    end = time.monotonic() + duration if duration else None
    seen = 0
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        client = _first_answering(cluster, node, port, timeout)
        next_revision: int | None = None
        while end is None or time.monotonic() < end:
            # Watches are bounded: renew every minute, resuming after the last revision seen.
            window = 60.0 if end is None else max(0.1, min(60.0, end - time.monotonic()))
            for event in client.watch(key, prefix=prefix, start_revision=next_revision, timeout=window):
                next_revision = event.kv.mod_revision + 1  # a DELETE's kv carries the deletion's revision
                if as_json:
                    typer.echo(json.dumps({"type": event.type, "revision": event.revision, **event.kv.to_json()}))
                elif event.type == "PUT":
                    typer.echo(f"PUT {event.kv.key_text} {event.kv.value_text}")
                else:
                    typer.echo(f"DELETE {event.kv.key_text}")
                seen += 1
                if count and seen >= count:
                    return


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.add_typer(etcd_app, name="etcd")
    app.command("units")(units)
    app.command("logs")(logs)


def units(
    pattern: str | None = typer.Argument(None, help="A unit glob, e.g. 'etcd*' or '*.service'."),
    node: list[str] = NODE_OPTION,
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """systemd units across the nodes as one table (a node that fails is reported; exit 1)."""
    from coreos_lab.systemd import SystemdClient, validate_unit_pattern

    if pattern is not None:
        validate_unit_pattern(pattern)  # bad input fails before any connection is made
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
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
            said = error if error.startswith(f"{name}:") else f"{name}: {error}"  # runner errors name the host
            typer.echo(f"error: {said}", err=True)
    if failed:
        raise typer.Exit(1)


def logs(
    node: str = typer.Argument(..., help="The node."),
    unit: str = typer.Argument(..., help="The unit, e.g. etcd-member.service."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many of the last lines."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines (Ctrl-C to stop)."),
    since: str | None = typer.Option(None, "--since", help="journalctl --since, e.g. '-1h' or '2026-01-01'."),
    interval: float = typer.Option(1.0, "--interval", help="With -f: seconds between polls."),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """The unit's journal on one node (journalctl -u, short-iso timestamps)."""
    from coreos_lab.systemd import SystemdClient, validate_unit_name

    validate_unit_name(unit)
    if lines < 0 or interval <= 0:
        raise UsageError("-n must be >= 0 and --interval > 0")
    with _cluster(lab, inventory, accept_new, no_persist) as cluster:
        client = SystemdClient(cluster.runner(node))
        text, cursor = client.journal_after(unit, lines=lines, since=since)
        typer.echo(text, nl=False)
        while follow:
            time.sleep(interval)
            text, cursor = client.journal_after(unit, cursor=cursor, lines=None if cursor else lines)
            typer.echo(text, nl=False)
