"""Cluster fan-out and the persistent mux against several real sshd endpoints on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coreos_lab import mux
from coreos_lab.cluster import Cluster
from coreos_lab.errors import CommandTimeout, SSHError
from coreos_lab.runner import CommandResult
from tests.conftest import require_binary, require_root
from tests.integration.sshd import KeyPair, Sshd, start_many

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    require_binary("sshd")
    require_root()
    path = Path(tempfile.mkdtemp(prefix="cl-clu-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(base: Path) -> KeyPair:
    return KeyPair.create(base / "keys")


@pytest.fixture(scope="module")
def servers(base: Path, keys: KeyPair) -> Iterator[list[Sshd]]:
    started = start_many(keys, 3, base)
    yield started
    for s in started:
        s.stop()


def _config(servers: list[Sshd], keys: KeyPair) -> str:
    return "".join(s.ssh_config_block(f"core-{i + 1:02d}", keys) for i, s in enumerate(servers))


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR (short path: unix sockets are limited to 108 bytes); muxes stopped by PID."""
    path = Path(tempfile.mkdtemp(prefix="cl-rt-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "30")
    monkeypatch.delenv("COREOS_LAB_NO_PERSIST", raising=False)
    yield path
    for pid in _mux_pids(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(path, ignore_errors=True)


def _mux_pids(runtime: Path) -> list[int]:
    """PIDs of mux processes serving sockets under ``runtime`` (found by their command line)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"coreos_lab.mux" in cmdline and str(runtime / "coreos-lab").encode() in cmdline:
            pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_run_all_with_one_endpoint_dead(base: Path, keys: KeyPair, servers: list[Sshd]) -> None:
    extra = Sshd.start(keys, base)
    text = _config(servers, keys) + extra.ssh_config_block("core-04", keys)
    extra.stop()  # core-04 is down: connection refused
    with Cluster.from_ssh_config(text) as c:
        start = time.monotonic()
        out = c.run_all("hostname; echo $0 >/dev/null", timeout=10)
        assert time.monotonic() - start < 8
        assert list(out) == ["core-01", "core-02", "core-03", "core-04"]
        for name in ("core-01", "core-02", "core-03"):
            result = out[name]
            assert isinstance(result, CommandResult)
            assert result.ok
            assert result.host == name
        down = out["core-04"]
        assert isinstance(down, SSHError)
        assert str(down).startswith("core-04: cannot connect to ")
        assert "Connection refused" in str(down)


def test_run_all_with_one_node_timing_out(servers: list[Sshd], keys: KeyPair) -> None:
    with Cluster.from_ssh_config(_config(servers, keys)) as c:
        c.run_all("true")
        # core-02 is slow: its own timeout fires, the others answer at once.
        cmd = 'case "$(cat /proc/sys/kernel/random/uuid)" in *) :;; esac; [ "$CL_SLOW" ] || true; echo ok'
        out = c.run_all(cmd, timeout=5)
        assert all(isinstance(v, CommandResult) for v in out.values())
        start = time.monotonic()
        results = c.map(lambda r: r.run("sleep 20" if r.host == "core-02" else "echo fast", timeout=1))
        assert time.monotonic() - start < 2.5
        assert isinstance(results["core-02"], CommandTimeout)
        fast = results["core-01"]
        assert isinstance(fast, CommandResult)
        assert fast.stdout == "fast\n"
        servers[1].kill_commands("sleep 20")


def test_mux_is_started_once_and_reused(servers: list[Sshd], keys: KeyPair, runtime: Path) -> None:
    text = _config(servers, keys)
    first = Cluster.from_ssh_config(text, persist=True)
    out = first.run_all("echo $PPID")
    assert all(isinstance(v, CommandResult) and v.ok for v in out.values())
    client = first.runner("core-01").client  # type: ignore[attr-defined]
    pid = client.ping()["pid"]
    sock = client.socket_path
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700
    # A second Cluster (a second CLI call) reaches the same process and the same SSH connections.
    second = Cluster.from_ssh_config(text, persist=True)
    assert second.runner("core-01").client.ping()["pid"] == pid  # type: ignore[attr-defined]
    sessions_before = [len(s.session_pids()) for s in servers]
    timings = []
    for _ in range(3):
        start = time.monotonic()
        again = second.run_all("echo hi")
        timings.append(time.monotonic() - start)
        assert all(isinstance(v, CommandResult) and v.stdout == "hi\n" for v in again.values())
    assert [len(s.session_pids()) for s in servers] == sessions_before  # no new connections
    assert sessions_before == [1, 1, 1]
    # errors come back typed
    with pytest.raises(CommandTimeout, match="core-01: command timed out after 1s"):
        second.runner("core-01").run("sleep 5", timeout=1)
    servers[0].kill_commands("sleep 5")
    first.close()
    second.close()
    assert _alive(pid)  # closing a Cluster does not stop the mux: that is the point


def test_mux_put_and_http_through_unix_forward(servers: list[Sshd], keys: KeyPair, runtime: Path, base: Path) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"etcd-ish " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Cluster.from_ssh_config(_config(servers, keys), persist=True) as c:
            session, url = c.http_base("core-02", httpd.server_address[1])
            assert url == "http://unix-socket"
            assert session.get(f"{url}/version", timeout=10).text == "etcd-ish /version"
            assert session.get(f"{url}/health", timeout=10).text == "etcd-ish /health"
            fwd = next(p for p in (runtime / "coreos-lab").iterdir() if p.name.startswith("fwd-"))
            assert fwd.stat().st_mode & 0o777 == 0o600
            target = base / "mux-put.txt"
            c.runner("core-03").put(b"via mux\n", str(target), mode=0o600)
            assert target.read_bytes() == b"via mux\n"
            assert target.stat().st_mode & 0o777 == 0o600
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_mux_replaces_a_dead_connection(servers: list[Sshd], keys: KeyPair, runtime: Path) -> None:
    with Cluster.from_ssh_config(_config(servers, keys), persist=True) as c:
        assert c.run_all("true")["core-01"].ok  # type: ignore[union-attr]
        pid = c.runner("core-01").client.ping()["pid"]  # type: ignore[attr-defined]
        servers[0].kill_sessions()
        time.sleep(0.3)
        result = c.runner("core-01").run("echo recovered")
        assert result.stdout == "recovered\n"
        assert c.runner("core-01").client.ping()["pid"] == pid  # type: ignore[attr-defined]


def test_mux_exits_when_idle_and_is_respawned(
    servers: list[Sshd], keys: KeyPair, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "1.5")
    c = Cluster.from_ssh_config(_config(servers[:1], keys), persist=True)
    client = c.runner("core-01").client  # type: ignore[attr-defined]
    assert c.runner("core-01").run("true").ok
    pid = client.ping()["pid"]
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    assert not client.socket_path.exists()
    assert c.runner("core-01").run("echo back").stdout == "back\n"
    assert client.ping()["pid"] != pid


def test_mux_stays_while_a_forwarded_connection_is_open(
    servers: list[Sshd], keys: KeyPair, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3.5)  # a long watch: longer than the mux's idle timeout
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"done")

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "1.5")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Cluster.from_ssh_config(_config(servers[:1], keys), persist=True) as c:
            session, url = c.http_base("core-01", httpd.server_address[1])
            pid = c.runner("core-01").client.ping()["pid"]  # type: ignore[attr-defined]
            assert session.get(f"{url}/watch", timeout=20).text == "done"
            assert _alive(pid)  # 3.5 s of forwarded traffic counted as activity
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _alive(pid)  # and once it ended, the idle timeout applied again
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_persist_by_environment_runs_in_process(
    servers: list[Sshd], keys: KeyPair, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COREOS_LAB_NO_PERSIST", "1")
    with Cluster.from_ssh_config(_config(servers[:1], keys), persist=True) as c:
        assert c.runner("core-01").run("true").ok
    assert not (runtime / "coreos-lab").exists()


_PROBE = """
import socket, struct, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect-failed", exc.errno); sys.exit(0)
body = json.dumps({"op": "run", "node": "core-01", "cmd": "touch /tmp/cl-mux-breach", "timeout": 5}).encode()
s.sendall(struct.pack(">I", len(body)) + body)
data = s.recv(65536)
print("reply", data[4:].decode(errors="replace"))
"""


def test_mux_refuses_other_users(servers: list[Sshd], keys: KeyPair, runtime: Path) -> None:
    setpriv = require_binary("setpriv")
    with Cluster.from_ssh_config(_config(servers[:1], keys), persist=True) as c:
        client = c.runner("core-01").client  # type: ignore[attr-defined]
        client.ping()
        sock = str(client.socket_path)

        def as_nobody() -> str:
            proc = subprocess.run(
                [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", _PROBE, sock],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return proc.stdout + proc.stderr

        runtime.chmod(0o711)  # only our own 0700 directory stands in the way now
        assert "connect-failed 13" in as_nobody()  # EACCES: the 0700 directory keeps other users out
        # Even with the directory and socket opened up, SO_PEERCRED refuses the other uid.
        client.socket_path.parent.chmod(0o711)
        client.socket_path.chmod(0o666)
        try:
            out = as_nobody()
        finally:
            client.socket_path.chmod(0o600)
            client.socket_path.parent.chmod(0o700)
            runtime.chmod(0o700)
        assert "permission denied" in out
        assert not os.path.exists("/tmp/cl-mux-breach")
        assert c.runner("core-01").run("true").ok


def test_mux_refuses_an_unsafe_directory(servers: list[Sshd], keys: KeyPair, runtime: Path) -> None:
    (runtime / "coreos-lab").mkdir(mode=0o777)
    (runtime / "coreos-lab").chmod(0o777)
    with pytest.raises(SSHError, match="unsafe directory"):
        Cluster.from_ssh_config(_config(servers[:1], keys), persist=True).runner("core-01").run("true")


def test_mux_socket_rejects_garbage(servers: list[Sshd], keys: KeyPair, runtime: Path) -> None:
    with Cluster.from_ssh_config(_config(servers[:1], keys), persist=True) as c:
        client = c.runner("core-01").client  # type: ignore[attr-defined]
        client.ping()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(client.socket_path))
            s.sendall(b"\xff\xff\xff\xffjunk")
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # a reset (unread bytes pending) is a drop too
                assert s.recv(10) == b""  # dropped, and the mux lives on
        with pytest.raises(SSHError, match="no node named 'ghost'"):
            mux.MuxRunner(client, "ghost").run("true")
        assert c.runner("core-01").run("true").ok


# -- the CLI, as a user runs it (separate processes, so the mux really outlives each call) -----------
def _cli(
    inv: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("coreos-lab")
    return subprocess.run(
        [str(exe), *args[:1], "--inventory", str(inv), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def inventory(servers: list[Sshd], keys: KeyPair, base: Path) -> Path:
    path = base / "inventory"
    path.write_text(_config(servers, keys))
    return path


def test_cli_exec_prefixes_and_fails_when_a_node_fails(inventory: Path, runtime: Path) -> None:
    ok = _cli(inventory, "exec", "--", "echo", "out;", "echo", "err", ">&2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "core-01 | out\ncore-02 | out\ncore-03 | out\n"
    assert ok.stderr == "core-01 | err\ncore-02 | err\ncore-03 | err\n"
    bad = _cli(inventory, "exec", "--node", "core-02", "--node", "core-03", "--", 'test "$(hostname)" = never')
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == "core-02 | exit 1\ncore-03 | exit 1\n"
    js = _cli(inventory, "exec", "--json", "-N", "core-01", "--", "exit 3")
    assert js.returncode == 1
    import json

    (record,) = json.loads(js.stdout)
    assert (record["node"], record["exit_code"], record["ok"], record["error"]) == ("core-01", 3, False, None)
    unknown = _cli(inventory, "exec", "-N", "core-09", "--", "true")
    assert unknown.returncode == 2
    assert unknown.stderr == "error: no node named 'core-09' (nodes: core-01, core-02, core-03)\n"
    none = _cli(inventory, "exec")
    assert none.returncode == 2
    assert none.stderr.startswith("error: no command given")


def test_cli_exec_reports_a_dead_node_and_the_others(
    inventory: Path, runtime: Path, keys: KeyPair, base: Path, servers: list[Sshd]
) -> None:
    extra = Sshd.start(keys, base)
    inv = base / "inventory-dead"
    inv.write_text(inventory.read_text() + extra.ssh_config_block("core-04", keys))
    extra.stop()
    for flags in ([], ["--no-persist"]):
        out = _cli(inv, "exec", *flags, "--", "echo", "alive")
        assert out.returncode == 1
        assert out.stdout == "core-01 | alive\ncore-02 | alive\ncore-03 | alive\n"
        assert out.stderr.startswith("core-04 | error: cannot connect to ")


def test_cli_ssh_runs_a_command_with_stdin_and_exit_code(inventory: Path, runtime: Path) -> None:
    out = _cli(inventory, "ssh", "core-02", "--", "cat; exit 4", stdin="piped\n")
    assert (out.returncode, out.stdout) == (4, "piped\n")
    unknown = _cli(inventory, "ssh", "core-05")
    assert unknown.returncode == 2


def test_cli_interactive_ssh_execs_openssh(inventory: Path, runtime: Path) -> None:
    require_binary("ssh")
    out = _cli(inventory, "ssh", "core-03", stdin="echo interactive-$((6*7))\n")
    assert out.returncode == 0, out.stderr
    assert "interactive-42" in out.stdout


def test_cli_ssh_config_and_inventory_round_trip(inventory: Path, runtime: Path, servers: list[Sshd]) -> None:
    from coreos_lab.sshconfig import parse_ssh_config

    text = _cli(inventory, "ssh-config").stdout
    assert parse_ssh_config(text) == parse_ssh_config(inventory.read_text())
    one = _cli(inventory, "ssh-config", "--node", "core-02").stdout
    assert list(parse_ssh_config(one)) == ["core-02"]
    ini = _cli(inventory, "inventory").stdout.splitlines()
    assert ini[0] == "[coreos]"
    assert ini[1].startswith(f"core-01 ansible_host=127.0.0.1 ansible_port={servers[0].port} ansible_user=")
    import json

    nodes = json.loads(_cli(inventory, "inventory", "--format", "json").stdout)
    assert [n["port"] for n in nodes] == [s.port for s in servers]
    assert _cli(inventory, "inventory", "--format", "yaml").returncode == 2
