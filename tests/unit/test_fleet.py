"""fleet: table parsers, API JSON, etcd layout, all against the real fleet v1.0.0 captures; client logic."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.errors import FleetError
from coreos_lab.fleet import (
    FleetClient,
    FleetMachine,
    FleetUnit,
    HTTPAnswer,
    RunnerTransport,
    machine_cell,
    machine_id_matches,
    parse_etcd_registry,
    parse_list_machines,
    parse_list_unit_files,
    parse_list_units,
    parse_machines,
    parse_states,
    parse_unit,
    parse_units_page,
    short_hash,
)
from coreos_lab.testing import FakeRunner
from coreos_lab.unitfile import UnitFile
from tests.fleet_double import (
    FIXTURES,
    encode_page_token,
    load_api_exchanges,
    load_cat_a_tables,
    load_etcd_dump,
    load_fleetctl_runs,
)

MID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
RUNS = load_fleetctl_runs()
API = {x.path: x for x in load_api_exchanges() if x.path}


def _runs(prefix: str) -> list:
    found = [r for r in RUNS if r.cmd.startswith(prefix)]
    assert found, prefix
    return found


# ---- fleetctl tables ---------------------------------------------------------------------------------------------
def test_every_list_capture_is_parsed():
    parsers: dict[str, Callable[[str], list]] = {
        "fleetctl list-machines": parse_list_machines,
        "fleetctl list-units": parse_list_units,
        "fleetctl list-unit-files": parse_list_unit_files,
    }
    seen = 0
    for run in RUNS:
        cmd = run.cmd.split(" --")[0]
        if cmd in parsers:
            rows = parsers[cmd](run.stdout)
            body = [ln for ln in run.stdout.splitlines() if ln.strip()]
            legend = 0 if "--no-legend" in run.cmd else 1
            assert len(rows) == len(body) - legend, run.cmd
            seen += 1
    assert seen == 11


def test_list_machines_truncated_and_full():
    short = parse_list_machines(_runs("fleetctl list-machines")[0].stdout)
    full = parse_list_machines(_runs("fleetctl list-machines --full")[0].stdout)
    assert [(r.machine, r.ip, dict(r.metadata), r.truncated) for r in short] == [
        ("3d1219c7...", "127.0.0.1", {"role": "probe"}, True)
    ]
    assert [(r.machine, r.truncated) for r in full] == [(MID, False)]
    assert machine_id_matches(short[0].machine, MID)
    assert machine_id_matches(full[0].machine, MID)
    assert not machine_id_matches("3d1219c8...", MID)


def test_list_units_all_variants():
    empty = next(r for r in RUNS if r.cmd == "fleetctl list-units")
    assert parse_list_units(empty.stdout) == []
    running = [r for r in RUNS if r.cmd == "fleetctl list-units"][-1]
    rows = parse_list_units(running.stdout)
    assert [(r.unit, r.machine, r.ip, r.active, r.sub) for r in rows] == [
        ("global.service", "3d1219c7...", "127.0.0.1", "active", "running"),
        ("hello.service", "3d1219c7...", "127.0.0.1", "active", "running"),
        ("oneshot@1.service", "3d1219c7...", "127.0.0.1", "active", "running"),
    ]
    nolegend = parse_list_units(_runs("fleetctl list-units --full --no-legend")[0].stdout)
    assert [(r.unit, r.machine) for r in nolegend] == [(r.unit, MID) for r in rows]
    fields = parse_list_units(_runs("fleetctl list-units --fields")[0].stdout)
    assert [(r.unit, r.load, r.hash) for r in fields] == [
        ("global.service", "loaded", "da318b9"),
        ("hello.service", "loaded", "c643d3f"),
        ("oneshot@1.service", "loaded", "d14300f"),
    ]
    loaded = [r for r in RUNS if r.cmd == "fleetctl list-units"][1]
    assert [(r.unit, r.active, r.sub) for r in parse_list_units(loaded.stdout)] == [
        ("hello.service", "inactive", "dead")
    ]


def test_list_unit_files_dash_global_and_full_hashes():
    rows = parse_list_unit_files([r for r in RUNS if r.cmd == "fleetctl list-unit-files"][-1].stdout)
    by = {r.unit: r for r in rows}
    assert by["global.service"].global_
    assert by["global.service"].state is None  # "-"
    assert by["global.service"].target_machine is None
    assert by["oneshot@.service"].target is None
    assert (by["hello.service"].target_machine, by["hello.service"].target_ip) == ("3d1219c7...", "127.0.0.1")
    assert [r.hash for r in rows] == ["da318b9", "c643d3f", "d14300f", "d14300f"]
    full = parse_list_unit_files(_runs("fleetctl list-unit-files --full")[0].stdout)
    assert {r.unit: r.hash for r in full} == {
        "global.service": "da318b9398d720f4e66461624caec1bc74529b53",
        "hello.service": "c643d3fec7075e0b4cd6d8840bb1b32fcf88d33e",
        "oneshot@.service": "d14300fc43cf756c8adbcf4c97391fd0a1ffa6bb",
        "oneshot@1.service": "d14300fc43cf756c8adbcf4c97391fd0a1ffa6bb",
    }
    assert full[1].target_machine == MID
    # the short hash is the start of the unit's real hash, as computed from the captured file
    hello = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text())
    assert hello.hash.startswith(by["hello.service"].hash or "?")


def test_cat_a_tables_with_other_padding():
    machines, unit_files, units = load_cat_a_tables()
    assert parse_list_machines(machines)[0].machine == "3d1219c7..."
    assert [r.unit for r in parse_list_unit_files(unit_files)] == [
        "global.service",
        "oneshot@.service",
        "oneshot@1.service",
    ]
    assert [(r.unit, r.active, r.sub) for r in parse_list_units(units)] == [
        ("global.service", "active", "running"),
        ("hello.service", "inactive", "dead"),
        ("oneshot@1.service", "active", "running"),
    ]


def test_tables_with_unknown_or_broken_rows_fail_clearly():
    with pytest.raises(FleetError, match="row 1 has 2 columns, expected 4"):
        parse_list_units("UNIT\tMACHINE\tACTIVE\tSUB\nx.service\tfoo\n")
    with pytest.raises(FleetError, match="not KEY=VALUE"):
        parse_list_machines("abc...\t1.2.3.4\tnonsense\n")
    assert parse_list_machines("") == []
    assert parse_list_machines("abc...\t1.2.3.4\t-\n")[0].metadata == {}
    multi = parse_list_machines("MACHINE\t\tIP\t\tMETADATA\nabc...\t1.2.3.4\tdisk=ssd,role=web\n")
    assert dict(multi[0].metadata) == {"disk": "ssd", "role": "web"}


# ---- API JSON -------------------------------------------------------------------------------------------------------
def test_api_captures_parse():
    machines = parse_machines(json.loads(API["/fleet/v1/machines"].body))
    assert machines == [FleetMachine(MID, "127.0.0.1", {"role": "probe"})]
    units, token = parse_units_page(json.loads(API["/fleet/v1/units"].body))
    assert token is None
    assert [(u.name, u.desired_state, u.current_state, u.machine_id) for u in units] == [
        ("global.service", "launched", "inactive", None),
        ("oneshot@.service", "inactive", "inactive", None),
        ("oneshot@1.service", "launched", "launched", MID),
    ]
    assert units[0].hash == "da318b9398d720f4e66461624caec1bc74529b53"
    single = parse_unit(json.loads(API["/fleet/v1/units/global.service"].body))
    assert single.current_state is None
    assert single.options == units[0].options
    assert single.to_json() == json.loads(API["/fleet/v1/units/global.service"].body)
    states = parse_states(json.loads(API["/fleet/v1/state"].body))
    assert {s.name for s in states} == {"global.service", "hello.service", "oneshot@1.service"}
    assert all(s.machine_id == MID for s in states)
    filtered = parse_states(json.loads(API["/fleet/v1/state?unitName=global.service"].body))
    assert [s.name for s in filtered] == ["global.service"]
    # the state hash equals the hash of the unit's content
    by_name = {s.name: s.hash for s in states}
    assert by_name["oneshot@1.service"] == units[2].hash


def test_hashes_in_state_match_every_captured_unit_file():
    states = {s.name: s.hash for s in parse_states(json.loads(API["/fleet/v1/state"].body))}
    hello = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text(), name="hello.service")
    assert states["hello.service"] == hello.hash


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "answer is not an object"),
        ({"machines": {}}, "machines is not a list"),
        ({"machines": [{"id": 5}]}, "machines[0].id is missing"),
        ({"machines": [{"id": "a", "metadata": {"k": 1}}]}, "machines[0].metadata.k"),
    ],
)
def test_malformed_machines(doc, needle):
    with pytest.raises(FleetError) as info:
        parse_machines(doc)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"units": [{"name": "a.service", "desiredState": "running", "options": []}]}, "not one of"),
        ({"units": [{"name": "a.service", "options": []}]}, "desiredState is missing"),
        ({"units": [{"name": "a.service", "desiredState": "loaded", "options": [{"section": "Unit"}]}]}, "name"),
        ({"units": [], "nextPageToken": 3}, "nextPageToken"),
    ],
)
def test_malformed_units(doc, needle):
    with pytest.raises(FleetError, match=needle):
        parse_units_page(doc)


# ---- etcd layout ----------------------------------------------------------------------------------------------------
def test_etcd_registry_equals_what_the_api_answered():
    reg = parse_etcd_registry(load_etcd_dump())
    api_units, _ = parse_units_page(json.loads(API["/fleet/v1/units"].body))
    assert list(reg.units) == api_units
    assert list(reg.machines) == parse_machines(json.loads(API["/fleet/v1/machines"].body))
    assert sorted(reg.states, key=lambda s: s.name) == parse_states(json.loads(API["/fleet/v1/state"].body))
    assert reg.engine_leader == MID
    # contents are keyed by their own hash, including the orphan left by api.service's DELETE
    assert {h: u.hash for h, u in reg.contents.items()} == {h: h for h in reg.contents}
    assert "7dc08eb00f0c705e84a61e030d98e8cc3c994954" in reg.contents


def _dump_with(mutate: Callable[[dict], None]) -> dict:
    dump = copy.deepcopy(load_etcd_dump())
    mutate(dump)
    return dump


def _node(dump: dict, key: str) -> dict:
    stack = [dump["node"]]
    while stack:
        n = stack.pop()
        if n["key"] == key:
            return n
        stack.extend(n.get("nodes", []))
    raise KeyError(key)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("/_coreos.com/fleet/job/global.service/object", "{", "not JSON"),
        ("/_coreos.com/fleet/job/global.service/object", '{"Name":"g","UnitHash":[1,2]}', "not 20 bytes"),
        ("/_coreos.com/fleet/job/global.service/object", '{"Name":"g","UnitHash":' + str([0] * 20) + "}", "missing"),
        ("/_coreos.com/fleet/job/global.service/target-state", "running", "target-state"),
        ("/_coreos.com/fleet/machines/" + MID + "/object", '{"PublicIP":"x"}', "ID"),
        ("/_coreos.com/fleet/unit/da318b9398d720f4e66461624caec1bc74529b53", '{"Raw":"garbage"}', "unit/da318b9"),
    ],
)
def test_etcd_registry_garbage_is_a_fleet_error(key, value, needle):
    dump = _dump_with(lambda d: _node(d, key).update(value=value))
    with pytest.raises(FleetError, match=needle):
        parse_etcd_registry(dump)


# ---- client logic over a fake transport -----------------------------------------------------------------------------
class FakeTransport:
    def __init__(self, answers: dict[tuple[str, str], list[HTTPAnswer]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, bytes | None]] = []

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer:
        self.calls.append((method, path, body))
        queue = self.answers.get((method, path)) or [HTTPAnswer(404, b'{"error":{"code":404,"message":""}}')]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _client(answers: dict[tuple[str, str], list[HTTPAnswer]]) -> tuple[FleetClient, FakeTransport]:
    t = FakeTransport(answers)
    return FleetClient("http://127.0.0.1:1", transport=t), t


def _units_json(names: list[str], token: str | None = None) -> bytes:
    opts = [{"section": "Unit", "name": "Description", "value": "x"}]
    doc: dict = {"units": [{"name": n, "desiredState": "inactive", "options": opts} for n in names]}
    if token:
        doc["nextPageToken"] = token
    return json.dumps(doc).encode()


def test_pagination_follows_tokens_until_the_last_page():
    t2, t3 = encode_page_token(2, 2), encode_page_token(2, 3)
    client, fake = _client(
        {
            ("GET", "/fleet/v1/units"): [HTTPAnswer(200, _units_json(["a.service", "b.service"], t2))],
            ("GET", f"/fleet/v1/units?nextPageToken={t2.replace('=', '%3D')}"): [
                HTTPAnswer(200, _units_json(["c.service", "d.service"], t3))
            ],
            ("GET", f"/fleet/v1/units?nextPageToken={t3.replace('=', '%3D')}"): [HTTPAnswer(200, b"{}")],
        }
    )
    assert [u.name for u in client.units()] == ["a.service", "b.service", "c.service", "d.service"]
    assert len(fake.calls) == 3


def test_pagination_loop_is_detected():
    client, _ = _client({("GET", "/fleet/v1/units"): [HTTPAnswer(200, _units_json(["a.service"], "tok"))]})
    client.transport.answers[("GET", "/fleet/v1/units?nextPageToken=tok")] = [  # type: ignore[attr-defined]
        HTTPAnswer(200, _units_json(["b.service"], "tok"))
    ]
    with pytest.raises(FleetError, match="pagination loops"):
        client.units()


def test_error_bodies_become_one_line_fleet_errors():
    client, _ = _client(
        {
            ("GET", "/fleet/v1/units/nope.service"): [HTTPAnswer(404, API["/fleet/v1/units/nope.service"].body)],
            ("DELETE", "/fleet/v1/units/nope.service"): [HTTPAnswer(404, API["/fleet/v1/units/nope.service"].body)],
            ("PUT", "/fleet/v1/units/bad.service"): [
                HTTPAnswer(409, b'{"error":{"code":409,"message":"unit does not exist and options field empty"}}')
            ],
            ("GET", "/fleet/v1/machines"): [HTTPAnswer(500, b"<html>\nboom\n</html>")],
        }
    )
    assert client.unit("nope.service") is None
    assert client.destroy("nope.service") is False
    with pytest.raises(FleetError) as info:
        client.set_desired_state("bad.service", "launched")
    assert str(info.value) == (
        "fleet API PUT /fleet/v1/units/bad.service: HTTP 409: unit does not exist and options field empty"
    )
    with pytest.raises(FleetError) as info:
        client.machines()
    assert "HTTP 500" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_json_on_success_is_a_fleet_error():
    client, _ = _client({("GET", "/fleet/v1/machines"): [HTTPAnswer(200, b"not json")]})
    with pytest.raises(FleetError, match="not JSON"):
        client.machines()


def test_create_and_ensure_send_fleet_shapes():
    unit = UnitFile.parse((FIXTURES / "unitfiles/hello.service").read_text(), name="hello.service")
    existing = FleetUnit("hello.service", tuple((o.section, o.name, o.value) for o in unit.options), "loaded")
    client, fake = _client(
        {
            ("GET", "/fleet/v1/units/hello.service"): [
                HTTPAnswer(404, b'{"error":{"code":404,"message":"unit does not exist"}}'),
                HTTPAnswer(200, json.dumps(existing.to_json()).encode()),
            ],
            ("PUT", "/fleet/v1/units/hello.service"): [HTTPAnswer(201, b""), HTTPAnswer(204, b"")],
        }
    )
    assert client.ensure_unit(unit, "launched") is True
    put = json.loads(fake.calls[1][2] or b"")
    assert put == {"name": "hello.service", "desiredState": "launched", "options": unit.to_fleet_options()}
    assert client.ensure_unit(unit, "launched") is False
    assert json.loads(fake.calls[3][2] or b"") == {"desiredState": "launched"}
    other = UnitFile.parse("[Service]\nExecStart=/bin/false\n", name="hello.service")
    client.transport.answers[("GET", "/fleet/v1/units/hello.service")] = [  # type: ignore[attr-defined]
        HTTPAnswer(200, json.dumps(existing.to_json()).encode())
    ]
    with pytest.raises(FleetError, match="different content"):
        client.ensure_unit(other, "launched")
    with pytest.raises(FleetError, match="not one of"):
        client.set_desired_state("hello.service", "running")


def test_template_names_are_not_escaped():
    client, fake = _client({("DELETE", "/fleet/v1/units/oneshot@1.service"): [HTTPAnswer(204, b"")]})
    assert client.destroy("oneshot@1.service") is True
    assert fake.calls[0][1] == "/fleet/v1/units/oneshot@1.service"


def test_endpoint_urls():
    assert FleetClient("http://10.0.0.1:49153/").transport.base == "http://10.0.0.1:49153"  # type: ignore[attr-defined]
    with pytest.raises(FleetError, match="expected http"):
        FleetClient("ftp://x")


def test_runner_transport_builds_a_curl_command():
    body = json.dumps({"machines": [{"id": MID, "primaryIP": "127.0.0.1"}]})
    runner = FakeRunner("core-01", {r"^curl ": body + "\n__coreos_lab_http_status=200"})
    client = FleetClient.over_runner(runner)
    assert client.machines()[0].id == MID
    assert "--unix-socket /var/run/fleet.sock" in runner.calls[0]
    assert runner.calls[0].endswith("http://localhost/fleet/v1/machines")
    broken = FleetClient(transport=RunnerTransport(FakeRunner("core-02", {r"^curl ": (7, "", "connection refused")})))
    with pytest.raises(FleetError, match=r"core-02:/var/run/fleet\.sock: curl exited 7"):
        broken.machines()


def _fleet_error_of(fn: Callable[[], object]) -> FleetError | None:
    """The FleetError ``fn()`` raises, or None; any other exception fails the test."""
    try:
        fn()
    except FleetError as exc:
        return exc
    return None


# ---- properties: garbage from the server -----------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["units", "machines", "states", "name", "options", "desiredState", "id", "metadata", "nextPageToken"]
)
_shaped = st.dictionaries(_keys, _json, max_size=4)


@settings(max_examples=300, deadline=1000)
@given(
    st.binary(max_size=64) | _json.map(lambda d: json.dumps(d).encode()) | _shaped.map(lambda d: json.dumps(d).encode())
)
def test_garbage_answers_raise_only_fleet_error(raw):
    for path in ("/fleet/v1/units", "/fleet/v1/machines", "/fleet/v1/state"):
        client, _ = _client({("GET", path): [HTTPAnswer(200, raw)]})
        call = {"/fleet/v1/units": client.units, "/fleet/v1/machines": client.machines}.get(path, client.states)
        err = _fleet_error_of(call)
        assert err is None or "\n" not in str(err)


@settings(max_examples=200, deadline=1000)
@given(st.integers(min_value=300, max_value=599), st.binary(max_size=64) | _json.map(lambda d: json.dumps(d).encode()))
def test_error_statuses_raise_only_fleet_error(status, raw):
    client, _ = _client({("GET", "/fleet/v1/machines"): [HTTPAnswer(status, raw)]})
    with pytest.raises(FleetError):
        client.machines()


@settings(max_examples=200, deadline=1000)
@given(_json)
def test_garbage_etcd_dumps_raise_only_fleet_error(doc):
    err = _fleet_error_of(
        lambda: parse_etcd_registry({"node": {"key": "/_coreos.com/fleet", "dir": True, "nodes": [doc]}})
    )
    assert err is None or "\n" not in str(err)


# ---- fleetctl's cell values (its tables: tests/unit/test_cli_tables.py) -----------------------------------------
def test_machine_cells_are_the_ones_fleetctl_prints():
    said = {line for r in RUNS for line in r.stdout.splitlines()}
    assert f"Unit hello.service launched on {machine_cell(MID, '127.0.0.1')}" in said
    assert machine_cell(None, None) == "-"
    assert machine_cell(MID, "127.0.0.1", full=True) == f"{MID}/127.0.0.1"
    assert short_hash("c643d3fec7075e0b4cd6d8840bb1b32fcf88d33e") == "c643d3f"
