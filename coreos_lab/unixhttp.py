"""HTTP over a unix socket for requests: reach a forward held by the mux, or any local HTTP unix socket.

Mount ``UnixHTTPAdapter(path)`` on a made-up base URL; every request sent through that prefix goes to
the socket, whatever host name the URL carries (the request says ``Host: localhost``, as curl does).

>>> session, base = unix_session("/run/user/1000/coreos-lab/fwd.sock")
>>> base
'http://unix-socket'
"""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

BASE_URL = "http://unix-socket"


class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        if isinstance(timeout, (int, float)):
            sock.settimeout(timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixConnectionPool(HTTPConnectionPool):
    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self._socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        return _UnixConnection(self._socket_path, host="localhost", port=80, timeout=self.timeout.connect_timeout)


class UnixHTTPAdapter(HTTPAdapter):
    """A requests transport adapter sending every request to the unix socket at ``socket_path``."""

    def __init__(self, socket_path: str, pool_maxsize: int = 8) -> None:
        self.socket_path = socket_path
        self._pool_maxsize = pool_maxsize
        self._pool: _UnixConnectionPool | None = None
        super().__init__()

    def _get_pool(self) -> _UnixConnectionPool:
        if self._pool is None:
            self._pool = _UnixConnectionPool(self.socket_path, maxsize=self._pool_maxsize)
        return self._pool

    def get_connection_with_tls_context(
        self, request: requests.PreparedRequest, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        return self._get_pool()

    def get_connection(self, url: str | bytes, proxies: Any = None) -> HTTPConnectionPool:
        return self._get_pool()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        super().close()


def unix_session(socket_path: str, base_url: str = BASE_URL) -> tuple[requests.Session, str]:
    """A requests Session whose ``base_url`` prefix is routed to ``socket_path``."""
    session = requests.Session()
    session.trust_env = False  # proxies from the environment must never capture a local socket
    session.mount(base_url + "/", UnixHTTPAdapter(socket_path))
    return session, base_url
