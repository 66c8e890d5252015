"""``--fields`` on the three listings, byte for byte against real fleetctl v1.0.0 runs (fleetctl-more.txt).

The fleet API double is seeded with the registry those runs saw (one machine with ``rig=hidden,role=worker``,
hello.service and two instances of web@.service, all launched); the CLI's fleet backend then has to print
exactly what fleetctl printed, stdout and stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.fleet import FleetClient
from coreos_lab.unitfile import UnitFile
from tests.fleet_double import FleetDouble, FleetState, load_more_runs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fleet-v1.0.0"
MACHINE = "3d1219c7c4c5404aaa1f6d2a48adfda4"


RUNS = load_more_runs()
FIELD_RUNS = [cmd for cmd in RUNS if "--fields" in cmd or cmd == "fleetctl list-machines --no-legend"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[str]:
    state = FleetState(
        machines=[{"id": MACHINE, "metadata": {"rig": "hidden", "role": "worker"}, "primaryIP": "127.0.0.1"}]
    )
    with FleetDouble(state) as fd:
        client = FleetClient(fd.url)
        hello = (FIXTURES / "unitfiles-more" / "hello.service").read_text()
        template = (FIXTURES / "unitfiles-more" / "web@.service").read_text()
        client.create_unit(UnitFile.parse(hello, name="hello.service"), "launched")
        for name in ("web@1.service", "web@2.service"):
            client.create_unit(UnitFile.parse(template, name=name), "launched")
        yield fd.url


def test_the_captures_hold_what_this_file_checks() -> None:
    assert len(FIELD_RUNS) == 7, FIELD_RUNS


@pytest.mark.parametrize("cmd", FIELD_RUNS)
def test_fields_like_fleetctl(fleet: str, cmd: str) -> None:
    run = RUNS[cmd]
    result = CliRunner().invoke(app, [*run.argv, "--backend", "fleet", "--fleet-endpoint", fleet])
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)


def test_an_unknown_field_is_refused_before_anything_is_asked() -> None:
    # The endpoint does not exist: a refusal that needed it would say "cannot reach fleet" instead.
    result = CliRunner().invoke(
        app, ["list-units", "--fields", "unit,zone", "--backend", "fleet", "--fleet-endpoint", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --fields: 'zone' is not a list-units field (unit, machine, active, sub, load, hash)\n"
    )


def test_the_systemd_backend_takes_the_same_fields() -> None:
    from coreos_lab.cluster import Cluster
    from coreos_lab.probe import NodeFacts
    from coreos_lab.units.systemd_backend import SystemdBackend

    facts = {
        "core-01": NodeFacts("core-01", True, "10.0.0.1", "a" * 32, {"role": "web"}),
        "core-02": NodeFacts("core-02", False, "10.0.0.2", error="timed out"),
    }
    backend = SystemdBackend(Cluster({}), facts)
    listing = backend.list_machines(fields=("ip", "machine"))
    assert listing.columns == ("IP", "MACHINE")
    assert listing.rows == (("10.0.0.1", "core-01"), ("10.0.0.2", "core-02"))
    assert listing.problems == ("core-02: timed out",)
    full = backend.list_machines(full=True)
    assert full.columns == ("MACHINE", "IP", "METADATA", "MACHINE ID")
    assert full.rows[0] == ("core-01", "10.0.0.1", "role=web", "a" * 32)


def test_fleetctls_endpoint_spellings(fleet: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RUNS["fleetctl list-machines --no-legend"]
    by_flag = CliRunner().invoke(app, ["list-machines", "--no-legend", "--endpoint", fleet])
    assert (by_flag.exit_code, by_flag.stdout) == (0, run.stdout)
    monkeypatch.setenv("FLEETCTL_ENDPOINT", fleet)
    by_env = CliRunner().invoke(app, ["list-machines", "--no-legend"])
    assert (by_env.exit_code, by_env.stdout) == (0, run.stdout)


def test_an_instance_without_a_file_of_its_own_comes_from_its_template(tmp_path: Path) -> None:
    """fleet's rule: ``deploy web@3.service`` with only ``web@.service`` on disk starts web@3 from the template."""
    template = (FIXTURES / "unitfiles-more" / "web@.service").read_text()
    (tmp_path / "web@.service").write_text(template)
    state = FleetState(machines=[{"id": MACHINE, "metadata": {}, "primaryIP": "127.0.0.1"}])
    with FleetDouble(state) as fd:
        result = CliRunner().invoke(app, ["deploy", str(tmp_path / "web@3.service"), "--endpoint", fd.url])
        assert result.exit_code == 0, result.output
        assert result.stdout == "Unit web@3.service inactive\nUnit web@3.service launched on 3d1219c7.../127.0.0.1\n"
        stored = FleetClient(fd.url).unit("web@3.service")
        assert stored is not None
        assert stored.hash == UnitFile.parse(template, name="web@3.service").hash
    missing = CliRunner().invoke(app, ["deploy", str(tmp_path / "api@1.service"), "--endpoint", "http://127.0.0.1:9"])
    assert (missing.exit_code, missing.stderr) == (2, f"error: {tmp_path / 'api@1.service'}: no such file\n")


