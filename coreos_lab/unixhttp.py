"""HTTP over a unix socket for requests: reach a forward held by the mux, or any local HTTP unix socket.

Mount ``UnixHTTPAdapter(path)`` on a made-up base URL; every request sent through that prefix goes to
the socket, whatever host name the URL carries (the request says ``Host: localhost``, as curl does).

>>> session, base = unix_session("/run/user/1000/coreos-lab/fwd.sock")
>>> base
'http://unix-socket'

With ``tls=TLSFiles(cert, key, ca)`` every connection is wrapped in TLS (client certificate, the CA
verifying the server as ``127.0.0.1``: the forward ends at the node's loopback) and the base URL is
``https://unix-socket``.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

BASE_URL = "http://unix-socket"
TLS_BASE_URL: Final = "https://unix-socket"
# The name the server certificate is checked against: the forward ends at 127.0.0.1 on the node.
TLS_SERVER_NAME: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Client certificate, its key and the CA that signed the server's certificate (PEM paths)."""

    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        """A client context: verify the server against ``ca`` (name included), present ``cert``."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, *args: Any, ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._socket_path = socket_path
        self._ssl_context = ssl_context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        if isinstance(timeout, (int, float)):
            sock.settimeout(timeout)
        try:
            sock.connect(self._socket_path)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=TLS_SERVER_NAME)
        except OSError:  # ssl.SSLError included
            sock.close()
            raise
        self.sock = sock


class _UnixConnectionPool(HTTPConnectionPool):
    def __init__(self, socket_path: str, ssl_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self._socket_path = socket_path
        self._ssl_context = ssl_context

    def _new_conn(self) -> HTTPConnection:
        return _UnixConnection(
            self._socket_path,
            host="localhost",
            port=80,
            timeout=self.timeout.connect_timeout,
            ssl_context=self._ssl_context,
        )


class UnixHTTPAdapter(HTTPAdapter):
    """A requests transport adapter sending every request to the unix socket at ``socket_path``."""

    def __init__(self, socket_path: str, pool_maxsize: int = 8, *, tls: TLSFiles | None = None) -> None:
        self.socket_path = socket_path
        self._pool_maxsize = pool_maxsize
        self._pool: _UnixConnectionPool | None = None
        # Loaded once, here: a missing or unreadable certificate fails at setup, not on every request.
        self._ssl_context = tls.context() if tls is not None else None
        super().__init__()

    def _get_pool(self) -> _UnixConnectionPool:
        if self._pool is None:
            self._pool = _UnixConnectionPool(self.socket_path, self._ssl_context, maxsize=self._pool_maxsize)
        return self._pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing to do: TLS (if any) is this adapter's own context, set up in the constructor."""

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


def unix_session(
    socket_path: str, base_url: str | None = None, *, tls: TLSFiles | None = None
) -> tuple[requests.Session, str]:
    """A requests Session whose ``base_url`` prefix is routed to ``socket_path`` (TLS-wrapped with ``tls``)."""
    if base_url is None:
        base_url = TLS_BASE_URL if tls is not None else BASE_URL
    session = requests.Session()
    session.trust_env = False  # proxies from the environment must never capture a local socket
    session.mount(base_url + "/", UnixHTTPAdapter(socket_path, tls=tls))
    return session, base_url
