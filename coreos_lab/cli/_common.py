"""What the command modules share: every option used by more than one command, output (tables, JSON, report
lines) and opening the nodes.

Short flags mean one thing everywhere: ``-N`` ``--node``, ``-n`` ``--lines`` (journalctl's and fleetctl's
habit), ``-f`` ``--follow``, ``-t`` ``--timeout``, ``-l`` ``--full``, ``-i`` ``--inventory``, ``-v``
``--verbose``, ``-o`` ``--output``, ``-h`` ``--help``. Everything else has a long form only.

This module is imported when the CLI starts: it imports typer and nothing of the library at its top.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
NODE_OPTION = typer.Option(None, "--node", "-N", help="This node (e.g. for a global unit).")
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
