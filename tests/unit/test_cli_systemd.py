"""`coreos-lab units` and `coreos-lab logs` (cli/systemd_cmds.py) with fake nodes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import coreos_lab.cluster
from coreos_lab.cli import app
from coreos_lab.cluster import Cluster
from coreos_lab.testing import FakeRunner

TOKEN = "0123456789abcdef0123456789abcdef"


def _cli_with(monkeypatch: pytest.MonkeyPatch, runners: dict[str, FakeRunner], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(coreos_lab.cluster, "open_cluster", lambda **kwargs: Cluster(runners))
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_units_table_json_and_a_failing_node(monkeypatch: pytest.MonkeyPatch) -> None:
    listing = '[{"unit":"etcd.service","load":"loaded","active":"active","sub":"running","description":"etcd"}]'
    ok = FakeRunner("core-01", {r"list-units": listing})
    down = FakeRunner("core-02", {r"list-units": (255, "", "ssh: connect refused")})
    code, out, err = _cli_with(monkeypatch, {"core-01": ok, "core-02": down}, "units", "etcd*")
    assert code == 1
    assert out.splitlines()[0].split() == ["NODE", "UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]
    assert out.splitlines()[1].split() == ["core-01", "etcd.service", "loaded", "active", "running", "etcd"]
    assert err.startswith("error: core-02: command exited 255")
    assert len(err.strip().splitlines()) == 1
    code, out, _ = _cli_with(monkeypatch, {"core-01": ok}, "units", "--json", "-N", "core-01")
    assert code == 0
    data = json.loads(out)
    assert data == {"units": [{"node": "core-01", **json.loads(listing)[0]}], "errors": {}}


def test_a_failing_nodes_line_masks_a_discovery_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-node error line goes through the CLI's one report function, which masks like the boundary."""
    said = f"etcd: cannot reach https://discovery.etcd.io/{TOKEN}"
    down = FakeRunner("core-01", {r"list-units": (1, "", said)})
    code, _, err = _cli_with(monkeypatch, {"core-01": down}, "units")
    assert code == 1
    assert err.startswith("error: core-01: command exited 1")
    assert "https://discovery.etcd.io/0123…" in err, "the URL must reach the line (else this proves nothing)"
    assert TOKEN not in err


def test_cli_units_and_logs_reject_bad_input_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FakeRunner("core-01", default=(0, "", ""))
    code, _, err = _cli_with(monkeypatch, {"core-01": runner}, "units", "$(reboot)")
    assert code == 2
    assert err.startswith("error: invalid unit pattern")
    code, _, err = _cli_with(monkeypatch, {"core-01": runner}, "logs", "core-01", "a;b.service")
    assert code == 2
    assert err.startswith("error: invalid unit name")
    code, _, err = _cli_with(monkeypatch, {"core-01": runner}, "logs", "core-09", "etcd.service")
    assert code == 2
    assert "no node named 'core-09'" in err
    assert runner.calls == []


def test_cli_logs_prints_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = "2026-01-01T00:00:00+0000 core-01 etcd[1]: ready\n-- cursor: s=1\n"
    runner = FakeRunner("core-01", {r"journalctl": journal})
    code, out, err = _cli_with(monkeypatch, {"core-01": runner}, "logs", "core-01", "etcd.service", "-n", "3")
    assert code == 0, err
    assert out == "2026-01-01T00:00:00+0000 core-01 etcd[1]: ready\n"
    assert "--lines=3" in runner.calls[0]
