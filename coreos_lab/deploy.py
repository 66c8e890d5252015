"""Run units on the cluster without fleet: desired state in etcd, placement by the scheduler, systemd over SSH.

Every change follows the same order, so any client on any host sees one truth and a crash half-way leaves
something :func:`reconcile` can finish:

1. read the nodes (:func:`probe_nodes`: machine id, metadata, address; unreachable nodes are unhealthy);
2. decide (:mod:`coreos_lab.scheduler`, pure);
3. write the desired state to etcd with compare-and-swap (:class:`EtcdKV` under :class:`~coreos_lab.state.RecordStore`),
   so of two concurrent deploys of one unit exactly one wins;
4. act on the nodes (:class:`~coreos_lab.systemd.SystemdClient`), reporting each node's outcome: install
   atomically, ``start --no-block``, poll until the new run has a result, then watch it for a few seconds
   (:func:`settle_verdict`) so a unit that dies right away is reported failed with its last journal lines.

Ctrl-C (:class:`DeployInterrupted`) stops node-side work at its next step; since the record came first, no
unit is ever left on a node without one, and deploying again (or :func:`reconcile`) finishes the job.

Functions here take a :class:`~coreos_lab.cluster.Cluster` and return frozen result dataclasses; they never print.
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from coreos_lab import nodeshell
from coreos_lab.errors import CoreosLabError, EtcdError, UnitFileError, UsageError
from coreos_lab.runner import Runner
from coreos_lab.scheduler import (
    Action,
    DesiredUnit,
    Node,
    Plan,
    apply_plan,
    eligibility,
    place,
    plan_reconcile,
    with_loads,
)
from coreos_lab.state import DesiredStateStore, EtcdKV, RecordStore, UnitRecord, update_record
from coreos_lab.systemd import SystemdClient, UnitState
from coreos_lab.unitfile import UnitFile, XFleet, glob_match, validate_unit_name

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.fleet import FleetClient

METADATA_PATH: Final = "/etc/coreos-lab/metadata"
FLEET_SOCKET: Final = "/var/run/fleet.sock"
ETCD_PORT: Final = 2379
_SEP: Final = "@@coreos-lab@@"
# One round trip per node: machine id, placement metadata, host name, addresses. Shell builtins only (POSIX sh,
# bash, dash, busybox): on a software-emulated VM every process the login shell starts costs ~200 ms, and the
# cat/cat/hostname/hostname -I of a naive probe tripled its time (0.76 s vs 0.21 s for `true`, 3-VM lab).
# The address listing (`ip`, see nodeshell) runs only when some node's address is known neither from the lab
# nor from its SSH host.
_READ_FN: Final = 'r() { while IFS= read -r l || [ -n "$l" ]; do printf \'%s\\n\' "$l"; done < "$1"; } 2>/dev/null'
_PROBE: Final = (
    f"{_READ_FN}; r /etc/machine-id; echo {_SEP}; r {METADATA_PATH}; echo {_SEP}; "
    f"r /proc/sys/kernel/hostname; echo {_SEP}; {{addresses}}echo {_SEP}; "
    f"test -S {FLEET_SOCKET} && echo fleet || true"
)


def probe_command(addresses: bool) -> str:
    """The probe's shell line; ``addresses`` adds the address listing (the only command it may start)."""
    return _PROBE.replace("{addresses}", f"{nodeshell.ADDRESSES}; " if addresses else "")


_ACTIVE_STATES: Final = ("active", "reloading", "activating", "deactivating")


# ---- nodes -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What one node told us about itself (``reachable`` False: the rest is the lab config's, or empty)."""

    name: str
    reachable: bool
    ip: str = ""
    machine_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    error: str | None = None
    runs_fleet: bool = False

    @property
    def machine(self) -> str:
        """fleetctl's MACHINE column, ``<node>/<ip>``."""
        return f"{self.name}/{self.ip}" if self.ip else self.name

    def to_node(self, load: int = 0) -> Node:
        """The scheduler's view (healthy = reachable)."""
        return Node(self.name, self.machine_id, self.ip, dict(self.metadata), self.reachable, load)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reachable": self.reachable,
            "ip": self.ip or None,
            "machine_id": self.machine_id or None,
            "metadata": dict(sorted(self.metadata.items())),
            "hostname": self.hostname or None,
            "runs_fleet": self.runs_fleet,
            "error": self.error,
        }


def parse_metadata(text: str) -> dict[str, str]:
    """``/etc/coreos-lab/metadata``: ``key=value`` lines (blank lines and ``#`` comments ignored).

    >>> parse_metadata("role=web\\n# x\\nzone = a\\n")
    {'role': 'web', 'zone': 'a'}
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if eq and key.strip() and value.strip():
            out[key.strip()] = value.strip()
    return out


def _usable_ip(text: str) -> bool:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified)


def parse_probe(name: str, stdout: str, spec: NodeSpec | None = None, ssh_host: str = "") -> NodeFacts:
    """Turn the probe's output into NodeFacts. The address: the lab's, else the SSH host, else the node's first."""
    parts = [*stdout.split(_SEP + "\n"), "", "", "", "", ""][:5]
    machine_id, meta_text, hostname, addresses, fleet = (p.strip() for p in parts)
    metadata = parse_metadata(meta_text) if meta_text else dict(spec.metadata if spec else {})
    ip = spec.ip if spec else ""
    if not ip and _usable_ip(ssh_host):
        ip = ssh_host
    if not ip:
        ip = next((a for a in addresses.split() if _usable_ip(a)), "")
    mid = machine_id.split()[0] if machine_id else ""
    return NodeFacts(name, True, ip, mid, metadata, hostname, runs_fleet=fleet == "fleet")


