"""An etcd client over HTTP: the v3 JSON gateway (keys and values as exact bytes), the v2 keys API, health.

It needs only a base URL and, optionally, a :class:`coreos_lab.http.Session`: the URL may point straight at a member
(``http://127.0.0.1:2379``) or at the local end of an SSH tunnel; the client does not care which.

For example (it needs a running etcd, so it is not run as a test)::

    client = EtcdClient("http://127.0.0.1:2379")
    client.put("/lab/greeting", b"hello")
    # -> 7
    client.get("/lab/greeting").value
    # -> b'hello'

Every failure (connection refused, timeout, an HTTP error, an answer that is not the JSON we expect) is an
:class:`~coreos_lab.errors.EtcdError` whose text is one line naming the endpoint.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from coreos_lab.errors import EtcdError
from coreos_lab.http import ConnectError, RequestException, Response, Session, SSLError, Timeout, response_socket
from coreos_lab.http import session as new_session

Bytesish = str | bytes

# etcd moved the v3 gateway from /v3alpha (3.2) to /v3beta (3.3) to /v3 (3.4+; 3.4 still serves /v3beta).
_PREFIX_BY_MINOR: Mapping[tuple[int, int], str] = {
    (3, 0): "/v3alpha",
    (3, 1): "/v3alpha",
    (3, 2): "/v3alpha",
    (3, 3): "/v3beta",
}


def _b(data: Bytesish) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _b64(data: Bytesish) -> str:
    return base64.b64encode(_b(data)).decode("ascii")


def _unb64(text: Any) -> bytes:
    if text is None or text == "":
        return b""
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text, validate=True)


def _int(value: Any) -> int:
    """The gateway sends int64/uint64 as JSON strings and omits zero values entirely."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return int(value)


def prefix_range_end(prefix: Bytesish) -> bytes:
    """The exclusive end of the key range that starts with ``prefix`` (etcdctl's ``--prefix``).

    >>> prefix_range_end(b"/a/")
    b'/a0'
    >>> prefix_range_end(b"a\\xff")
    b'b'
    >>> prefix_range_end(b"")
    b'\\x00'
    """
    key = bytearray(_b(prefix))
    while key:
        if key[-1] < 0xFF:
            key[-1] += 1
            return bytes(key)
        key.pop()
    return b"\x00"  # an empty prefix (or all 0xff) means "every key": etcd's convention is range_end = "\0"


