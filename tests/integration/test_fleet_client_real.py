"""FleetClient over real HTTP (TCP, a unix socket, and curl through a Runner) against the fleet API double.

The double is first checked against the captures of the real fleet v1.0.0: same status lines, headers (except
Date) and bodies, byte for byte. Then the client runs fleetctl's submit/load/start/stop/destroy flow through it.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest

from coreos_lab.errors import FleetError
from coreos_lab.fleet import FleetClient
from coreos_lab.runner import LocalRunner
from coreos_lab.unitfile import UnitFile
from tests.conftest import require_binary
from tests.fleet_double import FIXTURES, FleetDouble, FleetState, load_api_exchanges

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CAPTURES = load_api_exchanges()
MID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


def _raw(url: str, method: str, path: str, body: bytes | None = None, ctype: str | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": ctype} if ctype else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.reason, [(k, v) for k, v in resp.getheaders()], resp.read()
    finally:
        conn.close()


def _same_as_capture(answer, capture) -> None:
    status, reason, headers, body = answer
    assert (status, reason) == (capture.status, capture.reason)
    assert [k for k, _ in headers] == [k for k, _ in capture.headers]
    assert [(k, v) for k, v in headers if k != "Date"] == [(k, v) for k, v in capture.headers if k != "Date"]
    assert body == capture.body


@pytest.mark.parametrize("capture", [c for c in CAPTURES if c.path], ids=lambda c: c.title[:60])
def test_double_answers_gets_exactly_as_captured(capture):
    with FleetDouble() as fd:
        _same_as_capture(_raw(fd.url, "GET", capture.path), capture)


def test_double_answers_the_write_sequence_exactly_as_captured():
    caps = {c.title.split(" (")[0].split(" {")[0].split(" without")[0]: c for c in CAPTURES if not c.path}
    created = next(c for c in CAPTURES if c.title.startswith("PUT units/api.service (new"))
    loaded = next(c for c in CAPTURES if c.title.startswith('PUT units/api.service {"desiredState"'))
    conflict = next(c for c in CAPTURES if c.title.startswith("PUT units/bad.service"))
    media = next(c for c in CAPTURES if c.title.startswith("PUT without Content-Type"))
    deleted = caps["DELETE units/api.service"]
    api_unit = {
        "name": "api.service",
        "desiredState": "launched",
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 3000"}],
    }
    with FleetDouble() as fd:
        path = "/fleet/v1/units/api.service"
        _same_as_capture(_raw(fd.url, "PUT", path, json.dumps(api_unit).encode(), "application/json"), created)
        body = b'{"desiredState":"loaded"}'
        _same_as_capture(_raw(fd.url, "PUT", path, body, "application/json"), loaded)
        body = b'{"desiredState":"launched"}'
        _same_as_capture(_raw(fd.url, "PUT", "/fleet/v1/units/bad.service", body, "application/json"), conflict)
        # curl -d sends application/x-www-form-urlencoded unless told otherwise
        form = "application/x-www-form-urlencoded"
        _same_as_capture(_raw(fd.url, "PUT", path, body, form), media)
        _same_as_capture(_raw(fd.url, "DELETE", path), deleted)
        assert _raw(fd.url, "DELETE", path)[0] == 404


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
    with pytest.raises(FleetError, match="cannot reach fleet"):
        FleetClient(f"http://127.0.0.1:{port}", timeout=2).machines()
