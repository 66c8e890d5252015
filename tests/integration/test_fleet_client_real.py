"""FleetClient over real HTTP (TCP, a unix socket, and curl through a Runner) against the fleet API double.

First the client replays the captures of the real fleet v1.0.0 (tests/fixtures/fleet-v1.0.0/api.txt): it must
send the requests curl sent and receive fleetd's answers byte for byte. Then it runs fleetctl's
submit/load/start/stop/destroy flow through the double.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from coreos_lab.errors import EtcdError, FleetError
from coreos_lab.etcd import EtcdClient
from coreos_lab.fleet import (
    FleetClient,
    HTTPAnswer,
    Transport,
    parse_etcd_registry,
    parse_machines,
    parse_states,
    parse_unit,
    parse_units_page,
)
from coreos_lab.runner import LocalRunner
from coreos_lab.state import PREFIX, EtcdKV, RecordStore, UnitRecord, update_record
from coreos_lab.unitfile import UnitFile
from tests.conftest import require_binary
from tests.fleet_double import FIXTURES, ApiExchange, FleetDouble, FleetState, load_api_exchanges, load_etcd_dump
from tests.integration.etcd_rig import EtcdMember, etcd_single

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
__all__ = ["etcd_single"]  # the fixture, used below

CAPTURES = load_api_exchanges()
MID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


class _Recording:
    """Wraps the client's own transport (coreos_lab's HTTP stack), keeping each answer the client received."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str, object, HTTPAnswer]] = []

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer:
        answer = self.inner.request(method, path, body, timeout)
        self.seen.append((method, path, None if body is None else json.loads(body), answer))
        return answer


def _recording(client: FleetClient) -> _Recording:
    client.transport = rec = _Recording(client.transport)
    return rec


def _as_captured(capture: ApiExchange) -> HTTPAnswer:
    return HTTPAnswer(capture.status, capture.body)


# Each captured GET (curl against fleetd v1.0.0) and the client call that must send that very request.
_GETS: dict[str, tuple[Callable[[FleetClient], object], Callable[[bytes], object]]] = {
    "/fleet/v1/machines": (lambda c: c.machines(), lambda b: parse_machines(json.loads(b))),
    "/fleet/v1/units": (lambda c: c.units(), lambda b: parse_units_page(json.loads(b))[0]),
    "/fleet/v1/units/global.service": (lambda c: c.unit("global.service"), lambda b: parse_unit(json.loads(b))),
    "/fleet/v1/state": (lambda c: c.states(), lambda b: parse_states(json.loads(b))),
    "/fleet/v1/state?unitName=global.service": (
        lambda c: c.states(unit_name="global.service"),
        lambda b: parse_states(json.loads(b)),
    ),
    f"/fleet/v1/state?machineID={MID}": (lambda c: c.states(machine_id=MID), lambda b: parse_states(json.loads(b))),
    "/fleet/v1/units/nope.service": (lambda c: c.unit("nope.service"), lambda b: None),
}


@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.path], ids=lambda c: c.title[:60])
def test_client_sends_each_captured_get_and_reads_fleets_answer(capture: ApiExchange, tmp_path: Path) -> None:
    """The client builds the request curl sent to the real fleetd, gets its bytes unaltered (TCP, or the unix
    socket where the capture used it) and parses them; nope.service's 404 is None, not an error."""
    call, expected = _GETS[capture.path]
    unix = "--unix-socket" in capture.title
    with FleetDouble(unix_socket=tmp_path / "fleet.sock" if unix else None) as fd:
        client = FleetClient(f"unix://{fd.socket_path}" if unix else fd.url, timeout=5)
        rec = _recording(client)
        got = call(client)
    assert rec.seen == [("GET", capture.path, None, _as_captured(capture))]
    assert got == expected(capture.body)


def test_client_write_sequence_gets_fleets_captured_answers() -> None:
    """fleetctl's submit+start, load, a start of an unknown unit, destroy: the client sends what fleetctl sent,
    receives what fleetd answered, and turns fleet's 409 into a FleetError carrying fleet's message."""
    by_title = {c.title: c for c in CAPTURES if not c.path}
    api = UnitFile.parse("[Service]\nExecStart=/bin/sleep 3000\n")
    with FleetDouble() as fd:
        client = FleetClient(fd.url, timeout=5)
        rec = _recording(client)
        client.create_unit(api, "launched", "api.service")
        client.set_desired_state("api.service", "loaded")
        with pytest.raises(FleetError) as refused:
            client.set_desired_state("bad.service", "launched")
        assert client.destroy("api.service") is True
        assert client.destroy("api.service") is False
    path = "/fleet/v1/units/api.service"
    created = {
        "name": "api.service",
        "desiredState": "launched",
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 3000"}],
    }
    assert [(m, p, b) for m, p, b, _ in rec.seen] == [
        ("PUT", path, created),
        ("PUT", path, {"desiredState": "loaded"}),
        ("PUT", "/fleet/v1/units/bad.service", {"desiredState": "launched"}),
        ("DELETE", path, None),
        ("DELETE", path, None),
    ]
    assert [a for *_, a in rec.seen[:4]] == [
        _as_captured(by_title["PUT units/api.service (new, launched)"]),
        _as_captured(by_title['PUT units/api.service {"desiredState":"loaded"}']),
        _as_captured(by_title["PUT units/bad.service without options"]),
        _as_captured(by_title["DELETE units/api.service"]),
    ]
    assert rec.seen[4][3].status == 404
    assert str(refused.value) == (
        "fleet API PUT /fleet/v1/units/bad.service: HTTP 409: unit does not exist and options field empty"
    )


