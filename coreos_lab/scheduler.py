"""Where units run: fleet's placement rules as pure functions (no I/O, no clock, deterministic).

:func:`place` picks node(s) for one unit from its [X-Fleet] constraints (:class:`~coreos_lab.unitfile.XFleet`),
the nodes, and what already runs where. :func:`plan_reconcile` compares the desired state with what nodes
report and returns the actions that make them agree; applying them and planning again yields no actions.

Rules, as fleet v1.0.0 applied them:

- only healthy nodes are eligible;
- ``MachineID`` pins to one machine (we also accept the lab's node name);
- ``MachineMetadata``: every key must match, several values for one key are alternatives;
- ``MachineOf``: only nodes that run all the named units;
- ``Conflicts`` (globs) works both ways: not next to a unit it names, nor next to a unit whose Conflicts
  name it (a unit never conflicts with itself);
- ``Replaces``: prefer the node of a replaced unit and push the replaced unit elsewhere; a replaced unit is
  never placed next to its replacement;
- ``Global=true``: every eligible node;
- otherwise the least loaded eligible node, ties broken by node name.

>>> from coreos_lab.unitfile import XFleet
>>> nodes = [Node("core-01", load=2), Node("core-02", load=1), Node("core-03", load=1)]
>>> place("web.service", XFleet(), nodes).nodes
('core-02',)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from coreos_lab.errors import SchedulingError
from coreos_lab.unitfile import XFleet, glob_match

JobState = Literal["inactive", "loaded", "launched"]
ActionKind = Literal["schedule", "unschedule", "stop", "unload", "load", "start"]
# Stops and unloads come first so a moved unit never runs twice, and conflicts are freed before starts.
_PHASE: dict[str, int] = {"stop": 0, "unload": 1, "unschedule": 2, "schedule": 3, "load": 4, "start": 5}
_RANK: dict[str, int] = {"inactive": 0, "loaded": 1, "launched": 2}


@dataclass(frozen=True, slots=True)
class Node:
    """A node as the scheduler sees it. ``load`` is the number of units assigned to it."""

    name: str
    machine_id: str = ""
    ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    healthy: bool = True
    load: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    """The chosen node names (one, or every eligible node for a global unit) and units pushed away by Replaces."""

    unit: str
    nodes: tuple[str, ...]
    displaced: tuple[str, ...] = ()


Assignments = Mapping[str, str | Sequence[str]]
"""unit name -> node name (or names, for global units)."""


def _targets(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def units_by_node(assignments: Assignments) -> dict[str, set[str]]:
    """Invert ``assignments``: node name -> units assigned there."""
    out: dict[str, set[str]] = {}
    for unit, where in assignments.items():
        for node in _targets(where):
            out.setdefault(node, set()).add(unit)
    return out


def with_loads(nodes: Sequence[Node], assignments: Assignments) -> list[Node]:
    """``nodes`` with ``load`` set to the number of units ``assignments`` puts on each."""
    on = units_by_node(assignments)
    return [replace(n, load=len(on.get(n.name, ()))) for n in nodes]


def _fmt_meta(meta: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(meta.items())) or "none"


def exclusion_reason(
    unit: str,
    constraints: XFleet,
    node: Node,
    on_node: set[str],
    assignments: Assignments,
    others: Mapping[str, XFleet],
) -> str | None:
    """Why ``node`` cannot take ``unit`` (the first constraint that excludes it), or None if it can."""
    if not node.healthy:
        return "node is not healthy"
    if constraints.machine_id is not None and constraints.machine_id not in {node.machine_id, node.name}:
        return f"MachineID={constraints.machine_id} (node is {node.machine_id or 'unknown'})"
    for key, allowed in sorted(constraints.metadata_requirements().items()):
        if node.metadata.get(key) not in allowed:
            want = "|".join(sorted(allowed))
            return f"MachineMetadata {key}={want} (node has {_fmt_meta(node.metadata)})"
    for peer in constraints.machine_of:
        if peer not in on_node:
            where = _targets(assignments[peer]) if peer in assignments else ()
            return f"MachineOf={peer} ({peer} is " + (f"on {', '.join(where)})" if where else "not placed)")
    neighbours = sorted(on_node - {unit})
    for other in neighbours:
        for pattern in constraints.conflicts:
            if glob_match(pattern, other):
                return f"Conflicts={pattern} ({other} runs there)"
        theirs = others.get(other)
        if theirs is not None:
            for pattern in theirs.conflicts:
                if glob_match(pattern, unit):
                    return f"{other} runs there with Conflicts={pattern}"
            for pattern in theirs.replaces:
                if glob_match(pattern, unit):
                    return f"{other} runs there with Replaces={pattern}"
    return None


def eligibility(
    unit: str,
    constraints: XFleet,
    nodes: Sequence[Node],
    assignments: Assignments | None = None,
    others: Mapping[str, XFleet] | None = None,
) -> dict[str, str | None]:
    """For every node: None when it may run ``unit``, else the reason it may not."""
    assignments = assignments or {}
    others = others or {}
    on = units_by_node(assignments)
    return {n.name: exclusion_reason(unit, constraints, n, on.get(n.name, set()), assignments, others) for n in nodes}


def place(
    unit: str,
    constraints: XFleet,
    nodes: Sequence[Node],
    assignments: Assignments | None = None,
    others: Mapping[str, XFleet] | None = None,
) -> Placement:
    """Choose the node(s) for ``unit``; raise SchedulingError naming what excluded each node.

    ``assignments`` says where other units are (the unit's own entry is ignored); ``others`` gives their
    constraints, so their Conflicts/Replaces also keep ``unit`` away.
    """
    assignments = {u: t for u, t in (assignments or {}).items() if u != unit}
    if not nodes:
        raise SchedulingError(f"cannot place {unit}: there are no nodes")
    reasons = eligibility(unit, constraints, nodes, assignments, others)
    eligible = [n for n in nodes if reasons[n.name] is None]
    if not eligible:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items()))
        raise SchedulingError(f"cannot place {unit}: no eligible node ({detail})")
    if constraints.global_:
        return Placement(unit, tuple(sorted(n.name for n in eligible)))
    on = units_by_node(assignments)

    def replaced_here(n: Node) -> tuple[str, ...]:
        return tuple(sorted(u for u in on.get(n.name, ()) if any(glob_match(p, u) for p in constraints.replaces)))

    best = min(eligible, key=lambda n: (0 if replaced_here(n) else 1, n.load, n.name))
    return Placement(unit, (best.name,), replaced_here(best))


# ---- reconciliation ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DesiredUnit:
    """What the cluster should do with one unit: its constraints, target state and current target node(s).

    ``hash`` is the content hash of the unit (fleet's hash); when given, and the nodes report what they have
    installed, a node holding other content gets the unit re-installed.
    """

    name: str
    constraints: XFleet = field(default_factory=XFleet)
    state: JobState = "launched"
    targets: tuple[str, ...] = ()
    hash: str = ""


@dataclass(frozen=True, slots=True)
class Action:
    """One step. ``schedule``/``unschedule`` change the desired-state record (its targets); on ``node``,
    ``load`` installs the unit file (and daemon-reloads), ``unload`` removes it, ``start``/``stop`` are
    systemctl's. Plans list stops and unloads first, then record changes, then loads and starts."""

    kind: ActionKind
    unit: str
    node: str
    reason: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.unit} on {self.node}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True, slots=True)