def probe_nodes(cluster: Cluster, specs: Mapping[str, NodeSpec] | None = None) -> dict[str, NodeFacts]:
    """Ask every node (in parallel, one command each) who it is; unreachable nodes are reported, not raised."""
    return probe_nodes_and(cluster, specs)[0]


_EXTRA_SEP: Final = "@@coreos-lab-extra@@"


def probe_nodes_and(
    cluster: Cluster, specs: Mapping[str, NodeSpec] | None = None, extra: str | None = None
) -> tuple[dict[str, NodeFacts], dict[str, str]]:
    """:func:`probe_nodes`, plus ``extra`` (a shell line) run in the same round trip on every node.

    Returns the facts and ``{node: extra's stdout}`` for the nodes that answered. ``extra`` cannot make a
    node look down: its exit status is ignored (``|| true``) and its stderr dropped.
    """
    specs = specs or {}
    targets = cluster.targets
    need_addresses = any(
        not (specs.get(n) and specs[n].ip) and not (n in targets and _usable_ip(targets[n].hostname))
        for n in cluster.names
    )
    command = probe_command(need_addresses)
    if extra:
        command += f"; echo {_EXTRA_SEP}; {{ {extra}; }} 2>/dev/null || true"
    outcomes = cluster.run_all(command, timeout=20)
    facts: dict[str, NodeFacts] = {}
    extras: dict[str, str] = {}
    for name, outcome in outcomes.items():
        if extra and not isinstance(outcome, CoreosLabError):
            head, sep, tail = outcome.stdout.partition(f"{_EXTRA_SEP}\n")
            if sep:
                outcome = replace(outcome, stdout=head)
                extras[name] = tail
        spec = specs.get(name)
        if isinstance(outcome, CoreosLabError):
            facts[name] = NodeFacts(
                name, False, spec.ip if spec else "", metadata=dict(spec.metadata if spec else {}), error=str(outcome)
            )
        elif not outcome.ok:
            facts[name] = NodeFacts(name, False, error=f"{name}: probe exited {outcome.exit_code}")
        else:
            target = cluster.targets.get(name)
            facts[name] = parse_probe(name, outcome.stdout, spec, target.hostname if target else "")
    return facts, extras


# ---- etcd as the desired-state store ---------------------------------------------------------------------------------
def etcd_client(cluster: Cluster, facts: Mapping[str, NodeFacts] | None = None, *, timeout: float = 5.0) -> EtcdClient:
    """An etcd client through the first reachable node whose member answers and sees a leader."""
    errors: list[str] = []
    for name in cluster.names:
        if facts is not None and name in facts and not facts[name].reachable:
            errors.append(f"{name}: unreachable")
            continue
        try:
            client = cluster.etcd_client(name, ETCD_PORT, timeout=timeout)
            if client.status().leader == 0:
                errors.append(f"{name}: etcd member sees no leader")
                continue
            return client
        except CoreosLabError as exc:
            errors.append(f"{name}: {exc}")
    raise EtcdError("no node's etcd answered with a leader: " + "; ".join(errors))


def etcd_store(cluster: Cluster, facts: Mapping[str, NodeFacts] | None = None) -> RecordStore:
    """The desired-state store of the cluster (etcd, reached through a node's SSH connection)."""
    return RecordStore(EtcdKV(etcd_client(cluster, facts)))


# ---- results ---------------------------------------------------------------------------------------------------------
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


DeployStatus = Literal["launched", "updated", "unchanged", "failed"]


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """One unit's deploy: ``unchanged`` when identical content was already deployed (nothing was done)."""

    unit: str
    hash: str
    status: DeployStatus
    nodes: tuple[NodeOutcome, ...] = ()
    detail: str = ""
    warnings: tuple[str, ...] = ()

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
    """``unit start|stop``: the new desired state and what each target node did."""

    unit: str
    desired_state: str
    changed: bool
    nodes: tuple[NodeOutcome, ...] = ()

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
            return self.load_state == "loaded" and self.active_state not in _ACTIVE_STATES
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

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "hash": self.hash,
            "dstate": self.desired_state,
            "state": self.state,
            "targets": list(self.targets),
            "global": self.is_global,
        }


# ---- helpers ---------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> str:
    return f"coreos-lab@{socket.gethostname()}"[:200]


def _observed(state: UnitState) -> str | None:
    """systemd's state as the scheduler's vocabulary: launched, loaded, or None (not installed)."""
    if not state.exists:
        return None
    return "launched" if state.active_state in _ACTIVE_STATES else "loaded"


def _ip(facts: Mapping[str, NodeFacts], node: str) -> str:
    f = facts.get(node)
    return f.ip if f else ""


def _fail_outcome(node: str, facts: Mapping[str, NodeFacts], error: str) -> NodeOutcome:
    return NodeOutcome(node, _ip(facts, node), False, error=error)


def file_name(unit: str) -> str:
    """The unit file that carries ``unit``: itself, or its template for an instance (as fleet did).

    >>> file_name("hello@1.service")
    'hello@.service'

    A bare template cannot run, so it is refused (UnitFileError, exit 2).
    """
    parsed = validate_unit_name(unit)
    if parsed.is_template:
        raise UnitFileError(
            f"{unit} is a template: deploy instances of it instead, e.g. {parsed.prefix}@1.{parsed.suffix}"
        )
    return parsed.template if parsed.template is not None else unit


def _install(client: SystemdClient, unit: str, content: str) -> None:
    client.install(file_name(unit), content)


