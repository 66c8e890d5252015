"""Connections that outlive a CLI call: a per-lab background process holding the SSH connections.

Like OpenSSH's ControlPersist. The first ``MuxRunner`` call spawns ``python -m coreos_lab.muxd serve``
(detached); it owns one ``ssh.SSHRunner`` per node and serves requests on a unix socket until it has been
idle for ``idle`` seconds (default 60). Later CLI calls skip the SSH handshakes entirely. This module is the
client side and the wire format; the server is :mod:`coreos_lab.muxd`.

Security: the socket lives in a directory of mode 0700 owned by the user ($XDG_RUNTIME_DIR/coreos-lab, or
/tmp/coreos-lab-<uid>), has mode 0600, and the server checks every peer's uid with SO_PEERCRED.

One mux serves exactly one ssh-config text: its name is a hash of that text (plus accept-new and the idle
timeout), so a changed config (new ports after ``vagrant up``) gets a fresh mux and the old one idles out.

Wire protocol: one request per unix connection, each way a 4-byte big-endian length then UTF-8 JSON.
This module must not import paramiko at import time: the client side is on every CLI call's hot path.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from coreos_lab.errors import CommandFailed, CommandTimeout, CoreosLabError, HostKeyError, SSHError
from coreos_lab.runner import Cmd, CommandResult, render_cmd

log = logging.getLogger(__name__)

DEFAULT_IDLE: Final = 60.0
MAX_FRAME: Final = 256 * 1024 * 1024
SPAWN_WAIT: Final = 15.0
_LEN = struct.Struct(">I")
_ERRORS: Final[Mapping[str, type[CoreosLabError]]] = {
    "CommandTimeout": CommandTimeout,
    "HostKeyError": HostKeyError,
    "SSHError": SSHError,
}


class MuxClosing(SSHError):
    """The mux was shutting down and did not run the request (safe to retry on a new mux)."""


# -- framing -------------------------------------------------------------------------------------------
def send_frame(sock: socket.socket, obj: Any) -> None:
    payload = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    sock.sendall(_LEN.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> Any:
    """Read one frame; None on a clean EOF before any byte."""
    header = _recv_exact(sock, _LEN.size)
    if header is None:
        return None
    (size,) = _LEN.unpack(header)
    if size > MAX_FRAME:
        raise SSHError(f"mux: frame of {size} bytes is too large")
    body = _recv_exact(sock, size)
    if body is None:
        raise SSHError("mux: connection closed in the middle of a frame")
    return json.loads(body.decode("utf-8"))


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise SSHError("mux: connection closed in the middle of a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (Linux SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# -- where things live ---------------------------------------------------------------------------------
def runtime_dir() -> Path:
    """A private directory for sockets: created 0700 if missing, refused if anyone else could use it."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(xdg) / "coreos-lab" if xdg and os.path.isdir(xdg) else Path(f"/tmp/coreos-lab-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SSHError(
            f"mux: unsafe directory {base} (must be a directory of mode 0700 owned by uid {os.getuid()})",
            hint="remove it, or pass --no-persist",
        )
    return base


def mux_key(config_text: str, *, accept_new: bool, idle: float) -> str:
    digest = hashlib.sha256(f"{config_text}\0{accept_new}\0{idle:g}".encode()).hexdigest()
    return digest[:16]


def persist_disabled() -> bool:
    """True when the user opted out of the background process (COREOS_LAB_NO_PERSIST=1)."""
    return os.environ.get("COREOS_LAB_NO_PERSIST", "") not in ("", "0")


def idle_default() -> float:
    try:
        return float(os.environ.get("COREOS_LAB_MUX_IDLE", DEFAULT_IDLE))
    except ValueError:
        return DEFAULT_IDLE


