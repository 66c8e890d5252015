"""unixhttp: requests over a unix socket (the mux's forwards, fleet.sock) against a real local HTTP server."""

from __future__ import annotations

import http.server
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import requests

from coreos_lab.unixhttp import BASE_URL, UnixHTTPAdapter, unix_session


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is exercised
    connections: ClassVar[set[int]] = set()

    def _reply(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        type(self).connections.add(id(self.connection))
        self._reply(f'{{"path": "{self.path}", "host": "{self.headers.get("Host")}"}}'.encode())

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self._reply(data, 201)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def server() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="cl-uh-")
    path = str(Path(directory) / "api.sock")
    srv = _UnixServer(path, _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield path
    srv.shutdown()
    srv.server_close()
    Path(path).unlink(missing_ok=True)
    Path(directory).rmdir()


def test_get_put_and_connection_reuse(server: str) -> None:
    _Handler.connections = set()
    session, base = unix_session(server)
    assert base == BASE_URL
    with session:
        for i in range(3):
            r = session.get(f"{base}/fleet/v1/units?i={i}", timeout=5)
            assert r.status_code == 200
            assert r.json()["path"] == f"/fleet/v1/units?i={i}"
        put = session.put(f"{base}/fleet/v1/units/a.service", json={"desiredState": "launched"}, timeout=5)
        assert put.status_code == 201
        assert put.json() == {"desiredState": "launched"}
    assert len(_Handler.connections) == 1  # one unix connection carried every request


def test_adapter_on_a_custom_prefix(server: str) -> None:
    with requests.Session() as s:
        s.trust_env = False
        s.mount("http://fleet.sock/", UnixHTTPAdapter(server))
        # The URL's host only selects the adapter; the request carries "Host: localhost", as curl --unix-socket.
        assert s.get("http://fleet.sock/fleet/v1/machines", timeout=5).json()["host"] == "localhost"


def test_missing_socket_is_a_connection_error(tmp_path: Path) -> None:
    session, base = unix_session(str(tmp_path / "absent.sock"))
    with session, pytest.raises(requests.ConnectionError):
        session.get(f"{base}/x", timeout=2)
