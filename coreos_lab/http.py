"""The one HTTP stack: requests sessions over TCP, over a unix socket (the mux's forwards, fleet.sock), with
TLS client certificates, and with urllib3's ``Retry``. No other library module imports requests or urllib3.

requests + urllib3, not httpx: ``import httpx`` alone takes 0.7-0.8x the wall time of ``import requests``, but
a ready client over a unix socket 1.12x (its transport loads the CA bundle even for a socket; medians of 20
runs each), and requests is already a dependency that the etcd watch stream and the test doubles are built on.

>>> plain = session(trust_env=False)   # explicit endpoints: an environment proxy must never see a tunnel
>>> unix, base = unix_session("/run/user/1000/coreos-lab/fwd.sock")
>>> base
'http://unix-socket'

Over a unix socket every request goes to the socket whatever host the URL names (the request says
``Host: localhost``, as curl does). With ``tls=TLSFiles(cert, key, ca)`` each connection is wrapped in TLS
(client certificate; the CA checks the server as ``127.0.0.1``: the forward ends at the node's loopback) and
the base URL is ``https://unix-socket``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError as ConnectError
from requests.exceptions import RequestException, SSLError, Timeout
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

__all__ = [
    "TLS_SERVER_NAME",
    "UNIX_BASE_URL",
    "UNIX_TLS_BASE_URL",
    "ConnectError",
    "RequestException",
    "Response",
    "SSLError",
    "Session",
    "TLSFiles",
    "Timeout",
    "UnixAdapter",
    "is_timeout",
    "response_socket",
    "retries",
    "session",
    "short_reason",
    "unix_session",
]

UNIX_BASE_URL: Final = "http://unix-socket"
UNIX_TLS_BASE_URL: Final = "https://unix-socket"
# The name the server certificate is checked against: the forward ends at 127.0.0.1 on the node.
TLS_SERVER_NAME: Final = "127.0.0.1"
_URLLIB3_POOL_LOG: Final = "urllib3.connectionpool"


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


# ---- plain sessions and retries ----------------------------------------------------------------------------
def session(*, trust_env: bool, retry: Retry | None = None) -> Session:
    """A requests Session; ``trust_env=False`` ignores proxy variables and .netrc (explicit local endpoints).

    With ``retry`` every http(s) request is retried by urllib3 as that ``Retry`` says.
    """
    made = Session()
    made.trust_env = trust_env
    if retry is not None:
        _quiet_retry_warnings()
        adapter = HTTPAdapter(max_retries=retry)
        made.mount("http://", adapter)
        made.mount("https://", adapter)
    return made


class _DoublingRetry(Retry):
    """``Retry`` waiting ``backoff_factor`` after the first failure, then twice as long after each next one.

    urllib3's own formula skips the first wait and starts at twice the factor; every answer of 500 or more
    is retried (a status forcelist would miss the odd ones over 599), and Retry-After is not obeyed.
    """

    def get_backoff_time(self) -> float:
        failures = len(self.history)
        if failures == 0 or self.backoff_factor <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (failures - 1)))

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        return status_code >= 500


def retries(attempts: int, backoff: float) -> Retry:
    """At most ``attempts`` tries of any method in all (at least one) on refused or broken connections,
    timeouts and 5xx answers, waiting ``backoff`` seconds after the first failure and doubling.

    When the tries run out, the last 5xx answer is returned as it is; the last failure is raised (a
    ``ConnectError``; :func:`is_timeout` tells whether it was a timeout).
    """
    return _DoublingRetry(
        total=max(1, attempts) - 1,
        allowed_methods=None,  # any method: the callers send idempotent GETs and PUTs
        backoff_factor=backoff,
        raise_on_status=False,
        respect_retry_after_header=False,
    )


def is_timeout(exc: RequestException) -> bool:
    """Did ``exc`` come from a timeout? (With retries, urllib3 reports a last read timeout as a ConnectError.)"""
    if isinstance(exc, Timeout):
        return True
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, ReadTimeoutError)


def short_reason(exc: BaseException) -> str:
    """Why a request failed, in a few words: the socket's own reason where there is one.

    requests wraps it three deep (``ConnectionError(MaxRetryError(reason=NewConnectionError(...)))``, each
    text quoting the last), so this walks the causes to the ``OSError`` at the bottom.

    >>> short_reason(ConnectError(MaxRetryError(None, "/x", ConnectionRefusedError(111, "Connection refused"))))
    'connection refused'
    """
    if isinstance(exc, RequestException) and is_timeout(exc):
        return "no answer within the timeout"
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            return err.strerror[0].lower() + err.strerror[1:]
        nested = [err.__cause__, err.__context__, getattr(err, "reason", None), *err.args]
        todo += [e for e in nested if isinstance(e, BaseException)]
    return " ".join(str(exc).split())[:200] or type(exc).__name__


class _RetryWarningsToDebug(logging.Filter):
    """urllib3 warns once per retry ("Retrying (Retry(total=1...)) after connection broken by ..."): the
    caller reports the outcome in one line, so the retries are shown only when urllib3 logs at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith("Retrying ("):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER_LOCK: Final = threading.Lock()


