"""The systemd backend: units run without fleet, desired state in etcd, placement by the scheduler.

Every change follows the same order, so any client on any host sees one truth and a crash half-way leaves
something :func:`reconcile` can finish:

1. read the nodes (:func:`coreos_lab.probe.probe_nodes`: machine id, metadata, address; unreachable nodes are
   unhealthy);
2. decide (:mod:`coreos_lab.scheduler`, pure);
3. write the desired state to etcd with compare-and-swap (:class:`~coreos_lab.state.EtcdKV` under
   :class:`~coreos_lab.state.RecordStore`), so of two concurrent deploys of one unit exactly one wins;
4. act on the nodes (:mod:`coreos_lab.units.launch`), reporting each node's outcome.

Ctrl-C (:class:`~coreos_lab.units.results.DeployInterrupted`) stops node-side work at its next step; since the
record came first, no unit is ever left on a node without one, and deploying again (or :func:`reconcile`)
finishes the job. Functions here take a :class:`~coreos_lab.cluster.Cluster` and return frozen results
(:mod:`coreos_lab.units.results`); they never print. :class:`SystemdBackend` is the same as a
:class:`~coreos_lab.units.base.UnitBackend`.
"""

from __future__ import annotations

import shlex
import socket
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from coreos_lab.errors import CoreosLabError, EtcdError, UsageError
from coreos_lab.probe import ETCD_PORT, NodeFacts, probe_nodes
from coreos_lab.scheduler import (
    Action,
    DesiredUnit,
    Plan,
    apply_plan,
    eligibility,
    place,
    plan_reconcile,
    with_loads,
)
from coreos_lab.state import DesiredStateStore, EtcdKV, RecordStore, UnitRecord, update_record
from coreos_lab.systemd import SystemdClient, UnitState
from coreos_lab.unitfile import UnitFile, XFleet, file_name, glob_match, validate_unit_name
from coreos_lab.units.launch import (
    GRACE_SECONDS,
    SETTLE_SECONDS,
    Launch,
    checkpoint,
    fail_outcome,
    install,
    ip_of,
    journal_tail,
    launch_many,
    launch_on,
    liveness,
    node_outcomes,
    one_line,
    pause,
    remove,
    remove_on,
    siblings_on,
    wait_up,
)
from coreos_lab.units.observe import observe, observed_map, unit_file_rows, unit_rows
from coreos_lab.units.results import (
    TMACHINE_WARNING,
    ActionOutcome,
    DeployInterrupted,
    DeployOutcome,
    DeployPhase,
    DeployStatus,
    Listing,
    NodeOutcome,
    ReconcileResult,
    StateChange,
    StatusText,
    UndeployOutcome,
    UnitFileRow,
    UnitRow,
    parse_fields,
    pick,
)

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.runner import Runner


# ---- etcd as the desired-state store ---------------------------------------------------------------------------------
def etcd_store(cluster: Cluster, facts: Mapping[str, NodeFacts] | None = None) -> RecordStore:
    """The desired-state store of the cluster: etcd, through the first reachable node whose member sees a leader."""
    down = [n for n, f in (facts or {}).items() if not f.reachable]
    return RecordStore(EtcdKV(cluster.leader_etcd_client(down, port=ETCD_PORT)))


# ---- helpers ---------------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _who() -> str:
    return f"coreos-lab@{socket.gethostname()}"[:200]


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
                tuple(NodeOutcome(n, ip_of(facts, n), True) for n in winner.targets),
                detail="another deploy of identical content won the race",
                warnings=xf.warnings,
            )
        raise EtcdError(f"{name}: another client changed its record while deploying; nothing was done, run it again")
    progress.phase = "recorded"
    updating = current is not None and current.hash != unit.hash
    old = set(current.targets) if current else set()
    # Units leaving a node (update moved it) are stopped there first so it never runs twice.
    gone = [n for n in sorted(old - set(targets)) if facts.get(n) and facts[n].reachable]
    removed = remove_on(cluster, name, gone, records)
    outcomes = list(
        launch_many(cluster, stored, targets, facts, restart=updating, timeout=timeout, settle=settle, cancel=cancel)
    )
    outcomes += [fail_outcome(n, facts, f"remove failed: {e}") for n, e in removed.items() if e is not None]
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
            outcomes.append(fail_outcome(node, facts, one_line(str(res))))
            continue
        launched, launch = res
        if launched:
            started.append(node)
        outcomes += node_outcomes(record, {node: launch}, facts)
    for t in record.targets:
        if t not in live:
            why = facts[t].error if t in facts else "not in this cluster"
            outcomes.append(fail_outcome(t, facts, f"{t} is unreachable ({why}); run reconcile to move {name}"))
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
) -> tuple[bool, Launch]:
    """(whether this call started the unit, its result) on one target of an identical record."""
    name = record.name
    state = liveness(runner, name)
    deadline = time.monotonic() + min(GRACE_SECONDS, timeout)
    while state.active_state in ("", "inactive") and time.monotonic() < deadline:
        pause(cancel, 0.3)
        checkpoint(cancel, runner.host)
        state = liveness(runner, name)
    if state.active_state in ("active", "reloading"):
        return False, Launch(state)
    if state.active_state in ("activating", "deactivating"):
        # Someone's start (or a restart) is under way: wait for its result instead of starting another.
        state = wait_up(runner, name, timeout, cancel, None)
        if state.active_state == "active":
            return False, Launch(state)
        if state.active_state == "failed":
            return False, Launch(state, f"{name} is {state.summary}", journal_tail(runner, name))
    return True, launch_on(runner, record, restart=False, timeout=timeout, settle=settle, cancel=cancel)


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
        removed = remove_on(cluster, name, reachable, store.list())
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
        outcomes = list(launch_many(cluster, current, live, facts, restart=False, timeout=timeout))
    else:
        live = [t for t in current.targets if facts.get(t) and facts[t].reachable]
        res = cluster.map(lambda r: _stop_on(r, name), live)
        outcomes = [
            fail_outcome(n, facts, str(v))
            if isinstance(v, CoreosLabError)
            else NodeOutcome(n, ip_of(facts, n), not v.is_active, v.active_state, v.sub_state)
            for n, v in res.items()
        ]
    outcomes += [fail_outcome(t, facts, f"{t} is unreachable") for t in current.targets if t not in live]
    return StateChange(name, desired, changed, tuple(outcomes))


