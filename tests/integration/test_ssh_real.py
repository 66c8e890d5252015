"""SSHRunner against a real OpenSSH server (Debian's sshd on 127.0.0.1, started by these tests)."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from coreos_lab.errors import CommandFailed, CommandTimeout, HostKeyError, SSHError
from coreos_lab.ssh import SSHRunner
from coreos_lab.sshconfig import SSHTarget, parse_ssh_config
from tests.conftest import require_binary, require_root
from tests.integration.sshd import KeyPair, Sshd, keygen

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    require_binary("sshd")
    require_binary("ssh-keygen")
    require_root()  # sshd must run as root to switch to the logged-in user (privilege separation)
    path = Path(tempfile.mkdtemp(prefix="cl-ssh-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(base: Path) -> KeyPair:
    return KeyPair.create(base / "keys")


@pytest.fixture(scope="module")
def server(base: Path, keys: KeyPair) -> Iterator[Sshd]:
    s = Sshd.start(keys, base)
    yield s
    s.stop()


def _target(server: Sshd, keys: KeyPair, **kw: str) -> SSHTarget:
    return parse_ssh_config(server.ssh_config_block("node", keys, **kw))["node"]


@pytest.fixture
def runner(server: Sshd, keys: KeyPair) -> Iterator[SSHRunner]:
    r = SSHRunner(_target(server, keys), default_timeout=20)
    yield r
    r.close()


def test_run_reuses_one_connection(runner: SSHRunner) -> None:
    first = runner.run("echo out; echo err >&2; exit 7")
    assert (first.exit_code, first.stdout, first.stderr, first.host) == (7, "out\n", "err\n", "node")
    for _ in range(3):
        assert runner.run(["true"]).ok
    assert runner.connect_count == 1
    with pytest.raises(CommandFailed, match=r"node: command exited 7: .*: err"):
        first.check()


HOSTILE = [
    "it's",
    '"double"',
    "$(touch /tmp/pwned-coreos-lab)",
    "`id`",
    "a;b && c || d",
    "line1\nline2",
    "$HOME ${PATH} \\ \t tab",
    "--help",
    "",
    "*",
    "ü ∑ 😀",
]


def test_hostile_arguments_round_trip_literally(runner: SSHRunner) -> None:
    res = runner.run(["printf", "%s\\0", *HOSTILE]).check()
    assert res.stdout.split("\0")[:-1] == HOSTILE
    assert not os.path.exists("/tmp/pwned-coreos-lab")
    echoed = runner.run(["echo", *HOSTILE[:5]]).check()
    assert echoed.stdout == " ".join(HOSTILE[:5]) + "\n"


def test_more_concurrent_commands_than_sshd_sessions(runner: SSHRunner) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(20) as pool:  # sshd's MaxSessions is 10 per connection
        results = list(pool.map(lambda i: runner.run(f"sleep 0.2; echo {i}", timeout=20), range(20)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert runner.connect_count == 1


def test_refused_forward_target_keeps_the_connection(runner: SSHRunner) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens there
    runner.connect()
    with pytest.raises(SSHError, match="the server refused a channel"):
        runner.open_tcp_channel("127.0.0.1", closed_port)
    assert runner.run("echo still").stdout == "still\n"
    assert runner.connect_count == 1


def test_stderr_is_exactly_the_commands(runner: SSHRunner) -> None:
    assert runner.run("printf 'coreos-lab-pid:1\\n' >&2").stderr == "coreos-lab-pid:1\n"
    assert runner.run(["sh", "-c", "echo $$"]).stdout.strip().isdigit()
    assert runner.run("exec 2>&-; echo closed").stdout == "closed\n"


def test_stdin_large_and_binary(runner: SSHRunner) -> None:
    data = os.urandom(3 * 1024 * 1024)  # larger than the SSH window: must not deadlock
    res = runner.run("sha256sum", stdin=data).check()
    import hashlib

    assert res.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_timeout_is_clear_and_the_runner_survives(runner: SSHRunner, server: Sshd) -> None:
    runner.connect()
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"node: command timed out after 1s: sleep 30"):
        runner.run("sleep 30", timeout=1)
    assert time.monotonic() - start < 2.0
    # The node-side command is stopped too (its process group gets SIGTERM), not left running.
    deadline = time.monotonic() + 10
    while server.command_pids("sleep 30") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.command_pids("sleep 30") == []
    assert runner.run("echo next").stdout == "next\n"
    assert runner.connect_count == 1


def test_connection_dropped_mid_command_then_reconnect(runner: SSHRunner, server: Sshd) -> None:
    runner.connect()
    errors: list[BaseException] = []

    def long_call() -> None:
        try:
            runner.run("sleep 20", timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=long_call)
    started = time.monotonic()
    t.start()
    time.sleep(0.7)
    assert server.kill_sessions() >= 1
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - started < 5
    assert len(errors) == 1
    assert isinstance(errors[0], SSHError)
    assert not isinstance(errors[0], CommandTimeout)
    assert "connection lost" in str(errors[0])
    assert runner.run("echo back").stdout == "back\n"
    assert runner.connect_count == 2


def test_stale_connection_is_replaced_before_sending(runner: SSHRunner, server: Sshd) -> None:
    runner.connect()
    server.kill_sessions()
    time.sleep(0.3)
    assert runner.run("echo fresh").stdout == "fresh\n"
    assert runner.connect_count == 2


def test_put_is_atomic_and_sets_mode(runner: SSHRunner, base: Path) -> None:
    target_dir = base / "put"
    target_dir.mkdir(exist_ok=True)
    path = target_dir / "file.conf"
    path.write_text("old\n")
    reader_saw: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:  # readers must only ever see the old or the new whole file
        while not stop.is_set():
            try:
                reader_saw.add(path.read_bytes())
            except FileNotFoundError:
                reader_saw.add(b"<missing>")

    t = threading.Thread(target=reader)
    t.start()
    payload = b"new\n" * 200_000
    runner.put(payload, str(path), mode=0o640)
    stop.set()
    t.join()
    assert path.read_bytes() == payload
    assert path.stat().st_mode & 0o777 == 0o640
    assert reader_saw <= {b"old\n", payload}
    assert os.listdir(target_dir) == ["file.conf"]  # no temp file left behind
    with pytest.raises(SSHError, match="cannot upload"):
        runner.put(b"x", str(base / "no-such-dir" / "f"))


def test_put_with_sudo(runner: SSHRunner, base: Path) -> None:
    require_binary("sudo")
    path = base / "sudo-put" / "unit.service"
    path.parent.mkdir(exist_ok=True)
    runner.put(b"[Unit]\n", str(path), mode=0o600, sudo=True)
    assert path.read_bytes() == b"[Unit]\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert os.listdir(path.parent) == ["unit.service"]
    assert not [p for p in os.listdir("/tmp") if p.startswith(".coreos-lab-")]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_forward_reaches_a_node_side_tcp_server(runner: SSHRunner, server: Sshd) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        host, local = runner.forward("127.0.0.1", port)
        assert host == "127.0.0.1"
        assert local != port
        assert runner.forward("127.0.0.1", port) == (host, local)  # one listener per remote address
        with requests.Session() as s:
            s.trust_env = False
            for i in range(5):
                assert s.get(f"http://{host}:{local}/k{i}", timeout=10).text == f"hello /k{i}"
            # the forward survives a dropped connection: the next local connection reconnects
            server.kill_sessions()
            time.sleep(0.3)
            s.close()
            assert s.get(f"http://{host}:{local}/again", timeout=10).text == "hello /again"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_forward_pumps_large_payloads_both_ways(runner: SSHRunner) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    threading.Thread(target=echo, daemon=True).start()
    host, local = runner.forward("127.0.0.1", listener.getsockname()[1])
    data = os.urandom(2 * 1024 * 1024)
    got = bytearray()
    with socket.create_connection((host, local), timeout=20) as c:
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        while chunk := c.recv(65536):
            got += chunk
        sender.join()
    listener.close()
    assert bytes(got) == data


# -- host keys -----------------------------------------------------------------------------------------
def test_unknown_host_key_is_refused_without_accept_new(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    t = _target(server, keys, known_hosts=str(known), strict="yes")
    with pytest.raises(HostKeyError, match=r"node: unknown host key for \[127.0.0.1\]:\d+ \(ssh-ed25519 SHA256:"):
        SSHRunner(t).run("true")
    assert not known.exists()


def test_accept_new_records_then_verifies(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    t = _target(server, keys, known_hosts=str(known), strict="yes")
    with SSHRunner(t, accept_new=True) as r:
        assert r.run("true").ok
    assert known.read_text() == server.known_hosts_line()
    with SSHRunner(t) as r:  # now known: strict checking passes without accept_new
        assert r.run("true").ok
    assert known.read_text() == server.known_hosts_line()  # not recorded twice
    cfg = _target(server, keys, known_hosts=str(tmp_path / "kh2"), strict="accept-new")
    with SSHRunner(cfg) as r:  # StrictHostKeyChecking accept-new in the config works too
        assert r.run("true").ok


def test_changed_host_key_is_always_an_error(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    other = tmp_path / "other"
    keygen(other)
    fake_pub = (tmp_path / "other.pub").read_text().split()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {fake_pub}\n")
    t = _target(server, keys, known_hosts=str(known), strict="accept-new")
    with pytest.raises(HostKeyError) as info:
        SSHRunner(t, accept_new=True).run("true")
    msg = str(info.value)
    assert "node: HOST KEY CHANGED for [127.0.0.1]:" in msg
    assert msg.count("SHA256:") == 2
    import paramiko

    from coreos_lab.ssh import fingerprint

    assert fingerprint(paramiko.Ed25519Key(data=_key_blob(fake_pub))) in msg
    assert fingerprint(paramiko.Ed25519Key(data=_key_blob(server.host_key_public))) in msg
    assert known.read_text().count("\n") == 1  # nothing recorded


def _key_blob(b64: str) -> bytes:
    import base64

    return base64.b64decode(b64)


def test_hashed_known_hosts_entries_are_understood(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    import subprocess

    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True, timeout=30)
    assert known.read_text().startswith("|1|")
    with SSHRunner(_target(server, keys, known_hosts=str(known), strict="yes")) as r:
        assert r.run("true").ok


def test_vagrant_style_target_skips_verification(server: Sshd, keys: KeyPair) -> None:
    with SSHRunner(_target(server, keys)) as r:  # StrictHostKeyChecking no, /dev/null
        assert r.run("true").ok


def test_wrong_key_is_an_authentication_error(server: Sshd, base: Path) -> None:
    stranger = KeyPair.create(base / "stranger")
    with pytest.raises(SSHError, match=r"node: authentication failed for \w+@127.0.0.1:\d+"):
        SSHRunner(_target(server, stranger)).run("true")
