"""The fleet backend: where fleetd runs (old CoreOS, or a user's own fleet), units go through its API.

Exactly as ``fleetctl --endpoint`` does: fleet keeps the desired state and schedules; we only submit and watch.
The answers are the same result types as the systemd backend's (:mod:`coreos_lab.units.results`); a node is a
fleet machine (``NodeOutcome.node`` is its machine ID). :class:`FleetBackend` is the same as a
:class:`~coreos_lab.units.base.UnitBackend`.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from coreos_lab import fleet
from coreos_lab.errors import CoreosLabError, UsageError
from coreos_lab.fleet import FleetMachine
from coreos_lab.scheduler import Node, place
from coreos_lab.unitfile import UnitFile, XFleet, file_name, is_pattern, validate_unit_name
from coreos_lab.units.results import (
    ACTIVE_STATES,
    TMACHINE_WARNING,
    DeployOutcome,
    DeployStatus,
    Listing,
    NodeOutcome,
    Report,
    StateChange,
    StatusText,
    UndeployOutcome,
    parse_fields,
    pick,
)

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.fleet import FleetClient, FleetUnit, FleetUnitState
    from coreos_lab.probe import NodeFacts
    from coreos_lab.runner import Runner


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
    return _wait(client, name, desired, timeout, interval, ips)[0]


def _wait(
    client: FleetClient,
    name: str,
    desired: str,
    timeout: float,
    interval: float = 0.5,
    ips: Mapping[str, str] | None = None,
) -> tuple[tuple[NodeOutcome, ...], Mapping[str, str]]:
    """:func:`wait`, and the machines (ID -> IP) known when it ended."""
    deadline = time.monotonic() + timeout
    while True:
        outcomes, ips = _poll(client, name, ips)
        if desired == "launched":
            done = bool(outcomes) and all(o.active_state in ("active", "failed") for o in outcomes)
        else:
            done = all(o.active_state not in ACTIVE_STATES for o in outcomes)
        if done or time.monotonic() >= deadline:
            return outcomes, ips
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _quiet(line: str) -> None:
    """The :data:`Report` of a caller that wants only the results."""


def _settled(name: str, state: str, nodes: Sequence[NodeOutcome], ips: Mapping[str, str]) -> list[str]:
    """fleetctl's line for each machine where ``name`` reached ``state``: ``Unit X launched on ID.../IP``, or
    ``Unit X launched`` while fleet has not said where (it names a machine /machines does not list yet)."""
    return [
        f"Unit {name} {state} on {fleet.machine_cell(n.node, n.ip)}" if n.node in ips else f"Unit {name} {state}"
        for n in nodes
        if n.ok
    ]


def deploy(
    client: FleetClient,
    units: Sequence[UnitFile],
    *,
    timeout: float = 30.0,
    block: bool = True,
    report: Report | None = None,
) -> tuple[DeployOutcome, ...]:
    """``fleetctl start UNIT_FILE...``: submit (or reuse identical) units with desired state launched, then wait.

    In fleetctl's order, each step for every unit before the next step, its lines going to ``report`` as they
    happen: submitted (``Unit X inactive``; for a global unit fleetctl prints no state: ``Unit X ``), a global
    unit triggered (``Triggered global unit X start``: fleet runs it everywhere, nobody waits), then each other
    unit waited for (``Unit X launched on ID.../IP``). A unit already launched with identical content is
    ``unchanged`` and says nothing (the caller tells it); different content is refused before anything is
    submitted, as is a unit no machine can take: its [X-Fleet] constraints are held against fleet's machines
    and units (our scheduler's rules are fleet's), and the SchedulingError names what excluded each machine,
    so it is never left launched and unscheduled.

    ``block`` False (``--no-block``): nothing is waited for, nor checked against the machines (fleet keeps an
    unschedulable unit launched until a machine can take it, as it does for fleetctl); the units are
    ``triggered`` and fleetctl v1.0.0's ``Triggered unit X start`` is said twice, once for each of the two
    waits it skips (the job's state, then systemd's).
    """
    say = report or _quiet
    for u in units:
        file_name(u.name or "")  # a bare template cannot run: refused before fleet is asked anything
    named = [(u.name or "", u) for u in units]
    constraints = {name: XFleet.from_unit(u) for name, u in named}
    placed = _Placer(client)
    found: dict[str, FleetUnit | None] = {}
    out: dict[str, DeployOutcome] = {}
    for name, u in named:  # everything is checked before anything is submitted
        found[name] = existing = client.unit(name)
        if existing is not None:
            fleet.check_same_content(existing, u)  # refuses different content, like fleetctl
            if existing.desired_state == "launched":
                nodes = machine_outcomes(client, name)
                out[name] = DeployOutcome(name, u.hash, "unchanged", nodes, "identical content is already launched")
                continue
        if block:
            placed.check(name, constraints[name])
    todo = [(name, u) for name, u in named if name not in out]
    for name, u in todo:
        if client.ensure_unit(u, "launched", existing=found[name]):
            say(f"Unit {name} " if constraints[name].global_ else f"Unit {name} inactive")
    for name, _ in todo:
        if constraints[name].global_:
            say(f"Triggered global unit {name} start")
    if not block:
        for _ in range(2):
            for name, _ in todo:
                if not constraints[name].global_:
                    say(f"Triggered unit {name} start")
        out.update((name, DeployOutcome(name, u.hash, "triggered", reported=True)) for name, u in todo)
        return tuple(out[name] for name, _ in named)
    for name, u in todo:
        nodes, ips = _wait(client, name, "launched", timeout, ips=placed.ips)
        if not nodes:
            nodes = (NodeOutcome("", "", False, error=f"fleet did not schedule {name} within {timeout:g}s"),)
        if not constraints[name].global_:
            for line in _settled(name, "launched", nodes, ips):
                say(line)
        status: DeployStatus = "launched" if any(n.ok for n in nodes) else "failed"
        out[name] = DeployOutcome(name, u.hash, status, nodes, reported=True)
    return tuple(out[name] for name, _ in named)


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
    """``fleetctl destroy``: DELETE each unit (fleet stops it on its machines). Idempotent. A name with a glob
    character is no unit of fleet's (fleetctl matches no pattern): nothing is asked for it."""
    for n in names:
        if not is_pattern(n):
            validate_unit_name(n)
    out = []
    for name in names:
        destroyed = not is_pattern(name) and client.destroy(name)
        out.append(UndeployOutcome(name, destroyed, destroyed))
    return tuple(out)