def _remove(runner: Runner, unit: str, keep_file: bool) -> None:
    """Stop ``unit`` and remove its file; an instance whose template still serves siblings keeps the file."""
    name = file_name(unit)
    client = SystemdClient(runner)
    if name == unit:
        client.remove(unit)
        return
    # "not loaded" answers for an instance that never ran are fine: the goal is that it does not run.
    runner.run(
        f"systemctl stop -- {shlex.quote(unit)}; systemctl reset-failed -- {shlex.quote(unit)}; true",
        sudo=True,
        timeout=client.timeout,
    ).check()
    if not keep_file:
        client.remove(name)


def _siblings_on(records: Sequence[UnitRecord], unit: str, node: str) -> bool:
    """Whether another live instance of ``unit``'s template is meant to be on ``node``."""
    name = file_name(unit)
    return name != unit and any(
        r.name != unit and r.desired_state != "inactive" and node in r.targets and file_name(r.name) == name
        for r in records
        if validate_unit_name(r.name).is_instance
    )


# ---- starting a unit and watching it settle --------------------------------------------------------------------------
# A start is judged by systemd's InvocationID (UnitState.invocation_id): it changes with every start cycle,
# so a poll can tell the run it asked for from the state a previous run left behind (``start --no-block``
# returns before the job has run).
SETTLE_SECONDS: Final = 1.0  # how long a freshly active unit must stay up before deploy calls it launched
JOURNAL_LINES: Final = 10
_GRACE_SECONDS: Final = 5.0  # an identical record's unit not running yet: a concurrent deploy may be starting it


def settle_verdict(first: UnitState, later: UnitState) -> str | None:
    """Whether a unit seen active (``first``) still runs the same way ``later``: None if so, else why not.

    A unit counts as failed when it left ``active``, restarted (systemd's restart counter grew, or a new
    invocation or main process replaced the first), i.e. it died right after starting.

    >>> up = UnitState("a.service", active_state="active", sub_state="running", main_pid=100, invocation_id="i1")
    >>> settle_verdict(up, up) is None
    True
    >>> settle_verdict(up, replace(up, active_state="failed", sub_state="failed", result="exit-code",
    ...                            main_pid=0, exec_main_status=3))
    'a.service did not stay active: failed/failed (result exit-code, status 3)'
    """
    name = later.name
    if later.active_state != "active":
        return f"{name} did not stay active: {later.summary}"
    if later.n_restarts > first.n_restarts or first.n_restarts > 0:
        return f"{name} keeps restarting: {later.summary}"
    if first.invocation_id and later.invocation_id and later.invocation_id != first.invocation_id:
        return f"{name} restarted right after starting: {later.summary}"
    if first.main_pid and later.main_pid and later.main_pid != first.main_pid:
        return f"{name} restarted right after starting (main PID {first.main_pid} -> {later.main_pid})"
    return None


def _checkpoint(cancel: threading.Event | None, host: str) -> None:
    """Node-side work of an interrupted deploy stops here, between steps (never inside a file write)."""
    if cancel is not None and cancel.is_set():
        raise CoreosLabError(f"{host}: interrupted")


def _pause(cancel: threading.Event | None, seconds: float) -> None:
    if seconds <= 0:
        return
    if cancel is None:
        time.sleep(seconds)
    else:
        cancel.wait(seconds)


def _liveness(runner: Runner, unit: str, timeout: float = 30.0) -> UnitState:
    return SystemdClient(runner, timeout=timeout).show(unit)


def journal_tail(runner: Runner, unit: str, lines: int = JOURNAL_LINES) -> tuple[str, ...]:
    """The unit's last journal lines (message only); empty when the journal cannot be read (best effort)."""
    validate_unit_name(unit)
    argv = ["journalctl", f"--unit={unit}", "--no-pager", "-o", "cat", f"--lines={lines}"]
    try:
        result = runner.run(argv, sudo=True, timeout=15)
    except CoreosLabError:
        return ()
    if not result.ok:
        return ()
    return tuple(line[:300] for line in result.stdout.splitlines() if line.strip() and line != "-- No entries --")


def _terminal(state: UnitState, before: UnitState | None) -> bool:
    """Whether the start we asked for has come to a result (active, failed, or already ended)."""
    if before is not None and state.invocation_id is not None and state.invocation_id in ("", before.invocation_id):
        return False  # the job has not begun yet: what we see is the previous run's state
    return state.active_state in ("active", "failed", "inactive")


def _wait_up(
    runner: Runner, unit: str, timeout: float, cancel: threading.Event | None, before: UnitState | None
) -> UnitState:
    """Poll until the start has a result; CoreosLabError naming the node and the state after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.1
    while True:
        _checkpoint(cancel, runner.host)
        state = _liveness(runner, unit, timeout=max(5.0, min(30.0, timeout)))
        if _terminal(state, before):
            return state
        if time.monotonic() >= deadline:
            raise CoreosLabError(f"{runner.host}: {unit} not active after {timeout:g}s ({state.summary})")
        _pause(cancel, min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(0.5, interval * 2)


@dataclass(frozen=True, slots=True)
class _Launch:
    state: UnitState
    error: str | None = None
    journal: tuple[str, ...] = ()


def _start_and_watch(
    runner: Runner,
    unit: str,
    *,
    restart: bool,
    timeout: float,
    settle: float,
    cancel: threading.Event | None,
) -> _Launch:
    """Start (or restart) ``unit``, wait for a result, then watch it ``settle`` seconds; failures carry the
    unit's state and its last journal lines."""
    before = _liveness(runner, unit)
    # A start of a unit that is already up (or on its way) joins that run: no new invocation to wait for.
    already = not restart and before.active_state in ("active", "activating", "reloading")
    _checkpoint(cancel, runner.host)
    # --no-block: the call returns once the job is queued, so an interrupt is never stuck behind a slow
    # ExecStartPre; the result is then polled (bounded by ``timeout``).
    verb = "restart" if restart else "start"
    runner.run(["systemctl", verb, "--no-block", "--", unit], sudo=True, timeout=30).check()
    state = _wait_up(runner, unit, timeout, cancel, None if already else before)
    error: str | None = None
    if state.active_state != "active":
        error = f"{unit} is {state.summary}"
    elif settle > 0:
        _pause(cancel, settle)
        _checkpoint(cancel, runner.host)
        later = _liveness(runner, unit)
        error = settle_verdict(state, later)
        state = later
    return _Launch(state, error, journal_tail(runner, unit) if error else ())


