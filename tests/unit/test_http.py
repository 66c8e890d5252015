"""coreos_lab.http against real local servers: a unix socket (the mux's forwards, fleet.sock), retries on loopback."""

from __future__ import annotations

import http.server
import logging
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import requests
from urllib3.exceptions import MaxRetryError
from urllib3.response import HTTPResponse

from coreos_lab.http import (
    UNIX_BASE_URL,
    ConnectError,
    UnixAdapter,
    is_timeout,
    response_socket,
    retries,
    session,
    unix_session,
)


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


# -- a unix socket ---------------------------------------------------------------------------------------------
def test_get_put_and_connection_reuse(server: str) -> None:
    _Handler.connections = set()
    web, base = unix_session(server)
    assert base == UNIX_BASE_URL
    assert web.trust_env is False
    with web:
        for i in range(3):
            r = web.get(f"{base}/fleet/v1/units?i={i}", timeout=5)
            assert r.status_code == 200
            assert r.json()["path"] == f"/fleet/v1/units?i={i}"
        put = web.put(f"{base}/fleet/v1/units/a.service", json={"desiredState": "launched"}, timeout=5)
        assert put.status_code == 201
        assert put.json() == {"desiredState": "launched"}
    assert len(_Handler.connections) == 1  # one unix connection carried every request


def test_adapter_on_a_custom_prefix(server: str) -> None:
    with requests.Session() as s:
        s.trust_env = False
        s.mount("http://fleet.sock/", UnixAdapter(server))
        # The URL's host only selects the adapter; the request carries "Host: localhost", as curl --unix-socket.
        assert s.get("http://fleet.sock/fleet/v1/machines", timeout=5).json()["host"] == "localhost"


def test_a_closed_session_connects_again(server: str) -> None:
    web, base = unix_session(server)
    assert web.get(base + "/one", timeout=5).status_code == 200
    web.close()
    assert web.get(base + "/two", timeout=5).json()["path"] == "/two"
    web.close()


def test_missing_socket_is_a_connection_error(tmp_path: Path) -> None:
    web, base = unix_session(str(tmp_path / "absent.sock"))
    with web, pytest.raises(ConnectError):
        web.get(f"{base}/x", timeout=2)


def test_response_socket_only_while_streaming(server: str) -> None:
    web, base = unix_session(server)
    with web:
        streamed = web.get(base + "/watch", timeout=5, stream=True)
        assert isinstance(response_socket(streamed), socket.socket)
        streamed.close()
        read = web.get(base + "/done", timeout=5)
        assert response_socket(read) is None  # the connection went back to the pool with the body read


# -- retries ---------------------------------------------------------------------------------------------------
def test_backoff_doubles_from_the_first_failure() -> None:
    retry = retries(4, 0.5)
    waits = []
    for _ in range(3):
        retry = retry.increment("GET", "/x", response=HTTPResponse(status=500))
        waits.append(retry.get_backoff_time())
    assert waits == [0.5, 1.0, 2.0]
    with pytest.raises(MaxRetryError):
        retry.increment("GET", "/x", response=HTTPResponse(status=500))
    assert retries(1, 0.5).total == 0
    assert retries(0, 0.5).total == 0  # one try at least


def test_every_5xx_of_any_method_is_retried_and_nothing_below() -> None:
    retry = retries(3, 0.0)
    assert all(retry.is_retry("PUT", code) for code in (500, 503, 599, 600))
    assert not any(retry.is_retry("GET", code) for code in (499, 404, 302, 200))


class _Counted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of ``statuses`` (the last one repeats)."""

    statuses: ClassVar[list[int]] = [200]
    delay: ClassVar[float] = 0.0
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).seen.append(self.command)
        status = self.statuses[min(len(self.seen), len(self.statuses)) - 1]
        time.sleep(self.delay)
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = _answer
    do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counted() -> Iterator[str]:
    _Counted.statuses, _Counted.delay, _Counted.seen = [200], 0.0, []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counted)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_put_retried_until_it_succeeds(counted: str) -> None:
    _Counted.statuses = [502, 500, 201]
    with session(trust_env=False, retry=retries(3, 0.0)) as web:
        assert web.put(counted + "/k", data={"value": "3"}, timeout=5).status_code == 201
    assert _Counted.seen == ["PUT", "PUT", "PUT"]


def test_last_5xx_answer_is_returned_when_tries_run_out(counted: str) -> None:
    _Counted.statuses = [503]
    with session(trust_env=True, retry=retries(2, 0.0)) as web:
        assert web.get(counted + "/new", timeout=5).status_code == 503
    assert len(_Counted.seen) == 2


def test_timeout_after_retries_is_told_apart(counted: str) -> None:
    _Counted.delay = 0.5
    with session(trust_env=False, retry=retries(2, 0.0)) as web, pytest.raises(ConnectError) as slow:
        web.get(counted + "/slow", timeout=0.1)
    assert is_timeout(slow.value)
    assert len(_Counted.seen) == 2
    with session(trust_env=False, retry=retries(2, 0.0)) as web, pytest.raises(ConnectError) as refused:
        web.get(refused_url(), timeout=1)
    assert not is_timeout(refused.value)
    assert "Connection refused" in str(refused.value)


def test_retry_warnings_show_only_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    url = refused_url()
    caplog.set_level(logging.WARNING)
    with session(trust_env=False, retry=retries(3, 0.0)) as web, pytest.raises(ConnectError):
        web.get(url, timeout=1)
    assert [r for r in caplog.records if r.name.startswith("urllib3")] == []
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with session(trust_env=False, retry=retries(3, 0.0)) as web, pytest.raises(ConnectError):
        web.get(url, timeout=1)
    retried = [r for r in caplog.records if r.getMessage().startswith("Retrying (")]
    assert len(retried) == 2
    assert {r.levelno for r in retried} == {logging.DEBUG}
