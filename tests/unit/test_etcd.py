"""EtcdClient decisions and parsing, with a fake requests transport (no sockets)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from coreos_lab.errors import EtcdError
from coreos_lab.etcd import (
    ClusterHealth,
    EndpointStatus,
    EtcdClient,
    MemberHealth,
    cluster_health,
    gateway_prefix,
    prefix_range_end,
)

Handler = Callable[[requests.PreparedRequest], tuple[int, Any]]


class FakeTransport(requests.adapters.BaseAdapter):
    """Answers each request from ``routes[path]``; records requests."""

    def __init__(self, routes: Mapping[str, Handler | tuple[int, Any]]) -> None:
        super().__init__()
        self.routes = dict(routes)
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.requests.append(request)
        path = (request.path_url or "/").split("?")[0]
        route = self.routes.get(path)
        if route is None:
            status, body = 404, "404 page not found\n"
        elif callable(route):
            status, body = route(request)
        else:
            status, body = route
        if isinstance(body, Exception):
            raise body
        resp = requests.Response()
        resp.status_code = status
        resp._content = (
            body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
        )
        resp.url = request.url or ""
        resp.request = request
        return resp

    def close(self) -> None:
        return None


def client(routes: Mapping[str, Handler | tuple[int, Any]], **kwargs: Any) -> tuple[EtcdClient, FakeTransport]:
    transport = FakeTransport({"/version": (200, {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}), **routes})
    session = requests.Session()
    session.mount("http://", transport)
    return EtcdClient("http://node:2379/", session=session, **kwargs), transport


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body_of(request: requests.PreparedRequest) -> Any:
    raw = request.body
    return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))


# -- pure helpers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "prefix"),
    [("3.2.32", "/v3alpha"), ("3.3.27", "/v3beta"), ("3.4.23", "/v3"), ("3.5.17", "/v3"), ("3.6.0", "/v3")],
)
def test_gateway_prefix_by_version(version: str, prefix: str) -> None:
    assert gateway_prefix(version) == prefix


def test_gateway_prefix_rejects_nonsense() -> None:
    with pytest.raises(EtcdError, match="cannot understand"):
        gateway_prefix("banana")


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=4))
def test_prefix_range_end_bounds_exactly_the_prefix(prefix: bytes, tail: bytes) -> None:
    end = prefix_range_end(prefix)
    assert prefix + tail < end or end == b"\x00"  # every key with the prefix sorts before the end
    if end != b"\x00":
        assert not end.startswith(prefix)  # and the end itself is outside the prefix


# -- v3 requests and answers ----------------------------------------------------------------------------


def test_prefix_detected_once_and_cached() -> None:
    c, transport = client({"/v3/kv/put": (200, {"header": {"revision": "7"}})})
    assert c.put("k", "v") == 7
    assert c.put("k", "v") == 7
    paths = [r.path_url for r in transport.requests]
    assert paths == ["/version", "/v3/kv/put", "/v3/kv/put"]


def test_old_server_uses_v3beta() -> None:
    c, transport = client(
        {"/version": (200, {"etcdserver": "3.3.11"}), "/v3beta/kv/range": (200, {"header": {"revision": "1"}})}
    )
    assert c.get("x") is None
    assert transport.requests[-1].path_url == "/v3beta/kv/range"


def test_put_and_get_send_and_return_exact_bytes() -> None:
    key, value = b"/\xff\x00k\n", b"\x00\x80\xfe"

    def rng(req: requests.PreparedRequest) -> tuple[int, Any]:
        body = body_of(req)
        assert base64.b64decode(body["key"]) == key
        assert "range_end" not in body
        kv = {"key": b64(key), "value": b64(value), "create_revision": "3", "mod_revision": "5", "version": "2"}
        return 200, {"header": {"revision": "5"}, "kvs": [kv], "count": "1"}

    c, transport = client({"/v3/kv/range": rng, "/v3/kv/put": (200, {"header": {"revision": "5"}})})
    c.put(key, value)
    put_body = body_of(transport.requests[-1])
    assert base64.b64decode(put_body["key"]) == key
    assert base64.b64decode(put_body["value"]) == value
    kv = c.get(key)
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (key, value, 3, 5, 2)
    assert kv.to_json()["key_b64"] == b64(key)


def test_range_asks_for_prefix_end_and_empty_value_is_empty_bytes() -> None:
    def rng(req: requests.PreparedRequest) -> tuple[int, Any]:
        body = body_of(req)
        assert base64.b64decode(body["range_end"]) == b"/a0"
        return 200, {"header": {}, "kvs": [{"key": b64(b"/a/x"), "create_revision": "2", "mod_revision": "2"}]}

    c, _ = client({"/v3/kv/range": rng})
    [kv] = c.range("/a/")
    assert kv.value == b""
    assert kv.version == 0  # omitted zero values read as 0


def test_delete_counts_and_zero_is_omitted() -> None:
    answers = iter([{"header": {}, "deleted": "3"}, {"header": {}}])
    c, transport = client({"/v3/kv/deleterange": lambda req: (200, next(answers))})
    assert c.delete("/p/", prefix=True) == 3
    assert base64.b64decode(body_of(transport.requests[-1])["range_end"]) == b"/p0"
    assert c.delete("/gone") == 0
    assert "range_end" not in body_of(transport.requests[-1])


@pytest.mark.parametrize(
    ("expect", "compare"),
    [
        (None, {"target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
        (0, {"target": "CREATE", "result": "EQUAL", "create_revision": "0"}),
        (42, {"target": "MOD", "result": "EQUAL", "mod_revision": "42"}),
    ],
)
def test_txn_put_if_builds_the_compare(expect: int | None, compare: dict[str, str]) -> None:
    seen: list[Any] = []

    def txn(req: requests.PreparedRequest) -> tuple[int, Any]:
        seen.append(body_of(req))
        return 200, {"header": {}, "succeeded": True}

    c, _ = client({"/v3/kv/txn": txn})
    assert c.txn_put_if("k", b"v", expect_mod_revision=expect) is True
    [body] = seen
    assert body["compare"] == [{**compare, "key": b64(b"k")}]
    assert body["success"] == [{"request_put": {"key": b64(b"k"), "value": b64(b"v")}}]


def test_txn_failure_is_false_when_gateway_omits_succeeded() -> None:
    c, _ = client({"/v3/kv/txn": (200, {"header": {"revision": "9"}})})
    assert c.txn_put_if("k", "v", expect_mod_revision=3) is False
    assert c.txn_delete_if("k", expect_mod_revision=3) is False


def test_member_list_and_status_parse_uint64_strings() -> None:
    c, _ = client(
        {
            "/v3/cluster/member/list": (
                200,
                {"members": [{"ID": "18446744073709551615", "name": "a", "peerURLs": ["http://p"], "clientURLs": []}]},
            ),
            "/v3/maintenance/status": (
                200,
                {
                    "header": {"member_id": "10"},
                    "leader": "10",
                    "raftTerm": "4",
                    "version": "3.4.23",
                    "dbSize": "20480",
                },
            ),
        }
    )
    [m] = c.member_list()
    assert m.id == 2**64 - 1
    assert m.id_hex == "ffffffffffffffff"
    assert m.peer_urls == ("http://p",)
    st_ = c.status()
    assert st_ == EndpointStatus(member_id=10, leader=10, raft_term=4, raft_index=0, version="3.4.23", db_size=20480)
    assert st_.is_leader


def test_health_true_false_and_503() -> None:
    answers = iter([(200, {"health": "true"}), (503, {"health": "false", "reason": "RAFT NO LEADER"})])
    c, _ = client({"/health": lambda req: next(answers)})
    assert c.health() is True
    assert c.health() is False


# -- errors: always one line naming the endpoint ------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ((500, "internal\nserver\nerror"), r"HTTP 500: internal server error"),
        ((200, b"<html>not json</html>"), r"answered non-JSON"),
        ((200, [1, 2]), r"not an object"),
        ((200, {"header": {}, "kvs": [{"key": "!!notbase64"}]}), r"unexpected answer"),
        ((400, {"error": "etcdserver: key is not provided", "code": 3}), r"HTTP 400: etcdserver: key is not provided"),
        ((200, requests.exceptions.ConnectionError("[Errno 111] Connection refused")), r"connection refused"),
        ((200, requests.exceptions.ReadTimeout("read timed out")), r"timed out after 5s"),
    ],
)
def test_errors_are_one_line(answer: tuple[int, Any], match: str) -> None:
    c, _ = client({"/v3/kv/range": answer})
    with pytest.raises(EtcdError, match=match) as info:
        c.get("k")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("etcd http://node:2379/v3/kv/range: ")


def test_version_without_server_field_is_an_error() -> None:
    c, _ = client({"/version": (200, {"hello": "world"})})
    with pytest.raises(EtcdError, match="without an etcdserver version"):
        c.api_prefix()


# -- v2 -----------------------------------------------------------------------------------------------


def test_v2_get_missing_is_none_and_other_errors_raise() -> None:
    answers = iter(
        [
            (404, {"errorCode": 100, "message": "Key not found", "cause": "/x", "index": 3}),
            (403, {"errorCode": 102, "message": "Not a file", "cause": "/d", "index": 3}),
        ]
    )
    c, _ = client({"/v2/keys/x": lambda req: next(answers)})
    assert c.v2_get("/x") is None
    with pytest.raises(EtcdError, match="v2 error 102: Not a file"):
        c.v2_get("x")


def test_v2_set_sends_form_and_parses_tree() -> None:
    def keys(req: requests.PreparedRequest) -> tuple[int, Any]:
        assert req.method == "PUT"
        assert req.body == "value=a+b%26c&ttl=30&prevExist=false"
        node = {"key": "/d/k", "value": "a b&c", "createdIndex": 5, "modifiedIndex": 5, "ttl": 30}
        return 201, {"action": "create", "node": node}

    c, _ = client({"/v2/keys/d/k": keys})
    node = c.v2_set("/d/k", "a b&c", ttl=30, prev_exist=False)
    assert (node.key, node.value, node.ttl, node.dir) == ("/d/k", "a b&c", 30, False)


# -- cluster health -----------------------------------------------------------------------------------


class StubClient(EtcdClient):
    def __init__(self, status: EndpointStatus | None, members: int = 3) -> None:
        super().__init__("http://stub")
        self._status = status
        self._members = members

    def status(self) -> EndpointStatus:
        if self._status is None:
            raise EtcdError("etcd http://stub: connection refused")
        return self._status

    def member_list(self) -> list[Any]:
        if self._status is None:
            raise EtcdError("etcd http://stub: connection refused")
        return [object()] * self._members


def _st(member: int, leader: int) -> EndpointStatus:
    return EndpointStatus(member_id=member, leader=leader, raft_term=2, raft_index=1, version="3.4.23", db_size=1)


def test_cluster_health_all_up() -> None:
    health = cluster_health({"a": StubClient(_st(1, 2)), "b": StubClient(_st(2, 2)), "c": StubClient(_st(3, 2))})
    assert health.healthy
    assert health.has_quorum
    assert health.leader == 2
    assert health.member_count == 3


def test_cluster_health_one_down_keeps_quorum_two_down_loses_it() -> None:
    one_down = cluster_health({"a": StubClient(_st(1, 2)), "b": StubClient(_st(2, 2)), "c": StubClient(None)})
    assert not one_down.healthy
    assert one_down.has_quorum
    assert [m.ok for m in one_down.members] == [True, True, False]
    assert "connection refused" in (one_down.members[2].error or "")
    two_down = cluster_health({"a": StubClient(_st(1, 0)), "b": StubClient(None), "c": StubClient(None)})
    assert not two_down.healthy
    assert not two_down.has_quorum
    assert two_down.leader == 0


class OnceSlowClient(StubClient):
    """Times out on the first status call only, like one answer lost on a loaded host."""

    def __init__(self, status: EndpointStatus) -> None:
        super().__init__(status)
        self.calls = 0

    def status(self) -> EndpointStatus:
        self.calls += 1
        if self.calls == 1:
            raise EtcdError("etcd http://stub: timed out")
        return super().status()


def test_one_missed_status_answer_is_asked_again_before_it_counts() -> None:
    slow = OnceSlowClient(_st(3, 2))
    health = cluster_health({"a": StubClient(_st(1, 2)), "b": StubClient(_st(2, 2)), "c": slow})
    assert (health.healthy, slow.calls) == (True, 2)
    down = StubClient(None)
    calls: list[int] = []
    orig = down.status

    def counted() -> EndpointStatus:
        calls.append(1)
        return orig()

    down.status = counted  # type: ignore[method-assign]
    health = cluster_health({"a": StubClient(_st(1, 2)), "c": down})
    assert (health.healthy, len(calls)) == (False, 2)  # asked twice, then reported


def test_member_count_comes_from_member_list_not_endpoint_count() -> None:
    # Only 2 endpoints given, but the cluster has 5 members: 2 agreeing is not a majority of 5.
    health = cluster_health({"a": StubClient(_st(1, 2), members=5), "b": StubClient(_st(2, 2), members=5)})
    assert health.member_count == 5
    assert health.healthy  # every endpoint asked answered and agrees
    assert not health.has_quorum


def test_cluster_health_json_and_empty() -> None:
    empty = cluster_health({})
    assert not empty.healthy
    assert not empty.has_quorum
    health = ClusterHealth(members=(MemberHealth("a", True, member_id=255, leader=255),), leader=255, member_count=1)
    data = health.to_json()
    assert data["leader"] == "ff"
    assert data["members"][0]["member_id"] == "ff"
    assert data["healthy"] is True