def _launch_on(
    runner: Runner,
    record: UnitRecord,
    *,
    restart: bool,
    timeout: float,
    settle: float = 0.0,
    cancel: threading.Event | None = None,
) -> _Launch:
    """Install the file (its template for an instance), start or restart, wait for a result, settle."""
    _checkpoint(cancel, runner.host)
    _install(SystemdClient(runner), record.name, record.content)
    _checkpoint(cancel, runner.host)
    return _start_and_watch(runner, record.name, restart=restart, timeout=timeout, settle=settle, cancel=cancel)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _outcomes(
    record: UnitRecord, results: Mapping[str, _Launch | CoreosLabError], facts: Mapping[str, NodeFacts]
) -> list[NodeOutcome]:
    out = []
    for node, res in results.items():
        if isinstance(res, CoreosLabError):
            out.append(_fail_outcome(node, facts, _one_line(str(res))))
        else:
            st = res.state
            err = None if res.error is None else f"{_one_line(res.error)} on {node}"
            out.append(
                NodeOutcome(node, _ip(facts, node), err is None, st.active_state, st.sub_state, err, res.journal)
            )
    return out


def _launch_many(
    cluster: Cluster,
    record: UnitRecord,
    nodes: Sequence[str],
    facts: Mapping[str, NodeFacts],
    *,
    restart: bool,
    timeout: float,
    settle: float = 0.0,
    cancel: threading.Event | None = None,
) -> tuple[NodeOutcome, ...]:
    if not nodes:
        return ()
    results = cluster.map(
        lambda r: _launch_on(r, record, restart=restart, timeout=timeout, settle=settle, cancel=cancel), list(nodes)
    )
    broken = [n for n, res in results.items() if isinstance(res, CoreosLabError)]
    if broken and not (cancel is not None and cancel.is_set()):
        # A node that fails mid-deploy may be going away (powered off, rebooting): say so rather than only
        # quoting whichever command happened to break.
        for node, why in cluster.map(_node_gone, broken).items():
            if isinstance(why, str):
                results[node] = CoreosLabError(f"{why} during the deploy ({_one_line(str(results[node]))})")
    return tuple(_outcomes(record, results, facts))


def _node_gone(runner: Runner) -> str | None:
    """Why a node that just failed a step cannot be used now (unreachable / shutting down), or None."""
    try:
        res = runner.run(["systemctl", "is-system-running"], timeout=5)
    except CoreosLabError:
        return f"{runner.host} became unreachable"
    said = res.stdout.strip() or _one_line(res.stderr)[:120]
    if said in ("running", "degraded", "starting", "initializing", "maintenance"):
        return None
    # "stopping", or no answer from systemd at all ("Failed to connect to bus"): the node is going down.
    return f"{runner.host} is going down (systemd: {said or 'no answer'})"


def _remove_on(
    cluster: Cluster, name: str, nodes: Sequence[str], records: Sequence[UnitRecord] = ()
) -> dict[str, CoreosLabError | None]:
    if not nodes:
        return {}
    results = cluster.map(lambda r: _remove(r, name, _siblings_on(records, name, r.host)), list(nodes))
    return {n: (v if isinstance(v, CoreosLabError) else None) for n, v in results.items()}


def _assignments(records: Sequence[UnitRecord], skip: str = "") -> dict[str, tuple[str, ...]]:
    return {r.name: r.targets for r in records if r.name != skip and r.desired_state != "inactive" and r.targets}


def _constraints(records: Sequence[UnitRecord]) -> dict[str, XFleet]:
    out: dict[str, XFleet] = {}
    for r in records:
        try:
            out[r.name] = r.constraints()
        except CoreosLabError:
            out[r.name] = XFleet()
    return out


# ---- deploy ----------------------------------------------------------------------------------------------------------
def load_unit(text: str, name: str) -> tuple[UnitFile, XFleet]:
    """Parse and validate a unit file and its [X-Fleet] section (UnitFileError, exit 2, on any problem)."""
    unit = UnitFile.parse(text, name=name)
    file_name(name)
    return unit, XFleet.from_unit(unit)


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


class _Progress:
    """Where a deploy is, for the interrupt report (mutable on purpose: updated as the deploy advances)."""

    __slots__ = ("phase", "unit")

    def __init__(self) -> None:
        self.unit = ""
        self.phase: DeployPhase = "preparing"


def deploy(
    cluster: Cluster,
    units: Sequence[UnitFile],
    *,
    store: DesiredStateStore | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    facts: Mapping[str, NodeFacts] | None = None,
    timeout: float = 30.0,
    settle: float | None = None,
) -> tuple[DeployOutcome, ...]:
    """Deploy units (in order): place, record the desired state in etcd (CAS), install, start, wait, settle.

    The record is written before any node is touched, so an interrupted deploy never leaves a unit running
    (or installed) without a record. A unit must stay active ``settle`` seconds (default
    :data:`SETTLE_SECONDS`) to count as launched. A unit whose record already holds identical content is
    ``unchanged`` when it runs on its target(s); where it does not (an earlier deploy was interrupted, or
    it failed), it is started again. A node that fails is reported in its :class:`NodeOutcome`; the record
    keeps naming it, so :func:`reconcile` can retry or move the unit.

    Ctrl-C raises :class:`DeployInterrupted` after telling in-flight node work to stop at its next step.
    """
    for u in units:  # validate everything before any change
        file_name(u.name or "")
    constraints = {u.name or "": XFleet.from_unit(u) for u in units}
    settle = SETTLE_SECONDS if settle is None else max(0.0, settle)
    progress = _Progress()
    cancel = threading.Event()
    done: list[DeployOutcome] = []
    try:
        facts = dict(facts) if facts is not None else probe_nodes(cluster, specs)
        store = store if store is not None else etcd_store(cluster, facts)
        for u in units:
            progress.unit, progress.phase = u.name or "", "preparing"
            done.append(
                _deploy_one(cluster, u, constraints[u.name or ""], store, facts, timeout, settle, progress, cancel)
            )
    except KeyboardInterrupt:
        cancel.set()  # workers still on a node stop at their next step; the caller's cluster.close() waits
        raise DeployInterrupted(progress.unit, progress.phase, tuple(done)) from None
    return tuple(done)


