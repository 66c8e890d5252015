"""The CLI's one table printer (cli/_common.format_table): coreos-lab's own tables and fleetctl's, the latter
byte for byte against the real fleet v1.0.0 captures (tests/fixtures/fleet-v1.0.0)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from coreos_lab.cli._common import FLEETCTL_TAB_WIDTH, format_table
from coreos_lab.fleet import (
    UNIT_COLUMNS,
    FleetMachine,
    FleetUnit,
    FleetUnitState,
    parse_etcd_registry,
    parse_machines,
    parse_states,
    parse_units_page,
)
from tests.fleet_double import load_api_exchanges, load_cat_a_tables, load_etcd_dump, load_fleetctl_runs

RUNS = load_fleetctl_runs()
API = {x.path: x for x in load_api_exchanges() if x.path}
FLEETCTL = FLEETCTL_TAB_WIDTH


def _split(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.split("\n") if ln]
    return re.split(r"\t+", lines[0]), [re.split(r"\t+", ln) for ln in lines[1:]]


def test_fleetctl_layout_reproduces_every_captured_table_byte_for_byte() -> None:
    checked = 0
    for run in RUNS:
        if not run.cmd.startswith("fleetctl list-"):
            continue
        if "--no-legend" in run.cmd:
            rows = [re.split(r"\t+", ln) for ln in run.stdout.split("\n") if ln]
            headers = [c.upper() for c in UNIT_COLUMNS]
            assert format_table(headers, rows, legend=False, tab_width=FLEETCTL) == run.stdout
        else:
            headers, rows = _split(run.stdout)
            assert format_table(headers, rows, tab_width=FLEETCTL) == run.stdout, run.cmd
        checked += 1
    for table in load_cat_a_tables():
        headers, rows = _split(table)
        assert format_table(headers, rows, tab_width=FLEETCTL) == table
        checked += 1
    assert checked == 14


@dataclass
class _Fleet:
    """A FleetClient's three listings, answered from parsed captures."""

    machine_list: list[FleetMachine]
    unit_list: list[FleetUnit] = field(default_factory=list)
    state_list: list[FleetUnitState] = field(default_factory=list)

    def machines(self) -> list[FleetMachine]:
        return self.machine_list

    def units(self) -> list[FleetUnit]:
        return self.unit_list

    def states(self, *_: Any) -> list[FleetUnitState]:
        return self.state_list


def _tables(fleet: _Fleet, **kwargs: Any) -> tuple[str, str, str]:
    from coreos_lab.units.fleet_backend import FleetBackend

    backend = FleetBackend(fleet)  # type: ignore[arg-type]
    listings = (backend.list_machines(**kwargs), backend.list_unit_files(**kwargs), backend.list_units(**kwargs))
    for listing in listings:
        assert listing.fleetctl
    return tuple(format_table(x.columns, x.rows, tab_width=FLEETCTL) for x in listings)  # type: ignore[return-value]


def test_api_answers_print_as_the_fleetctl_tables_captured_at_the_same_moment() -> None:
    machines = parse_machines(json.loads(API["/fleet/v1/machines"].body))
    units, _ = parse_units_page(json.loads(API["/fleet/v1/units"].body))
    states = parse_states(json.loads(API["/fleet/v1/state"].body))
    captured = tuple(load_cat_a_tables())
    assert _tables(_Fleet(machines, units, states)) == captured
    full = next(r for r in RUNS if r.cmd == "fleetctl list-machines --full")
    assert _tables(_Fleet(machines), full=True)[0] == full.stdout
    # and the same from fleet's etcd keys
    reg = parse_etcd_registry(load_etcd_dump())
    assert _tables(_Fleet(list(reg.machines), list(reg.units), list(reg.states)))[1:] == captured[1:]


def test_coreos_labs_own_layout_pads_with_spaces_then_one_tab() -> None:
    rows = [["core-01", "etcd.service", None], ["core-002", "", "running"]]
    assert format_table(["NODE", "UNIT", "SUB"], rows) == (
        "NODE    \tUNIT        \tSUB\ncore-01 \tetcd.service\t-\ncore-002\t-           \trunning\n"
    )
    assert format_table(["NODE", "SUB"], [["a", "x  "]], legend=False) == "a\tx\n"  # no trailing blanks


@pytest.mark.parametrize("tab_width", [None, FLEETCTL])
def test_empty_tables_and_ragged_rows(tab_width: int | None) -> None:
    assert format_table(["UNIT", "SUB"], [], legend=False, tab_width=tab_width) == ""
    assert format_table(["UNIT", "SUB"], [], tab_width=tab_width).startswith("UNIT")
    with pytest.raises(ValueError, match="row has 1 cells, expected 2"):
        format_table(["UNIT", "SUB"], [["x"]], tab_width=tab_width)