class Plan:
    """The actions to take (iterate it like a list) and units no node can take right now, with why."""

    actions: tuple[Action, ...]
    unplaceable: tuple[tuple[str, str], ...] = ()

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def __bool__(self) -> bool:
        return bool(self.actions)


Observed = Mapping[str, Mapping[str, str]]
"""unit -> {node: "loaded" | "launched"} as the nodes report it (absent = not there); see :func:`job_state`."""


def job_state(load_state: str, active_state: str) -> str | None:
    """A node's systemd report as fleet's job state: None (not there), ``loaded`` or ``launched``.

    ``launched`` means systemd is running it or getting there (active, activating, reloading, deactivating);
    an installed unit that is inactive or failed is ``loaded``, so a desired-launched unit gets started again.
    """
    if load_state in {"", "not-found", "stub", "masked"} and active_state in {"", "inactive"}:
        return None
    if active_state in {"active", "activating", "reloading", "deactivating", "refreshing"}:
        return "launched"
    return "loaded"


def _order(desired: Mapping[str, DesiredUnit]) -> list[str]:
    """Units by name, but MachineOf peers before their followers (cycles fall back to name order)."""
    done: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: set[str]) -> None:
        if name in seen or name in stack:
            return
        stack.add(name)
        for peer in sorted(desired[name].constraints.machine_of):
            if peer in desired:
                visit(peer, stack)
        stack.discard(name)
        seen.add(name)
        done.append(name)

    for name in sorted(desired):
        visit(name, set())
    return done