def set_state(
    client: FleetClient,
    name: str,
    desired: Literal["launched", "loaded"],
    *,
    timeout: float = 30.0,
    block: bool = True,
    report: Report | None = None,
) -> StateChange:
    """``fleetctl start|stop UNIT`` on a unit fleet already has, with fleetctl's lines to ``report``: ``Unit X
    launched on ID.../IP`` (``loaded`` for a stop) once it got there; for a global unit ``Triggered global unit
    X start|stop`` (fleet runs it everywhere); with ``block`` False (a start only) nothing is waited for and
    ``Triggered unit X start`` is said, twice as fleetctl v1.0.0 says it (see :func:`deploy`). A unit already in
    ``desired`` is not triggered again: fleetctl then says nothing and neither does this."""
    say = report or _quiet
    current = client.unit(name)
    if current is None:
        raise UsageError(f"unit {name} is not deployed (deploy it first)")
    changed = current.desired_state != desired
    is_global = fleet.is_global_unit(current)
    client.set_desired_state(name, desired)
    verb = "start" if desired == "launched" else "stop"
    if changed and is_global:
        say(f"Triggered global unit {name} {verb}")
    if not block and desired == "launched":
        for _ in range(2 if changed and not is_global else 0):
            say(f"Triggered unit {name} {verb}")
        return StateChange(name, desired, changed, (), reported=True)
    nodes, ips = _wait(client, name, desired, timeout)
    if desired == "loaded":
        nodes = tuple(replace(n, ok=n.active_state not in ACTIVE_STATES, error=None) for n in nodes)
    if changed and not is_global:
        for line in _settled(name, desired, nodes, ips):
            say(line)
    return StateChange(name, desired, changed, nodes, reported=changed)


# ---- unit status and journal: on the unit's machine, over SSH (fleetctl status / journal) ----------------------------
@dataclass(frozen=True, slots=True)
class Reached:
    """A fleet machine that holds a unit, and the runner that reaches it."""

    label: str  # the lab's node name, else fleetctl's short machine ID
    machine: FleetMachine
    runner: Runner


