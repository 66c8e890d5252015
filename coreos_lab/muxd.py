"""The mux process (server side): holds one SSH connection per node and runs the requests handed to it.

Started detached by :class:`coreos_lab.mux.MuxClient` as ``python -m coreos_lab.muxd serve`` (never by hand);
a second program beside the CLI. It serves one ssh-config text on a unix socket in the user's private runtime
directory (mode 0600, every peer's uid checked with SO_PEERCRED) until it has been idle for ``idle`` seconds.

Requests: ``run``, ``put``, ``connect``, ``forward`` (a unix socket forwarded to a node-side port), ``ping``,
``shutdown``, and ``status``, which it does not compute itself: :mod:`coreos_lab.health` builds the report, here
because the connections and etcd sessions are warm here. The wire format lives in :mod:`coreos_lab.mux`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coreos_lab.errors import CommandFailed, CoreosLabError, SSHError
from coreos_lab.mux import peer_uid, recv_frame, send_frame

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.ssh import SSHRunner

log = logging.getLogger("coreos_lab.mux")


class MuxServer:
    """Owns the SSHRunners; one thread per client connection; exits when idle."""

    def __init__(self, directory: Path, key: str, config_text: str, *, accept_new: bool, idle: float) -> None:
        from coreos_lab.sshconfig import parse_ssh_config

        self.directory = directory
        self.key = key
        self.config_text = config_text
        self.targets = parse_ssh_config(config_text)
        self._clusters: dict[str | None, Cluster] = {}  # for `status`, per etcd TLS dir; share our runners
        self.accept_new = accept_new
        self.idle = idle
        self.socket_path = directory / f"mux-{key}.sock"
        self._runners: dict[str, SSHRunner] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        self._last = time.monotonic()
        self._closing = False
        self._listener: socket.socket | None = None

    def runner(self, node: str) -> SSHRunner:
        from coreos_lab.ssh import SSHRunner

        with self._lock:
            r = self._runners.get(node)
            if r is None:
                target = self.targets.get(node)
                if target is None:
                    raise SSHError(f"mux: no node named {node!r}")
                r = self._runners[node] = SSHRunner(target, accept_new=self.accept_new)
            return r

    def bind(self) -> bool:
        """Bind the socket; False when another live mux already serves it."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
            return False
        except OSError:
            pass
        finally:
            probe.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.socket_path))
        finally:
            os.umask(old)
        sock.listen(128)
        sock.settimeout(1.0)
        self._listener = sock
        return True

    def serve_forever(self) -> None:
        listener = self._listener
        if listener is None:
            raise SSHError("mux: not bound")
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if self._idle_exit():
                    break
                continue
            except OSError:
                break
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()
            if self._idle_exit():
                break
        self._shutdown()

    def _forwards_busy(self) -> tuple[bool, float]:
        """Whether a forwarded connection is open now, and when the last one ended."""
        busy, last = False, 0.0
        for r in list(self._runners.values()):
            active, ended = r.forward_activity()
            busy = busy or active > 0
            last = max(last, ended)
        return busy, last

    def _idle_exit(self) -> bool:
        busy, forward_last = self._forwards_busy()
        with self._lock:
            if self._closing:
                return True
            last = max(self._last, forward_last)
            if self._inflight == 0 and not busy and time.monotonic() - last >= self.idle:
                self._closing = True
                # Unlink first so new clients spawn a new mux instead of reaching a dying one.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
                return True
            return False

    def _shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # let requests that were already accepted finish
            with self._lock:
                if self._inflight == 0:
                    break
            time.sleep(0.05)
        for cluster in list(self._clusters.values()):  # its etcd sessions and pool; the runners are ours
            with contextlib.suppress(Exception):
                cluster.close()
        for r in list(self._runners.values()):
            with contextlib.suppress(Exception):
                r.close()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            try:
                uid = peer_uid(conn)
                if uid != os.getuid():
                    log.warning("mux: refused a connection from uid %s", uid)
                    send_frame(conn, {"error": {"type": "SSHError", "message": "mux: permission denied"}})
                    return
                req = recv_frame(conn)
                if req is None:
                    return
                with self._lock:
                    if self._closing:
                        send_frame(conn, {"error": {"type": "MuxClosing", "message": "mux: shutting down"}})
                        return
                    self._inflight += 1
                try:
                    reply = self._dispatch(req)
                except CommandFailed as exc:
                    reply = {
                        "error": {
                            "type": "CommandFailed",
                            "message": str(exc),
                            "host": exc.host,
                            "cmd": exc.cmd,
                            "exit_code": exc.remote_exit_code,
                            "stderr": exc.stderr,
                        }
                    }
                except CoreosLabError as exc:
                    reply = {"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}}
                except Exception as exc:  # a bug must come back as an answer, never kill the mux
                    log.exception("mux: request failed")
                    reply = {"error": {"type": "SSHError", "message": f"mux: {type(exc).__name__}: {exc}"}}
                finally:
                    with self._lock:
                        self._inflight -= 1
                        self._last = time.monotonic()
                send_frame(conn, reply)
            except (OSError, SSHError, ValueError) as exc:
                log.debug("mux: client connection failed: %s", exc)

    def _status(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """A ``status`` request: :func:`coreos_lab.health.status_request` runs here, next to the open
        connections and warm etcd sessions, on a Cluster over this process's runners (one per etcd TLS dir)."""
        from coreos_lab.cluster import Cluster
        from coreos_lab.health import status_request

        tls_dir = req.get("tls_dir")
        with self._lock:
            cluster = self._clusters.get(tls_dir)
            if cluster is None:
                cluster = Cluster(targets=self.targets, factory=self.runner, config_text=self.config_text)
                cluster.etcd_tls_dir = Path(tls_dir) if tls_dir else None
                self._clusters[tls_dir] = cluster
        try:
            return status_request(cluster, req)
        finally:
            # Keep-alive HTTP connections through our own forwards count as forward activity: left open,
            # they would keep this process from ever idling out.
            cluster.close_sessions()

    def _dispatch(self, req: Mapping[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"pid": os.getpid(), "key": self.key, "nodes": list(self.targets), "idle": self.idle}
        if op == "shutdown":
            with self._lock:
                self._closing = True
            return {}
        if op == "status":
            return {"report": self._status(req)}
        node = str(req.get("node"))
        runner = self.runner(node)
        if op == "run":
            stdin = req.get("stdin")
            result = runner.run(
                str(req["cmd"]),
                timeout=float(req["timeout"]),
                stdin=base64.b64decode(stdin) if stdin is not None else None,
            )
            return {
                "result": {
                    "host": result.host,
                    "cmd": result.cmd,
                    "exit_code": result.exit_code,
                    "stdout": result.stdout,
                    "stderr": result.stderr,
                    "duration": result.duration,
                }
            }
        if op == "put":
            runner.put(base64.b64decode(req["data"]), str(req["path"]), mode=int(req["mode"]), sudo=bool(req["sudo"]))
            return {}
        if op == "connect":
            runner.connect()
            return {}
        if op == "forward":
            host, port = str(req["host"]), int(req["port"])
            tag = hashlib.sha256(f"{node}\0{host}\0{port}".encode()).hexdigest()[:10]
            path = str(self.directory / f"fwd-{self.key[:8]}-{tag}.sock")
            return {"path": runner.forward_unix(path, host, port)}
        raise SSHError(f"mux: unknown request {op!r}")


def _serve_main(directory: Path, key: str) -> int:
    conf = json.loads((directory / f"mux-{key}.json").read_text())
    server = MuxServer(directory, key, conf["config"], accept_new=bool(conf["accept_new"]), idle=float(conf["idle"]))
    if not server.bind():
        return 0
    # Detach: the spawning CLI waits only for this parent, which exits now (no zombie left behind).
    if os.fork() != 0:
        os._exit(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mux[%(process)d] %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    log.info("serving %s for nodes %s (idle %gs)", server.socket_path, ", ".join(server.targets), server.idle)
    try:
        server.serve_forever()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"mux-{key}.json")
        log.info("exiting")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse  # only the server needs it; the client side is on every CLI call's hot path

    parser = argparse.ArgumentParser(prog="python -m coreos_lab.muxd")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the mux (started by MuxClient, not by hand)")
    serve.add_argument("--dir", required=True, type=Path)
    serve.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    return _serve_main(args.dir, args.key)


if __name__ == "__main__":
    sys.exit(main())
