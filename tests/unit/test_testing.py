"""The shipped test double: FakeRunner answers by pattern, records calls, and can answer with an exception."""

from __future__ import annotations

import traceback

import pytest

from coreos_lab.errors import CommandTimeout, SSHError
from coreos_lab.runner import CommandResult
from coreos_lab.testing import FakeRunner


def test_answers_by_first_matching_pattern_in_every_form() -> None:
    canned = CommandResult("elsewhere", "uptime", 0, "up\n", "", 1.5)
    r = FakeRunner(
        "core-01",
        {
            r"^hostname$": "core-01\n",
            r"^false": (1, "", "no\n"),
            r"^uptime": canned,
            r"^echo (\w+)": lambda line: (0, line.split()[1] + "\n", ""),
            r".": (9, "", "catch-all\n"),
        },
    )
    assert r.run("hostname") == CommandResult("core-01", "hostname", 0, "core-01\n", "", 0.0)
    assert r.run("false now") == CommandResult("core-01", "false now", 1, "", "no\n", 0.0)
    assert r.run("uptime") is canned
    assert r.run(["echo", "hi"]).stdout == "hi\n"
    assert r.run("hostname", sudo=True).exit_code == 9  # the rendered line is matched: sudo -n -- sh -c ...
    assert r.calls == ["hostname", "false now", "uptime", "echo hi", "sudo -n -- sh -c hostname"]


def test_unmatched_exits_127_unless_a_default_is_set() -> None:
    assert FakeRunner("n").run("ls").exit_code == 127
    assert FakeRunner("n").run("ls").stderr == "fake: no answer for 'ls'"
    assert FakeRunner("n", default=(0, "ok\n", "")).run("ls").stdout == "ok\n"


def test_an_exception_answer_is_raised_and_the_call_recorded() -> None:
    gone = SSHError("core-02: cannot connect")
    r = FakeRunner("core-02", {r"^systemctl": gone, r".": "fine\n"})
    with pytest.raises(SSHError) as caught:
        r.run(["systemctl", "is-active", "etcd-member"])
    assert caught.value is gone
    assert r.run("uptime").stdout == "fine\n"  # other patterns still answer
    assert r.calls == ["systemctl is-active etcd-member", "uptime"]


def test_an_exception_answer_is_raised_every_time_with_a_fresh_traceback() -> None:
    r = FakeRunner("n", {"sleep": CommandTimeout("n: command timed out after 1s: sleep 5")})
    depths = []
    for _ in range(3):
        with pytest.raises(CommandTimeout) as caught:
            r.run("sleep 5")
        depths.append(len(traceback.extract_tb(caught.value.__traceback__)))
    assert depths[0] == depths[1] == depths[2]


def test_base_exceptions_are_answers_too() -> None:
    """A Ctrl-C landing during a command is a KeyboardInterrupt out of run()."""
    with pytest.raises(KeyboardInterrupt):
        FakeRunner("n", {".": KeyboardInterrupt()}).run("true")


def test_a_callable_answer_may_raise() -> None:
    def flaky(line: str) -> tuple[int, str, str]:
        raise SSHError(f"n: connection lost during {line}")

    with pytest.raises(SSHError, match="connection lost during true"):
        FakeRunner("n", {".": flaky}).run("true")


def test_put_raises_an_exception_answer_and_writes_nothing() -> None:
    r = FakeRunner("n", {r"^put /etc/": SSHError("n: cannot connect")})
    with pytest.raises(SSHError, match="cannot connect"):
        r.put(b"x", "/etc/systemd/system/a.service")
    r.put(b"y", "/run/b.conf", mode=0o600)
    assert r.files == {"/run/b.conf": (b"y", 0o600)}
    assert r.calls == ["put /etc/systemd/system/a.service 644", "put /run/b.conf 600"]


def test_put_ignores_answers_that_are_not_exceptions() -> None:
    """Answers are for commands: a catch-all callable must not be called for a put, nor stop it."""
    seen: list[str] = []

    def answer(line: str) -> tuple[int, str, str]:
        seen.append(line)
        return 1, "", "refused\n"

    r = FakeRunner("n", {".": answer})
    r.put(b"data", "/tmp/f")
    assert r.files == {"/tmp/f": (b"data", 0o644)}
    assert seen == []


def test_a_node_that_is_gone_fails_runs_and_puts_alike() -> None:
    down = FakeRunner("core-03", {".": SSHError("core-03: cannot connect")})
    with pytest.raises(SSHError):
        down.run("true")
    with pytest.raises(SSHError):
        down.put(b"", "/tmp/x")
    assert down.files == {}