def status_texts(reached: Sequence[Reached], name: str) -> tuple[StatusText, ...]:
    """``systemctl status UNIT`` on each machine (what the systemd backend's ``unit status`` runs)."""
    argv = ["systemctl", "status", "--no-pager", "--full", "--lines=10", "--", name]
    out = []
    for r in reached:
        res = r.runner.run(shlex.join(argv), timeout=30)
        out.append(StatusText(r.label, r.machine.primary_ip, res.exit_code, res.stdout + res.stderr))
    return tuple(out)


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

    def __init__(
        self,
        client: FleetClient,
        cluster: Cluster | None = None,
        *,
        facts: Mapping[str, NodeFacts] | None = None,
        report: Report | None = None,
        block: bool = True,
    ) -> None:
        """``cluster``/``facts``: the nodes fleet was reached through and their probe, which tell a machine
        that is a node (by machine ID); ``report`` gets fleetctl's progress lines; ``block`` False is
        ``--no-block`` for deploy and start."""
        self.client = client
        self.cluster = cluster
        self.facts = dict(facts or {})
        self.report = report
        self.block = block

    def deploy(
        self, units: Sequence[UnitFile], *, timeout: float = 30.0, settle: float | None = None
    ) -> tuple[DeployOutcome, ...]:
        # fleet judges a start itself: no settle watch
        return deploy(self.client, units, timeout=timeout, block=self.block, report=self.report)

    def undeploy(self, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
        return undeploy(self.client, names)

    def set_state(self, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0) -> StateChange:
        return set_state(self.client, name, desired, timeout=timeout, block=self.block, report=self.report)

    def machines_of(self, name: str, node: str | None = None) -> tuple[FleetMachine, ...]:
        """The machines fleet says hold ``name`` (its /state, else the unit's target in /units); ``node``: only
        the one with that machine ID (or its first characters), or that is the lab's node of that name."""
        validate_unit_name(name)
        ids = list(dict.fromkeys(s.machine_id for s in self.client.states(unit_name=name) if s.name == name))
        if not ids:
            unit = self.client.unit(name)
            if unit is None:
                raise UsageError(f"unit {name} is not deployed")
            ids = [unit.machine_id] if unit.machine_id else []
        if not ids:
            raise CoreosLabError(f"unit {name} is on no machine: fleet has not scheduled it")
        known = {m.id: m for m in self.client.machines()}
        machines = tuple(known.get(i, FleetMachine(i, "")) for i in ids)
        if node is None:
            return machines
        chosen = tuple(m for m in machines if m.id.startswith(node.removesuffix("...")) or self._node(m) == node)
        if not chosen:
            shown = ", ".join(self._label(m) for m in machines)
            raise UsageError(f"unit {name} is not on {node!r} (it is on {shown})")
        return chosen

    def _node(self, machine: FleetMachine) -> str | None:
        """The node (of the cluster fleet was reached through) that is ``machine``, by its machine ID."""
        if self.cluster is None:
            return None
        return next((f.name for f in self.facts.values() if f.reachable and f.machine_id == machine.id), None)

    def _label(self, machine: FleetMachine) -> str:
        return self._node(machine) or fleet.short_machine_id(machine.id)

    @contextmanager
    def reach(
        self,
        machines: Sequence[FleetMachine],
        *,
        user: str = "core",
        port: int = 22,
        accept_new: bool = False,
        persist: bool = True,
    ) -> Iterator[list[Reached]]:
        """Runners on ``machines``, as fleetctl reaches them: a machine that is one of the nodes fleet was
        reached through is used through that node's connection; any other over SSH at its IP (``user``,
        ``port``; host keys checked against ~/.ssh/known_hosts). Their connections close on the way out."""
        from coreos_lab.cluster import Cluster
        from coreos_lab.sshconfig import SSHTarget

        far = [m for m in machines if self._node(m) is None]
        shorts = [fleet.short_machine_id(m.id) for m in far]
        direct: dict[str, SSHTarget] = {}  # by the name messages give it: fleetctl's short ID, if it is unique
        for m, short in zip(far, shorts, strict=True):
            if not m.primary_ip:
                raise CoreosLabError(f"fleet names no IP for machine {m.id}: cannot reach it over SSH")
            label = short if shorts.count(short) == 1 else m.id
            direct[m.id] = SSHTarget(label, m.primary_ip, port, user)
        others = (
            Cluster.from_targets({t.name: t for t in direct.values()}, accept_new=accept_new, persist=persist)
            if direct
            else None
        )
        try:
            reached = []
            for m in machines:
                node = self._node(m)
                if node is not None and self.cluster is not None:
                    reached.append(Reached(node, m, self.cluster.runner(node)))
                elif others is not None:  # every machine that is no node has its target in ``direct``
                    reached.append(Reached(direct[m.id].name, m, others.runner(direct[m.id].name)))
            yield reached
        finally:
            if others is not None:
                others.close()

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
                "provision": "-",  # fleet does not know; `status` asks the nodes
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
