"""ssh.py and mux.py pieces that need no server: fingerprints, known_hosts names, framing, mux safety."""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import paramiko
import pytest

from coreos_lab import mux
from coreos_lab.errors import CommandFailed, CommandTimeout, HostKeyError, SSHError
from coreos_lab.runner import LocalRunner, Runner
from coreos_lab.ssh import SSHRunner, _append_known_host, fingerprint, known_hosts_name
from coreos_lab.sshconfig import SSHTarget
from coreos_lab.testing import FakeRunner


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{key}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    pub = paramiko.Ed25519Key(filename=str(key))
    assert fingerprint(pub) == expected
    assert expected.startswith("SHA256:")


def test_known_hosts_name() -> None:
    assert known_hosts_name("node", 22) == "node"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_append_known_host_creates_private_file_and_keeps_lines(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "known_hosts"
    key = paramiko.Ed25519Key(filename=str(_keygen(tmp_path)))
    _append_known_host(path, "[127.0.0.1]:2222", key)
    path.write_text(path.read_text().rstrip("\n"))  # a hand-edited file without a final newline
    _append_known_host(path, "other", key)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    assert lines[1].startswith("other ssh-ed25519 ")
    assert path.stat().st_mode & 0o777 == 0o600
    hk = paramiko.HostKeys(str(path))
    assert hk.lookup("[127.0.0.1]:2222") is not None


def _keygen(tmp_path: Path) -> Path:
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return key


def test_runner_is_lazy_and_fails_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        r = SSHRunner(SSHTarget("n1", "127.0.0.1", port, "core"), connect_timeout=2)
        assert not r.connected
        with pytest.raises(SSHError, match=r"^n1: cannot connect to core@127.0.0.1:\d+: Connection refused"):
            r.run("true")
    r.close()


def test_frames_round_trip_over_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        mux.send_frame(a, {"op": "run", "cmd": "echo 'ü' $(x)"})
        assert mux.recv_frame(b) == {"op": "run", "cmd": "echo 'ü' $(x)"}
        assert mux.peer_uid(b) == os.getuid()
        a.shutdown(socket.SHUT_WR)
        assert mux.recv_frame(b) is None
    c, d = socket.socketpair()
    with c, d:
        c.sendall(b"\x00\x00\x00\x10abc")
        c.shutdown(socket.SHUT_WR)
        with pytest.raises(SSHError, match="middle of a frame"):
            mux.recv_frame(d)


def test_runtime_dir_refuses_a_shared_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = mux.runtime_dir()
    assert made == tmp_path / "coreos-lab"
    assert made.stat().st_mode & 0o777 == 0o700
    made.chmod(0o755)
    with pytest.raises(SSHError, match="unsafe directory"):
        mux.runtime_dir()


def test_mux_key_depends_on_config_and_options() -> None:
    k = mux.mux_key("Host a\n", accept_new=False, idle=60)
    assert k == mux.mux_key("Host a\n", accept_new=False, idle=60)
    assert k != mux.mux_key("Host a\n Port 2\n", accept_new=False, idle=60)
    assert k != mux.mux_key("Host a\n", accept_new=True, idle=60)


def test_errors_cross_the_wire_with_their_type() -> None:
    err = mux.error_from_wire({"type": "CommandTimeout", "message": "n1: command timed out after 1s: x"})
    assert isinstance(err, CommandTimeout)
    assert isinstance(mux.error_from_wire({"type": "HostKeyError", "message": "m"}), HostKeyError)
    failed = mux.error_from_wire(
        {"type": "CommandFailed", "host": "n1", "cmd": "false", "exit_code": 1, "stderr": "no\n"}
    )
    assert isinstance(failed, CommandFailed)
    assert str(failed) == "n1: command exited 1: false: no"
    assert type(mux.error_from_wire({"type": "Weird", "message": "m"})) is SSHError


class _FakeClient:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def request(self, req: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        self.requests.append(req)
        return {
            "result": {"host": "n1", "cmd": req.get("cmd"), "exit_code": 0, "stdout": "", "stderr": "", "duration": 0}
        }


def test_mux_runner_renders_commands_like_every_runner() -> None:
    client = _FakeClient()
    r = mux.MuxRunner(client, "n1")  # type: ignore[arg-type]
    res = r.run(["echo", "a b"], sudo=True, stdin=b"\x00\xff")
    assert res.cmd == "sudo -n -- sh -c 'echo '\"'\"'a b'\"'\"''"
    assert client.requests[0]["stdin"] == "AP8="
    r.put(b"x", "/etc/f", mode=0o600)
    assert client.requests[1] == {
        "op": "put",
        "node": "n1",
        "path": "/etc/f",
        "mode": 0o600,
        "sudo": False,
        "data": "eA==",
    }


def test_pid_line_is_split_from_stderr_only_when_it_is_ours() -> None:
    from coreos_lab.ssh import _split_pid

    assert _split_pid(b"coreos-lab-pid:123\nreal error\n") == (123, b"real error\n")
    assert _split_pid(b"coreos-lab-pid:123\n") == (123, b"")
    assert _split_pid(b"other\ncoreos-lab-pid:1\n") == (None, b"other\ncoreos-lab-pid:1\n")
    assert _split_pid(b"coreos-lab-pid:x\n") == (None, b"coreos-lab-pid:x\n")
    assert _split_pid(b"") == (None, b"")


_RUNNERS: dict[str, Callable[[], Any]] = {
    "SSHRunner": lambda: SSHRunner(SSHTarget("n", "127.0.0.1")),
    "MuxRunner": lambda: mux.MuxRunner(_FakeClient(), "n"),  # type: ignore[arg-type]
    "LocalRunner": lambda: LocalRunner("n"),
    "FakeRunner": lambda: FakeRunner("n"),
}


@pytest.mark.parametrize("make", _RUNNERS.values(), ids=_RUNNERS.keys())
def test_runners_implement_the_protocol(make: Callable[[], Any]) -> None:
    """Every member of Runner, with the same parameters, defaults and types. (isinstance against the
    runtime-checkable Protocol only sees that the names exist.)"""
    runner = make()
    members = [name for name in vars(Runner) if not name.startswith("_")]
    assert {"host", "run", "put", "close"} <= set(members)
    for name in members:
        theirs, mine = inspect.getattr_static(Runner, name), inspect.getattr_static(type(runner), name)
        if isinstance(theirs, property):
            assert isinstance(mine, property), name
            assert get_type_hints(mine.fget) == get_type_hints(theirs.fget), name
        else:
            assert inspect.signature(mine) == inspect.signature(theirs), name
            assert get_type_hints(mine) == get_type_hints(theirs), name
    assert runner.host == "n"
