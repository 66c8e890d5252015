"""``status --watch``: each round's status report (:mod:`coreos_lab.health`) as a few named facts, and the
lines saying which facts changed since the round before (pure: reports in, lines out).

A fact is one thing a user watches happen: a node going down, the etcd leader and its term, the members'
health, a unit on a node, the engine's role and its last action. Volatile parts of the report (how long the
round took, error texts that differ from one timeout to the next) are left out, so an unchanged cluster
prints nothing.

>>> r = {"nodes": [{"name": "core-01", "ssh": True, "etcd": True, "leader": True, "vagrant_state": None}],
...      "etcd": {"healthy": True, "has_quorum": True, "healthy_members": 1, "member_count": 1,
...               "leader": "8e9e05c52164694d", "raft_term": 2}, "units": [], "units_error": None}
>>> first = facts(r)
>>> first["etcd leader"]
'core-01 (member 8e9e05c52164694d, term 2)'
>>> changes(first, facts(r), "12:00:00")
[]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _node(n: Mapping[str, Any]) -> str:
    vstate = n.get("vagrant_state")
    if vstate not in (None, "unknown", "running"):
        return f"down (vagrant: {vstate})"
    if not n.get("ssh"):
        return "down (no SSH answer)"
    if n.get("leader"):
        return "up, etcd leader"
    return "up, etcd member healthy" if n.get("etcd") else "up, etcd member not healthy"


def facts(report: Mapping[str, Any], engine: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The watched facts of one status report (``report()``'s JSON) and the engine's status (its JSON)."""
    out: dict[str, str] = {}
    nodes = list(report.get("nodes") or [])
    for n in nodes:
        out[f"node {n['name']}"] = _node(n)
    e = report.get("etcd") or {}
    leader = e.get("leader")
    if leader:
        name = next((n["name"] for n in nodes if n.get("leader")), None)
        term = e.get("raft_term")  # absent from the report of a connection holder started by an older version
        out["etcd leader"] = f"{name + ' ' if name else ''}(member {leader}, term {term if term else '?'})"
    else:
        out["etcd leader"] = "none"
    quorum = "has quorum" if e.get("has_quorum") else "NO QUORUM"
    health = "healthy" if e.get("healthy") else "unhealthy"
    out["etcd"] = f"{health}, {quorum}, {e.get('healthy_members', 0)}/{e.get('member_count', 0)} members healthy"
    if report.get("units_error"):
        out["units"] = "unknown (etcd has no quorum)" if not e.get("has_quorum") else "unknown (cannot be read)"
    for u in report.get("units") or []:
        where = f" on {u['node']}" if u.get("node") else ""
        if u.get("error"):
            state = "unknown"
        elif not u.get("node"):
            state = "not placed"
        else:
            state = f"{u.get('active') or '-'}/{u.get('sub') or '-'}"
        out[f"unit {u['unit']}{where}"] = f"{state} (desired {u.get('desired_state')})"
    if engine is not None:
        out["engine"] = str(engine.get("role") or "starting") if engine.get("running") else "not running"
        actions = engine.get("actions") or []
        if actions:
            out["engine action"] = str(actions[-1])
    return out


def changes(before: Mapping[str, str] | None, after: Mapping[str, str], stamp: str) -> list[str]:
    """One line per fact that changed (all of them for the first round, ``before`` None), each stamped.

    >>> changes({"etcd leader": "a", "unit x on n1": "active"}, {"etcd leader": "b"}, "t")
    ['t etcd leader: a -> b', 't unit x on n1: gone']
    """
    lines = []
    for key, value in after.items():
        old = None if before is None else before.get(key)
        if old is None:
            lines.append(f"{stamp} {key}: {value}")
        elif old != value:
            lines.append(f"{stamp} {key}: {old} -> {value}")
    lines += [f"{stamp} {key}: gone" for key in (before or {}) if key not in after]
    return lines