# -- client --------------------------------------------------------------------------------------------
class MuxClient:
    """Talks to (and if needed starts) the mux for one ssh-config text."""

    def __init__(self, config_text: str, *, accept_new: bool = False, idle: float | None = None) -> None:
        self.config_text = config_text
        self.accept_new = accept_new
        self.idle = idle if idle is not None else idle_default()
        self.key = mux_key(config_text, accept_new=accept_new, idle=self.idle)
        self.directory = runtime_dir()
        self.socket_path = self.directory / f"mux-{self.key}.sock"

    def request(self, req: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send one request; start the mux if none answers. Raises the error the mux reported."""
        for attempt in (1, 2):
            sock = self._connect()
            try:
                sock.settimeout(timeout)
                send_frame(sock, dict(req))
                reply = recv_frame(sock)
            except TimeoutError:
                raise SSHError(f"mux: no answer within {timeout:g}s for {req.get('op')}") from None
            except OSError as exc:
                raise SSHError(f"mux: connection lost: {exc}") from None
            finally:
                sock.close()
            if reply is None:
                raise SSHError("mux: connection closed without an answer (see the mux log)")
            error = reply.get("error")
            if error is None:
                return dict(reply)
            exc_obj = error_from_wire(error)
            if isinstance(exc_obj, MuxClosing) and attempt == 1:
                continue
            raise exc_obj
        raise AssertionError("unreachable")

    def _connect(self) -> socket.socket:
        sock = self._try_connect()
        if sock is not None:
            return sock
        lock_path = self.directory / f"mux-{self.key}.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one spawner at a time; the others find it running
            sock = self._try_connect()
            if sock is not None:
                return sock
            self._spawn()
            deadline = time.monotonic() + SPAWN_WAIT
            while time.monotonic() < deadline:
                sock = self._try_connect()
                if sock is not None:
                    return sock
                time.sleep(0.01)
        tail = ""
        with contextlib.suppress(OSError, IndexError):  # no log, or an empty one: no detail to add
            tail = (self.directory / f"mux-{self.key}.log").read_text(errors="replace").strip().splitlines()[-1]
        raise SSHError(
            f"mux: did not start within {SPAWN_WAIT:g}s{': ' + tail if tail else ''}", hint="try --no-persist"
        )

    def _try_connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            raise SSHError(f"mux: cannot connect to {self.socket_path}: {exc.strerror or exc}") from None
        if peer_uid(sock) != os.getuid():
            sock.close()
            raise SSHError(f"mux: {self.socket_path} is served by another user; refusing to use it")
        return sock

    def _spawn(self) -> None:
        conf = {"config": self.config_text, "accept_new": self.accept_new, "idle": self.idle}
        conf_path = self.directory / f"mux-{self.key}.json"
        fd = os.open(conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(conf, fh)
        log_path = self.directory / f"mux-{self.key}.log"
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coreos_lab.muxd", "serve", "--dir", str(self.directory), "--key", self.key],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=logf,
                close_fds=True,
                start_new_session=True,
            )
        # ``serve`` forks and its parent exits at once, so this wait is short and leaves no zombie.
        try:
            proc.wait(timeout=SPAWN_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise SSHError("mux: the spawner did not return") from None

    def ping(self) -> dict[str, Any]:
        return self.request({"op": "ping"}, timeout=10)

    def shutdown(self) -> None:
        """Ask a running mux to exit (does not start one)."""
        sock = self._try_connect()
        if sock is None:
            return
        with contextlib.closing(sock):
            sock.settimeout(10)
            send_frame(sock, {"op": "shutdown"})
            with contextlib.suppress(OSError, SSHError):
                recv_frame(sock)


def error_from_wire(error: Mapping[str, Any]) -> CoreosLabError:
    kind = str(error.get("type", "SSHError"))
    message = str(error.get("message", "mux: unknown error"))
    if kind == "MuxClosing":
        return MuxClosing(message)
    if kind == "CommandFailed":
        return CommandFailed(
            str(error.get("host", "")),
            str(error.get("cmd", "")),
            int(error.get("exit_code", 1)),
            str(error.get("stderr", "")),
        )
    cls = _ERRORS.get(kind, SSHError)
    return cls(message, exit_code=int(error.get("exit_code", cls.exit_code)))


class MuxRunner:
    """A ``runner.Runner`` for one node whose connection lives in the mux process."""

    def __init__(self, client: MuxClient, node: str, *, default_timeout: float = 60.0) -> None:
        self.client = client
        self.node = node
        self.default_timeout = default_timeout

    @property
    def host(self) -> str:
        return self.node

    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult:
        limit = timeout if timeout is not None else self.default_timeout
        req = {
            "op": "run",
            "node": self.node,
            "cmd": render_cmd(cmd, sudo=sudo),
            "timeout": limit,
            "stdin": base64.b64encode(stdin).decode("ascii") if stdin is not None else None,
        }
        # The mux enforces ``limit``; the extra time covers a connect (handshake) done on the way.
        reply = self.client.request(req, timeout=limit + 60.0)
        r = reply["result"]
        return CommandResult(r["host"], r["cmd"], int(r["exit_code"]), r["stdout"], r["stderr"], float(r["duration"]))

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        req = {
            "op": "put",
            "node": self.node,
            "path": path,
            "mode": mode,
            "sudo": sudo,
            "data": base64.b64encode(data).decode("ascii"),
        }
        self.client.request(req, timeout=max(120.0, self.default_timeout))

    def connect(self) -> None:
        """Make the mux open this node's connection now."""
        self.client.request({"op": "connect", "node": self.node}, timeout=120.0)

    def forward_unix(self, remote_host: str, remote_port: int) -> str:
        """A unix socket (in the private mux directory) forwarded to ``remote_host:remote_port`` on the node."""
        reply = self.client.request(
            {"op": "forward", "node": self.node, "host": remote_host, "port": remote_port}, timeout=120.0
        )
        return str(reply["path"])

    def close(self) -> None:
        """Nothing to do: the connection belongs to the mux and outlives this object on purpose."""
        return None
