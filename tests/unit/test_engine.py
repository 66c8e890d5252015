"""The engine's decisions without real nodes: liveness, held nodes in reconcile, settings, the lock and PID files.

The engine itself runs against real nodes in tests/nspawn/test_engine.py, its leadership against real etcd in
tests/integration/test_engine_leader_real.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coreos_lab import engine, probe
from coreos_lab.cli.engine_cmds import describe
from coreos_lab.cluster import Cluster
from coreos_lab.engine import EngineSettings, Liveness
from coreos_lab.errors import UsageError
from coreos_lab.probe import NodeFacts
from coreos_lab.state import RecordStore
from coreos_lab.units import systemd_backend as sb
from tests.unit.test_deploy import FakeNode, cluster, kv, nodes, store, unit, where

__all__ = ["cluster", "kv", "nodes", "store"]  # fixtures from test_deploy

UP = NodeFacts("a", True, "10.0.0.1", "m1", {"role": "web"})
DOWN = NodeFacts("a", False, error="timed out")


def test_one_missed_probe_never_loses_a_node() -> None:
    live = Liveness(agent_ttl=10, now=0)
    for t in range(0, 60, 4):  # every other probe missed, for a minute: never two in a row
        live.update({"a": DOWN if t % 8 else UP}, now=t)
        assert live.lost == set()


def test_a_node_is_lost_only_after_two_misses_and_the_ttl() -> None:
    live = Liveness(agent_ttl=10, now=0)
    live.update({"a": UP}, now=0)
    live.update({"a": DOWN}, now=1)
    live.update({"a": DOWN}, now=2)  # two misses, but only 2 s of silence
    assert (live.held, live.lost) == ({"a"}, set())
    assert live.view({"a": DOWN})["a"] == UP  # held: scheduled with what it said last
    events = live.update({"a": DOWN}, now=10.5)
    assert events == ["a is lost: no answer for 10.5s (3 probes missed; timed out); its units move"]
    assert (live.held, live.lost) == (set(), {"a"})
    assert live.view({"a": DOWN})["a"] == DOWN
    assert live.update({"a": DOWN}, now=20) == []  # said once
    assert live.missing() == {"a"}


def facts(up: str, down: str) -> dict[str, NodeFacts]:
    return {**{n: NodeFacts(n, True) for n in up}, **{n: NodeFacts(n, False, error="timed out") for n in down}}


def test_a_round_most_nodes_miss_together_counts_for_nothing() -> None:
    # The CI case: a missed one probe, then all three missed the next one on a loaded host; a was running.
    live = Liveness(agent_ttl=10, now=0)
    live.update(facts("abc", ""), now=0)
    live.update(facts("bc", "a"), now=8)
    events = live.update(facts("", "abc"), now=18)
    assert events == [
        "3 of 3 nodes missed this probe at once: the round does not count (is the engine host overloaded?)"
    ]
    assert (live.blind, live.lost, live.held) == (True, set(), {"a"})
    assert live.update(facts("", "abc"), now=20) == []  # said once per streak
    assert live.lost == set()
    live.update(facts("abc", ""), now=22)
    assert (live.blind, live.lost, live.held) == (False, set(), set())


def test_a_node_really_down_is_still_lost_across_a_blind_round() -> None:
    live = Liveness(agent_ttl=10, now=0)
    live.update(facts("abc", ""), now=0)
    live.update(facts("bc", "a"), now=2)
    live.update(facts("c", "ab"), now=4)  # 2 of 3: blind
    live.update(facts("bc", "a"), now=6)
    assert live.lost == set()  # two misses counted, but 6 s of silence
    live.update(facts("bc", "a"), now=16)
    assert live.lost == {"a"}
    # one node of two down is not "most": it counts
    two = Liveness(agent_ttl=1, now=0)
    two.update(facts("ab", ""), now=0)
    two.update(facts("b", "a"), now=1)
    two.update(facts("b", "a"), now=2)
    assert two.lost == {"a"}


def test_a_node_never_seen_is_lost_one_ttl_after_the_engine_started() -> None:
    live = Liveness(agent_ttl=5, now=100)
    live.update({"b": DOWN}, now=101)
    live.update({"b": DOWN}, now=103)
    assert live.lost == set()
    live.update({"b": DOWN}, now=105.5)
    assert live.lost == {"b"}
    assert live.to_json(105.5, 1_000_000.0)["b"] == {"state": "lost", "missed": 3, "last_seen": None}


def test_settings_are_checked_with_one_line_each() -> None:
    with pytest.raises(UsageError, match=r"^--interval must be between 0.5 and 300 seconds, not 0.1$"):
        EngineSettings(interval=0.1).check()
    with pytest.raises(UsageError, match=r"^--agent-ttl must be between 1 and 3600 seconds, not 0$"):
        EngineSettings(agent_ttl=0).check()
    with pytest.raises(UsageError, match=r"^--lease-ttl must be between 2 and 300 seconds, not 1$"):
        EngineSettings(lease_ttl=1).check()
    assert EngineSettings().check() == EngineSettings(agent_ttl=10.0, interval=2.0, lease_ttl=10)


def test_reconcile_leaves_a_held_node_alone_and_moves_units_once_it_is_lost(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore
) -> None:
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    home = out.nodes[0].node
    good = probe.probe_nodes(cluster)
    nodes[home].down = True
    facts = probe.probe_nodes(cluster)
    assert not facts[home].reachable
    held = sb.reconcile(cluster, store=store, facts={**facts, home: good[home]}, hold=[home], timeout=2)
    assert held.actions == ()  # nothing moves while the node is held, and nothing is asked of it
    assert store.get("myapp.service").targets == (home,)  # type: ignore[union-attr]
    lost = sb.reconcile(cluster, store=store, facts=facts, timeout=2)
    moved = {(a.action.kind, a.action.unit, a.action.node) for a in lost.actions}
    assert ("unschedule", "myapp.service", home) in moved
    assert len([n for n in where(nodes, "myapp.service") if n != home]) == 1  # the fake down node keeps its state


def test_the_lock_says_whether_an_engine_runs(tmp_path: Path) -> None:
    state = tmp_path / "engine"
    assert engine.running_pid(state) is None
    assert engine.read_status(state).running is False
    lock = engine.hold_lock(state)
    try:
        assert engine.running_pid(state) == os.getpid()
        with pytest.raises(UsageError, match=rf"^an engine already runs for this lab \(pid {os.getpid()}\)"):
            engine.hold_lock(state)
    finally:
        lock.close()
    assert engine.running_pid(state) is None  # the PID file stays, but nobody holds the lock: not running
    assert (state / "engine.pid").read_text() == f"{os.getpid()}\n"
    assert engine.stop(state) is None  # and nothing is signalled


def test_status_line() -> None:
    st = engine.EngineStatus(
        True,
        42,
        Path("/x"),
        {"role": "standby", "leader": "h:7", "last_reconcile": None, "actions_taken": 0, "last_error": "etcd: x\ny"},
    )
    assert describe(st) == "standby (pid 42), leader h:7, last reconcile never, 0 action(s), error: etcd: x"
    assert describe(engine.EngineStatus(False, None, Path("/x"))) == "not running (coreos-lab engine start)"
    assert engine.EngineStatus(False, None, Path("/x"), {"role": "leader"}).to_json()["role"] == "stopped"


def test_a_node_that_fails_the_unit_query_is_held_for_the_engine(
    cluster: Cluster, nodes: dict[str, FakeNode], store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe answered, the unit query did not (a node going down mid-round): reconcile alone moves its
    units at once; the engine's reconcile holds the node until the agent TTL gives it up."""
    [out] = sb.deploy(cluster, [unit("myapp.service")], store=store, timeout=2)
    home = out.nodes[0].node
    facts = probe.probe_nodes(cluster)
    real_observe = sb.observe

    def flaky(c: Cluster, names: list[str], f: dict[str, NodeFacts]) -> tuple[dict[str, object], dict[str, str]]:
        states, errors = real_observe(c, names, f)
        states.pop(home, None)
        return states, {**errors, home: "connection lost"}

    monkeypatch.setattr(sb, "observe", flaky)
    held = sb.reconcile(cluster, store=store, facts=facts, hold_unobservable=True, timeout=2)
    assert held.actions == ()
    assert store.get("myapp.service").targets == (home,)  # type: ignore[union-attr]
    moved = sb.reconcile(cluster, store=store, facts=facts, timeout=2)
    assert ("unschedule", "myapp.service", home) in {
        (a.action.kind, a.action.unit, a.action.node) for a in moved.actions
    }