def test_cat_against_a_bare_fleet_endpoint_like_fleetctl(fleet: str) -> None:
    run = RUNS["fleetctl cat web@1.service"]
    result = CliRunner().invoke(app, ["unit", "cat", "web@1.service", "--endpoint", fleet])
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)
    unknown = CliRunner().invoke(app, ["unit", "cat", "nope.service", "--endpoint", fleet])
    assert (unknown.exit_code, unknown.stderr) == (2, "error: unit nope.service is not deployed\n")


def test_a_unit_no_machine_can_take_is_refused_before_it_is_submitted(tmp_path: Path) -> None:
    """fleet would keep ``nowhere.service`` launched and unscheduled for ever; we say which constraint fails."""
    source = FIXTURES / "unitfiles-more" / "nowhere.service"  # MachineMetadata=role=db
    (tmp_path / source.name).write_text(source.read_text())
    state = FleetState(machines=[{"id": MACHINE, "metadata": {"role": "worker"}, "primaryIP": "127.0.0.1"}])
    with FleetDouble(state) as fd:
        result = CliRunner().invoke(app, ["deploy", str(tmp_path / source.name), "--endpoint", fd.url])
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        assert result.stderr.startswith(f"error: cannot place nowhere.service: no eligible node ({MACHINE}: ")
        assert "role=db" in result.stderr
        assert len(result.stderr.splitlines()) == 1
        assert FleetClient(fd.url).unit("nowhere.service") is None  # never submitted, so never left launched


def test_destroy_takes_names_literally_like_fleetctl(fleet: str) -> None:
    """fleetctl destroy matches no glob, and says so on stderr with exit 0; a destroyed unit is one line."""
    glob = RUNS["fleetctl destroy web@*.service"]
    result = CliRunner().invoke(app, ["undeploy", "web@*.service", "--endpoint", fleet])
    assert (result.exit_code, result.stdout, result.stderr) == (glob.rc, glob.stdout, glob.stderr)
    client = FleetClient(fleet)
    assert {u.name for u in client.units()} >= {"web@1.service", "web@2.service"}  # nothing was destroyed
    nowhere = (FIXTURES / "unitfiles-more" / "nowhere.service").read_text()
    client.create_unit(UnitFile.parse(nowhere, name="nowhere.service"), "launched")
    run = RUNS["fleetctl destroy nowhere.service"]
    result = CliRunner().invoke(app, ["undeploy", "nowhere.service", "--endpoint", fleet])
    assert (result.exit_code, result.stdout, result.stderr) == (run.rc, run.stdout, run.stderr)
    again = CliRunner().invoke(app, ["undeploy", "nowhere.service", "--endpoint", fleet])
    assert (again.exit_code, again.stdout, again.stderr) == (0, "", "Units not found in registry\n")
    bad = CliRunner().invoke(app, ["undeploy", "web.servce"])
    assert bad.exit_code == 2  # a name systemd would refuse is refused before any backend is chosen