def _stop_on(runner: Runner, name: str) -> UnitState:
    client = SystemdClient(runner)
    client.stop(name)
    return client.show(name)


# ---- reading ---------------------------------------------------------------------------------------------------------
def list_units(
    cluster: Cluster, *, store: DesiredStateStore | None = None, facts: Mapping[str, NodeFacts] | None = None
) -> list[UnitRow]:
    """``list-units``: every deployed unit on its target node(s) with systemd's live ACTIVE/SUB."""
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    store = store if store is not None else etcd_store(cluster, facts)
    records = store.list()
    states, errors = observe(cluster, [r.name for r in records], facts)
    return unit_rows(records, facts, states, errors)


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


def unit_status(
    cluster: Cluster, name: str, *, store: DesiredStateStore | None = None, facts: Mapping[str, NodeFacts] | None = None
) -> tuple[StatusText, ...]:
    """``systemctl status UNIT`` on each target node (fleetctl status). Exit 3 = not running, as systemctl."""
    facts = dict(facts) if facts is not None else probe_nodes(cluster)
    record = get_record(cluster, name, store=store if store is not None else etcd_store(cluster, facts))
    out = []
    for node in record.targets:
        if not (facts.get(node) and facts[node].reachable):
            out.append(StatusText(node, ip_of(facts, node), 255, f"{node} is unreachable\n"))
            continue
        argv = ["systemctl", "status", "--no-pager", "--full", "--lines=10", "--", name]
        res = cluster.runner(node).run(shlex.join(argv), timeout=30)
        out.append(StatusText(node, ip_of(facts, node), res.exit_code, res.stdout + res.stderr))
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
def reconcile(
    cluster: Cluster,
    *,
    store: DesiredStateStore | None = None,
    facts: Mapping[str, NodeFacts] | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    only: Sequence[str] | None = None,
    hold: Collection[str] = (),
    hold_unobservable: bool = False,
    dry_run: bool = False,
    timeout: float = 30.0,
) -> ReconcileResult:
    """Make the nodes match etcd: reschedule units off gone/unhealthy nodes, stop units where they do not belong.

    Record changes (schedule/unschedule) are written to etcd before the nodes are touched. Running it again
    right away finds nothing to do. ``only`` limits the actions to those units. ``hold`` names nodes that
    missed a probe but are not yet given up (the engine's agent TTL): ``facts`` has their last good probe,
    they stay healthy for placement (their units do not move), and nothing is asked of them or done on them.
    ``hold_unobservable`` holds a node that answered the probe but not the unit query in the same way (the
    engine's choice: such a node is given up by the agent TTL, not by one failed query).
    """
    facts = dict(facts) if facts is not None else probe_nodes(cluster, specs)
    held = set(hold) & set(facts)
    store = store if store is not None else etcd_store(cluster, {n: f for n, f in facts.items() if n not in held})
    records = store.list()
    by_name = {r.name: r for r in records}
    states, errors = observe(cluster, list(by_name), {n: f for n, f in facts.items() if n not in held})
    if hold_unobservable:
        held |= set(errors)
    # A node we could reach but not ask is not healthy either: we cannot know what runs there.
    nodes = [
        replace(f.to_node(), healthy=f.name in held or (f.reachable and f.name not in errors)) for f in facts.values()
    ]
    desired: dict[str, DesiredUnit] = {}
    for r in records:
        try:
            desired[r.name] = r.to_desired()
        except CoreosLabError:
            continue  # a record that does not parse any more is left for a human; from_json already checks it
    observed = observed_map({n: s for n, s in states.items() if n not in errors}, records)
    plan = plan_reconcile(desired, observed, nodes)
    if held:
        plan = Plan(tuple(a for a in plan if a.node not in held or a.kind in _RECORD_ONLY), plan.unplaceable)
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
        pending = [t for t in r.targets if t in held or not (facts.get(t) and facts[t].reachable)]
        if not still and not pending and store.delete(r.name):
            deleted.append(r.name)
    return ReconcileResult(tuple(done), plan.unplaceable, tuple(deleted), False)


