"""EtcdClient against Debian's real etcd 3.4 on loopback: one member, a 3-member cluster, a fake bad server."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from coreos_lab.errors import EtcdError
from coreos_lab.etcd import ClusterHealth, EtcdClient, cluster_health
from tests.integration.etcd_rig import EtcdCluster, EtcdMember, etcd_cluster3, etcd_single, free_port

pytestmark = pytest.mark.integration
__all__ = ["etcd_cluster3", "etcd_single"]  # fixtures used below


@pytest.fixture
def client(etcd_single: EtcdMember) -> Iterator[EtcdClient]:
    with EtcdClient(etcd_single.url) as c:
        yield c


def _unique(name: str) -> str:
    return f"/test/{name}/{time.monotonic_ns()}"


def test_version_health_and_prefix(client: EtcdClient) -> None:
    version = client.version()
    assert version["etcdserver"].startswith("3.4.")
    assert client.api_prefix() == "/v3"
    assert client.health() is True


def test_bytes_round_trip_exactly(client: EtcdClient) -> None:
    base = _unique("bytes").encode()
    key = base + b"/\xff\xfe\x00\x80k\n"
    value = bytes(range(256))
    rev = client.put(key, value)
    kv = client.get(key)
    assert kv is not None
    assert kv.key == key
    assert kv.value == value
    assert kv.mod_revision == rev
    assert kv.create_revision == rev
    assert kv.version == 1
    assert client.put(key, b"") > rev
    again = client.get(key)
    assert again is not None
    assert again.value == b""
    assert again.version == 2


def test_prefix_range_and_delete(client: EtcdClient) -> None:
    base = _unique("range")
    for name in ("b", "a", "c/d"):
        client.put(f"{base}/{name}", name)
    client.put(f"{base}0", "outside: same bytes but not under the prefix")
    kvs = client.range(f"{base}/")
    assert [kv.key_text for kv in kvs] == [f"{base}/a", f"{base}/b", f"{base}/c/d"]
    assert client.delete(f"{base}/a") == 1
    assert client.delete(f"{base}/a") == 0
    assert client.get(f"{base}/a") is None
    assert client.delete(f"{base}/", prefix=True) == 2
    assert client.range(f"{base}/") == []
    assert client.get(f"{base}0") is not None


def test_cas_race_exactly_one_writer_wins(etcd_single: EtcdMember) -> None:
    key = _unique("cas")
    seed = EtcdClient(etcd_single.url)
    seed.put(key, "v0")
    current = seed.get(key)
    assert current is not None
    results: dict[str, bool] = {}
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        c = EtcdClient(etcd_single.url)  # own session: two real concurrent connections
        barrier.wait(5)
        results[name] = c.txn_put_if(key, name, expect_mod_revision=current.mod_revision)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results.values()) == [False, True]
    winner = next(n for n, ok in results.items() if ok)
    final = seed.get(key)
    assert final is not None
    assert final.value == winner.encode()
    # Create-if-absent: only the first create succeeds.
    fresh = _unique("create")
    assert seed.txn_put_if(fresh, "1", expect_mod_revision=None) is True
    assert seed.txn_put_if(fresh, "2", expect_mod_revision=0) is False
    # Conditional delete honours the revision.
    kv = seed.get(fresh)
    assert kv is not None
    assert seed.txn_delete_if(fresh, expect_mod_revision=kv.mod_revision + 100) is False
    assert seed.txn_delete_if(fresh, expect_mod_revision=kv.mod_revision) is True
    assert seed.get(fresh) is None


def test_watch_sees_a_put_and_a_delete(client: EtcdClient, etcd_single: EtcdMember) -> None:
    base = _unique("watch")

    def writer() -> None:
        time.sleep(0.3)
        other = EtcdClient(etcd_single.url)
        other.put(f"{base}/k", b"\x00hello")
        other.delete(f"{base}/k")

    thread = threading.Thread(target=writer)
    thread.start()
    events = []
    started = time.monotonic()
    for event in client.watch(f"{base}/", prefix=True, timeout=10):
        events.append(event)
        if len(events) == 2:
            break
    thread.join(5)
    assert [e.type for e in events] == ["PUT", "DELETE"]
    assert events[0].kv.key == f"{base}/k".encode()
    assert events[0].kv.value == b"\x00hello"
    assert time.monotonic() - started < 5


def test_watch_ends_at_its_timeout_and_replays_history(client: EtcdClient) -> None:
    key = _unique("quiet")
    started = time.monotonic()
    assert list(client.watch(key, timeout=0.6)) == []
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    rev = client.put(key, "1")
    client.put(key, "2")
    replay = []
    for event in client.watch(key, start_revision=rev, timeout=5):
        replay.append(event.kv.value)
        if len(replay) == 2:
            break
    assert replay == [b"1", b"2"]


def test_v2_keys(client: EtcdClient) -> None:
    base = _unique("v2").replace("/test/", "/v2test/")
    assert client.v2_get(base) is None
    client.v2_mkdir(base)
    with pytest.raises(EtcdError, match="v2 error 105: Key already exists"):
        client.v2_mkdir(base)
    node = client.v2_set(f"{base}/_config/size", "3")
    assert node.value == "3"
    with pytest.raises(EtcdError, match="v2 error 105"):
        client.v2_set(f"{base}/_config/size", "5", prev_exist=False)
    with pytest.raises(EtcdError, match="v2 error 102: Not a file"):
        client.v2_set(base, "a directory is not a key")
    client.v2_set(f"{base}/members/m1", "http://127.0.0.1:2380")
    tree = client.v2_get(base, recursive=True)
    assert tree is not None
    assert tree.dir
    # v2 hides keys starting with "_" from listings (that is how discovery keeps _config apart)
    assert [c.key for c in tree.nodes] == [f"{base}/members"]
    assert tree.nodes[0].nodes[0].value == "http://127.0.0.1:2380"
    size = client.v2_get(f"{base}/_config/size")
    assert size is not None
    assert size.value == "3"
    ttl = client.v2_set(f"{base}/ephemeral", "x", ttl=60)
    assert ttl.ttl is not None
    assert 0 < ttl.ttl <= 60
    assert client.v2_delete(base, recursive=True) is True
    assert client.v2_delete(base, recursive=True) is False
    assert client.v2_get(base) is None


def test_single_member_status_and_members(client: EtcdClient, etcd_single: EtcdMember) -> None:
    [member] = client.member_list()
    assert member.name == etcd_single.name
    assert member.client_urls == (etcd_single.url,)
    status = client.status()
    assert status.is_leader
    assert status.version.startswith("3.4.")


def test_connection_refused_is_one_line() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(EtcdError) as info:
        EtcdClient(f"http://127.0.0.1:{port}", timeout=2).get("k")
    assert str(info.value) == f"etcd http://127.0.0.1:{port}/version: connection refused"


# -- a tiny misbehaving HTTP server on loopback ---------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Callable[[http.server.BaseHTTPRequestHandler], None]

    def do_GET(self) -> None:
        type(self).behaviour(self)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        return None


def _reply(
    status: int, body: bytes, ctype: str = "application/json"
) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        h.rfile.read(length)
        if h.path == "/version":
            status_, body_ = 200, b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}'
        else:
            status_, body_ = status, body
        h.send_response(status_)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body_)))
        h.end_headers()
        h.wfile.write(body_)

    return handle


def _hang(h: http.server.BaseHTTPRequestHandler) -> None:
    time.sleep(2.5)


@pytest.fixture
def bad_server() -> Iterator[Callable[[Callable[[http.server.BaseHTTPRequestHandler], None]], str]]:
    servers: list[socketserver.TCPServer] = []

    def start(behaviour: Callable[[http.server.BaseHTTPRequestHandler], None]) -> str:
        handler = type("H", (_Handler,), {"behaviour": staticmethod(behaviour)})
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (_reply(500, b"boom\ntrace line 2\n", "text/plain"), r"/v3/kv/range: HTTP 500: boom trace line 2$"),
        (_reply(200, b"\x00\xffgarbage{", "text/plain"), r"/v3/kv/range: answered non-JSON \(HTTP 200\)"),
        (_reply(200, b'{"kvs": "not a list of objects"}'), r"/v3/kv/range: unexpected answer"),
        (_reply(404, b"404 page not found\n", "text/plain"), r"/v3/kv/range: HTTP 404: 404 page not found$"),
        (_hang, r"/version: timed out after 1s$"),
    ],
)
def test_bad_servers_give_one_line_errors(
    bad_server: Callable[[Callable[[http.server.BaseHTTPRequestHandler], None]], str],
    behaviour: Callable[[http.server.BaseHTTPRequestHandler], None],
    message: str,
) -> None:
    url = bad_server(behaviour)
    with pytest.raises(EtcdError, match=message) as info:
        EtcdClient(url, timeout=1).get("k")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"etcd {url}")


# -- three members -----------------------------------------------------------------------------------------


def _wait_for(
    check: Callable[[], ClusterHealth], want: Callable[[ClusterHealth], bool], timeout: float
) -> ClusterHealth:
    deadline = time.monotonic() + timeout
    health = check()
    while not want(health) and time.monotonic() < deadline:
        time.sleep(0.25)
        health = check()
    return health


def test_three_members_health_and_quorum(etcd_cluster3: EtcdCluster) -> None:
    clients = {m.name: EtcdClient(m.url, timeout=2) for m in etcd_cluster3.members}
    members = clients["m1"].member_list()
    assert sorted(m.name for m in members) == ["m1", "m2", "m3"]
    assert {u for m in members for u in m.client_urls} == set(etcd_cluster3.urls)

    def check() -> ClusterHealth:
        return cluster_health(clients)

    health = _wait_for(check, lambda h: h.healthy, 10)
    assert health.healthy
    assert health.has_quorum
    assert health.member_count == 3
    assert health.leader in {m.id for m in members}

    # Stop the leader's member: the other two elect a new leader and keep quorum.
    leader_name = next(m.name for m in members if m.id == health.leader)
    etcd_cluster3.members[int(leader_name[1:]) - 1].stop()
    health = _wait_for(check, lambda h: h.has_quorum and h.leader != 0, 15)
    assert health.has_quorum
    assert not health.healthy
    down = [m for m in health.members if not m.ok]
    assert [m.name for m in down] == [leader_name]
    assert "connection refused" in (down[0].error or "")
    survivor = next(c for n, c in clients.items() if n != leader_name)
    assert survivor.put("/q", "still writable") > 0

    # Stop a second member: no quorum; the last one answers status but sees no leader.
    second = next(m for m in etcd_cluster3.members if m.pid is not None)
    second.stop()
    health = _wait_for(check, lambda h: not h.has_quorum, 15)
    assert not health.has_quorum
    assert not health.healthy
    assert sum(m.ok for m in health.members) == 1
    last = next(m for m in etcd_cluster3.members if m.pid is not None)
    assert clients[last.name].health() is False

    # Bring both back (same data dirs): healthy again.
    for member in etcd_cluster3.members:
        member.start()
    etcd_cluster3.wait_healthy(30)
    health = _wait_for(check, lambda h: h.healthy, 15)
    assert health.healthy
    assert clients[last.name].get("/q") is not None


def test_through_an_ssh_tunnel(etcd_single: EtcdMember, tmp_path: Path) -> None:
    """The same client over a paramiko port forward (the way nodes are reached): it must not care."""
    from coreos_lab.ssh import SSHRunner
    from coreos_lab.sshconfig import SSHTarget
    from tests.conftest import require_binary
    from tests.integration.sshd import KeyPair, Sshd

    require_binary("sshd")
    keys = KeyPair.create(tmp_path / "keys")
    server = Sshd.start(keys, tmp_path)
    try:
        target = SSHTarget(
            "tunnel",
            "127.0.0.1",
            server.port,
            server.user,
            identity_files=(str(keys.private),),
            user_known_hosts_file="/dev/null",
            strict_host_key_checking="no",
        )
        with SSHRunner(target) as runner:
            host, port = runner.forward("127.0.0.1", etcd_single.client_port)
            with requests.Session() as session:
                tunneled = EtcdClient(f"http://{host}:{port}", session=session)
                key = _unique("tunnel").encode() + b"\xff"
                tunneled.put(key, b"\x01\x02")
                kv = EtcdClient(etcd_single.url).get(key)
                assert kv is not None
                assert kv.value == b"\x01\x02"
                assert tunneled.health()
                assert runner.connect_count == 1
    finally:
        server.stop()


# -- the CLI against a loopback member (nodes are LocalRunners: http_base is the address itself) -----------


def _cli(monkeypatch: pytest.MonkeyPatch, member: EtcdMember, *args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    import coreos_lab.cluster
    from coreos_lab.cli import app
    from coreos_lab.cluster import Cluster
    from coreos_lab.runner import LocalRunner

    monkeypatch.setattr(coreos_lab.cluster, "open_cluster", lambda **kwargs: Cluster({"m1": LocalRunner("m1")}))
    result = CliRunner().invoke(app, [*args, "--port", str(member.client_port)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_etcd_commands(monkeypatch: pytest.MonkeyPatch, etcd_single: EtcdMember) -> None:
    import json

    base = _unique("cli")
    code, out, err = _cli(monkeypatch, etcd_single, "etcd", "put", f"{base}/k", "v 1")
    assert code == 0, err
    assert out.startswith("OK (revision ")
    code, out, _ = _cli(monkeypatch, etcd_single, "etcd", "get", f"{base}/", "--prefix", "--json")
    assert [(kv["key"], kv["value"]) for kv in json.loads(out)] == [(f"{base}/k", "v 1")]
    code, out, err = _cli(monkeypatch, etcd_single, "etcd", "get", f"{base}/nothing")
    assert (code, out) == (1, "")
    assert err == f"error: key not found: {base}/nothing\n"
    code, out, _ = _cli(monkeypatch, etcd_single, "etcd", "members", "--json")
    assert [m["name"] for m in json.loads(out)] == [etcd_single.name]
    code, out, _ = _cli(monkeypatch, etcd_single, "etcd", "health", "--json")
    assert code == 0
    assert json.loads(out)["healthy"] is True
    code, out, _ = _cli(monkeypatch, etcd_single, "etcd", "del", f"{base}/", "--prefix")
    assert (code, out) == (0, "deleted 1\n")
    code, out, _ = _cli(monkeypatch, etcd_single, "etcd", "watch", base, "--for", "0.5")
    assert (code, out) == (0, "")


def test_cli_etcd_down_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import coreos_lab.cluster
    from coreos_lab.cli import app
    from coreos_lab.cluster import Cluster
    from coreos_lab.runner import LocalRunner

    monkeypatch.setattr(coreos_lab.cluster, "open_cluster", lambda **kwargs: Cluster({"m1": LocalRunner("m1")}))
    port = free_port()
    result = CliRunner().invoke(app, ["etcd", "get", "k", "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: no node's etcd answered: m1: etcd http://127.0.0.1:{port}/version: connection refused\n"
    )
    health = CliRunner().invoke(app, ["etcd", "health", "--port", str(port)])
    assert health.exit_code == 1
    assert "cluster is unhealthy (NO QUORUM" in health.stdout


def test_txn_put_if_revision_is_the_keys_new_mod_revision(client: EtcdClient) -> None:
    key = _unique("txnrev")
    first = client.txn_put_if_revision(key, b"a", expect_mod_revision=None)
    assert first is not None
    kv = client.get(key)
    assert kv is not None
    assert kv.mod_revision == first
    assert client.txn_put_if_revision(key, b"b", expect_mod_revision=None) is None  # exists already
    assert client.txn_put_if_revision(key, b"b", expect_mod_revision=first - 1) is None  # stale compare
    second = client.txn_put_if_revision(key, b"b", expect_mod_revision=first)
    assert second is not None
    assert second > first
    after = client.get(key)
    assert after is not None
    assert (after.value, after.mod_revision) == (b"b", second)
