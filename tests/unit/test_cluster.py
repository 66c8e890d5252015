"""Cluster decisions with fakes: fan-out outcomes, node selection, nodes of a Vagrant lab."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from coreos_lab import cluster as cluster_mod
from coreos_lab.cluster import Cluster
from coreos_lab.errors import CommandTimeout, ConfigError, SSHError, UsageError
from coreos_lab.runner import CommandResult, LocalRunner
from coreos_lab.testing import FakeRunner


class _Slow(FakeRunner):
    def run(self, cmd, *, timeout=None, sudo=False, stdin=None):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return super().run(cmd, timeout=timeout, sudo=sudo, stdin=stdin)


def test_run_all_reports_every_node_in_order() -> None:
    c = Cluster(
        {
            "core-01": FakeRunner("core-01", {"uptime": "up\n"}),
            "core-02": FakeRunner("core-02", {".": CommandTimeout("core-02: command timed out after 1s: uptime")}),
            "core-03": FakeRunner("core-03", {".": ValueError("backend bug")}),
            "core-04": FakeRunner("core-04", {"uptime": (3, "", "bad\n")}),
        }
    )
    out = c.run_all("uptime")
    assert list(out) == ["core-01", "core-02", "core-03", "core-04"]
    first = out["core-01"]
    assert isinstance(first, CommandResult)
    assert first.stdout == "up\n"
    assert isinstance(out["core-02"], CommandTimeout)
    assert "timed out" in str(out["core-02"])
    assert isinstance(out["core-03"], SSHError)
    assert str(out["core-03"]) == "core-03: ValueError: backend bug"
    fourth = out["core-04"]
    assert isinstance(fourth, CommandResult)
    assert fourth.exit_code == 3


def test_run_all_is_parallel() -> None:
    c = Cluster({f"n{i}": _Slow(f"n{i}", default=(0, "", "")) for i in range(8)})
    start = time.monotonic()
    out = c.run_all("true")
    assert time.monotonic() - start < 1.2  # 8 x 0.3 s sequentially would be 2.4 s
    assert all(isinstance(v, CommandResult) for v in out.values())


def test_selection_and_sudo_and_argv_quoting() -> None:
    runners = {n: FakeRunner(n, default=(0, "", "")) for n in ("a", "b", "c")}
    c = Cluster(runners)
    out = c.run_all(["echo", "$(id)"], nodes=["c", "a", "c"], sudo=True)
    assert list(out) == ["c", "a"]
    assert runners["a"].calls == ["sudo -n -- sh -c 'echo '\"'\"'$(id)'\"'\"''"]
    assert runners["b"].calls == []
    with pytest.raises(UsageError, match="no node named 'zz'"):
        c.run_all("true", nodes=["zz"])
    with pytest.raises(UsageError, match="nodes: a, b, c"):
        c.runner("nope")


def test_map_turns_errors_into_values() -> None:
    c = Cluster({"a": FakeRunner("a"), "b": FakeRunner("b", {".": CommandTimeout("b: command timed out after 1s: x")})})
    out = c.map(lambda r: r.run("x").host)
    assert out["a"] == "a"
    assert isinstance(out["b"], CommandTimeout)


def test_http_base_for_local_runner_is_direct() -> None:
    c = Cluster({"local": LocalRunner("local")})
    session, base = c.http_base("local", 2379)
    assert base == "http://127.0.0.1:2379"
    assert c.http_base("local", 2379)[0] is session  # cached per node and port
    c.close()


def test_from_inventory_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read inventory"):
        Cluster.from_inventory(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("Host *\n User x\n")
    with pytest.raises(ConfigError, match="names no hosts"):
        Cluster.from_inventory(empty)
    bad = tmp_path / "bad"
    bad.write_text("Host a\n Port nine\n")
    with pytest.raises(ConfigError, match=r"inventory .*bad Port"):
        Cluster.from_inventory(bad)


def test_from_inventory_without_persist_builds_ssh_runners(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    inv.write_text("Host n1\n HostName 127.0.0.1\n Port 2201\nHost n2\n HostName 127.0.0.1\n Port 2202\n")
    c = Cluster.from_inventory(inv)
    assert c.names == ["n1", "n2"]
    assert type(c.runner("n1")).__name__ == "SSHRunner"
    assert "Host n2" in c.ssh_config()


def test_persist_opt_out_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COREOS_LAB_NO_PERSIST", "1")
    c = Cluster.from_ssh_config("Host n1\n Port 2201\n", persist=True)
    assert type(c.runner("n1")).__name__ == "SSHRunner"


def test_from_lab_reads_the_labs_cached_vagrant_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coreos_lab import vagrant

    asked: list[Path] = []

    def ssh_config_text(lab_dir: Path) -> str:
        asked.append(lab_dir)
        return "Host core-01\n HostName 127.0.0.1\n Port 2222\n User core\n"

    monkeypatch.setattr(vagrant, "ssh_config_text", ssh_config_text)
    c = Cluster.from_lab(tmp_path, persist=False)
    assert asked == [tmp_path]
    assert c.names == ["core-01"]
    assert c.targets["core-01"].user == "core"


def test_run_all_reuses_its_threads_and_close_ends_them() -> None:
    before = threading.active_count()
    c = Cluster({f"n{i}": FakeRunner(f"n{i}") for i in range(5)})
    for _ in range(20):
        c.run_all("true")
    assert threading.active_count() <= before + 5  # one pool of at most one thread per node, reused
    c.close()
    assert threading.active_count() <= before
    assert cluster_mod.MAX_WORKERS >= 30  # a 30-node fan-out runs in one wave
