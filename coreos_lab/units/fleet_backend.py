"""The fleet backend: where fleetd runs (old CoreOS, or a user's own fleet), units go through its API.

Exactly as ``fleetctl --endpoint`` does: fleet keeps the desired state and schedules; we only submit and watch.
The answers are the same result types as the systemd backend's (:mod:`coreos_lab.units.results`); a node is a
fleet machine (``NodeOutcome.node`` is its machine ID). :class:`FleetBackend` is the same as a
:class:`~coreos_lab.units.base.UnitBackend`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Literal

from coreos_lab import fleet
from coreos_lab.errors import CoreosLabError, UsageError
from coreos_lab.scheduler import Node, place
from coreos_lab.unitfile import UnitFile, XFleet, file_name, validate_unit_name
from coreos_lab.units.results import (
    ACTIVE_STATES,
    TMACHINE_WARNING,
    DeployOutcome,
    DeployStatus,
    Listing,
    NodeOutcome,
    StateChange,
    UndeployOutcome,
    parse_fields,
    pick,
)

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.fleet import FleetClient, FleetUnitState


def machine_outcomes(client: FleetClient, name: str) -> tuple[NodeOutcome, ...]:
    """Each machine's copy of ``name``, from fleet's /state (and /machines for the addresses)."""
    return _poll(client, name, None)[0]


def _poll(
    client: FleetClient, name: str, ips: Mapping[str, str] | None
) -> tuple[tuple[NodeOutcome, ...], Mapping[str, str]]:
    """:func:`machine_outcomes` with ``ips`` (machine ID -> IP) kept by the caller between polls: /machines is
    asked again only when a state names a machine ``ips`` does not hold."""
    states = [s for s in client.states(unit_name=name) if s.name == name]
    if ips is None or any(s.machine_id not in ips for s in states):
        ips = {m.id: m.primary_ip for m in client.machines()}
    outcomes = tuple(
        NodeOutcome(
            s.machine_id,
            ips.get(s.machine_id, ""),
            s.active_state == "active",
            s.active_state,
            s.sub_state,
            None if s.active_state == "active" else f"{name} is {s.active_state}/{s.sub_state}",
        )
        for s in states
    )
    return outcomes, ips


def wait(
    client: FleetClient,
    name: str,
    desired: str,
    timeout: float,
    interval: float = 0.5,
    ips: Mapping[str, str] | None = None,
) -> tuple[NodeOutcome, ...]:
    """Poll fleet's /state until every machine's copy of ``name`` is active or failed (launched), or not
    active (loaded); bounded by ``timeout`` (what is known then is returned). /machines is read once (not at
    all when ``ips`` is given), and again only when the unit shows up on a machine not seen yet."""
    deadline = time.monotonic() + timeout
    while True:
        outcomes, ips = _poll(client, name, ips)
        if desired == "launched":
            done = bool(outcomes) and all(o.active_state in ("active", "failed") for o in outcomes)
        else:
            done = all(o.active_state not in ACTIVE_STATES for o in outcomes)
        if done or time.monotonic() >= deadline:
            return outcomes
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def deploy(client: FleetClient, units: Sequence[UnitFile], *, timeout: float = 30.0) -> tuple[DeployOutcome, ...]:
    """``fleetctl start UNIT_FILE...``: submit (or reuse identical) units with desired state launched, then wait.

    Each unit's [X-Fleet] constraints are first held against fleet's machines and the units already there
    (our scheduler's rules are fleet's): a unit no machine can take is refused (SchedulingError naming what
    excluded each machine) before it is submitted, so it is never left launched and unscheduled in fleet.
    """
    constraints = {}
    for u in units:
        file_name(u.name or "")
        constraints[u.name or ""] = XFleet.from_unit(u)
    placed = _Placer(client)
    out = []
    for u in units:
        name = u.name or ""
        existing = client.unit(name)
        if existing is not None and existing.desired_state == "launched" and existing.hash == u.hash:
            nodes = machine_outcomes(client, name)
            out.append(DeployOutcome(name, u.hash, "unchanged", nodes, "identical content is already launched"))
            continue
        placed.check(name, constraints[name])
        client.ensure_unit(u, "launched", existing=existing)  # refuses different content, like fleetctl
        nodes = wait(client, name, "launched", timeout, ips=placed.ips)
        if not nodes:
            nodes = (NodeOutcome("", "", False, error=f"fleet did not schedule {name} within {timeout:g}s"),)
        status: DeployStatus = "launched" if any(n.ok for n in nodes) else "failed"
        out.append(DeployOutcome(name, u.hash, status, nodes))
    return tuple(out)


class _Placer:
    """fleet's machines and where its units are, read once per deploy, for :func:`scheduler.place`."""

    def __init__(self, client: FleetClient) -> None:
        self.client = client
        self.nodes: list[Node] | None = None
        self.ips: dict[str, str] = {}  # machine ID -> IP, handed on to the wait
        self.assignments: dict[str, tuple[str, ...]] = {}
        self.others: dict[str, XFleet] = {}

    def check(self, name: str, xf: XFleet) -> None:
        if self.nodes is None:
            machines = self.client.machines()
            self.nodes = [Node(m.id, m.id, m.primary_ip, dict(m.metadata)) for m in machines]
            self.ips = {m.id: m.primary_ip for m in machines}
            where: dict[str, set[str]] = {}
            for state in self.client.states():
                where.setdefault(state.name, set()).add(state.machine_id)
            self.assignments = {unit: tuple(sorted(ids)) for unit, ids in where.items()}
            for unit in self.client.units():
                with contextlib.suppress(CoreosLabError):  # a unit fleet holds that we cannot read constrains nothing
                    self.others[unit.name] = XFleet.from_unit(unit.unit_file())
        place(name, xf, self.nodes, self.assignments, self.others)  # SchedulingError when no machine qualifies
        self.others[name] = xf


