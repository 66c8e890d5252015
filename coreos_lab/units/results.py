"""What the unit commands return: frozen results, one per unit or node, each with ``to_json`` for ``--json``.

Both backends (:mod:`coreos_lab.units.systemd_backend`, :mod:`coreos_lab.units.fleet_backend`) answer in these
types, so the CLI prints a deploy the same way whichever backend ran it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from coreos_lab.errors import UsageError

if TYPE_CHECKING:
    from coreos_lab.scheduler import Action

# systemd ActiveStates in which a unit counts as running (launched) rather than only installed (loaded).
ACTIVE_STATES: Final = ("active", "reloading", "activating", "deactivating")
# Where a backend says how its units are doing, a line at a time, as it goes (fleetctl's progress lines).
Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """What happened to one unit on one node."""

    node: str
    ip: str
    ok: bool
    active_state: str = ""
    sub_state: str = ""
    error: str | None = None
    journal: tuple[str, ...] = ()  # the unit's last journal lines when it failed there

    @property
    def machine(self) -> str:
        return f"{self.node}/{self.ip}" if self.ip else self.node

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ip": self.ip or None,
            "ok": self.ok,
            "active_state": self.active_state or None,
            "sub_state": self.sub_state or None,
            "error": self.error,
            "journal": list(self.journal),
        }


DeployStatus = Literal["launched", "updated", "unchanged", "failed", "triggered"]


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """One unit's deploy: ``unchanged`` when identical content was already deployed (nothing was done),
    ``triggered`` when its desired state was set and not waited for (``--no-block``).

    ``reported``: the backend already said how it went, line by line (its :data:`Report`), so the caller
    adds only the problems.
    """

    unit: str
    hash: str
    status: DeployStatus
    nodes: tuple[NodeOutcome, ...] = ()
    detail: str = ""
    warnings: tuple[str, ...] = ()
    reported: bool = False

    @property
    def ok(self) -> bool:
        return self.status != "failed" and all(n.ok for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "hash": self.hash,
            "status": self.status,
            "ok": self.ok,
            "nodes": [n.to_json() for n in self.nodes],
            "detail": self.detail or None,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class UndeployOutcome:
    """One unit's undeploy: ``removed_from`` the reachable nodes it is now gone from; ``deleted`` whether its
    record was deleted (kept, as inactive, while a target node could not be reached)."""

    unit: str
    had_record: bool
    deleted: bool
    removed_from: tuple[str, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "had_record": self.had_record,
            "deleted": self.deleted,
            "removed_from": list(self.removed_from),
            "errors": dict(self.errors),
            "ok": self.ok,
        }


@dataclass(frozen=True, slots=True)
class StateChange:
    """``unit start|stop``: the new desired state and what each target node did (``reported``: as in
    :class:`DeployOutcome`)."""

    unit: str
    desired_state: str
    changed: bool
    nodes: tuple[NodeOutcome, ...] = ()
    reported: bool = False

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "desired_state": self.desired_state,
            "changed": self.changed,
            "ok": self.ok,
            "nodes": [n.to_json() for n in self.nodes],
        }


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """One executed reconcile action."""

    action: Action
    ok: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        a = self.action
        return {"kind": a.kind, "unit": a.unit, "node": a.node, "reason": a.reason, "ok": self.ok, "error": self.error}


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What reconcile did (``changed`` False: the cluster already matched the desired state)."""

    actions: tuple[ActionOutcome, ...]
    unplaceable: tuple[tuple[str, str], ...] = ()
    deleted_records: tuple[str, ...] = ()
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.actions or self.deleted_records)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.actions) and not self.unplaceable

    def to_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "actions": [a.to_json() for a in self.actions],
            "unplaceable": dict(self.unplaceable),
            "deleted_records": list(self.deleted_records),
        }


@dataclass(frozen=True, slots=True)
class UnitRow:
    """``list-units``: one unit on one target node, desired state joined with what systemd says."""

    unit: str
    node: str
    ip: str
    desired_state: str
    load_state: str
    active_state: str
    sub_state: str
    hash: str
    error: str | None = None

    @property
    def machine(self) -> str:
        if not self.node:
            return ""
        return f"{self.node}/{self.ip}" if self.ip else self.node

    @property
    def in_desired_state(self) -> bool:
        """launched -> active; loaded -> installed and not active; inactive -> absent."""
        if self.error is not None or not self.node:
            return self.desired_state == "inactive"
        if self.desired_state == "launched":
            return self.active_state == "active"
        if self.desired_state == "loaded":
            return self.load_state == "loaded" and self.active_state not in ACTIVE_STATES
        return self.load_state in ("", "not-found")

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "machine": self.machine or None,
            "node": self.node or None,
            "ip": self.ip or None,
            "desired_state": self.desired_state,
            "load": self.load_state or None,
            "active": self.active_state or None,
            "sub": self.sub_state or None,
            "hash": self.hash,
            "ok": self.in_desired_state,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class UnitFileRow:
    """``list-unit-files``: UNIT HASH DSTATE STATE TARGET."""

    unit: str
    hash: str
    desired_state: str
    state: str
    targets: tuple[str, ...]
    is_global: bool
    description: str = ""  # the unit's [Unit] Description= (the DESC field)

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "hash": self.hash,
            "dstate": self.desired_state,
            "state": self.state,
            "targets": list(self.targets),
            "global": self.is_global,
        }