def _quiet_retry_warnings() -> None:
    logger = logging.getLogger(_URLLIB3_POOL_LOG)
    with _FILTER_LOCK:
        if not any(isinstance(f, _RetryWarningsToDebug) for f in logger.filters):
            logger.addFilter(_RetryWarningsToDebug())


# ---- a unix socket, optionally with TLS -------------------------------------------------------------------
class _UnixConnection(HTTPConnection):
    """An HTTP connection whose ``connect`` opens a unix socket (and wraps it in TLS when given a context)."""

    def __init__(self, *args: Any, socket_path: str, tls_context: ssl.SSLContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path
        self.tls_context = tls_context

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        if isinstance(timeout, (int, float)):
            sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_hostname=TLS_SERVER_NAME)
        except OSError:  # ssl.SSLError included
            sock.close()
            raise
        self.sock = sock


class _UnixConnectionPool(HTTPConnectionPool):
    # The pool hands its extra keyword arguments (socket_path, tls_context) to each new connection.
    ConnectionCls = _UnixConnection


class UnixAdapter(HTTPAdapter):
    """A requests transport adapter sending every request to the unix socket at ``socket_path``.

    Mount it on a made-up prefix (``session.mount("http://fleet.sock/", UnixAdapter(path))``): the URL's
    host only selects the adapter.
    """

    def __init__(self, socket_path: str, pool_maxsize: int = 8, *, tls: TLSFiles | None = None) -> None:
        self.socket_path = socket_path
        self.pool_maxsize = pool_maxsize
        # Loaded once, here: a missing or unreadable certificate fails at setup, not on every request.
        self.tls_context = tls.context() if tls is not None else None
        self.pool: _UnixConnectionPool | None = None
        self.pool_lock = threading.Lock()
        super().__init__()

    def unix_pool(self) -> _UnixConnectionPool:
        """The one connection pool to the socket (made again after :meth:`close`)."""
        with self.pool_lock:
            if self.pool is None:
                self.pool = _UnixConnectionPool(
                    "localhost",
                    port=80,
                    maxsize=self.pool_maxsize,
                    socket_path=self.socket_path,
                    tls_context=self.tls_context,
                )
            return self.pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing to do: TLS (if any) is this adapter's own context, set up in the constructor."""

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str | None,
        proxies: Any = None,
        cert: tuple[str, str] | str | None = None,
    ) -> HTTPConnectionPool:
        return self.unix_pool()

    def close(self) -> None:
        with self.pool_lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
        super().close()


def unix_session(socket_path: str, base_url: str | None = None, *, tls: TLSFiles | None = None) -> tuple[Session, str]:
    """A Session whose ``base_url`` prefix is routed to ``socket_path`` (TLS-wrapped with ``tls``), and that URL."""
    if base_url is None:
        base_url = UNIX_TLS_BASE_URL if tls is not None else UNIX_BASE_URL
    made = session(trust_env=False)  # proxies from the environment must never capture a local socket
    made.mount(base_url + "/", UnixAdapter(socket_path, tls=tls))
    return made, base_url


def response_socket(resp: Response) -> socket.socket | None:
    """The socket under a streamed response (``stream=True``), to bound each read by a deadline; else None.

    None too when the server said it closes the connection after the answer (HTTP/1.0, ``Connection: close``):
    the connection then lets go of its socket, and reads stay bounded by the request's read timeout alone.
    """
    sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None
