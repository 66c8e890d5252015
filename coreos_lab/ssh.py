"""The SSH backend: the only module that imports paramiko.

``SSHRunner`` implements ``runner.Runner`` over one lazily opened, reused paramiko connection: every
command is a new channel on the same transport (no handshake per call). A dead or stale transport is
replaced on the next call; a command that was already sent is never silently re-run.

Host keys follow the target (see ``sshconfig.SSHTarget``): Vagrant targets say
``StrictHostKeyChecking no`` + ``UserKnownHostsFile /dev/null`` and are not checked; everything else is
verified against its known_hosts file, unknown keys are refused unless ``accept_new`` (then recorded,
like OpenSSH's accept-new), and a changed key is always a ``HostKeyError``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from coreos_lab.errors import CommandTimeout, HostKeyError, SSHError
from coreos_lab.runner import Cmd, CommandResult, render_cmd
from coreos_lab.sshconfig import SSHTarget

log = logging.getLogger(__name__)
# paramiko logs at ERROR what we raise anyway as one-line SSHErrors ("Secsh channel 3 open FAILED"),
# which would reach the CLI's stderr twice; keep it quiet unless someone configured it on purpose.
if logging.getLogger("paramiko").level == logging.NOTSET:
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# Every command first reports its shell's PID on stderr, so a timed-out command can be stopped.
# POSIX sh syntax: the node's login shell runs it (bash on Flatcar, sh/dash on Debian).
_PID_MARK = b"coreos-lab-pid:"
_PID_PREFIX = "printf 'coreos-lab-pid:%s\\n' \"$$\" >&2"
_MAX_SESSIONS = 8  # below OpenSSH's MaxSessions default (10): leaves room for SFTP and the kill channel
_KNOWN_HOSTS_LOCK = threading.Lock()  # accept-new appends from several threads must not interleave
_BUF = 65536


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style fingerprint: ``SHA256:<unpadded base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(hostname: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host`` on port 22, ``[host]:port`` otherwise."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when known_hosts has no key of the offered type for this host."""

    def __init__(self, target: SSHTarget, accept_new: bool) -> None:
        self.target = target
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        t = self.target
        if not t.verify_host_key:
            return  # Vagrant: nothing to verify, nothing to record (known_hosts is /dev/null)
        entry = client.get_host_keys().lookup(hostname)
        if entry:
            # Known under another key type: OpenSSH refuses this too; treat as a changed key.
            old = next(iter(entry.values()))
            raise _changed(t, hostname, old, key)
        path = t.known_hosts_path
        if not (self.accept_new or t.strict_host_key_checking == "accept-new") or path is None:
            raise HostKeyError(
                f"{t.name}: unknown host key for {hostname} ({key.get_name()} {fingerprint(key)})",
                hint=f"verify it and pass --accept-new to record it, or add it to {t.user_known_hosts_file}",
            )
        _append_known_host(path, hostname, key)
        log.info("%s: recorded new host key %s in %s", t.name, fingerprint(key), path)


def _changed(t: SSHTarget, hostname: str, old: paramiko.PKey, new: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"{t.name}: HOST KEY CHANGED for {hostname}: known {old.get_name()} {fingerprint(old)}, "
        f"offered {new.get_name()} {fingerprint(new)}",
        hint=f"if the node was rebuilt on purpose, remove its line from {t.user_known_hosts_file}",
    )


def _append_known_host(path: Path, hostname: str, key: paramiko.PKey) -> None:
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    with _KNOWN_HOSTS_LOCK:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with open(path, "rb") as fh:
                existing = fh.read()
            prefix = b"\n" if existing and not existing.endswith(b"\n") else b""
            os.write(fd, prefix + line.encode("ascii"))
        finally:
            os.close(fd)