def _deploy_one(
    cluster: Cluster,
    unit: UnitFile,
    xf: XFleet,
    store: DesiredStateStore,
    facts: Mapping[str, NodeFacts],
    timeout: float,
    settle: float,
    progress: _Progress,
    cancel: threading.Event,
) -> DeployOutcome:
    name = unit.name
    if not name:
        raise UsageError("a unit to deploy needs a name")
    records = store.list()
    current = next((r for r in records if r.name == name), None)
    if current is not None and current.hash == unit.hash and current.desired_state == "launched" and current.targets:
        progress.phase = "recorded"
        return _finish(cluster, current, xf, facts, timeout, settle, cancel)
    targets = _choose_targets(name, xf, records, current, facts)
    record = UnitRecord.new(unit, "launched", targets, updated_by=_who(), updated_at=_now())
    if current is not None:
        record = replace(record, generation=current.generation + 1)
    progress.phase = "recording"
    stored = store.put(record, expected_revision=current.revision if current else 0)
    if stored is None:
        progress.phase = "preparing"
        # Someone else wrote this unit since we read it: they won. Identical content means the same intent.
        winner = store.get(name)
        if winner is not None and winner.hash == unit.hash and winner.desired_state == "launched":
            return DeployOutcome(
                name,
                unit.hash,
                "unchanged",
                tuple(NodeOutcome(n, _ip(facts, n), True) for n in winner.targets),
                detail="another deploy of identical content won the race",
                warnings=xf.warnings,
            )
        raise EtcdError(f"{name}: another client changed its record while deploying; nothing was done, run it again")
    progress.phase = "recorded"
    updating = current is not None and current.hash != unit.hash
    old = set(current.targets) if current else set()
    # Units leaving a node (update moved it) are stopped there first so it never runs twice.
    gone = [n for n in sorted(old - set(targets)) if facts.get(n) and facts[n].reachable]
    removed = _remove_on(cluster, name, gone, records)
    outcomes = list(
        _launch_many(cluster, stored, targets, facts, restart=updating, timeout=timeout, settle=settle, cancel=cancel)
    )
    outcomes += [_fail_outcome(n, facts, f"remove failed: {e}") for n, e in removed.items() if e is not None]
    status: DeployStatus = "updated" if updating else "launched"
    if not any(o.ok for o in outcomes):
        status = "failed"
    displaced = _displaced(name, xf, records, targets)
    detail = ""
    if displaced:
        result = reconcile(cluster, store=store, facts=facts, only=displaced, timeout=timeout)
        moved = [str(a.action) for a in result.actions if a.ok]
        detail = "replaced: " + ("; ".join(moved) if moved else ", ".join(displaced))
    return DeployOutcome(name, unit.hash, status, tuple(outcomes), detail, xf.warnings)


def _finish(
    cluster: Cluster,
    record: UnitRecord,
    xf: XFleet,
    facts: Mapping[str, NodeFacts],
    timeout: float,
    settle: float,
    cancel: threading.Event,
) -> DeployOutcome:
    """Identical content is already recorded: ``unchanged`` where it runs, started again where it does not.

    A target where the unit is missing or stopped may belong to a deploy of the same content that is
    starting it right now (it wrote the record a moment ago), so that is given a short grace before this
    one starts it too; a failed unit is started again at once.
    """
    name = record.name
    live = [t for t in record.targets if facts.get(t) and facts[t].reachable]
    results = cluster.map(lambda r: _finish_on(r, record, timeout, settle, cancel), live)
    outcomes: list[NodeOutcome] = []
    started: list[str] = []
    for node, res in results.items():
        if isinstance(res, CoreosLabError):
            outcomes.append(_fail_outcome(node, facts, _one_line(str(res))))
            continue
        launched, launch = res
        if launched:
            started.append(node)
        outcomes += _outcomes(record, {node: launch}, facts)
    for t in record.targets:
        if t not in live:
            why = facts[t].error if t in facts else "not in this cluster"
            outcomes.append(_fail_outcome(t, facts, f"{t} is unreachable ({why}); run reconcile to move {name}"))
    if not started:
        ok = all(o.ok for o in outcomes)
        return DeployOutcome(
            name,
            record.hash,
            "unchanged" if ok else "failed",
            tuple(outcomes),
            detail="identical content is already deployed",
            warnings=xf.warnings,
        )
    status: DeployStatus = "launched" if any(o.ok for o in outcomes) else "failed"
    detail = f"identical content was recorded but not running on {', '.join(started)}: started it"
    return DeployOutcome(name, record.hash, status, tuple(outcomes), detail, xf.warnings)


