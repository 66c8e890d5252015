"""Reading the cluster's units: systemd's live state joined with the desired state in etcd.

The rows of ``list-units``/``list-unit-files`` and ``status``, and the scheduler's view of what runs where
(:func:`observed_map`) for reconcile. Nothing here changes a node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from coreos_lab.errors import CoreosLabError
from coreos_lab.systemd import SystemdClient, UnitState
from coreos_lab.unitfile import UnitFile, file_name
from coreos_lab.units.results import ACTIVE_STATES, UnitFileRow, UnitRow

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.probe import NodeFacts
    from coreos_lab.state import UnitRecord


def scheduler_state(state: UnitState) -> str | None:
    """systemd's state as the scheduler's vocabulary: launched, loaded, or None (not installed)."""
    if not state.exists:
        return None
    return "launched" if state.active_state in ACTIVE_STATES else "loaded"


def observe(
    cluster: Cluster, names: Sequence[str], facts: Mapping[str, NodeFacts]
) -> tuple[dict[str, dict[str, UnitState]], dict[str, str]]:
    """systemd's view of ``names`` on every reachable node: ``{node: {unit: state}}`` and ``{node: error}``."""
    reachable = [n for n, f in facts.items() if f.reachable]
    if not names or not reachable:
        return {n: {} for n in reachable}, {}
    results = cluster.map(lambda r: SystemdClient(r).show_many(list(names)), reachable)
    states: dict[str, dict[str, UnitState]] = {}
    errors: dict[str, str] = {}
    for node, res in results.items():
        if isinstance(res, CoreosLabError):
            errors[node] = str(res)
        else:
            states[node] = {s.name: s for s in res}
    return states, errors


def unit_rows(
    records: Sequence[UnitRecord],
    facts: Mapping[str, NodeFacts],
    states: Mapping[str, Mapping[str, UnitState]],
    errors: Mapping[str, str] | None = None,
) -> list[UnitRow]:
    """Join desired state with live state: one row per (unit, target node); a unit without targets gets one row."""
    errors = errors or {}
    rows: list[UnitRow] = []
    for r in sorted(records, key=lambda x: x.name):
        if not r.targets:
            rows.append(UnitRow(r.name, "", "", r.desired_state, "", "", "", r.hash, None))
            continue
        for node in r.targets:
            f = facts.get(node)
            st = states.get(node, {}).get(r.name)
            if f is None:
                err: str | None = "node is not in this cluster"
            elif not f.reachable:
                err = f.error or "unreachable"
            elif st is None:
                err = errors.get(node, "no state")
            else:
                err = None
            rows.append(
                UnitRow(
                    r.name,
                    node,
                    f.ip if f else "",
                    r.desired_state,
                    st.load_state if st else "",
                    st.active_state if st else "",
                    st.sub_state if st else "",
                    r.hash,
                    err,
                )
            )
    return rows


def unit_file_rows(records: Sequence[UnitRecord], rows: Sequence[UnitRow]) -> list[UnitFileRow]:
    """``list-unit-files``: STATE is launched when active on every target, loaded when installed, else inactive."""
    by_unit: dict[str, list[UnitRow]] = {}
    for row in rows:
        by_unit.setdefault(row.unit, []).append(row)
    out = []
    for r in sorted(records, key=lambda x: x.name):
        mine = [row for row in by_unit.get(r.name, []) if row.node and row.error is None]
        if mine and all(row.active_state == "active" for row in mine) and len(mine) == len(r.targets):
            state = "launched"
        elif any(row.load_state == "loaded" for row in mine):
            state = "loaded"
        else:
            state = "inactive"
        out.append(UnitFileRow(r.name, r.hash, r.desired_state, state, r.targets, is_global(r), description(r)))
    return out


def description(record: UnitRecord) -> str:
    """The record's last ``[Unit] Description=`` ("" when it has none or its content does not parse)."""
    try:
        values = UnitFile.parse(record.content, name=record.name).get_all("Unit", "Description")
    except CoreosLabError:
        return ""
    return values[-1] if values else ""


def is_global(record: UnitRecord) -> bool:
    try:
        return record.constraints().global_
    except CoreosLabError:
        return False


def observed_map(
    states: Mapping[str, Mapping[str, UnitState]], records: Sequence[UnitRecord] = ()
) -> dict[str, dict[str, str]]:
    """``{node: {unit: state}}`` -> the scheduler's ``{unit: {node: launched|loaded}}`` (absent units left out).

    An instance (``web@1.service``) is "loaded" wherever its template file is, so a sibling's template would
    make it look present everywhere: an inactive instance only counts as loaded on its own target nodes.
    """
    targets = {r.name: set(r.targets) for r in records}
    out: dict[str, dict[str, str]] = {}
    for node, units in states.items():
        for unit, st in units.items():
            seen = scheduler_state(st)
            if seen == "loaded" and file_name(unit) != unit and node not in targets.get(unit, set()):
                seen = None
            if seen is not None:
                out.setdefault(unit, {})[node] = seen
    return out