def test_api_service_content_hashes_like_the_orphan_in_etcd():
    # the unit PUT above is the one whose content fleet left at /_coreos.com/fleet/unit/7dc08eb...
    unit = UnitFile.from_fleet_options(
        [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 3000"}], name="api.service"
    )
    assert unit.hash == "7dc08eb00f0c705e84a61e030d98e8cc3c994954"


def test_client_reads_the_captured_cluster_over_tcp():
    with FleetDouble() as fd:
        client = FleetClient(fd.url, timeout=5)
        assert [m.id for m in client.machines()] == [MID]
        assert [u.name for u in client.units()] == ["global.service", "oneshot@.service", "oneshot@1.service"]
        assert client.unit("global.service").current_state is None  # type: ignore[union-attr]
        assert client.unit("nope.service") is None
        assert [s.name for s in client.states(machine_id=MID)] == [
            "global.service",
            "hello.service",
            "oneshot@1.service",
        ]
        assert [s.name for s in client.states(unit_name="global.service")] == ["global.service"]


def test_fleetctl_flow_through_the_client():
    unit = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text(), name="hello.service")
    with FleetDouble() as fd:
        client = FleetClient(fd.url, timeout=5)
        assert client.ensure_unit(unit, "inactive") is True  # submit
        client.set_desired_state("hello.service", "loaded")  # load
        got = client.unit("hello.service")
        assert got is not None
        assert (got.desired_state, got.current_state, got.machine_id) == ("loaded", "loaded", MID)
        assert got.hash == unit.hash
        assert client.ensure_unit(unit, "launched") is False  # start
        state = next(iter(client.states(unit_name="hello.service")))
        assert (state.active_state, state.sub_state) == ("active", "running")
        with pytest.raises(FleetError, match="cannot activate template"):
            client.set_desired_state("oneshot@.service", "launched")
        with pytest.raises(FleetError, match="different content"):
            client.ensure_unit(UnitFile.parse("[Service]\nExecStart=/x\n", name="hello.service"), "launched")
        assert client.destroy("hello.service") is True
        assert client.destroy("hello.service") is False
        assert fd.state.requests[-1] == ("DELETE", "/fleet/v1/units/hello.service")


def test_pagination_over_real_http():
    state = FleetState.from_captures(page_limit=2)
    with FleetDouble(state) as fd:
        client = FleetClient(fd.url, timeout=5)
        for i in range(3):
            client.create_unit(UnitFile.parse(f"[Service]\nExecStart=/bin/sleep {i}\n"), "inactive", f"p{i}.service")
        names = [u.name for u in client.units()]
        assert names == sorted(names)
        assert len(names) == 6
        pages = [p for m, p in state.requests if m == "GET" and p.startswith("/fleet/v1/units")]
        assert len(pages) == 4  # 2+2+2, then fleet's empty page after a full one


def test_unix_socket(tmp_path: Path):
    sock = tmp_path / "fleet.sock"
    with FleetDouble(unix_socket=sock) as fd:
        client = FleetClient(f"unix://{fd.socket_path}", timeout=5)
        assert [m.primary_ip for m in client.machines()] == ["127.0.0.1"]
        unit = UnitFile.parse("[Service]\nExecStart=/bin/true\n", name="sock.service")
        client.create_unit(unit, "launched")
        assert client.unit("sock.service").desired_state == "launched"  # type: ignore[union-attr]


def test_curl_over_a_runner_to_the_unix_socket(tmp_path: Path):
    require_binary("curl")
    sock = tmp_path / "fleet.sock"
    with FleetDouble(unix_socket=sock) as fd:
        client = FleetClient.over_runner(LocalRunner("node-under-test"), socket_path=str(fd.socket_path))
        assert [m.id for m in client.machines()] == [MID]
        unit = UnitFile.parse((FIXTURES / "unitfiles/global.service").read_text(), name="g2.service")
        assert client.ensure_unit(unit, "launched") is True
        assert client.unit("g2.service").options == tuple(  # type: ignore[union-attr]
            (o.section, o.name, o.value) for o in unit.options
        )
        with pytest.raises(FleetError, match="HTTP 409: must provide DesiredState"):
            client._call("PUT", "/fleet/v1/units/g2.service", body={}, ok=(204,))
    with pytest.raises(FleetError, match="curl exited"):
        client.machines()  # the socket is gone


def test_unreachable_endpoint_is_a_fleet_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FleetError) as caught:
        FleetClient(f"http://127.0.0.1:{port}", timeout=2).machines()
    # One line naming the URL and the socket's reason, as fleetctl says it (not requests' nested repr).
    assert (
        str(caught.value)
        == f"cannot reach fleet at http://127.0.0.1:{port} (GET /fleet/v1/machines): connection refused"
    )