def _finish_on(
    runner: Runner, record: UnitRecord, timeout: float, settle: float, cancel: threading.Event
) -> tuple[bool, _Launch]:
    """(whether this call started the unit, its result) on one target of an identical record."""
    name = record.name
    state = _liveness(runner, name)
    deadline = time.monotonic() + min(_GRACE_SECONDS, timeout)
    while state.active_state in ("", "inactive") and time.monotonic() < deadline:
        _pause(cancel, 0.3)
        _checkpoint(cancel, runner.host)
        state = _liveness(runner, name)
    if state.active_state in ("active", "reloading"):
        return False, _Launch(state)
    if state.active_state in ("activating", "deactivating"):
        # Someone's start (or a restart) is under way: wait for its result instead of starting another.
        state = _wait_up(runner, name, timeout, cancel, None)
        if state.active_state == "active":
            return False, _Launch(state)
        if state.active_state == "failed":
            return False, _Launch(state, f"{name} is {state.summary}", journal_tail(runner, name))
    return True, _launch_on(runner, record, restart=False, timeout=timeout, settle=settle, cancel=cancel)


def _displaced(name: str, xf: XFleet, records: Sequence[UnitRecord], targets: Sequence[str]) -> list[str]:
    if not xf.replaces:
        return []
    return sorted(
        r.name
        for r in records
        if r.name != name and set(r.targets) & set(targets) and any(glob_match(p, r.name) for p in xf.replaces)
    )


def _choose_targets(
    name: str, xf: XFleet, records: Sequence[UnitRecord], current: UnitRecord | None, facts: Mapping[str, NodeFacts]
) -> tuple[str, ...]:
    assignments = _assignments(records, skip=name)
    others = _constraints([r for r in records if r.name != name])
    nodes = with_loads([f.to_node() for f in facts.values()], assignments)
    if current is not None and current.targets and not xf.global_:
        # An update stays where it runs when that node still qualifies: no needless move.
        keep = [n for n in nodes if n.name in current.targets]
        reasons = eligibility(name, xf, keep, assignments, others)
        if len(keep) == 1 and reasons.get(keep[0].name) is None:
            return (keep[0].name,)
    placement = place(name, xf, nodes, assignments, others)
    return placement.nodes


# ---- undeploy --------------------------------------------------------------------------------------------------------
def undeploy(
    cluster: Cluster,
    names: Sequence[str],
    *,
    store: DesiredStateStore | None = None,
    facts: Mapping[str, NodeFacts] | None = None,
) -> tuple[UndeployOutcome, ...]:
    """Stop and remove units everywhere and delete their records. Repeating it is harmless.

    The record is first marked ``inactive`` (so nobody re-launches it), then the unit is removed from every
    reachable node; the record is deleted only when no target node was left unreachable.
    """
    for n in names:
        validate_unit_name(n)
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    store = store if store is not None else etcd_store(cluster, facts)
    reachable = [n for n, f in facts.items() if f.reachable]
    out = []
    for name in names:
        record = update_record(store, name, _mark_inactive)
        removed = _remove_on(cluster, name, reachable, store.list())
        errors = [(n, str(e)) for n, e in removed.items() if e is not None]
        unreachable_targets = [n for n in (record.targets if record else ()) if n not in reachable]
        errors += [(n, "unreachable: the unit is removed there by a later reconcile") for n in unreachable_targets]
        deleted = False
        if record is not None and not errors:
            deleted = store.delete(name)
        had = [n for n, e in removed.items() if e is None]
        out.append(UndeployOutcome(name, record is not None, deleted, tuple(had), tuple(errors)))
    return tuple(out)


def _mark_inactive(r: UnitRecord | None) -> UnitRecord | None:
    return None if r is None or r.desired_state == "inactive" else r.evolve(desired_state="inactive")


# ---- unit start / stop ----------------------------------------------------------------------------------------------
def set_state(
    cluster: Cluster,
    name: str,
    desired: Literal["launched", "loaded"],
    *,
    store: DesiredStateStore | None = None,
    facts: Mapping[str, NodeFacts] | None = None,
    timeout: float = 30.0,
) -> StateChange:
    """``unit start`` (launched) / ``unit stop`` (loaded): record the desired state, then act on the targets."""
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    store = store if store is not None else etcd_store(cluster, facts)
    current = store.get(name)
    if current is None:
        raise UsageError(f"unit {name} is not deployed (deploy it first)")
    changed = current.desired_state != desired
    targets = current.targets
    if desired == "launched" and not [t for t in targets if facts.get(t) and facts[t].reachable]:
        targets = _choose_targets(name, current.constraints(), store.list(), None, facts)
    if changed or targets != current.targets:
        rec = update_record(
            store, name, lambda r: None if r is None else r.evolve(desired_state=desired, targets=targets)
        )
        if rec is None:
            raise UsageError(f"unit {name} was undeployed meanwhile")
        current = rec
    if desired == "launched":
        live = [t for t in current.targets if facts.get(t) and facts[t].reachable]
        outcomes = list(_launch_many(cluster, current, live, facts, restart=False, timeout=timeout))
    else:
        live = [t for t in current.targets if facts.get(t) and facts[t].reachable]
        res = cluster.map(lambda r: _stop_on(r, name), live)
        outcomes = [
            _fail_outcome(n, facts, str(v))
            if isinstance(v, CoreosLabError)
            else NodeOutcome(n, _ip(facts, n), not v.is_active, v.active_state, v.sub_state)
            for n, v in res.items()
        ]
    outcomes += [_fail_outcome(t, facts, f"{t} is unreachable") for t in current.targets if t not in live]
    return StateChange(name, desired, changed, tuple(outcomes))


def _stop_on(runner: Runner, name: str) -> UnitState:
    client = SystemdClient(runner)
    client.stop(name)
    return client.show(name)


# ---- reading ---------------------------------------------------------------------------------------------------------
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


