"""SystemdClient: command building, quoting of hostile values, parsing (FakeRunner, no systemd)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreos_lab.errors import CommandFailed, CoreosLabError, UnitFileError
from coreos_lab.systemd import (
    SystemdClient,
    parse_list_units,
    parse_show,
    validate_drop_in_name,
)
from coreos_lab.testing import FakeRunner
from coreos_lab.unitfile import check_unit_name, validate_unit_pattern

SHOW_TWO = """\
Id=etcd.service
Description=etcd - highly-available key value store
LoadState=loaded
ActiveState=active
SubState=running
MainPID=123
ExecMainStatus=0
ActiveEnterTimestamp=@1700000000
FragmentPath=/lib/systemd/system/etcd.service
UnitFileState=enabled

Id=nope.service
Description=nope.service
LoadState=not-found
ActiveState=inactive
SubState=dead
MainPID=0
ExecMainStatus=0
ActiveEnterTimestamp=
FragmentPath=
UnitFileState=
"""


@pytest.mark.parametrize(
    "name",
    [
        "etcd.service",
        "hello@.service",
        "hello@web-1.service",
        "getty@tty1.service",
        "dev-sda1.device",
        "-.mount",
        "var-lib-flatcar\\x2dvagrant.path",
        "a:b_c.d-e.timer",
        "x" * 247 + ".service",
    ],
)
def test_valid_unit_names(name: str) -> None:
    assert check_unit_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("etcd", "must end in"),
        ("etcd.conf", "must end in"),
        (".service", "nothing before"),
        ("@x.service", "nothing before"),
        ("a b.service", "only letters"),
        ("x;reboot.service", "only letters"),
        ("$(reboot).service", "only letters"),
        ("`id`.service", "only letters"),
        ("../../etc/passwd.service", "only letters"),
        ("a/b.service", "only letters"),
        ("a\nb.service", "only letters"),
        ("a@b@c.service", "only letters"),
        ("x" * 248 + ".service", "longer than 255"),
        ("héllo.service", "only letters"),
        ("a'b.service", "only letters"),
    ],
)
def test_invalid_unit_names(name: str, why: str) -> None:
    with pytest.raises(UnitFileError, match=why):
        check_unit_name(name)


def test_template_and_instance_restrictions() -> None:
    with pytest.raises(UnitFileError, match="an instance"):
        check_unit_name("a@b.service", allow_instance=False)
    with pytest.raises(UnitFileError, match="a template"):
        check_unit_name("a@.service", allow_template=False)


def test_patterns_and_drop_ins() -> None:
    assert validate_unit_pattern("etcd*") == "etcd*"
    assert validate_unit_pattern("[a-z]?@*.service") == "[a-z]?@*.service"
    for bad in ("", "a b", "*;reboot", "$(x)", "a/b"):
        with pytest.raises(UnitFileError):
            validate_unit_pattern(bad)
    assert validate_drop_in_name("10-env.conf") == "10-env.conf"
    for bad in ("env", "../x.conf", "a/b.conf", ".conf", "a b.conf", "x.conf\n"):
        with pytest.raises(UnitFileError):
            validate_drop_in_name(bad)


@given(st.text(max_size=40))
def test_any_accepted_name_is_shell_inert(text: str) -> None:
    """Whatever passes validation quotes to itself: no shell metacharacters can survive the rules."""
    name = text + ".service"
    try:
        check_unit_name(name)
    except UnitFileError:
        return
    assert shlex.split(shlex.quote(name)) == [name]
    assert not set(name) & set(" \t\n;&|$`'\"<>()*?![]{}~/")


def test_parse_show_many_in_order_with_not_found() -> None:
    etcd, nope = parse_show(SHOW_TWO, ["etcd2.service", "nope.service"])
    assert etcd.name == "etcd2.service"  # the name asked for; Id is systemd's canonical name
    assert etcd.id == "etcd.service"
    assert etcd.is_active
    assert etcd.exists
    assert etcd.main_pid == 123
    assert etcd.active_enter_timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert etcd.unit_file_state == "enabled"
    assert not nope.exists
    assert nope.active_enter_timestamp is None
    assert nope.to_json()["active_enter_timestamp"] is None


def test_parse_show_rejects_block_count_mismatch() -> None:
    with pytest.raises(CoreosLabError, match="2 blocks for 3 units"):
        parse_show(SHOW_TWO, ["a.service", "b.service", "c.service"])


def test_parse_list_units_json_and_plain() -> None:
    json_out = '[{"unit":"ssh.service","load":"loaded","active":"active","sub":"running","description":"OpenBSD ssh"}]'
    [row] = parse_list_units(json_out)
    assert (row.unit, row.active, row.description) == ("ssh.service", "active", "OpenBSD ssh")
    plain = (
        "auditd.service     not-found inactive dead    auditd.service\n"
        "● x.service        loaded    failed   failed  Broken Thing Here\n"
    )
    rows = parse_list_units(plain)
    assert [r.unit for r in rows] == ["auditd.service", "x.service"]
    assert rows[1].description == "Broken Thing Here"
    assert rows[1].active == "failed"
    assert parse_list_units("") == []


def test_show_builds_one_call_with_double_dash() -> None:
    runner = FakeRunner("n1", {r"^systemctl show": SHOW_TWO})
    states = SystemdClient(runner).show_many(["etcd2.service", "nope.service"])
    assert [s.name for s in states] == ["etcd2.service", "nope.service"]
    [line] = runner.calls
    argv = shlex.split(line)
    assert argv[:3] == ["systemctl", "show", "--timestamp=unix"]
    assert argv[-3:] == ["--", "etcd2.service", "nope.service"]


def test_hostile_names_never_reach_the_runner() -> None:
    runner = FakeRunner("n1", default=(0, "", ""))
    client = SystemdClient(runner)
    hostile = "x; touch /tmp/pwned #.service"
    for call in (
        lambda: client.show(hostile),
        lambda: client.start(hostile),
        lambda: client.remove(hostile),
        lambda: client.journal(hostile),
        lambda: client.install(hostile, "[Service]\n"),
        lambda: client.install("ok.service", "[Service]\n", {"../../x.conf": ""}),
        lambda: client.list_units("*; reboot"),
    ):
        with pytest.raises(UnitFileError):
            call()
    assert runner.calls == []
    assert runner.files == {}


def test_lifecycle_verbs_use_sudo_and_raise_on_failure() -> None:
    runner = FakeRunner("n1", {r"systemctl start": (1, "", "Job for bad.service failed.\n")}, default=(0, "", ""))
    client = SystemdClient(runner)
    client.stop("a.service")
    client.enable("a@.service")
    client.daemon_reload()
    assert runner.calls == [
        "sudo -n -- sh -c 'systemctl stop -- a.service'",
        "sudo -n -- sh -c 'systemctl enable -- a@.service'",
        "sudo -n -- sh -c 'systemctl daemon-reload'",
    ]
    with pytest.raises(CommandFailed, match=r"Job for bad\.service failed"):
        client.start("bad.service")


def test_install_writes_unit_and_drop_ins_then_reloads() -> None:
    runner = FakeRunner("n1", default=(0, "", ""))
    SystemdClient(runner).install("web@.service", "[Service]\nExecStart=/bin/true\n", {"10-env.conf": b"[Service]\n"})
    assert runner.files["/etc/systemd/system/web@.service"] == (b"[Service]\nExecStart=/bin/true\n", 0o644)
    assert runner.files["/etc/systemd/system/web@.service.d/10-env.conf"] == (b"[Service]\n", 0o644)
    assert runner.calls[-1] == "sudo -n -- sh -c 'systemctl daemon-reload'"
    assert any("mkdir -p -- /etc/systemd/system/web@.service.d" in c for c in runner.calls)


def test_install_refuses_instances_and_runtime_only_types() -> None:
    client = SystemdClient(FakeRunner("n1", default=(0, "", "")))
    with pytest.raises(UnitFileError, match="an instance"):
        client.install("web@1.service", "")
    with pytest.raises(UnitFileError, match="cannot be installed"):
        client.install("x.scope", "")


def test_remove_is_one_idempotent_call_and_templates_stop_instances() -> None:
    runner = FakeRunner("n1", default=(0, "", ""))
    SystemdClient(runner).remove("web@.service")
    [line] = runner.calls
    inner = shlex.split(line)[-1]  # the sudo'd script
    assert "systemctl stop -- 'web@*.service'" in inner
    assert "rm -rf -- /etc/systemd/system/web@.service /etc/systemd/system/web@.service.d" in inner
    assert inner.endswith("test '!' -e /etc/systemd/system/web@.service")
    failing = FakeRunner("n1", default=(1, "", "rm: cannot remove: Read-only file system"))
    with pytest.raises(CommandFailed, match="Read-only"):
        SystemdClient(failing).remove("a.service")


def test_journal_parses_cursor_and_no_entries() -> None:
    out = "2026-01-01T00:00:00+0000 n1 app[1]: hello\n-- cursor: s=abc;i=2\n"
    runner = FakeRunner("n1", {r"journalctl": out})
    text, cursor = SystemdClient(runner).journal_after("app.service", lines=5, since="-1h")
    assert text == "2026-01-01T00:00:00+0000 n1 app[1]: hello\n"
    assert cursor == "s=abc;i=2"
    argv = shlex.split(shlex.split(runner.calls[0])[-1])
    assert argv[:2] == ["journalctl", "--unit=app.service"]
    assert "--lines=5" in argv
    assert "--since=-1h" in argv
    empty = FakeRunner("n1", {r"journalctl": (1, "-- No entries --\n", "")})
    assert SystemdClient(empty).journal("app.service") == ""
    broken = FakeRunner("n1", {r"journalctl": (1, "", "Failed to open journal")})
    with pytest.raises(CommandFailed):
        SystemdClient(broken).journal("app.service")


def test_wait_active_returns_failed_state_and_times_out() -> None:
    failed = SHOW_TWO.split("\n\n")[0].replace("ActiveState=active", "ActiveState=failed") + "\n"
    client = SystemdClient(FakeRunner("n1", {r"systemctl show": failed}))
    assert client.wait_active("etcd.service", timeout=1).is_failed
    inactive = SHOW_TWO.split("\n\n")[1]
    client = SystemdClient(FakeRunner("n1", {r"systemctl show": inactive}))
    with pytest.raises(CoreosLabError, match=r"not active after 0.2s \(ActiveState=inactive"):
        client.wait_active("nope.service", timeout=0.2, interval=0.05)


def test_list_units_passes_pattern_after_double_dash() -> None:
    runner = FakeRunner("n1", {r"list-units": "[]"})
    assert SystemdClient(runner).list_units("etcd*") == []
    argv = shlex.split(runner.calls[0])
    assert argv[-2:] == ["--", "etcd*"]
    assert "--output=json" in argv