# ---- fleet's etcd layout and our desired-state records, on Debian's real etcd 3.4 ---------------------------------
def _leaves(node: dict) -> list[tuple[str, str]]:
    if node.get("dir"):
        return [leaf for child in node.get("nodes", []) for leaf in _leaves(child)]
    return [(node["key"], node["value"])]


def test_fleet_registry_read_straight_from_a_real_etcd_v2(etcd_single: EtcdMember) -> None:
    with EtcdClient(etcd_single.url) as client:
        for key, value in _leaves(load_etcd_dump()["node"]):
            client.v2_set(key, value)
    resp = requests.get(f"{etcd_single.url}/v2/keys/_coreos.com/fleet?recursive=true", timeout=10)
    assert resp.status_code == 200
    reg = parse_etcd_registry(resp.json())
    api = {c.path: c for c in CAPTURES if c.path}
    assert list(reg.units) == parse_units_page(json.loads(api["/fleet/v1/units"].body))[0]
    assert list(reg.machines) == parse_machines(json.loads(api["/fleet/v1/machines"].body))
    assert sorted(reg.states, key=lambda s: s.name) == parse_states(json.loads(api["/fleet/v1/state"].body))


def test_desired_state_records_on_a_real_etcd(etcd_single: EtcdMember) -> None:
    unit = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text(), name="hello.service")
    with EtcdClient(etcd_single.url) as client:
        store = RecordStore(EtcdKV(client))
        client.delete(PREFIX, prefix=True)
        first = store.put(UnitRecord.new(unit, "launched", ("core-01",)), expected_revision=0)
        assert first is not None
        assert store.put(UnitRecord.new(unit, "launched"), expected_revision=0) is None
        got = store.get("hello.service")
        assert got == first
        moved = store.put(first.evolve(targets=("core-02",)), expected_revision=first.revision)
        assert moved is not None
        assert moved.revision > first.revision
        assert store.put(first.evolve(targets=("core-03",)), expected_revision=first.revision) is None
        assert [r.targets for r in store.list()] == [("core-02",)]
        client.put(PREFIX + "broken.service", b"{garbage")
        with pytest.raises(EtcdError, match=r"broken\.service: invalid unit record: not JSON"):
            store.list()
        assert store.delete("broken.service") is True
        assert store.delete("hello.service", expected_revision=first.revision) is False
        assert store.delete("hello.service", expected_revision=moved.revision) is True
        assert store.list() == []


def test_two_concurrent_deploys_on_a_real_etcd_only_one_wins(etcd_single: EtcdMember) -> None:
    unit = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text(), name="race.service")
    results: list[UnitRecord | None] = []
    barrier = threading.Barrier(6)

    def deploy(i: int) -> None:
        with EtcdClient(etcd_single.url) as client:
            store = RecordStore(EtcdKV(client))
            record = UnitRecord.new(unit, "launched", (f"core-0{i}",))
            barrier.wait(timeout=10)
            results.append(store.put(record, expected_revision=0))

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [r for r in results if r is not None]
    assert len(results) == 6
    assert len(winners) == 1
    with EtcdClient(etcd_single.url) as client:
        stored = RecordStore(EtcdKV(client)).get("race.service")
        assert stored is not None
        assert stored.targets == winners[0].targets

        # and read-modify-write from several writers loses no update
        def add(i: int) -> None:
            with EtcdClient(etcd_single.url) as c:
                update_record(
                    RecordStore(EtcdKV(c)),
                    "race.service",
                    lambda cur: cur.evolve(targets=(*cur.targets, f"n{i}")) if cur else None,
                    attempts=50,
                )

        adders = [threading.Thread(target=add, args=(i,)) for i in range(4)]
        for t in adders:
            t.start()
        for t in adders:
            t.join(timeout=30)
        final = RecordStore(EtcdKV(client)).get("race.service")
        assert final is not None
        assert sorted(final.targets) == sorted([*winners[0].targets, "n0", "n1", "n2", "n3"])


def test_client_reports_fleets_refusals_with_fleets_message() -> None:
    """Requests fleet refuses by its own rules (api/units.go), not ours: the FleetError quotes fleet."""
    both = UnitFile.parse("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineID=x\n")
    with FleetDouble() as fd:
        client = FleetClient(fd.url, timeout=5)
        with pytest.raises(FleetError) as conflict:
            client.create_unit(both, "launched", "a.service")
        with pytest.raises(FleetError) as bad_type:
            client.create_unit(UnitFile.parse("[Service]\nExecStart=/bin/true\n"), "launched", "a.txt")
        assert client.unit("a.service") is None  # neither refused unit was stored
    assert (
        str(conflict.value) == "fleet API PUT /fleet/v1/units/a.service: HTTP 400: MachineID cannot be used with Global"
    )
    assert str(bad_type.value) == 'fleet API PUT /fleet/v1/units/a.txt: HTTP 400: invalid unit type: "txt"'