def _placement_pass(
    desired: Mapping[str, DesiredUnit], nodes: Sequence[Node], work: dict[str, tuple[str, ...]]
) -> dict[str, str]:
    """One scheduling pass over every unit, updating ``work`` in place; returns unplaceable units and why."""
    by_name = {n.name: n for n in nodes}
    others = {name: d.constraints for name, d in desired.items()}
    unplaceable: dict[str, str] = {}
    queue = _order(desired)
    budget = 4 * len(queue) + 8  # displacement by Replaces can requeue a unit; never loop forever
    while queue and budget > 0:
        budget -= 1
        name = queue.pop(0)
        d = desired[name]
        if d.state == "inactive":
            work.pop(name, None)
            continue
        rest = {u: t for u, t in work.items() if u != name}
        if d.constraints.global_:
            reasons = eligibility(name, d.constraints, nodes, rest, others)
            chosen = tuple(sorted(n for n, why in reasons.items() if why is None))
            if chosen:
                work[name] = chosen
                unplaceable.pop(name, None)
            else:
                work.pop(name, None)
                unplaceable[name] = "no eligible node: " + "; ".join(f"{n}: {w}" for n, w in sorted(reasons.items()))
            continue
        keep = [t for t in work.get(name, ()) if t in by_name]
        if len(keep) == 1 and eligibility(name, d.constraints, [by_name[keep[0]]], rest, others)[keep[0]] is None:
            work[name] = (keep[0],)
            unplaceable.pop(name, None)
            continue
        try:
            placement = place(name, d.constraints, with_loads(nodes, rest), rest, others)
        except SchedulingError as exc:
            work.pop(name, None)
            unplaceable[name] = str(exc)
            continue
        work[name] = placement.nodes
        unplaceable.pop(name, None)
        for moved in placement.displaced:
            if moved in desired and moved not in queue:
                work.pop(moved, None)
                queue.append(moved)
        # followers of this unit may have to move with it
        for follower, fd in desired.items():
            if name in fd.constraints.machine_of and follower not in queue and follower in work:
                queue.append(follower)
    return unplaceable