def list_units(
    cluster: Cluster, *, store: DesiredStateStore | None = None, facts: Mapping[str, NodeFacts] | None = None
) -> list[UnitRow]:
    """``list-units``: every deployed unit on its target node(s) with systemd's live ACTIVE/SUB."""
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    store = store if store is not None else etcd_store(cluster, facts)
    records = store.list()
    states, errors = observe(cluster, [r.name for r in records], facts)
    return unit_rows(records, facts, states, errors)


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
        out.append(UnitFileRow(r.name, r.hash, r.desired_state, state, r.targets, _is_global(r)))
    return out


def _is_global(record: UnitRecord) -> bool:
    try:
        return record.constraints().global_
    except CoreosLabError:
        return False


def list_unit_files(
    cluster: Cluster, *, store: DesiredStateStore | None = None, facts: Mapping[str, NodeFacts] | None = None
) -> list[UnitFileRow]:
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    store = store if store is not None else etcd_store(cluster, facts)
    records = store.list()
    states, errors = observe(cluster, [r.name for r in records], facts)
    return unit_file_rows(records, unit_rows(records, facts, states, errors))


def get_record(cluster: Cluster, name: str, *, store: DesiredStateStore | None = None) -> UnitRecord:
    """The stored record of ``name`` (``unit cat``); UsageError when it is not deployed."""
    validate_unit_name(name)
    store = store if store is not None else etcd_store(cluster)
    record = store.get(name)
    if record is None:
        raise UsageError(f"unit {name} is not deployed")
    return record


@dataclass(frozen=True, slots=True)
class StatusText:
    """``systemctl status`` of a unit on one node."""

    node: str
    ip: str
    exit_code: int
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "ip": self.ip or None, "exit_code": self.exit_code, "text": self.text}


def unit_status(
    cluster: Cluster, name: str, *, store: DesiredStateStore | None = None, facts: Mapping[str, NodeFacts] | None = None
) -> tuple[StatusText, ...]:
    """``systemctl status UNIT`` on each target node (fleetctl status). Exit 3 = not running, as systemctl."""
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    record = get_record(cluster, name, store=store if store is not None else etcd_store(cluster, facts))
    out = []
    for node in record.targets:
        if not (facts.get(node) and facts[node].reachable):
            out.append(StatusText(node, _ip(facts, node), 255, f"{node} is unreachable\n"))
            continue
        argv = ["systemctl", "status", "--no-pager", "--full", "--lines=10", "--", name]
        res = cluster.runner(node).run(shlex.join(argv), timeout=30)
        out.append(StatusText(node, _ip(facts, node), res.exit_code, res.stdout + res.stderr))
    return tuple(out)


def journal_node(cluster: Cluster, name: str, *, store: DesiredStateStore | None = None) -> str:
    """The node a unit runs on (its first reachable target), for ``journal``."""
    facts = probe_nodes(cluster)
    record = get_record(cluster, name, store=store if store is not None else etcd_store(cluster, facts))
    for node in record.targets:
        if facts.get(node) and facts[node].reachable:
            return node
    raise CoreosLabError(
        f"unit {name} has no reachable node" + (f" (targets: {', '.join(record.targets)})" if record.targets else "")
    )


# ---- reconcile -------------------------------------------------------------------------------------------------------
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
            seen = _observed(st)
            if seen == "loaded" and file_name(unit) != unit and node not in targets.get(unit, set()):
                seen = None
            if seen is not None:
                out.setdefault(unit, {})[node] = seen
    return out


def reconcile(
    cluster: Cluster,
    *,
    store: DesiredStateStore | None = None,
    facts: Mapping[str, NodeFacts] | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    only: Sequence[str] | None = None,
    dry_run: bool = False,
    timeout: float = 30.0,
) -> ReconcileResult:
    """Make the nodes match etcd: reschedule units off gone/unhealthy nodes, stop units where they do not belong.

    Record changes (schedule/unschedule) are written to etcd before the nodes are touched. Running it again
    right away finds nothing to do. ``only`` limits the actions to those units.
    """
    facts = dict(facts) if facts is not None else probe_nodes(cluster, specs)
    store = store if store is not None else etcd_store(cluster, facts)
    records = store.list()
    by_name = {r.name: r for r in records}
    states, errors = observe(cluster, list(by_name), facts)
    # A node we could reach but not ask is not healthy either: we cannot know what runs there.
    nodes = [replace(f.to_node(), healthy=f.reachable and f.name not in errors) for f in facts.values()]
    desired: dict[str, DesiredUnit] = {}
    for r in records:
        try:
            desired[r.name] = r.to_desired()
        except CoreosLabError:
            continue  # a record that does not parse any more is left for a human; from_json already checks it
    observed = observed_map({n: s for n, s in states.items() if n not in errors}, records)
    plan = plan_reconcile(desired, observed, nodes)
    if only is not None:
        keep = set(only)
        plan = Plan(tuple(a for a in plan if a.unit in keep), tuple(u for u in plan.unplaceable if u[0] in keep))
    done: list[ActionOutcome] = []
    deleted: list[str] = []
    if dry_run:
        return ReconcileResult(tuple(ActionOutcome(a, True) for a in plan), plan.unplaceable, (), True)
    new_desired, _ = apply_plan(desired, observed, [a for a in plan if a.kind in ("schedule", "unschedule")])
    failed_units: set[str] = set()
    for unit in sorted({a.unit for a in plan if a.kind in ("schedule", "unschedule")}):
        targets = new_desired[unit].targets

        def change(r: UnitRecord | None, targets: tuple[str, ...] = targets) -> UnitRecord | None:
            return None if r is None or r.targets == targets else r.evolve(targets=targets)

        try:
            update_record(store, unit, change)
            ok, err = True, None
        except CoreosLabError as exc:
            ok, err = False, str(exc)
            failed_units.add(unit)
        for a in plan:
            if a.unit == unit and a.kind in ("schedule", "unschedule"):
                done.append(ActionOutcome(a, ok, err))
    fresh = {r.name: r for r in store.list()}
    for a in plan:
        if a.kind in ("schedule", "unschedule"):
            continue
        if a.unit in failed_units and a.kind in ("load", "start"):
            done.append(ActionOutcome(a, False, "record update failed"))
            continue
        done.append(_execute(cluster, a, fresh.get(a.unit) or by_name.get(a.unit), list(fresh.values()), timeout))
    # Undeploys left pending by an unreachable node: finished once no reachable node still has the unit.
    unloaded = {(d.action.unit, d.action.node) for d in done if d.ok and d.action.kind == "unload"}
    for r in records:
        if r.desired_state != "inactive" or (only is not None and r.name not in only):
            continue
        still = [n for n in observed.get(r.name, {}) if (r.name, n) not in unloaded]
        pending = [t for t in r.targets if not (facts.get(t) and facts[t].reachable)]
        if not still and not pending and store.delete(r.name):
            deleted.append(r.name)
    return ReconcileResult(tuple(done), plan.unplaceable, tuple(deleted), False)