class SSHRunner:
    """Runs commands on one node over a reused paramiko connection (implements ``runner.Runner``).

    >>> from coreos_lab.sshconfig import SSHTarget
    >>> r = SSHRunner(SSHTarget("core-01", "127.0.0.1", 2222, "core"))  # connects lazily
    >>> r.host
    'core-01'
    """

    def __init__(
        self,
        target: SSHTarget,
        *,
        accept_new: bool = False,
        default_timeout: float = 60.0,
        connect_timeout: float | None = None,
        keepalive: float | None = None,
    ) -> None:
        self.target = target.with_defaults()
        self.accept_new = accept_new
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout or target.connect_timeout or 10.0
        self.keepalive = keepalive or target.server_alive_interval or 15.0
        self.connect_count = 0  # handshakes done so far: lets tests and benchmarks prove reuse
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.RLock()
        self._forwards: dict[tuple[str, str, int], _Forwarder] = {}
        self._sessions = threading.BoundedSemaphore(_MAX_SESSIONS)

    @property
    def host(self) -> str:
        return self.target.name

    # -- connection ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection now (normally done lazily by the first call)."""
        self._transport()

    @property
    def connected(self) -> bool:
        client = self._client
        transport = client.get_transport() if client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            client = self._client
            transport = client.get_transport() if client else None
            if transport is not None and transport.is_active():
                return transport
            self._drop()
            self._client = self._open()
            self.connect_count += 1
            transport = self._client.get_transport()
            if transport is None:
                raise SSHError(f"{self.host}: connection closed during setup")
            transport.set_keepalive(int(max(1, self.keepalive)))
            return transport

    def _open(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        path = t.known_hosts_path
        if t.verify_host_key and path is not None and path.exists():
            try:
                client.load_host_keys(str(path))  # handles hashed entries; we never call save_host_keys
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"{t.name}: cannot read known_hosts {path}: {exc}") from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(t, self.accept_new))
        keys = [os.path.expanduser(p) for p in t.identity_files]
        keys = [p for p in keys if os.path.exists(p)]  # ssh skips missing IdentityFiles too
        use_defaults = not t.identities_only
        where = f"{t.user}@{t.hostname}:{t.port}"
        try:
            sock = socket.create_connection((t.hostname, t.port), timeout=self.connect_timeout)
            # Without TCP_NODELAY every channel open waits out a delayed ACK (~40 ms on Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.connect(
                t.hostname,
                port=t.port,
                username=t.user,
                key_filename=keys or None,  # type: ignore[arg-type]  # paramiko accepts a list too
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                allow_agent=use_defaults,
                look_for_keys=use_defaults and not keys,
                sock=sock,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise _changed(t, known_hosts_name(t.hostname, t.port), exc.expected_key, exc.key) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SSHError(f"{t.name}: authentication failed for {where}: {exc}") from None
        except TimeoutError as exc:
            client.close()
            raise SSHError(f"{t.name}: cannot connect to {where}: timed out after {self.connect_timeout:g}s") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise SSHError(f"{t.name}: cannot connect to {where}: {reason}") from None
        return client

    def _drop(self) -> None:
        with self._lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
                self._sftp = None
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    def _channel(self, opener: Callable[[paramiko.Transport], paramiko.Channel]) -> paramiko.Channel:
        """Open a channel; a transport that turns out stale is replaced once (nothing was sent yet)."""
        for attempt in (1, 2):
            transport = self._transport()
            try:
                return opener(transport)
            except paramiko.ChannelException as exc:
                # The server said no to this channel (MaxSessions, forwarding disabled, nothing listening
                # at a forward's target): the connection itself is fine and other channels keep using it.
                raise SSHError(f"{self.host}: the server refused a channel: {exc.text or exc}") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                with self._lock:
                    if self._client is not None and self._client.get_transport() is transport:
                        self._drop()
                if attempt == 2:
                    raise SSHError(f"{self.host}: cannot open a channel: {exc or type(exc).__name__}") from None
                log.debug("%s: stale connection (%s); reconnecting", self.host, exc)
        raise AssertionError("unreachable")

    # -- commands -------------------------------------------------------------------------------------
    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a shell line (or an argv list, quoted) and collect its output; non-zero exit is data.

        Raises CommandTimeout after ``timeout`` seconds: the channel is closed and the command's process
        group on the node gets SIGTERM (sshd starts each command in its own session, and the command
        reports its PID first on stderr; that line is removed from the result). Raises SSHError when
        the connection fails or is lost. A command killed by a signal has exit code -1.
        """
        line = render_cmd(cmd, sudo=sudo)
        limit = timeout if timeout is not None else self.default_timeout
        start = time.monotonic()
        deadline = start + limit
        # sshd allows 10 sessions per connection (MaxSessions); more concurrent calls wait their turn.
        if not self._sessions.acquire(timeout=limit):
            raise CommandTimeout(f"{self.host}: command timed out after {limit:g}s waiting for a free session: {line}")
        try:
            return self._run_session(line, limit, start, deadline, stdin)
        finally:
            self._sessions.release()

    def _run_session(
        self, line: str, limit: float, start: float, deadline: float, stdin: bytes | None
    ) -> CommandResult:
        chan = self._channel(lambda t: t.open_session(timeout=self.connect_timeout))
        try:
            chan.exec_command(f"{_PID_PREFIX}\n{line}")
            if stdin:
                threading.Thread(target=_feed, args=(chan, stdin), daemon=True).start()
            else:
                chan.shutdown_write()
            out, err, finished = self._collect(chan, deadline)
            if not finished:
                chan.close()
                self._kill_remote(_split_pid(b"".join(err))[0])
                raise CommandTimeout(f"{self.host}: command timed out after {limit:g}s: {line}")
            status = chan.exit_status
            if status == -1 and not self.connected:
                self._drop()
                raise SSHError(f"{self.host}: connection lost while running: {line}")
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._drop()
            raise SSHError(f"{self.host}: connection lost while running: {line}: {exc}") from None
        finally:
            chan.close()
        _pid, stderr = _split_pid(b"".join(err))
        return CommandResult(
            host=self.host,
            cmd=line,
            exit_code=status,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            duration=time.monotonic() - start,
        )

    def _kill_remote(self, pid: int | None) -> None:
        """Best effort: SIGTERM the timed-out command's process group (or the process) on the node."""
        if pid is None or not self.connected:
            return
        script = f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; true"
        try:
            chan = self._channel(lambda t: t.open_session(timeout=self.connect_timeout))
            try:
                # exec_command returns once sshd has started the script; it runs on after the close,
                # so the caller gets its CommandTimeout without waiting for the node's shell start-up.
                chan.exec_command(script)
            finally:
                chan.close()
        except (SSHError, paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("%s: could not stop timed-out pid %s: %s", self.host, pid, exc)

    def _collect(self, chan: paramiko.Channel, deadline: float) -> tuple[list[bytes], list[bytes], bool]:
        """Read stdout/stderr until the exit status arrives; False as third value on timeout."""
        out: list[bytes] = []
        err: list[bytes] = []
        fd = chan.fileno()
        while True:
            while chan.recv_ready():
                out.append(chan.recv(_BUF))
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(_BUF))
            if chan.eof_received or chan.closed:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out, err, False
            # Wakes on data, EOF and close; the slice bounds how long a silently dead transport can hold us.
            select.select([fd], [], [], min(remaining, 1.0))
            if not chan.recv_ready() and not chan.recv_stderr_ready() and not self.connected:
                break
        while True:
            remaining = deadline - time.monotonic()
            if chan.status_event.wait(max(0.0, min(remaining, 1.0))):
                break
            if remaining <= 0:
                return out, err, False
            if not self.connected:
                break
        while chan.recv_ready():
            out.append(chan.recv(_BUF))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(_BUF))
        return out, err, True

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        """Write ``data`` to ``path`` atomically: SFTP to a temp name, then rename over the target.

        With ``sudo`` the upload goes to a private temp file in /tmp, then root copies it next to the
        target and renames it into place (so readers never see a partial file).
        """
        token = secrets.token_hex(6)
        directory, base = posixpath.split(path)
        if not base:
            raise SSHError(f"{self.host}: put needs a file path, got {path!r}")
        if not sudo:
            tmp = posixpath.join(directory or ".", f".{base}.coreos-lab-{token}.tmp")
            self._sftp_write(tmp, data, mode)
            try:
                self._sftp_client().posix_rename(tmp, path)
            except (OSError, paramiko.SSHException) as exc:
                with contextlib.suppress(Exception):
                    self._sftp_client().remove(tmp)
                raise SSHError(f"{self.host}: cannot write {path}: {exc}") from None
            return
        upload = f"/tmp/.coreos-lab-{token}.upload"
        self._sftp_write(upload, data, 0o600)
        staged = posixpath.join(directory or ".", f".{base}.coreos-lab-{token}.tmp")
        q_up, q_st, q_path = shlex.quote(upload), shlex.quote(staged), shlex.quote(path)
        script = (
            f"cp -- {q_up} {q_st} && chmod {mode:o} {q_st} && mv -f -- {q_st} {q_path} "
            f"|| {{ rc=$?; rm -f -- {q_st} {q_up}; exit $rc; }}; rm -f -- {q_up}"
        )
        self.run(script, sudo=True, timeout=max(60.0, self.default_timeout)).check()

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is not None and self.connected:
                return self._sftp
            self._sftp = None
            chan = self._channel(lambda t: _sftp_channel(t, self.connect_timeout))
            self._sftp = paramiko.SFTPClient(chan)
            return self._sftp

    def _sftp_write(self, tmp: str, data: bytes, mode: int) -> None:
        try:
            sftp = self._sftp_client()
            with sftp.open(tmp, "wb") as fh:
                fh.set_pipelined(True)
                fh.write(data)
            sftp.chmod(tmp, mode)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            with contextlib.suppress(Exception):
                self._sftp_client().remove(tmp)
            raise SSHError(f"{self.host}: cannot upload {tmp}: {exc}") from None

    # -- port forwards ----------------------------------------------------------------------------
    def open_tcp_channel(self, remote_host: str, remote_port: int) -> paramiko.Channel:
        """A direct-tcpip channel to ``remote_host:remote_port`` as seen from the node."""
        return self._channel(
            lambda t: t.open_channel(
                "direct-tcpip", (remote_host, remote_port), ("127.0.0.1", 0), timeout=self.connect_timeout
            )
        )

    def forward(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """Listen on 127.0.0.1:<free port> and forward each connection to the node-side address.

        The listener lives as long as the runner and survives reconnects (each new local connection
        gets a channel on the current transport). Returns the local ``(host, port)``.
        """
        key = ("tcp", remote_host, remote_port)
        with self._lock:
            fwd = self._forwards.get(key)
            if fwd is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                fwd = self._forwards[key] = _Forwarder(self, sock, remote_host, remote_port)
            addr = fwd.sock.getsockname()
            return str(addr[0]), int(addr[1])

    def forward_unix(self, path: str, remote_host: str, remote_port: int) -> str:
        """Like ``forward`` but listening on a unix socket at ``path`` (mode 0600): used by the mux."""
        key = ("unix:" + path, remote_host, remote_port)
        with self._lock:
            if key not in self._forwards:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                old = os.umask(0o177)
                try:
                    sock.bind(path)
                finally:
                    os.umask(old)
                self._forwards[key] = _Forwarder(self, sock, remote_host, remote_port)
            return path

    def forward_activity(self) -> tuple[int, float]:
        """(connections open through this runner's forwards now, monotonic time the last one ended).

        The mux counts these as activity, so a long watch through a forward is not cut by its idle exit.
        """
        with self._lock:
            forwards = list(self._forwards.values())
        active = sum(f.active for f in forwards)
        last = max((f.last_used for f in forwards), default=0.0)
        return active, last

    def close(self) -> None:
        """Stop the forwards and close the connection (idempotent)."""
        with self._lock:
            forwards, self._forwards = list(self._forwards.values()), {}
        for fwd in forwards:
            fwd.stop()
        self._drop()

    def __enter__(self) -> SSHRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split_pid(stderr: bytes) -> tuple[int | None, bytes]:
    """Remove the PID line our prefix printed first on stderr; return (pid, the command's stderr)."""
    if not stderr.startswith(_PID_MARK):
        return None, stderr
    first, _, rest = stderr.partition(b"\n")
    try:
        return int(first[len(_PID_MARK) :]), rest
    except ValueError:
        return None, stderr


def _sftp_channel(transport: paramiko.Transport, timeout: float) -> paramiko.Channel:
    chan = transport.open_session(timeout=timeout)
    chan.invoke_subsystem("sftp")
    return chan


def _feed(chan: paramiko.Channel, data: bytes) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.sendall(data)
        chan.shutdown_write()


class _Forwarder:
    """Accepts local connections and pumps each through its own direct-tcpip channel."""

    def __init__(self, runner: SSHRunner, sock: socket.socket, remote_host: str, remote_port: int) -> None:
        self.runner = runner
        self.sock = sock
        self.remote = (remote_host, remote_port)
        self._stopped = False
        self._lock = threading.Lock()
        self.active = 0  # connections being pumped right now
        self.last_used = time.monotonic()
        sock.listen(64)
        self._thread = threading.Thread(target=self._accept_loop, name=f"forward-{runner.host}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.active += 1
        try:
            try:
                chan = self.runner.open_tcp_channel(*self.remote)
            except Exception as exc:  # reported in the log; the local client sees a closed socket
                log.debug("%s: forward to %s:%s failed: %s", self.runner.host, *self.remote, exc)
                conn.close()
                return
            _pump(conn, chan)
        finally:
            with self._lock:
                self.active -= 1
                self.last_used = time.monotonic()

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        path = self.sock.getsockname() if self.sock.family == socket.AF_UNIX else None
        self.sock.close()
        if isinstance(path, str) and path:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _pump(conn: socket.socket, chan: Any) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            readable, _, _ = select.select([conn, chan], [], [], 30.0)
            if conn in readable:
                data = conn.recv(_BUF)
                if not data:
                    chan.shutdown_write()
                    # keep draining the channel until the far end closes too
                    while True:
                        chunk = chan.recv(_BUF)
                        if not chunk:
                            return
                        conn.sendall(chunk)
                chan.sendall(data)
            if chan in readable:
                data = chan.recv(_BUF)
                if not data:
                    return
                conn.sendall(data)
            if chan.closed and not chan.recv_ready():
                return
    except (OSError, EOFError, paramiko.SSHException):
        return
    finally:
        with contextlib.suppress(Exception):
            chan.close()
        with contextlib.suppress(Exception):
            conn.close()
