"""Output helpers shared by the CLI modules: plain tables (fleetctl-like), JSON, the lab directory option."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from coreos_lab.config import find_lab_dir

LAB_OPTION = typer.Option(None, "--lab", help="Lab directory (default: nearest coreos-lab.toml, or $COREOS_LAB_DIR).")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")


def lab_dir(option: Path | None) -> Path:
    return option if option is not None else find_lab_dir()


def use_color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def format_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, legend: bool = True) -> str:
    """Left-aligned columns separated by tabs padded like fleetctl's tabwriter; '-' for empty cells."""
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    table = ([list(columns)] if legend else []) + cells
    if not table:
        return ""
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = []
    for row in table:
        parts = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("\t".join(parts).rstrip())
    return "\n".join(lines)


def emit_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, legend: bool = True) -> None:
    text = format_table(columns, rows, legend=legend)
    if text:
        typer.echo(text)


def emit_records(records: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool) -> None:
    """Print records as JSON (a list of objects) or as a table of the given keys (upper-cased headers)."""
    if as_json:
        emit_json(list(records))
    else:
        emit_table([c.upper() for c in columns], ([r.get(c) for c in columns] for r in records))
