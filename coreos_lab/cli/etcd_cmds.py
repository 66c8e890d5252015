"""CLI commands: ``etcd health|members|get|put|del|watch``.

etcd is reached over each node's SSH connection (a forward to 127.0.0.1:2379 on the node, see
``Cluster.etcd_client``: https with the lab's client certificate for a TLS lab).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    ETCD_PORT_OPTION,
    ETCD_TIMEOUT_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    NODES_OPTION,
    emit_json,
    emit_table,
    open_nodes,
)
from coreos_lab.errors import CoreosLabError, EtcdError, UsageError

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.etcd import EtcdClient

PREFIX_OPTION = typer.Option(False, "--prefix", help="Every key starting with KEY.")

etcd_app = typer.Typer(
    name="etcd",
    help="Ask the cluster's etcd: health, members, keys (through each node's SSH connection).",
    no_args_is_help=True,
)


def _first_answering(cluster: Cluster, nodes: list[str] | None, port: int, timeout: float) -> EtcdClient:
    """The etcd client of the first selected node that answers /version (nodes in cluster order)."""
    errors = []
    for name in cluster.select(nodes):
        try:
            client = cluster.etcd_client(name, port, timeout=timeout)
            client.version()
            return client
        except CoreosLabError as exc:
            errors.append(f"{name}: {exc}")
    raise EtcdError("no node's etcd answered: " + "; ".join(errors))


def _kv_row(kv: Any) -> list[Any]:
    return [kv.key_text, kv.value_text, kv.mod_revision, kv.version]


@etcd_app.command("health")
def health(
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Status of every member at once; exit 1 unless every member answers and they agree on a leader."""
    from coreos_lab.etcd import cluster_health

    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        clients: dict[str, EtcdClient] = {}
        unreachable: dict[str, str] = {}
        for name in cluster.select(node):
            try:
                clients[name] = cluster.etcd_client(name, port, timeout=timeout)
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
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """The cluster's members, as the first answering node knows them."""
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        found = _first_answering(cluster, node, port, timeout).member_list()
    if as_json:
        emit_json([m.to_json() for m in found])
    else:
        rows = [[m.id_hex, m.name, ",".join(m.peer_urls), ",".join(m.client_urls)] for m in found]
        emit_table(["ID", "NAME", "PEER URLS", "CLIENT URLS"], rows)


@etcd_app.command("get")
def get(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = PREFIX_OPTION,
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Read a key (exit 1 if it does not exist) or, with --prefix, every key under it."""
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
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
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Write a key; prints the revision of the write."""
    if not key:
        raise UsageError("the key must not be empty")
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        revision = _first_answering(cluster, node, port, timeout).put(key, value)
    if as_json:
        emit_json({"key": key, "revision": revision})
    else:
        typer.echo(f"OK (revision {revision})")


@etcd_app.command("del")
def delete(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = PREFIX_OPTION,
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Delete a key (or a prefix); prints how many keys were deleted."""
    if not key:
        raise UsageError("the key must not be empty (use --prefix with a prefix)")
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
        deleted = _first_answering(cluster, node, port, timeout).delete(key, prefix=prefix)
    if as_json:
        emit_json({"key": key, "deleted": deleted})
    else:
        typer.echo(f"deleted {deleted}")


@etcd_app.command("watch")
def watch(
    key: str = typer.Argument(..., help="The key (or prefix with --prefix)."),
    prefix: bool = PREFIX_OPTION,
    duration: float = typer.Option(0.0, "--for", help="Stop after this many seconds (0: until Ctrl-C)."),
    count: int = typer.Option(0, "--count", help="Stop after this many events (0: no limit)."),
    node: list[str] = NODES_OPTION,
    as_json: bool = JSON_OPTION,
    port: int = ETCD_PORT_OPTION,
    timeout: float = ETCD_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
) -> None:
    """Print changes as they happen (``PUT key value`` / ``DELETE key``; --json: one object per line)."""
    if duration < 0 or count < 0:
        raise UsageError("--for and --count must be >= 0")
    import json

    end = time.monotonic() + duration if duration else None
    seen = 0
    with open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new) as cluster:
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
