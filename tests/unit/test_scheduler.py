"""Scheduler: placement by [X-Fleet] constraints, reasons for exclusion, idempotent reconcile plans."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.errors import SchedulingError
from coreos_lab.scheduler import (
    Action,
    DesiredUnit,
    Node,
    apply_plan,
    eligibility,
    job_state,
    place,
    plan_reconcile,
    units_by_node,
    with_loads,
)
from coreos_lab.unitfile import UnitFile, XFleet


def nodes3(**overrides: dict) -> list[Node]:
    base = [
        Node("core-01", "m1", "192.168.56.101", {"role": "web", "disk": "ssd"}),
        Node("core-02", "m2", "192.168.56.102", {"role": "web"}),
        Node("core-03", "m3", "192.168.56.103", {"role": "db", "disk": "ssd"}),
    ]
    return [_over(n, overrides) for n in base]


def _over(n: Node, overrides: dict) -> Node:
    changes = overrides.get(n.name, {})
    return Node(
        name=n.name,
        machine_id=changes.get("machine_id", n.machine_id),
        ip=n.ip,
        metadata=changes.get("metadata", n.metadata),
        healthy=changes.get("healthy", n.healthy),
        load=changes.get("load", n.load),
    )


def xf(text: str, name: str = "u.service") -> XFleet:
    return XFleet.from_unit(UnitFile.parse("[Service]\nExecStart=/x\n[X-Fleet]\n" + text, name=name))


# ---- place ---------------------------------------------------------------------------------------------------------
def test_least_loaded_wins_and_ties_go_by_name():
    assert place("a.service", XFleet(), nodes3()).nodes == ("core-01",)
    loaded = nodes3(**{"core-01": {"load": 3}, "core-02": {"load": 1}, "core-03": {"load": 1}})
    assert place("a.service", XFleet(), loaded).nodes == ("core-02",)
    assert place("a.service", XFleet(), nodes3(**{"core-01": {"load": 1}})).nodes == ("core-02",)


def test_unhealthy_nodes_are_never_chosen():
    ns = nodes3(**{"core-01": {"healthy": False}, "core-02": {"healthy": False}})
    assert place("a.service", XFleet(), ns).nodes == ("core-03",)


def test_machine_id_and_node_name():
    assert place("a.service", xf("MachineID=m3\n"), nodes3()).nodes == ("core-03",)
    assert place("a.service", xf("MachineID=core-02\n"), nodes3()).nodes == ("core-02",)
    with pytest.raises(SchedulingError, match="MachineID=nope"):
        place("a.service", xf("MachineID=nope\n"), nodes3())


def test_metadata_and_or_semantics():
    assert place("a.service", xf("MachineMetadata=role=db\n"), nodes3()).nodes == ("core-03",)
    both = xf('MachineMetadata="role=web" "disk=ssd"\n')
    assert place("a.service", both, nodes3(**{"core-01": {"load": 5}})).nodes == ("core-01",)
    either = xf("MachineMetadata=role=db\nMachineMetadata=role=web\n")
    assert place("a.service", either, nodes3(**{"core-01": {"load": 5}, "core-02": {"load": 5}})).nodes == ("core-03",)
    combined = xf('MachineMetadata="role=web" "disk=ssd"\nMachineMetadata=role=db\n')
    elig = eligibility("a.service", combined, nodes3())
    assert [n for n, why in elig.items() if why is None] == ["core-01", "core-03"]


def test_error_says_why_each_node_was_excluded():
    ns = nodes3(**{"core-01": {"healthy": False}})
    with pytest.raises(SchedulingError) as info:
        place(
            "a.service",
            xf("MachineMetadata=role=db\n"),
            ns,
            {"b.service": "core-03"},
            {"b.service": xf("Conflicts=a*\n")},
        )
    msg = str(info.value)
    assert msg.startswith("cannot place a.service: no eligible node")
    assert "core-01: node is not healthy" in msg
    assert "core-02: MachineMetadata role=db (node has role=web)" in msg
    assert "core-03: b.service runs there with Conflicts=a*" in msg
    assert "\n" not in msg


def test_no_nodes():
    with pytest.raises(SchedulingError, match="there are no nodes"):
        place("a.service", XFleet(), [])


def test_conflicts_both_ways_and_never_with_itself():
    conflicts = xf("Conflicts=web@*.service\n", name="web@2.service")
    assert place("web@2.service", conflicts, nodes3(), {"web@1.service": "core-01"}).nodes == ("core-02",)
    # the unit's own current assignment does not count against it
    assert place("web@1.service", conflicts, nodes3(), {"web@1.service": "core-01"}).nodes == ("core-01",)
    # a plain unit is kept away by the Conflicts of a unit already there
    others = {"web@1.service": conflicts, "web@2.service": conflicts}
    assignments = {"web@1.service": "core-01", "web@2.service": "core-02"}
    assert place("web@3.service", XFleet(), nodes3(), assignments, others).nodes == ("core-03",)
    with pytest.raises(SchedulingError, match="Conflicts=web@"):
        place("web@4.service", conflicts, nodes3(), {**assignments, "web@3.service": "core-03"})


def test_machine_of_follows_the_peer():
    assert place("b.service", xf("MachineOf=a.service\n"), nodes3(), {"a.service": "core-03"}).nodes == ("core-03",)
    with pytest.raises(SchedulingError, match=r"MachineOf=a.service \(a.service is not placed\)"):
        place("b.service", xf("MachineOf=a.service\n"), nodes3())
    with pytest.raises(SchedulingError, match=r"a\.service is on core-03"):
        place(
            "b.service",
            xf("MachineOf=a.service\n"),
            nodes3(**{"core-03": {"healthy": False}}),
            {"a.service": "core-03"},
        )


def test_global_takes_every_eligible_node():
    assert place("g.service", xf("Global=true\n"), nodes3()).nodes == ("core-01", "core-02", "core-03")
    web = xf("Global=true\nMachineMetadata=role=web\n")
    assert place("g.service", web, nodes3(**{"core-02": {"healthy": False}})).nodes == ("core-01",)
    with pytest.raises(SchedulingError):
        place("g.service", xf("Global=true\nMachineMetadata=role=none\n"), nodes3())


def test_replaces_prefers_the_replaced_units_node_and_displaces_it():
    p = place(
        "new.service", xf("Replaces=old.service\n"), nodes3(**{"core-02": {"load": 9}}), {"old.service": "core-02"}
    )
    assert p.nodes == ("core-02",)
    assert p.displaced == ("old.service",)
    # the replaced unit is then kept away from its replacement
    others = {"new.service": xf("Replaces=old.service\n")}
    with pytest.raises(SchedulingError, match=r"Replaces=old\.service"):
        place("old.service", XFleet(), [nodes3()[1]], {"new.service": "core-02"}, others)


def test_helpers():
    assert units_by_node({"a": "n1", "g": ["n1", "n2"]}) == {"n1": {"a", "g"}, "n2": {"g"}}
    assert [n.load for n in with_loads(nodes3(), {"a": "core-01", "g": ["core-01", "core-03"]})] == [2, 0, 1]


# ---- plan_reconcile ------------------------------------------------------------------------------------------------
def test_new_units_get_scheduled_loaded_and_started():
    desired = {"a.service": DesiredUnit("a.service"), "b.service": DesiredUnit("b.service", state="loaded")}
    plan = plan_reconcile(desired, {}, nodes3())
    assert [(a.kind, a.unit, a.node) for a in plan] == [
        ("schedule", "a.service", "core-01"),
        ("schedule", "b.service", "core-02"),
        ("load", "a.service", "core-01"),
        ("load", "b.service", "core-02"),
        ("start", "a.service", "core-01"),
    ]
    d2, o2 = apply_plan(desired, {}, plan)
    assert o2 == {"a.service": {"core-01": "launched"}, "b.service": {"core-02": "loaded"}}
    assert not plan_reconcile(d2, o2, nodes3())


def test_unit_on_a_dead_node_moves_and_the_stale_copy_is_stopped_when_seen():
    desired = {"a.service": DesiredUnit("a.service", targets=("core-01",))}
    observed = {"a.service": {"core-01": "launched"}}
    ns = nodes3(**{"core-01": {"healthy": False}})
    plan = plan_reconcile(desired, observed, ns)
    assert [(a.kind, a.node) for a in plan] == [
        ("stop", "core-01"),
        ("unload", "core-01"),
        ("unschedule", "core-01"),
        ("schedule", "core-02"),
        ("load", "core-02"),
        ("start", "core-02"),
    ]
    assert next(a for a in plan if a.kind == "unschedule").reason == "node is not healthy"
    d2, o2 = apply_plan(desired, observed, plan)
    assert not plan_reconcile(d2, o2, ns)


def test_gone_node_is_not_acted_on():
    desired = {"a.service": DesiredUnit("a.service", targets=("core-09",))}
    plan = plan_reconcile(desired, {"a.service": {"core-09": "launched"}}, nodes3())
    assert ("unschedule", "core-09", "node is gone") in [(a.kind, a.node, a.reason) for a in plan]
    assert not [a for a in plan if a.node == "core-09" and a.kind in {"stop", "unload"}]


def test_stale_and_undesired_units_are_stopped():
    desired = {"a.service": DesiredUnit("a.service", targets=("core-02",))}
    observed = {"a.service": {"core-02": "launched", "core-03": "launched"}, "zombie.service": {"core-01": "loaded"}}
    plan = plan_reconcile(desired, observed, nodes3())
    assert [(a.kind, a.unit, a.node) for a in plan] == [
        ("stop", "a.service", "core-03"),
        ("unload", "a.service", "core-03"),
        ("unload", "zombie.service", "core-01"),
    ]


def test_desired_states_drive_transitions():
    observed = {"a.service": {"core-01": "launched"}}
    stop = plan_reconcile(
        {"a.service": DesiredUnit("a.service", state="loaded", targets=("core-01",))}, observed, nodes3()
    )
    assert [a.kind for a in stop] == ["stop"]
    gone = plan_reconcile(
        {"a.service": DesiredUnit("a.service", state="inactive", targets=("core-01",))}, observed, nodes3()
    )
    assert [a.kind for a in gone] == ["stop", "unload", "unschedule"]


def test_global_follows_node_health_and_metadata():
    g = DesiredUnit("g.service", xf("Global=true\nMachineMetadata=role=web\n"), targets=("core-01",))
    plan = plan_reconcile({"g.service": g}, {"g.service": {"core-01": "launched"}}, nodes3())
    assert [(a.kind, a.node) for a in plan] == [("schedule", "core-02"), ("load", "core-02"), ("start", "core-02")]


def test_conflicting_pair_lands_on_different_nodes_and_unplaceable_is_reported():
    c = xf("Conflicts=web@*.service\n", name="web@1.service")
    desired = {f"web@{i}.service": DesiredUnit(f"web@{i}.service", c) for i in range(1, 5)}
    plan = plan_reconcile(desired, {}, nodes3())
    placed = {a.unit: a.node for a in plan if a.kind == "schedule"}
    assert len(set(placed.values())) == len(placed) == 3
    assert [u for u, _ in plan.unplaceable] == ["web@4.service"]
    assert "no eligible node" in plan.unplaceable[0][1]
    d2, o2 = apply_plan(desired, {}, plan)
    again = plan_reconcile(d2, o2, nodes3())
    assert not again
    assert again.unplaceable == plan.unplaceable


def test_machine_of_moves_with_its_peer():
    desired = {
        "a.service": DesiredUnit("a.service", targets=("core-01",)),
        "b.service": DesiredUnit("b.service", xf("MachineOf=a.service\n"), targets=("core-01",)),
    }
    plan = plan_reconcile(desired, {}, nodes3(**{"core-01": {"healthy": False}}))
    sched = {a.unit: a.node for a in plan if a.kind == "schedule"}
    assert sched == {"a.service": "core-02", "b.service": "core-02"}


def test_replaces_displaces_the_old_unit():
    desired = {
        "old.service": DesiredUnit("old.service", targets=("core-01",)),
        "new.service": DesiredUnit("new.service", xf("Replaces=old.service\n")),
    }
    plan = plan_reconcile(desired, {"old.service": {"core-01": "launched"}}, nodes3())
    sched = {a.unit: a.node for a in plan if a.kind == "schedule"}
    assert sched == {"new.service": "core-01", "old.service": "core-02"}
    d2, o2 = apply_plan(desired, {"old.service": {"core-01": "launched"}}, plan)
    assert not plan_reconcile(d2, o2, nodes3())


def test_changed_content_is_reinstalled_once():
    d = {"a.service": DesiredUnit("a.service", state="launched", targets=("core-01",), hash="new")}
    observed = {"a.service": {"core-01": "launched"}}
    hashes = {"a.service": {"core-01": "old"}}
    plan = plan_reconcile(d, observed, nodes3(), hashes=hashes)
    assert [(a.kind, a.node) for a in plan] == [("stop", "core-01"), ("load", "core-01"), ("start", "core-01")]
    assert "content changed (old -> new)" in plan.actions[0].reason
    d2, o2 = apply_plan(d, observed, plan, hashes)
    assert hashes == {"a.service": {"core-01": "new"}}
    assert not plan_reconcile(d2, o2, nodes3(), hashes=hashes)
    # a loaded (not running) unit is only re-installed; unknown installed content is left alone
    loaded = {"a.service": DesiredUnit("a.service", state="loaded", targets=("core-01",), hash="new")}
    plan = plan_reconcile(
        loaded, {"a.service": {"core-01": "loaded"}}, nodes3(), hashes={"a.service": {"core-01": "x"}}
    )
    assert [a.kind for a in plan] == ["load"]
    assert not plan_reconcile(loaded, {"a.service": {"core-01": "loaded"}}, nodes3(), hashes={})


@pytest.mark.parametrize(
    ("load", "active", "expected"),
    [
        ("not-found", "inactive", None),
        ("", "", None),
        ("loaded", "active", "launched"),
        ("loaded", "activating", "launched"),
        ("loaded", "inactive", "loaded"),
        ("loaded", "failed", "loaded"),
        ("not-found", "active", "launched"),
    ],
)
def test_job_state_from_systemd(load, active, expected):
    assert job_state(load, active) == expected


def test_action_str():
    assert (
        str(Action("start", "a.service", "core-01", "desired launched"))
        == "start a.service on core-01 (desired launched)"
    )


# ---- properties ---------------------------------------------------------------------------------------------------
NODE_NAMES = [f"core-0{i}" for i in range(1, 6)]
UNIT_NAMES = ["a.service", "b.service", "web@1.service", "web@2.service", "web@3.service", "g.service", "db.service"]


@st.composite
def clusters(draw):
    nodes = [
        Node(
            name,
            f"m{i}",
            f"127.0.0.{i + 1}",
            {"role": draw(st.sampled_from(["web", "db"]))},
            healthy=draw(st.booleans()),
        )
        for i, name in enumerate(draw(st.lists(st.sampled_from(NODE_NAMES), min_size=1, max_size=5, unique=True)))
    ]
    pool = [n.name for n in nodes] + ["core-09"]
    desired: dict[str, DesiredUnit] = {}
    for unit in draw(st.lists(st.sampled_from(UNIT_NAMES), max_size=7, unique=True)):
        kind = draw(st.sampled_from(["plain", "meta", "conflict", "global", "machineof", "replaces", "pin"]))
        text = {
            "plain": "",
            "meta": "MachineMetadata=role=web\n",
            "conflict": "Conflicts=web@*.service\n",
            "global": "Global=true\n",
            "machineof": f"MachineOf={draw(st.sampled_from(UNIT_NAMES))}\n",
            "replaces": f"Replaces={draw(st.sampled_from(UNIT_NAMES))}\n",
            "pin": f"MachineID=m{draw(st.integers(0, 4))}\n",
        }[kind]
        try:
            constraints = xf(text, name=unit)
        except Exception:
            constraints = XFleet()
        targets = tuple(sorted(set(draw(st.lists(st.sampled_from(pool), max_size=2)))))
        state = draw(st.sampled_from(["inactive", "loaded", "launched", "launched"]))
        desired[unit] = DesiredUnit(unit, constraints, state, targets, draw(st.sampled_from(["", "h1", "h2"])))
    observed = {
        u: {n: draw(st.sampled_from(["loaded", "launched"])) for n in draw(st.lists(st.sampled_from(pool), max_size=2))}
        for u in draw(st.lists(st.sampled_from([*UNIT_NAMES, "zombie.service"]), max_size=4, unique=True))
    }
    observed = {u: m for u, m in observed.items() if m}
    hashes = {u: {n: draw(st.sampled_from(["h1", "h2"])) for n in m} for u, m in observed.items()}
    return nodes, desired, observed, hashes


@settings(max_examples=300, deadline=2000)
@given(clusters())
def test_reconcile_is_idempotent_and_respects_constraints(cluster):
    nodes, desired, observed, hashes = cluster
    plan = plan_reconcile(desired, observed, nodes, hashes=hashes)
    assert plan_reconcile(desired, observed, nodes, hashes=hashes) == plan  # deterministic
    d2, o2 = apply_plan(desired, observed, plan, hashes)
    again = plan_reconcile(d2, o2, nodes, hashes=hashes)
    assert list(again) == []
    by_name = {n.name: n for n in nodes}
    assignments = {u: d.targets for u, d in d2.items() if d.targets}
    others = {u: d.constraints for u, d in d2.items()}
    on = units_by_node(assignments)
    for unit, targets in assignments.items():
        d = d2[unit]
        assert d.state != "inactive"
        if not d.constraints.global_:
            assert len(targets) == 1
        for node in targets:
            assert by_name[node].healthy
            rest = {u: t for u, t in assignments.items() if u != unit}
            reason = eligibility(unit, d.constraints, [by_name[node]], rest, others)[node]
            assert reason is None, f"{unit} on {node}: {reason}"
            assert unit in on[node]
        # what runs matches what is desired, on reachable nodes
        for node in targets:
            assert o2.get(unit, {}).get(node) == d.state
    for unit, where in o2.items():
        for node in where:
            if node in by_name:
                assert unit in assignments
                assert node in assignments[unit]


@settings(max_examples=300, deadline=1000)
@given(clusters(), st.sampled_from(UNIT_NAMES))
def test_place_either_picks_an_eligible_least_loaded_node_or_explains_every_node(cluster, unit):
    nodes, desired, _, _ = cluster
    constraints = desired[unit].constraints if unit in desired else XFleet()
    assignments = {u: d.targets for u, d in desired.items() if d.targets and u != unit}
    others = {u: d.constraints for u, d in desired.items()}
    reasons = eligibility(unit, constraints, nodes, assignments, others)
    if all(why is not None for why in reasons.values()):
        with pytest.raises(SchedulingError) as info:
            place(unit, constraints, nodes, assignments, others)
        for n in nodes:
            assert f"{n.name}: " in str(info.value)
        return
    p = place(unit, constraints, nodes, assignments, others)
    ok = [n for n in nodes if reasons[n.name] is None]
    assert set(p.nodes) <= {n.name for n in ok}
    if constraints.global_:
        assert p.nodes == tuple(sorted(n.name for n in ok))
    elif not p.displaced:
        best = min(ok, key=lambda n: (n.load, n.name))
        assert p.nodes == (best.name,)