DeployPhase = Literal["preparing", "recording", "recorded"]


class DeployInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`deploy`. ``done``: the units finished before; ``unit`` and ``phase``: where it stopped.

    ``recorded``: the unit's desired state was in etcd before any node was touched, so nothing runs
    unrecorded; deploying again (or ``reconcile``) finishes the job. ``recording``: the etcd write was in
    flight and may or may not have landed; no node was touched. ``preparing``: nothing was written.
    A KeyboardInterrupt, so callers that do not know it still stop as on any Ctrl-C.
    """

    def __init__(self, unit: str, phase: DeployPhase, done: tuple[DeployOutcome, ...] = ()) -> None:
        super().__init__(unit, phase)
        self.unit = unit
        self.phase = phase
        self.done = done

    def __str__(self) -> str:
        if not self.unit:
            return "interrupted before anything was changed"
        if self.phase == "recorded":
            return (
                f"interrupted while starting {self.unit}: its desired state is recorded in etcd; "
                "run deploy again (or reconcile) to finish"
            )
        if self.phase == "recording":
            return f"interrupted while recording {self.unit} in etcd (no node was touched); run deploy again"
        return f"interrupted before {self.unit} was recorded; nothing was changed for it"


@dataclass(frozen=True, slots=True)
class StatusText:
    """``systemctl status`` of a unit on one node."""

    node: str
    ip: str
    exit_code: int
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "ip": self.ip or None, "exit_code": self.exit_code, "text": self.text}


@dataclass(frozen=True, slots=True)
class Listing:
    """What a list command shows: column names, rows of cells, the ``--json`` records, per-row problems.

    ``fleetctl``: the table is fleetctl's own output (its tabwriter rules), reproduced byte for byte.
    ``problems`` (one line each, e.g. an unreachable machine) make the command exit 1.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]
    records: tuple[dict[str, Any], ...]
    problems: tuple[str, ...] = ()
    fleetctl: bool = False
    notes: tuple[str, ...] = ()  # stderr lines that are not failures (a deprecated field, as fleetctl warns)


# The fields of each listing as fleetctl v1.0.0 names them (``--fields``); the first group is the default.
LISTING_FIELDS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "list-units": (("unit", "machine", "active", "sub"), ("load", "hash")),
    "list-unit-files": (("unit", "hash", "dstate", "state", "target"), ("global", "tmachine", "desc")),
    # "provision" is ours (fleet has no such notion): which channel provisioned the node.
    "list-machines": (("machine", "ip", "metadata"), ("provision",)),
}
TMACHINE_WARNING: Final = 'WARNING: The "tmachine" field is deprecated. Use "target" instead'


def parse_fields(listing: str, text: str | None) -> tuple[str, ...]:
    """``--fields`` (comma-separated, fleetctl's names) -> the fields to show; None: the listing's default.

    >>> parse_fields("list-units", "unit,sub")
    ('unit', 'sub')
    >>> parse_fields("list-units", None)
    ('unit', 'machine', 'active', 'sub')
    >>> parse_fields("list-machines", "machine,zone")
    Traceback (most recent call last):
    ...
    coreos_lab.errors.UsageError: --fields: 'zone' is not a list-machines field (machine, ip, metadata, provision)
    """
    default, more = LISTING_FIELDS[listing]
    if text is None:
        return default
    fields = tuple(f.strip() for f in text.split(","))
    for f in fields:
        if f not in default + more:
            shown = ", ".join(default + more)
            raise UsageError(
                f"--fields: {f!r} is not a {listing} field ({shown})" if f else f"--fields: empty field in {text!r}"
            )
    return fields


def pick(
    fields: Sequence[str], rows: Iterable[Mapping[str, str | None]]
) -> tuple[tuple[str, ...], tuple[tuple[str | None, ...], ...]]:
    """The headers (fleetctl's: the field names upper-cased) and the cells of ``fields``, row by row."""
    return tuple(f.upper() for f in fields), tuple(tuple(row[f] for f in fields) for row in rows)