def gateway_prefix(server_version: str) -> str:
    """The v3 JSON gateway path for an etcd server version.

    >>> gateway_prefix("3.3.25"), gateway_prefix("3.4.23"), gateway_prefix("3.2.0")
    ('/v3beta', '/v3', '/v3alpha')
    """
    try:
        major, minor = (int(part) for part in server_version.split(".")[:2])
    except ValueError as exc:
        raise EtcdError(f"cannot understand etcd version {server_version!r}") from exc
    return _PREFIX_BY_MINOR.get((major, minor), "/v3")


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd stores it. ``key`` and ``value`` are the exact bytes."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @property
    def key_text(self) -> str:
        return self.key.decode("utf-8", "replace")

    @property
    def value_text(self) -> str:
        return self.value.decode("utf-8", "replace")

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict: text where the bytes are UTF-8, base64 otherwise (marked ``*_b64``)."""
        out: dict[str, Any] = {}
        for name, raw in (("key", self.key), ("value", self.value)):
            try:
                out[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                out[f"{name}_b64"] = base64.b64encode(raw).decode("ascii")
        out.update(create_revision=self.create_revision, mod_revision=self.mod_revision, version=self.version)
        return out


@dataclass(frozen=True, slots=True)
class Member:
    """A cluster member from ``/v3/cluster/member/list``."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False

    @property
    def id_hex(self) -> str:
        """The id the way etcdctl prints it."""
        return f"{self.id:x}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id_hex,
            "name": self.name,
            "peer_urls": list(self.peer_urls),
            "client_urls": list(self.client_urls),
            "is_learner": self.is_learner,
        }


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """``/v3/maintenance/status`` of the member behind one endpoint. ``leader`` is 0 when it knows of none."""

    member_id: int
    leader: int
    raft_term: int
    raft_index: int
    version: str
    db_size: int

    @property
    def is_leader(self) -> bool:
        return self.leader != 0 and self.leader == self.member_id


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by :meth:`EtcdClient.watch`."""

    type: Literal["PUT", "DELETE"]
    kv: KV
    revision: int


@dataclass(frozen=True, slots=True)
class V2Node:
    """A node of the v2 keys API (a key or a directory)."""

    key: str
    value: str | None
    dir: bool
    created_index: int
    modified_index: int
    ttl: int | None
    nodes: tuple[V2Node, ...] = ()


@dataclass(frozen=True, slots=True)
class MemberHealth:
    """How one endpoint answered during :func:`cluster_health`."""

    name: str
    ok: bool
    error: str | None = None
    member_id: int = 0
    leader: int = 0
    raft_term: int = 0
    version: str = ""


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """The cluster as seen from every endpoint at once.

    ``healthy``: every endpoint answered and they agree on one leader. ``has_quorum``: a majority of the
    members answered and see a leader (writes can commit), even if some members are down.
    """

    members: tuple[MemberHealth, ...]
    leader: int
    member_count: int

    @property
    def healthy(self) -> bool:
        return bool(self.members) and self.leader != 0 and all(m.ok and m.leader == self.leader for m in self.members)

    @property
    def has_quorum(self) -> bool:
        if self.leader == 0 or self.member_count == 0:
            return False
        agreeing = sum(1 for m in self.members if m.ok and m.leader == self.leader)
        return agreeing >= self.member_count // 2 + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "has_quorum": self.has_quorum,
            "leader": f"{self.leader:x}" if self.leader else None,
            "member_count": self.member_count,
            "members": [
                {
                    "name": m.name,
                    "ok": m.ok,
                    "error": m.error,
                    "member_id": f"{m.member_id:x}" if m.member_id else None,
                    "leader": f"{m.leader:x}" if m.leader else None,
                    "raft_term": m.raft_term,
                    "version": m.version,
                }
                for m in self.members
            ],
        }


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class EtcdClient:
    """Talks to one etcd endpoint over HTTP (v3 JSON gateway + v2 keys API).

    ``base_url`` is e.g. ``http://127.0.0.1:2379``; ``session`` lets a caller supply connection pooling or a
    tunnel-aware transport. ``cert``/``verify`` are handed to requests unchanged (client TLS).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: Session | None = None,
        timeout: float = 5.0,
        cert: str | tuple[str, str] | None = None,
        verify: bool | str | None = None,
        api_prefix: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session if session is not None else new_session(trust_env=True)
        self._own_session = session is None
        self.timeout = timeout
        self._cert = cert
        self._verify = verify
        self._prefix = api_prefix

    # -- plumbing --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kwargs(self, timeout: float | tuple[float, float] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.timeout if timeout is None else timeout}
        if self._cert is not None:
            kwargs["cert"] = self._cert
        if self._verify is not None:
            kwargs["verify"] = self._verify
        return kwargs

    def _fail(self, path: str, what: str) -> EtcdError:
        return EtcdError(f"etcd {self.base_url}{path}: {_one_line(what)}")

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        timeout: float | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> Response:
        url = self.base_url + path
        try:
            resp = self._session.request(method, url, json=json_body, params=params, data=data, **self._kwargs(timeout))
        except Timeout as exc:
            limit = self.timeout if timeout is None else timeout
            raise self._fail(path, f"timed out after {limit:g}s") from exc
        except ConnectError as exc:
            raise self._fail(path, _describe_connection_error(exc)) from exc
        except RequestException as exc:
            raise self._fail(path, f"request failed: {exc}") from exc
        if resp.status_code >= 400 and resp.status_code not in ok_statuses:
            raise self._fail(path, f"HTTP {resp.status_code}: {_error_text(resp)}")
        return resp

    def _json(self, resp: Response, path: str) -> dict[str, Any]:
        try:
            body = resp.json()
        except ValueError as exc:
            raise self._fail(path, f"answered non-JSON (HTTP {resp.status_code}): {resp.text[:80]!r}") from exc
        if not isinstance(body, dict):
            raise self._fail(path, f"answered JSON that is not an object: {resp.text[:80]!r}")
        return body

    def _v3(self, endpoint: str, body: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        path = self.api_prefix() + endpoint
        data = self._json(self._send("POST", path, json_body=dict(body), timeout=timeout), path)
        if "error" in data and "header" not in data:
            raise self._fail(path, f"error: {data.get('error') or data.get('message')}")
        return data

    # -- cluster-level ---------------------------------------------------------------------------------

    def version(self) -> dict[str, str]:
        """``/version``: ``{"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}``. Also fixes the gateway prefix."""
        data = self._json(self._send("GET", "/version"), "/version")
        server = data.get("etcdserver")
        if not isinstance(server, str):
            raise self._fail("/version", f"answered without an etcdserver version: {json.dumps(data)[:80]}")
        if self._prefix is None:
            self._prefix = gateway_prefix(server)
        return {str(k): str(v) for k, v in data.items()}

    def api_prefix(self) -> str:
        """The v3 gateway prefix (``/v3``, ``/v3beta``, ``/v3alpha``), asked of the server once and cached."""
        if self._prefix is None:
            self.version()
        return self._prefix or "/v3"

    def health(self) -> bool:
        """``/health``: True when the member reports itself healthy (it has a leader and can serve)."""
        resp = self._send("GET", "/health", ok_statuses=(503,))
        data = self._json(resp, "/health")
        return str(data.get("health", "")).lower() == "true"

    def status(self) -> EndpointStatus:
        """``maintenance/status`` of the member behind this endpoint (answered locally, even without quorum)."""
        data = self._v3("/maintenance/status", {})
        try:
            header = data.get("header") or {}
            return EndpointStatus(
                member_id=_int(header.get("member_id")),
                leader=_int(data.get("leader")),
                raft_term=_int(data.get("raftTerm", header.get("raft_term"))),
                raft_index=_int(data.get("raftIndex")),
                version=str(data.get("version", "")),
                db_size=_int(data.get("dbSize")),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise self._fail(self.api_prefix() + "/maintenance/status", f"unexpected answer: {exc}") from exc

    def member_list(self) -> list[Member]:
        """The cluster's members as this endpoint knows them."""
        data = self._v3("/cluster/member/list", {})
        try:
            return [
                Member(
                    id=_int(m.get("ID")),
                    name=str(m.get("name", "")),
                    peer_urls=tuple(str(u) for u in m.get("peerURLs") or ()),
                    client_urls=tuple(str(u) for u in m.get("clientURLs") or ()),
                    is_learner=bool(m.get("isLearner", False)),
                )
                for m in data.get("members") or ()
            ]
        except (TypeError, ValueError, AttributeError) as exc:
            raise self._fail(self.api_prefix() + "/cluster/member/list", f"unexpected answer: {exc}") from exc

    # -- v3 keys ---------------------------------------------------------------------------------------

    def put(self, key: Bytesish, value: Bytesish) -> int:
        """Store ``value`` under ``key``; returns the cluster revision of the write."""
        data = self._v3("/kv/put", {"key": _b64(key), "value": _b64(value)})
        return self._revision(data, "/kv/put")

    def get(self, key: Bytesish) -> KV | None:
        """The key, or None when it does not exist."""
        kvs = self._range({"key": _b64(key)})
        return kvs[0] if kvs else None

    def range(self, prefix: Bytesish) -> list[KV]:
        """Every key starting with ``prefix`` (sorted by key, as etcd returns them)."""
        return self._range({"key": _b64(prefix), "range_end": _b64(prefix_range_end(prefix))})

    def delete(self, key: Bytesish, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under the prefix ``key``); returns how many keys were deleted."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_range_end(key))
        data = self._v3("/kv/deleterange", body)
        try:
            return _int(data.get("deleted"))
        except (TypeError, ValueError) as exc:
            raise self._fail(self.api_prefix() + "/kv/deleterange", f"unexpected answer: {exc}") from exc

    # -- leases ----------------------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its ID (keys put with it vanish when it expires)."""
        data = self._v3("/lease/grant", {"TTL": str(int(ttl))})
        try:
            lease = _int(data.get("ID"))
        except (TypeError, ValueError) as exc:
            raise self._fail(self.api_prefix() + "/lease/grant", f"unexpected answer: {exc}") from exc
        if lease <= 0:
            raise self._fail(self.api_prefix() + "/lease/grant", f"granted no lease: {json.dumps(data)[:80]}")
        return lease

    def lease_keepalive(self, lease: int) -> int:
        """Renew the lease once; returns its TTL in seconds, 0 when it has expired or was revoked.

        The gateway's keepalive is a stream; one request body is one renewal and one answer.
        """
        data = self._v3("/lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        try:
            return _int(result.get("TTL")) if isinstance(result, dict) else 0
        except (TypeError, ValueError) as exc:
            raise self._fail(self.api_prefix() + "/lease/keepalive", f"unexpected answer: {exc}") from exc

    def lease_revoke(self, lease: int) -> bool:
        """Revoke the lease (its keys go at once); False when it was already gone."""
        path = self.api_prefix() + "/lease/revoke"
        resp = self._send("POST", path, json_body={"ID": str(lease)}, ok_statuses=(404,))
        data = self._json(resp, path)
        if "error" in data and "header" not in data:
            if "not found" in str(data.get("error")):
                return False
            raise self._fail(path, f"error: {data.get('error')}")
        return True

    def put_if_absent(self, key: Bytesish, value: Bytesish, *, lease: int | None = None) -> bool:
        """Create ``key`` only if it does not exist (optionally bound to ``lease``); returns whether it did."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self._txn(key, None, {"request_put": put})

    def txn_put_if(self, key: Bytesish, value: Bytesish, *, expect_mod_revision: int | None) -> bool:
        """Compare-and-swap: write only if the key's mod_revision is ``expect_mod_revision``.

        With ``expect_mod_revision`` 0 or None the write happens only if the key does not exist yet.
        Returns whether the write happened.
        """
        request = {"request_put": {"key": _b64(key), "value": _b64(value)}}
        return self._txn(key, expect_mod_revision, request)

    def txn_put_if_revision(self, key: Bytesish, value: Bytesish, *, expect_mod_revision: int | None) -> int | None:
        """Like :meth:`txn_put_if`, but returns the new revision of the key (None when the compare failed).

        The transaction's header revision is the key's new mod_revision: no read-back, so no window in which
        another writer could make our own write look lost.
        """
        request = {"request_put": {"key": _b64(key), "value": _b64(value)}}
        data = self._txn_raw(key, expect_mod_revision, request)
        if not self._succeeded(data):
            return None
        return self._revision(data, "/kv/txn")

    def txn_delete_if(self, key: Bytesish, *, expect_mod_revision: int) -> bool:
        """Delete the key only if its mod_revision is ``expect_mod_revision``; returns whether it was deleted."""
        return self._txn(key, expect_mod_revision, {"request_delete_range": {"key": _b64(key)}})

    def _txn(self, key: Bytesish, expect_mod_revision: int | None, request: Mapping[str, Any]) -> bool:
        return self._succeeded(self._txn_raw(key, expect_mod_revision, request))

    def _txn_raw(self, key: Bytesish, expect_mod_revision: int | None, request: Mapping[str, Any]) -> Mapping[str, Any]:
        if expect_mod_revision:
            compare = {"target": "MOD", "result": "EQUAL", "key": _b64(key), "mod_revision": str(expect_mod_revision)}
        else:
            compare = {"target": "CREATE", "result": "EQUAL", "key": _b64(key), "create_revision": "0"}
        return self._v3("/kv/txn", {"compare": [compare], "success": [dict(request)], "failure": []})

    def _succeeded(self, data: Mapping[str, Any]) -> bool:
        succeeded = data.get("succeeded", False)  # the gateway omits false booleans
        if not isinstance(succeeded, bool):
            raise self._fail(self.api_prefix() + "/kv/txn", f"unexpected 'succeeded' value {succeeded!r}")
        return succeeded

    def _range(self, body: Mapping[str, Any]) -> list[KV]:
        data = self._v3("/kv/range", body)
        try:
            return [_kv(item) for item in data.get("kvs") or ()]
        except (TypeError, ValueError, AttributeError) as exc:
            raise self._fail(self.api_prefix() + "/kv/range", f"unexpected answer: {exc}") from exc

    def _revision(self, data: Mapping[str, Any], endpoint: str) -> int:
        try:
            return _int((data.get("header") or {}).get("revision"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise self._fail(self.api_prefix() + endpoint, f"unexpected answer: {exc}") from exc

    def watch(
        self,
        key: Bytesish,
        prefix: bool = False,
        start_revision: int | None = None,
        timeout: float = 10.0,
    ) -> Iterator[WatchEvent]:
        """Yield changes to ``key`` (or the prefix) as they happen, for at most ``timeout`` seconds.

        The iterator ends quietly when the time is up; break out of it earlier to stop sooner.
        ``start_revision`` replays history from that revision (if not compacted).
        """
        create: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            create["range_end"] = _b64(prefix_range_end(key))
        if start_revision:
            create["start_revision"] = str(start_revision)
        path = self.api_prefix() + "/watch"
        deadline = time.monotonic() + timeout
        try:
            resp = self._session.post(
                self.base_url + path,
                json={"create_request": create},
                stream=True,
                **self._kwargs((min(self.timeout, timeout), timeout)),
            )
        except Timeout as exc:
            raise self._fail(path, f"timed out after {timeout:g}s") from exc
        except RequestException as exc:
            raise self._fail(path, _describe_connection_error(exc)) from exc
        with resp:
            if resp.status_code >= 400:
                raise self._fail(path, f"HTTP {resp.status_code}: {_error_text(resp)}")
            yield from self._watch_stream(resp, path, deadline)

    def _watch_stream(self, resp: Response, path: str, deadline: float) -> Iterator[WatchEvent]:
        sock = response_socket(resp)
        buffer = b""
        decoder = json.JSONDecoder()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if sock is not None:
                # Shrink the read timeout to what is left, so the whole watch stays within its bound.
                sock.settimeout(max(remaining, 0.01))
            try:
                chunk = resp.raw.read1(65536) if hasattr(resp.raw, "read1") else resp.raw.read(1)
            except (TimeoutError, RequestException, OSError, ValueError):
                return  # the time ran out (or the server went away): the watch is over
            except Exception as exc:  # urllib3 wraps socket timeouts in its own exception types
                if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
                    return
                raise self._fail(path, f"watch stream failed: {exc}") from exc
            if not chunk:
                return
            buffer += chunk
            text = buffer.decode("utf-8", "replace")
            pos = 0
            while True:
                while pos < len(text) and text[pos] in " \r\n\t":
                    pos += 1
                if pos >= len(text):
                    break
                try:
                    message, end = decoder.raw_decode(text, pos)
                except ValueError:
                    break  # an incomplete message: wait for more bytes
                pos = end
                yield from self._watch_events(message, path)
            buffer = text[pos:].encode("utf-8")

    def _watch_events(self, message: Any, path: str) -> Iterator[WatchEvent]:
        if not isinstance(message, dict):
            raise self._fail(path, f"watch sent something that is not an object: {str(message)[:80]!r}")
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise self._fail(path, f"watch error: {text}")
        try:
            events = self._parse_watch_result(message.get("result") or {}, path)
        except (AttributeError, TypeError, ValueError) as exc:  # a server answer of the wrong shape
            raise self._fail(path, f"unexpected watch message: {exc}") from exc
        yield from events

    def _parse_watch_result(self, result: Any, path: str) -> list[WatchEvent]:
        if not isinstance(result, dict):
            raise TypeError(f"result is {type(result).__name__}, not an object")
        if result.get("canceled"):
            raise self._fail(path, f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
        header = result.get("header") or {}
        if not isinstance(header, dict):
            raise TypeError("header is not an object")
        revision = _int(header.get("revision"))
        out = []
        for event in result.get("events") or ():
            kv = event.get("kv") or {}
            if not isinstance(kv, dict):
                raise TypeError("kv is not an object")
            kind: Literal["PUT", "DELETE"] = "DELETE" if event.get("type") == "DELETE" else "PUT"  # PUT=0: omitted
            out.append(WatchEvent(type=kind, kv=_kv(kv), revision=revision))
        return out

    # -- v2 keys (fleet, v2 discovery) -----------------------------------------------------------------

    def _v2(
        self,
        method: str,
        key: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        path = "/v2/keys/" + key.lstrip("/")
        resp = self._send(method, path, params=params, data=data, ok_statuses=(400, 403, 404, 409, 412))
        body = self._json(resp, path)
        if "errorCode" in body:
            if missing_ok and body.get("errorCode") == 100:  # Key not found
                return None
            raise self._fail(path, f"v2 error {body.get('errorCode')}: {body.get('message')} ({body.get('cause', '')})")
        if resp.status_code >= 400:
            raise self._fail(path, f"HTTP {resp.status_code}: {_error_text(resp)}")
        return body

    def v2_get(self, key: str, *, recursive: bool = False) -> V2Node | None:
        """A v2 key or directory (with children when ``recursive``), or None if it does not exist."""
        params = {"recursive": "true"} if recursive else None
        body = self._v2("GET", key, params=params, missing_ok=True)
        return None if body is None else self._v2_node(body, key)

    def v2_set(self, key: str, value: str, *, ttl: int | None = None, prev_exist: bool | None = None) -> V2Node:
        """Set a v2 key (``prev_exist`` False = create only, True = update only)."""
        data = {"value": value}
        if ttl is not None:
            data["ttl"] = str(ttl)
        if prev_exist is not None:
            data["prevExist"] = "true" if prev_exist else "false"
        return self._v2_node(self._v2("PUT", key, data=data) or {}, key)

    def v2_mkdir(self, key: str, *, ttl: int | None = None) -> V2Node:
        """Create a v2 directory (an error if something exists there)."""
        data = {"dir": "true", "prevExist": "false"}
        if ttl is not None:
            data["ttl"] = str(ttl)
        return self._v2_node(self._v2("PUT", key, data=data) or {}, key)

    def v2_delete(self, key: str, *, recursive: bool = False, dir: bool = False) -> bool:
        """Delete a v2 key (a directory needs ``dir`` or ``recursive``); False if it did not exist."""
        params = {}
        if recursive:
            params["recursive"] = "true"
        if dir or recursive:
            params["dir"] = "true"
        return self._v2("DELETE", key, params=params or None, missing_ok=True) is not None

    def _v2_node(self, body: Mapping[str, Any], key: str) -> V2Node:
        try:
            return _v2_node(body["node"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._fail("/v2/keys/" + key.lstrip("/"), f"unexpected answer: {exc!r}") from exc


def _kv(item: Mapping[str, Any]) -> KV:
    return KV(
        key=_unb64(item.get("key")),
        value=_unb64(item.get("value")),
        create_revision=_int(item.get("create_revision")),
        mod_revision=_int(item.get("mod_revision")),
        version=_int(item.get("version")),
        lease=_int(item.get("lease")),
    )


def _v2_node(node: Mapping[str, Any]) -> V2Node:
    ttl = node.get("ttl")
    return V2Node(
        key=str(node.get("key", "/")),
        value=None if node.get("dir") else str(node.get("value", "")),
        dir=bool(node.get("dir", False)),
        created_index=_int(node.get("createdIndex")),
        modified_index=_int(node.get("modifiedIndex")),
        ttl=None if ttl is None else _int(ttl),
        nodes=tuple(_v2_node(child) for child in node.get("nodes") or ()),
    )


def _error_text(resp: Response) -> str:
    """The useful part of an error answer: etcd's JSON message if there is one, else the start of the body."""
    try:
        body = resp.json()
    except ValueError:
        return _one_line(resp.text or resp.reason or "no body", 100)
    if isinstance(body, dict):
        for field in ("message", "error"):
            if isinstance(body.get(field), str):
                return _one_line(body[field], 100)
    return _one_line(json.dumps(body), 100)


def _describe_connection_error(exc: RequestException) -> str:
    text = str(exc)
    if isinstance(exc, SSLError):
        # the reason ("certificate verify failed", "bad certificate") sits at the end of urllib3's long text
        match = re.search(r"\[SSL[^\]]*\]\s*([^()'\"]+)", text) or re.search(
            r"(SSLV3_ALERT_\w+|[a-z ]*certificate[a-z ]*)", text
        )
        reason = match.group(0) if match else "handshake failed"
        return f"TLS error: {_one_line(reason, 100)}"
    for marker, said in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed without an answer"),
        ("timed out", "timed out"),
    ):
        if marker in text:
            return said
    return f"cannot connect: {_one_line(text, 100)}"


def cluster_health(clients: Mapping[str, EtcdClient]) -> ClusterHealth:
    """Ask every endpoint for its status at once; a member that does not answer is reported, never hidden.

    The member count comes from the member list of the first endpoint that answers (falling back to the
    number of endpoints), so stopped members count against quorum.
    """
    from concurrent.futures import ThreadPoolExecutor

    def probe(item: tuple[str, EtcdClient]) -> MemberHealth:
        name, client = item
        try:
            st = client.status()
        except EtcdError:
            # Asked once more before it counts against the cluster: on a loaded host (three software-emulated
            # VMs on two cores) one status answer over a forwarded TLS connection can miss the timeout while
            # the member is fine (seen in CI: `up` reported 3/3 healthy, the `status` right after 2/3). A
            # member that is really down refuses at once, or was already dropped for an unreachable node.
            try:
                st = client.status()
            except EtcdError as exc:
                return MemberHealth(name=name, ok=False, error=str(exc))
        return MemberHealth(
            name=name, ok=True, member_id=st.member_id, leader=st.leader, raft_term=st.raft_term, version=st.version
        )

    items = list(clients.items())
    if not items:
        return ClusterHealth(members=(), leader=0, member_count=0)
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        members = tuple(pool.map(probe, items))
    member_count = len(items)
    for name, client in items:
        if any(m.name == name and m.ok for m in members):
            try:
                member_count = len(client.member_list())
                break
            except EtcdError:
                continue
    # The leader is the one most answering members name (normally all of them agree).
    votes: dict[int, int] = {}
    for m in members:
        if m.ok and m.leader:
            votes[m.leader] = votes.get(m.leader, 0) + 1
    leader = max(votes, key=lambda lid: votes[lid]) if votes else 0
    return ClusterHealth(members=members, leader=leader, member_count=member_count)
