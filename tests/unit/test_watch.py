"""``status --watch`` (coreos_lab/watch.py and cli/status.py) with status reports made up here: which facts a
report yields, one line per change and none when nothing changed, Ctrl-C ends it with exit 0, the terminal's
live view holds the leader, its term and the units."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import coreos_lab.health
from coreos_lab.cli import app
from coreos_lab.cli import status as status_cmd
from coreos_lab.errors import CoreosLabError
from coreos_lab.watch import changes, facts


def report(leader: str = "core-01", term: int = 5, *, down: str = "", unit_on: str = "core-02") -> dict[str, Any]:
    nodes = [
        {
            "name": n,
            "ip": f"10.0.0.{i}",
            "ssh": n != down,
            "etcd": n != down,
            "leader": n == leader,
            "vagrant_state": None,
        }
        for i, n in enumerate(["core-01", "core-02", "core-03"], start=11)
    ]
    healthy = 2 if down else 3
    return {
        "nodes": nodes,
        "etcd": {
            "healthy": not down,
            "has_quorum": True,
            "healthy_members": healthy,
            "member_count": 3,
            "leader": {"core-01": "a1", "core-02": "b2", "core-03": "c3"}[leader],
            "raft_term": term,
        },
        "units": [
            {
                "unit": "web.service",
                "node": unit_on,
                "machine": f"{unit_on}/10.0.0.12",
                "desired_state": "launched",
                "active": "active",
                "sub": "running",
                "error": None,
            }
        ],
        "units_error": None,
        "duration": 0.123,
    }


def test_facts_name_nodes_leader_and_term_etcd_and_units() -> None:
    got = facts(report())
    assert got == {
        "node core-01": "up, etcd leader",
        "node core-02": "up, etcd member healthy",
        "node core-03": "up, etcd member healthy",
        "etcd leader": "core-01 (member a1, term 5)",
        "etcd": "healthy, has quorum, 3/3 members healthy",
        "unit web.service on core-02": "active/running (desired launched)",
    }


def test_an_unchanged_report_gives_no_line_even_if_it_took_longer() -> None:
    first, again = report(), report()
    again["duration"] = 9.9
    assert changes(facts(first), facts(again), "t") == []


def test_one_line_per_change_and_a_moved_unit_is_gone_from_one_node() -> None:
    before = facts(report())
    after = facts(report(leader="core-03", term=6, down="core-01", unit_on="core-03"))
    assert changes(before, after, "12:00:01") == [
        "12:00:01 node core-01: up, etcd leader -> down (no SSH answer)",
        "12:00:01 node core-03: up, etcd member healthy -> up, etcd leader",
        "12:00:01 etcd leader: core-01 (member a1, term 5) -> core-03 (member c3, term 6)",
        "12:00:01 etcd: healthy, has quorum, 3/3 members healthy -> unhealthy, has quorum, 2/3 members healthy",
        "12:00:01 unit web.service on core-03: active/running (desired launched)",
        "12:00:01 unit web.service on core-02: gone",
    ]


def test_a_report_without_the_term_and_the_engine_facts() -> None:
    old = report()
    del old["etcd"]["raft_term"]  # from a connection holder started by an older coreos-lab
    engine = {"running": True, "role": "leader", "actions": ["2026-12-01T10:00:00Z start web.service on core-03: ok"]}
    got = facts(old, engine)
    assert got["etcd leader"] == "core-01 (member a1, term ?)"
    assert got["engine"] == "leader"
    assert got["engine action"].endswith("start web.service on core-03: ok")
    assert facts(old, {"running": False})["engine"] == "not running"
    vagrant_down = report()
    vagrant_down["nodes"][1].update(vagrant_state="poweroff", ssh=False)
    assert facts(vagrant_down)["node core-02"] == "down (vagrant: poweroff)"


# ---- the command ---------------------------------------------------------------------------------------------
class Rounds:
    """The reports the watch gets, one per round (an exception is raised in its round)."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)
        self.calls = 0

    def __call__(self, cluster: Any, **kwargs: Any) -> dict[str, Any]:
        item = self.items[min(self.calls, len(self.items) - 1)]
        self.calls += 1
        if isinstance(item, BaseException):
            raise item
        return copy.deepcopy(item)


class NoCluster:
    closed = False

    def close(self) -> None:
        NoCluster.closed = True


@pytest.fixture
def inv(tmp_path: Path) -> Path:
    path = tmp_path / "nodes.ssh"
    path.write_text("Host core-01\n  HostName 127.0.0.1\n")
    return path


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    NoCluster.closed = False
    monkeypatch.setattr(status_cmd, "open_nodes", lambda *a, **k: NoCluster())
    monkeypatch.setattr(time, "sleep", lambda s: None)
    yield
    assert NoCluster.closed, "the watch closes its connections on the way out"


def watch(monkeypatch: pytest.MonkeyPatch, inv: Path, rounds: Rounds, *args: str) -> tuple[int, list[str], str]:
    monkeypatch.setattr(coreos_lab.health, "report", rounds)
    got = CliRunner().invoke(app, ["status", "--watch", "--inventory", str(inv), *args])
    return got.exit_code, got.stdout.splitlines(), got.stderr


def test_without_a_tty_the_first_round_prints_the_state_then_only_changes(
    monkeypatch: pytest.MonkeyPatch, inv: Path, patched: None
) -> None:
    rounds = Rounds(report(), report(), report(leader="core-02", term=6), report(leader="core-02", term=6))
    code, lines, err = watch(monkeypatch, inv, rounds, "--count", "4", "--interval", "0.5")
    assert code == 0, err
    assert rounds.calls == 4
    assert len(lines) == 6 + 3, lines  # six facts, then three changed ones; rounds 2 and 4 print nothing
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines), "each line is timestamped"
    changed = [line.split(" ", 1)[1] for line in lines[6:]]
    assert changed == [
        "node core-01: up, etcd leader -> up, etcd member healthy",
        "node core-02: up, etcd member healthy -> up, etcd leader",
        "etcd leader: core-01 (member a1, term 5) -> core-02 (member b2, term 6)",
    ]


def test_ctrl_c_ends_the_watch_with_exit_0_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, inv: Path, patched: None
) -> None:
    code, lines, err = watch(monkeypatch, inv, Rounds(report(), KeyboardInterrupt()))
    assert code == 0
    assert err == ""
    assert len(lines) == 6


def test_a_failed_round_is_one_line_and_the_watch_goes_on(
    monkeypatch: pytest.MonkeyPatch, inv: Path, patched: None
) -> None:
    boom = CoreosLabError("the connection holder went away")
    code, lines, _ = watch(monkeypatch, inv, Rounds(report(), boom, boom, report()), "--count", "4")
    assert code == 0
    assert [line.split(" ", 1)[1] for line in lines[6:]] == ["status failed: the connection holder went away"]


def test_watch_and_json_are_refused(monkeypatch: pytest.MonkeyPatch, inv: Path) -> None:
    got = CliRunner().invoke(app, ["status", "--watch", "--json", "--inventory", str(inv)])
    assert got.exit_code == 2
    assert got.stderr.strip() == "error: --watch prints a view or one line per change; --json prints one report"


def test_the_live_view_shows_the_leader_its_term_units_and_the_last_changes() -> None:
    console = Console(record=True, width=120)
    console.print(status_cmd.render_watch(report(term=7), None, ["t etcd leader: a -> b"], 3, 2.0))
    text = console.export_text()
    assert "leader core-01, raft term 7" in text
    assert "web.service" in text
    assert "t etcd leader: a -> b" in text
    assert "round 3, every 2 s; Ctrl-C to stop" in text