def undeploy(client: FleetClient, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
    """``fleetctl destroy``: DELETE each unit (fleet stops it on its machines). Idempotent."""
    for n in names:
        validate_unit_name(n)
    out = []
    for name in names:
        destroyed = client.destroy(name)
        out.append(UndeployOutcome(name, destroyed, destroyed))
    return tuple(out)


def set_state(
    client: FleetClient, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0
) -> StateChange:
    """``fleetctl start|stop UNIT`` on a unit fleet already has."""
    current = client.unit(name)
    if current is None:
        raise UsageError(f"unit {name} is not deployed (deploy it first)")
    client.set_desired_state(name, desired)
    nodes = wait(client, name, desired, timeout)
    if desired == "loaded":
        nodes = tuple(replace(n, ok=n.active_state not in ACTIVE_STATES, error=None) for n in nodes)
    return StateChange(name, desired, current.desired_state != desired, nodes)


def _state_json(s: FleetUnitState) -> dict[str, Any]:
    """A fleet unit state as JSON (fleet's own field names)."""
    return {
        "name": s.name,
        "machineID": s.machine_id,
        "hash": s.hash,
        "systemdLoadState": s.load_state,
        "systemdActiveState": s.active_state,
        "systemdSubState": s.sub_state,
    }


class FleetBackend:
    """A :class:`~coreos_lab.units.base.UnitBackend` over fleet's API; ``cluster`` is None for an http endpoint."""

    name: Final = "fleet"

    def __init__(self, client: FleetClient, cluster: Cluster | None = None) -> None:
        self.client = client
        self.cluster = cluster

    def deploy(
        self, units: Sequence[UnitFile], *, timeout: float = 30.0, settle: float | None = None
    ) -> tuple[DeployOutcome, ...]:
        return deploy(self.client, units, timeout=timeout)  # fleet judges a start itself: no settle watch

    def undeploy(self, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
        return undeploy(self.client, names)

    def set_state(self, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0) -> StateChange:
        return set_state(self.client, name, desired, timeout=timeout)

    def cat(self, name: str) -> str:
        """``fleetctl cat``: the unit as fleet holds it (its options, written out as fleet writes them)."""
        validate_unit_name(name)
        unit = self.client.unit(name)
        if unit is None:
            raise UsageError(f"unit {name} is not deployed")
        return unit.unit_file().to_text()

    def where(self, outcome: NodeOutcome) -> str:
        """A machine as fleetctl names it in its messages (``3d1219c7.../10.0.0.1``)."""
        return fleet.machine_cell(outcome.node, outcome.ip) if outcome.node else "-"

    def list_units(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """``fleetctl list-units``: UNIT MACHINE ACTIVE SUB (or ``fields``) from fleet's unit states."""
        states, machines = self.client.states(), self.client.machines()
        ips = {m.id: m.primary_ip for m in machines}
        rows = [
            {
                "unit": s.name,
                "machine": fleet.machine_cell(s.machine_id, ips.get(s.machine_id), full),
                "active": s.active_state,
                "sub": s.sub_state,
                "load": s.load_state,
                "hash": fleet.short_hash(s.hash, full),
            }
            for s in sorted(states, key=lambda s: (s.name, s.machine_id))
        ]
        columns, cells = pick(fields or parse_fields("list-units", None), rows)
        return Listing(columns, cells, tuple(_state_json(s) for s in states), fleetctl=True)

    def list_unit_files(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """``fleetctl list-unit-files``: UNIT HASH DSTATE STATE TARGET (or ``fields``); a global unit shows
        ``-`` as STATE and ``global`` as TARGET, as fleetctl does."""
        units, machines = self.client.units(), self.client.machines()
        ips = {m.id: m.primary_ip for m in machines}
        rows = []
        for u in sorted(units, key=lambda u: u.name):
            is_global = fleet.is_global_unit(u)
            machine = fleet.machine_cell(u.machine_id, ips.get(u.machine_id or ""), full)
            rows.append(
                {
                    "unit": u.name,
                    "hash": fleet.short_hash(u.hash, full),
                    "dstate": u.desired_state,
                    "state": None if is_global else u.current_state,
                    "target": "global" if is_global else machine,
                    "tmachine": "global" if is_global else machine,
                    "global": "true" if is_global else "false",
                    "desc": _description([(sec, name, value) for sec, name, value in u.options]),
                }
            )
        chosen = fields or parse_fields("list-unit-files", None)
        columns, cells = pick(chosen, rows)
        records = tuple({**u.to_json(), "hash": u.hash} for u in units)
        notes = (TMACHINE_WARNING,) if "tmachine" in chosen else ()
        return Listing(columns, cells, records, fleetctl=True, notes=notes)

    def list_machines(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """``fleetctl list-machines``: MACHINE IP METADATA (or ``fields``)."""
        machines = self.client.machines()
        rows = [
            {
                "machine": fleet.short_machine_id(m.id, full),
                "ip": m.primary_ip,
                "metadata": ",".join(f"{k}={v}" for k, v in sorted(m.metadata.items())),
            }
            for m in sorted(machines, key=lambda m: m.id)
        ]
        columns, cells = pick(fields or parse_fields("list-machines", None), rows)
        records = tuple({"id": m.id, "ip": m.primary_ip, "metadata": dict(m.metadata)} for m in machines)
        return Listing(columns, cells, records, fleetctl=True)


def _description(options: Sequence[tuple[str, str, str]]) -> str | None:
    """The unit's last ``[Unit] Description=`` (fleetctl's DESC column, ``%i`` left as written)."""
    values = [value for section, name, value in options if section == "Unit" and name == "Description"]
    return values[-1] if values else None
