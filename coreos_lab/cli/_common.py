"""What the command modules share: every option used by more than one command, output (tables, JSON, report
lines) and opening the nodes.

Short flags mean one thing everywhere: ``-N`` ``--node``, ``-n`` ``--lines`` (journalctl's and fleetctl's
habit), ``-f`` ``--follow``, ``-t`` ``--timeout``, ``-l`` ``--full``, ``-i`` ``--inventory``, ``-v``
``--verbose``, ``-o`` ``--output``, ``-h`` ``--help``. Everything else has a long form only.

This module is imported when the CLI starts: it imports typer (and click) and nothing of the library at its top.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click
import typer

from coreos_lab.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec


class Problems(UsageError):
    """Bad input found in several places at once. The CLI's boundary prints one ``error:`` line per problem,
    then ``hint:``; ``str()`` is the one-line form every CoreosLabError has."""

    def __init__(self, problems: Sequence[str], *, hint: str | None = None) -> None:
        super().__init__("; ".join(problems), hint=hint)
        self.problems = tuple(" ".join(p.split()) for p in problems)

    def lines(self) -> list[str]:
        return [f"error: {p}" for p in self.problems] + ([f"hint: {' '.join(self.hint.split())}"] if self.hint else [])


# -- options ---------------------------------------------------------------------------------------------------------
LAB_OPTION = typer.Option(None, "--lab", help="Lab directory (default: nearest coreos-lab.toml, or $COREOS_LAB_DIR).")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")
INVENTORY_OPTION = typer.Option(
    None,
    "--inventory",
    "-i",
    help="OpenSSH client config naming the nodes (Host blocks), instead of the lab's Vagrant machines.",
)
NODES_OPTION = typer.Option(None, "--node", "-N", help="Only this node (repeatable). Default: every node.")
NODE_OPTION = typer.Option(
    None, "--node", "-N", help="This node (e.g. for a global unit); with fleet, a machine ID (or its start)."
)
NO_PERSIST_OPTION = typer.Option(
    False,
    "--no-persist",
    help="Connect from this process only; do not start or use the background connection holder "
    "(also: COREOS_LAB_NO_PERSIST=1).",
)
ACCEPT_NEW_OPTION = typer.Option(
    False, "--accept-new", help="Record unknown host keys in known_hosts (changed keys are still refused)."
)
ETCD_PORT_OPTION = typer.Option(2379, "--port", help="etcd's client port on the nodes (reached via 127.0.0.1 there).")
# --timeout: what one step may take, per kind of command.
NODE_TIMEOUT_OPTION = typer.Option(60.0, "--timeout", "-t", help="Seconds each node may take.", min=0.1)
UNIT_TIMEOUT_OPTION = typer.Option(
    60.0, "--timeout", "-t", help="Seconds to wait for each unit to become active.", min=0.1
)
ETCD_TIMEOUT_OPTION = typer.Option(5.0, "--timeout", "-t", help="Seconds to wait for each etcd request.")
FOLLOW_OPTION = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C to stop).")
INTERVAL_OPTION = typer.Option(1.0, "--interval", help="With -f: seconds between polls.")
# The unit commands' way to fleet. The environment variables are fleetctl's; they are read by the commands
# (:func:`from_env`), not by click, so that a flag beats them wherever it is given, before the command or after.
BACKEND_OPTION = typer.Option(
    "auto", "--backend", help="auto (fleet when the nodes run fleetd, else systemd), fleet or systemd."
)
FLEET_ENDPOINT_OPTION = typer.Option(
    None,
    "--fleet-endpoint",
    "--endpoint",  # fleetctl's spelling
    help="fleet API: http://HOST:PORT, or unix:///var/run/fleet.sock on a node (over SSH) (also $FLEETCTL_ENDPOINT).",
)
TUNNEL_OPTION = typer.Option(
    None,
    "--tunnel",
    help="Reach fleet's API through SSH on HOST: a node of the lab or inventory, or [USER@]HOST[:PORT] "
    "(also $FLEETCTL_TUNNEL).",
)
SSH_USERNAME_OPTION = typer.Option(
    None,
    "--ssh-username",
    help="SSH user for a --tunnel HOST and for fleet machines reached at their IP (default: core, as fleetctl).",
)
ENDPOINT_ENV: Final = "FLEETCTL_ENDPOINT"
TUNNEL_ENV: Final = "FLEETCTL_TUNNEL"
FLEET_SSH_USER: Final = "core"  # fleetctl's --ssh-username default


def lines_option(default: int) -> Any:
    """``--lines``/``-n`` for the journal commands (each has its own default)."""
    return typer.Option(default, "--lines", "-n", help="How many of the last lines.")


# -- the lab and its nodes -------------------------------------------------------------------------------------------
def lab_dir(option: Path | None) -> Path:
    """``--lab`` if given, else the nearest lab (ConfigError when there is none)."""
    if option is not None:
        return option
    from coreos_lab.config import find_lab_dir

    return find_lab_dir()


def lab_specs(lab: Path | None, inventory: Path | None) -> dict[str, NodeSpec] | None:
    """The lab config's nodes (IP, metadata) when the nodes come from a lab; None for an inventory (or a lab
    whose config cannot be read: the nodes are then known by name only)."""
    if inventory is not None:
        return None
    from coreos_lab import config as labconfig

    try:
        cfg = labconfig.load(lab_dir(lab))
    except ConfigError:
        return None
    return {n.name: n for n in cfg.nodes}


def open_nodes(
    lab: Path | None, inventory: Path | None, *, no_persist: bool = False, accept_new: bool = False
) -> Cluster:
    """The Cluster a node-targeting command works on: ``--inventory`` if given, else the lab's machines.

    A context manager: ``with open_nodes(...) as cluster:`` closes its connections on the way out.
    """
    from coreos_lab.cluster import open_cluster

    return open_cluster(lab=lab, inventory=inventory, accept_new=accept_new, persist=not no_persist)


def from_env(value: str | None, variable: str) -> str | None:
    """An option's value, else fleetctl's environment variable for it (empty counts as unset)."""
    import os

    return value if value is not None else (os.environ.get(variable) or None)


def parse_tunnel(spec: str) -> tuple[str | None, str, int | None]:
    """``[USER@]HOST[:PORT]`` (``[::1]:2222`` for an IPv6 address) -> (user, host, port); UsageError if malformed.

    >>> parse_tunnel("core@10.0.0.5:2222")
    ('core', '10.0.0.5', 2222)
    >>> parse_tunnel("core-01")
    (None, 'core-01', None)
    >>> parse_tunnel("[::1]:22")
    (None, '::1', 22)
    """
    user, at, rest = spec.rpartition("@")
    host, port_text = rest, ""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            host = ""
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    if not host or (at and not user) or any(c.isspace() for c in spec) or (port_text and not port_text.isdigit()):
        raise UsageError(f"--tunnel must be a node name or [USER@]HOST[:PORT], got {spec!r}")
    port = int(port_text) if port_text else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--tunnel: port {port} is out of range")
    return (user or None), host, port


def tunnel_nodes(
    spec: str,
    lab: Path | None,
    inventory: Path | None,
    *,
    ssh_username: str | None = None,
    no_persist: bool = False,
    accept_new: bool = False,
) -> tuple[Cluster, str]:
    """The cluster holding ``--tunnel``'s host and that host's name in it.

    A bare name that the inventory (or the lab's config) names is that node, reached as the lab reaches it;
    anything else is ``[USER@]HOST[:PORT]``, reached as fleetctl does (user ``core``, port 22) with host keys
    checked against ~/.ssh/known_hosts.
    """
    from coreos_lab.cluster import Cluster
    from coreos_lab.sshconfig import SSHTarget

    user, host, port = parse_tunnel(spec)
    if user is None and port is None:
        if inventory is not None:
            cluster = open_nodes(None, inventory, no_persist=no_persist, accept_new=accept_new)
            if host in cluster.names:
                return cluster, host
            cluster.close()
        else:
            try:
                the_lab = lab_dir(lab)
            except ConfigError:
                the_lab = None  # no lab here: the name is a host
            if the_lab is not None and host in (lab_specs(the_lab, None) or {}):
                return open_nodes(the_lab, None, no_persist=no_persist, accept_new=accept_new), host
    target = SSHTarget(host, host, port or 22, user or ssh_username or FLEET_SSH_USER)
    return Cluster.from_targets({host: target}, accept_new=accept_new, persist=not no_persist), host


# -- global options: given before the command, as fleetctl takes them -------------------------------------------
GLOBAL_OPTIONS: Final = ("backend", "fleet_endpoint", "tunnel", "ssh_username", "lab", "inventory", "as_json")


class _GroupDefaults(dict[str, Any]):
    """A command group's ``default_map``: its subcommands' defaults from the global options. A subcommand that
    lacks one of them is refused when click makes its context, the moment the chosen one is known."""

    def __init__(self, defaults: Mapping[str, Any], refused: Mapping[str, str]) -> None:
        super().__init__(defaults)
        self.refused = dict(refused)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.refused:
            raise UsageError(self.refused[key])
        return super().get(key, default)


def global_defaults(command: click.Command, path: str, given: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """``command``'s ``default_map`` for the global options ``given`` (option strings -> value): each is the
    default of the command's option of that spelling, so that the command's own flag, given after it, wins.
    UsageError (``list-machines takes no --lab``) for one the command does not take."""
    if isinstance(command, click.Group):
        defaults: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for name, sub in command.commands.items():
            try:
                defaults[name] = global_defaults(sub, f"{path} {name}", given)
            except UsageError as exc:
                refused[name] = str(exc)
        return _GroupDefaults(defaults, refused)
    out: dict[str, Any] = {}
    for opts, value in given.items():
        param = next((p for p in command.params if isinstance(p, click.Option) and set(p.opts) & set(opts)), None)
        if param is None or param.name is None:
            raise UsageError(f"{path} takes no {opts[0]}")
        out[param.name] = value
    return out


def apply_global_options(ctx: click.Context) -> None:
    """From the root callback: hand the global options given before the command to the command about to run
    (``ctx.default_map``), nested groups included. The command's module is loaded already (click resolved it
    before the callback), so this loads nothing."""
    from click.core import ParameterSource

    given: dict[tuple[str, ...], Any] = {}
    for param in ctx.command.params:
        if param.name in GLOBAL_OPTIONS and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
            value = ctx.params[param.name]
            given[tuple(param.opts)] = str(value) if isinstance(value, Path) else value
    name = ctx.invoked_subcommand
    if not given or name is None or not isinstance(ctx.command, click.Group):
        return
    command = ctx.command.get_command(ctx, name)
    if command is not None:
        ctx.default_map = {name: global_defaults(command, name, given)}


# -- output ----------------------------------------------------------------------------------------------------------
def use_color() -> bool:
    import os

    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def emit_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def report_problem(message: str, *, label: str = "error", prefix: str = "", details: Iterable[str] = ()) -> None:
    """One ``error:`` (or ``warning:``, ``problem:``) line on stderr for a node or unit that failed while the
    command goes on, then ``details`` indented (a failed unit's journal).

    Errors that end a command are raised and printed by the CLI's one boundary (``LabGroup.main``); these
    lines are the other way a failure reaches the user, so they are masked the same way: a discovery URL
    (an etcd journal quotes it) shows only the first characters of its token.
    """
    from coreos_lab.redact import mask_text

    typer.echo(mask_text(f"{prefix}{label}: {message}"), err=True)
    for line in details:
        typer.echo(mask_text(f"  {line}"), err=True)


FLEETCTL_TAB_WIDTH = 8  # fleetctl's tables: Go's text/tabwriter, tab stops every 8 columns, padding 1


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, legend: bool = True, tab_width: int | None = None
) -> str:
    """The table as text, each line ending in a newline ("" for no lines); None or empty cells print as ``-``.

    ``tab_width`` None (coreos-lab's own tables): each column but the last is padded with spaces to its widest
    cell and followed by one tab. ``tab_width`` N (fleetctl's tables, :data:`FLEETCTL_TAB_WIDTH`): each column
    but the last is as wide as its widest cell plus one, rounded up to a multiple of N, and filled with tabs.

    >>> format_table(["UNIT", "SUB"], [["a.service", None]])
    'UNIT     \\tSUB\\na.service\\t-\\n'
    >>> format_table(["UNIT", "SUB"], [["a.service", None]], tab_width=8)
    'UNIT\\t\\tSUB\\na.service\\t-\\n'
    """
    lines = [list(headers)] if legend else []
    for row in rows:
        cells = ["-" if v is None or v == "" else str(v) for v in row]
        if len(cells) != len(headers):
            raise ValueError(f"row has {len(cells)} cells, expected {len(headers)}")
        lines.append(cells)
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers) - 1)]
    out = []
    for line in lines:
        if tab_width is None:
            text = "".join(cell.ljust(w) + "\t" for cell, w in zip(line, widths, strict=False)) + line[-1]
            out.append(text.rstrip() + "\n")  # a blank-only last cell never leaves a dangling tab
        else:
            stops = [-(-(w + 1) // tab_width) * tab_width for w in widths]
            tabs = (-(-(stop - len(cell)) // tab_width) for cell, stop in zip(line, stops, strict=False))
            out.append("".join(cell + "\t" * n for cell, n in zip(line, tabs, strict=False)) + line[-1] + "\n")
    return "".join(out)


def emit_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, legend: bool = True, tab_width: int | None = None
) -> None:
    """Print :func:`format_table`'s text on stdout (nothing for an empty table without a legend)."""
    typer.echo(format_table(headers, rows, legend=legend, tab_width=tab_width), nl=False)


def print_journal(
    client: Any, unit: str, *, lines: int, follow: bool, interval: float, since: str | None = None
) -> None:
    """Print ``unit``'s last ``lines`` journal lines from ``client`` (a SystemdClient); with ``follow``, keep
    printing new ones every ``interval`` seconds (Ctrl-C ends it)."""
    import time

    text, cursor = client.journal_after(unit, lines=lines, since=since)
    typer.echo(text, nl=False)
    while follow:
        sys.stdout.flush()
        time.sleep(interval)
        text, cursor = client.journal_after(unit, cursor=cursor, lines=None if cursor else lines)
        typer.echo(text, nl=False)