def _execute(
    cluster: Cluster, action: Action, record: UnitRecord | None, records: Sequence[UnitRecord], timeout: float
) -> ActionOutcome:
    try:
        runner = cluster.runner(action.node)
        client = SystemdClient(runner)
        if action.kind == "stop":
            client.stop(action.unit)
        elif action.kind == "unload":
            _remove(runner, action.unit, _siblings_on(records, action.unit, action.node))
        elif action.kind == "load":
            if record is None:
                return ActionOutcome(action, False, "no record to load from")
            _install(client, action.unit, record.content)
        elif action.kind == "start":
            if record is not None:
                _install(client, action.unit, record.content)
            client.start(action.unit)
            state = client.wait_active(action.unit, timeout=timeout, interval=0.3)
            if not state.is_active:
                return ActionOutcome(action, False, f"{action.unit} is {state.active_state}/{state.sub_state}")
    except CoreosLabError as exc:
        return ActionOutcome(action, False, str(exc))
    return ActionOutcome(action, True)


# ---- the fleet backend -----------------------------------------------------------------------------------------------
# Where fleetd runs (old CoreOS, or a user's own fleet), deploy & co. drive it through its API exactly as
# `fleetctl --endpoint` does: fleet keeps the desired state and schedules; we only submit and watch.
def _fleet_outcomes(client: FleetClient, name: str) -> tuple[NodeOutcome, ...]:
    ips = {m.id: m.primary_ip for m in client.machines()}
    return tuple(
        NodeOutcome(
            s.machine_id,
            ips.get(s.machine_id, ""),
            s.active_state == "active",
            s.active_state,
            s.sub_state,
            None if s.active_state == "active" else f"{name} is {s.active_state}/{s.sub_state}",
        )
        for s in client.states(unit_name=name)
        if s.name == name
    )


def fleet_wait(
    client: FleetClient, name: str, desired: str, timeout: float, interval: float = 0.5
) -> tuple[NodeOutcome, ...]:
    """Poll fleet's /state until every machine's copy of ``name`` is active or failed (launched), or not
    active (loaded); bounded by ``timeout`` (what is known then is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        outcomes = _fleet_outcomes(client, name)
        if desired == "launched":
            done = bool(outcomes) and all(o.active_state in ("active", "failed") for o in outcomes)
        else:
            done = all(o.active_state not in _ACTIVE_STATES for o in outcomes)
        if done or time.monotonic() >= deadline:
            return outcomes
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def fleet_deploy(client: FleetClient, units: Sequence[UnitFile], *, timeout: float = 30.0) -> tuple[DeployOutcome, ...]:
    """``fleetctl start UNIT_FILE...``: submit (or reuse identical) units with desired state launched, then wait."""
    for u in units:
        file_name(u.name or "")
        XFleet.from_unit(u)
    out = []
    for u in units:
        name = u.name or ""
        existing = client.unit(name)
        if existing is not None and existing.desired_state == "launched" and existing.hash == u.hash:
            nodes = _fleet_outcomes(client, name)
            out.append(DeployOutcome(name, u.hash, "unchanged", nodes, "identical content is already launched"))
            continue
        client.ensure_unit(u, "launched")  # refuses different content, like fleetctl
        nodes = fleet_wait(client, name, "launched", timeout)
        if not nodes:
            nodes = (NodeOutcome("", "", False, error=f"fleet did not schedule {name} within {timeout:g}s"),)
        status: DeployStatus = "launched" if any(n.ok for n in nodes) else "failed"
        out.append(DeployOutcome(name, u.hash, status, nodes))
    return tuple(out)


def fleet_undeploy(client: FleetClient, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
    """``fleetctl destroy``: DELETE each unit (fleet stops it on its machines). Idempotent."""
    for n in names:
        validate_unit_name(n)
    out = []
    for name in names:
        destroyed = client.destroy(name)
        out.append(UndeployOutcome(name, destroyed, destroyed))
    return tuple(out)


def fleet_set_state(
    client: FleetClient, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0
) -> StateChange:
    """``fleetctl start|stop UNIT`` on a unit fleet already has."""
    current = client.unit(name)
    if current is None:
        raise UsageError(f"unit {name} is not deployed (deploy it first)")
    client.set_desired_state(name, desired)
    nodes = fleet_wait(client, name, desired, timeout)
    if desired == "loaded":
        nodes = tuple(replace(n, ok=n.active_state not in _ACTIVE_STATES, error=None) for n in nodes)
    return StateChange(name, desired, current.desired_state != desired, nodes)