def plan_reconcile(
    desired: Mapping[str, DesiredUnit],
    observed: Observed,
    nodes: Sequence[Node],
    *,
    hashes: Mapping[str, Mapping[str, str]] | None = None,
) -> Plan:
    """Actions that move the cluster from ``observed`` to ``desired``.

    Units whose target node is gone, unhealthy or no longer eligible are rescheduled; units running where
    they are not wanted are stopped and unloaded. Node loads are recounted from the desired targets.
    ``hashes`` (unit -> {node: content hash installed there}) lets a changed unit be re-installed: stop if
    running, load, start again if wanted. Deterministic and idempotent: after applying the plan
    (:func:`apply_plan`), planning again gives nothing.
    """
    by_name = {n.name: n for n in nodes}
    work: dict[str, tuple[str, ...]] = {name: d.targets for name, d in desired.items() if d.state != "inactive"}
    unplaceable: dict[str, str] = {}
    # Placements depend on each other (Conflicts both ways, MachineOf, global units), so passes repeat until
    # nothing moves: the result is a fixed point, which is what makes a second plan empty.
    for _ in range(8):
        snapshot = dict(work)
        unplaceable = _placement_pass(desired, nodes, work)
        if work == snapshot:
            break

    actions: list[Action] = []
    for name in sorted(desired):
        before, after = set(desired[name].targets), set(work.get(name, ()))
        for node in sorted(before - after):
            why = "node is gone" if node not in by_name else "no longer placed there"
            if node in by_name and not by_name[node].healthy:
                why = "node is not healthy"
            actions.append(Action("unschedule", name, node, why))
        for node in sorted(after - before):
            actions.append(Action("schedule", name, node, "placed by the scheduler"))

    for name in sorted(set(desired) | set(observed)):
        d = desired.get(name)
        targets = set(work.get(name, ())) if d else set()
        seen_on = observed.get(name, {})
        for node in sorted(set(seen_on) | targets):
            if node not in by_name:
                continue  # a node we cannot reach cannot be acted on
            want = d.state if (d is not None and node in targets) else "inactive"
            have = seen_on.get(node, "inactive")
            if have not in _RANK:
                have = "launched"  # unknown reports are treated as running, so they get stopped
            installed = (hashes or {}).get(name, {}).get(node)
            if d is not None and d.hash and installed and installed != d.hash and want != "inactive" != have:
                why = f"content changed ({installed[:7]} -> {d.hash[:7]})"
                if have == "launched":
                    actions.append(Action("stop", name, node, why))
                actions.append(Action("load", name, node, why))
                if want == "launched":
                    actions.append(Action("start", name, node, why))
                continue
            why = "not wanted here" if want == "inactive" else f"desired {want}"
            if _RANK[have] == 2 and _RANK[want] < 2:
                actions.append(Action("stop", name, node, why))
            if _RANK[have] >= 1 and _RANK[want] == 0:
                actions.append(Action("unload", name, node, why))
            if _RANK[have] == 0 and _RANK[want] >= 1:
                actions.append(Action("load", name, node, why))
            if _RANK[have] < 2 and _RANK[want] == 2:
                actions.append(Action("start", name, node, why))

    actions.sort(key=lambda a: (_PHASE[a.kind], a.unit, a.node))
    return Plan(tuple(actions), tuple(sorted(unplaceable.items())))


def apply_plan(
    desired: Mapping[str, DesiredUnit],
    observed: Observed,
    actions: Sequence[Action] | Plan,
    hashes: dict[str, dict[str, str]] | None = None,
) -> tuple[dict[str, DesiredUnit], dict[str, dict[str, str]]]:
    """What ``desired`` and ``observed`` become once ``actions`` succeeded (for tests and dry runs).

    ``hashes``, when given, is updated in place: a load installs the desired content, an unload removes it.
    """
    new_desired = dict(desired)
    new_observed: dict[str, dict[str, str]] = {u: dict(m) for u, m in observed.items()}
    for a in actions:
        if a.kind in {"schedule", "unschedule"}:
            d = new_desired[a.unit]
            targets = [t for t in d.targets if t != a.node]
            if a.kind == "schedule":
                targets.append(a.node)
            new_desired[a.unit] = replace(d, targets=tuple(sorted(targets)))
            continue
        where = new_observed.setdefault(a.unit, {})
        if a.kind == "stop":
            where[a.node] = "loaded"
        elif a.kind == "unload":
            where.pop(a.node, None)
            if hashes is not None:
                hashes.get(a.unit, {}).pop(a.node, None)
        elif a.kind == "load":
            where[a.node] = "loaded"
            if hashes is not None and new_desired.get(a.unit) is not None:
                hashes.setdefault(a.unit, {})[a.node] = new_desired[a.unit].hash
        elif a.kind == "start":
            where[a.node] = "launched"
        if not where:
            del new_observed[a.unit]
    return new_desired, new_observed