_RECORD_ONLY: Final = frozenset({"schedule", "unschedule"})


def _execute(
    cluster: Cluster, action: Action, record: UnitRecord | None, records: Sequence[UnitRecord], timeout: float
) -> ActionOutcome:
    try:
        runner = cluster.runner(action.node)
        client = SystemdClient(runner)
        if action.kind == "stop":
            client.stop(action.unit)
        elif action.kind == "unload":
            remove(runner, action.unit, siblings_on(records, action.unit, action.node))
        elif action.kind == "load":
            if record is None:
                return ActionOutcome(action, False, "no record to load from")
            install(client, action.unit, record.content)
        elif action.kind == "start":
            if record is not None:
                install(client, action.unit, record.content)
            client.start(action.unit)
            state = client.wait_active(action.unit, timeout=timeout, interval=0.3)
            if not state.is_active:
                return ActionOutcome(action, False, f"{action.unit} is {state.active_state}/{state.sub_state}")
    except CoreosLabError as exc:
        return ActionOutcome(action, False, str(exc))
    return ActionOutcome(action, True)


# ---- the backend object ----------------------------------------------------------------------------------------------
class SystemdBackend:
    """A :class:`~coreos_lab.units.base.UnitBackend` over the nodes' systemd, with ``facts`` probed once."""

    name: Final = "systemd"

    def __init__(self, cluster: Cluster, facts: Mapping[str, NodeFacts]) -> None:
        self.cluster = cluster
        self.facts = dict(facts)

    def deploy(
        self, units: Sequence[UnitFile], *, timeout: float = 30.0, settle: float | None = None
    ) -> tuple[DeployOutcome, ...]:
        return deploy(self.cluster, units, facts=self.facts, timeout=timeout, settle=settle)

    def undeploy(self, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
        return undeploy(self.cluster, names, facts=self.facts)

    def set_state(self, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0) -> StateChange:
        return set_state(self.cluster, name, desired, facts=self.facts, timeout=timeout)

    def cat(self, name: str) -> str:
        """The unit file as deployed (its record in etcd)."""
        return get_record(self.cluster, name, store=etcd_store(self.cluster, self.facts)).content

    def where(self, outcome: NodeOutcome) -> str:
        """A node as messages name it: ``core-01 (192.168.56.101)``."""
        return f"{outcome.node} ({outcome.ip})" if outcome.ip else outcome.node

    def list_units(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """UNIT MACHINE ACTIVE SUB (or ``fields``): every deployed unit on its target node(s), live state from
        systemd."""
        rows = list_units(self.cluster, facts=self.facts)
        cells = [
            {
                "unit": r.unit,
                "machine": r.machine,
                "active": r.active_state if r.error is None else "unknown",
                "sub": r.sub_state,
                "load": r.load_state,
                "hash": r.hash if full else r.hash[:7],
            }
            for r in rows
        ]
        columns, table = pick(fields or parse_fields("list-units", None), cells)
        return Listing(columns, table, tuple(r.to_json() for r in rows))

    def list_unit_files(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """UNIT HASH DSTATE STATE TARGET (or ``fields``; ``full``: whole hashes)."""
        rows = list_unit_files(self.cluster, facts=self.facts)
        facts = self.facts

        def target(r: UnitFileRow) -> str:
            if r.is_global:
                return "global"
            return ",".join(facts[t].machine if t in facts else t for t in r.targets)

        cells = [
            {
                "unit": r.unit,
                "hash": r.hash if full else r.hash[:7],
                "dstate": r.desired_state,
                "state": r.state,
                "target": target(r),
                "tmachine": target(r),
                "global": "true" if r.is_global else "false",
                "desc": r.description,
            }
            for r in rows
        ]
        chosen = fields or parse_fields("list-unit-files", None)
        columns, table = pick(chosen, cells)
        notes = (TMACHINE_WARNING,) if "tmachine" in chosen else ()
        return Listing(columns, table, tuple(r.to_json() for r in rows), notes=notes)

    def list_machines(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """MACHINE IP METADATA (or ``fields``; ``full`` without ``fields``: and MACHINE ID); an unreachable node
        is a problem line."""
        facts = list(self.facts.values())
        cells = [
            {
                "machine": f.name,
                "ip": f.ip,
                "metadata": ",".join(f"{k}={v}" for k, v in sorted(f.metadata.items())),
                "machine id": f.machine_id,
                "provision": f.provisioned_by or "-",
            }
            for f in facts
        ]
        chosen = fields or (*parse_fields("list-machines", None), *(("machine id",) if full else ()))
        columns, table = pick(chosen, cells)
        problems = tuple(f"{f.name}: {f.error}" for f in facts if not f.reachable)
        return Listing(columns, table, tuple(f.to_json() for f in facts), problems)
