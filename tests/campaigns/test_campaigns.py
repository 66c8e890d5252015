"""Bad-input campaigns (hypothesis): every generated case ends in success or a clean one-line error.

200 cases per target by default (COREOS_LAB_CAMPAIGN_EXAMPLES overrides); the case runners and strategies live
in ``targets.py`` so ``benchmarks/reliability.py`` runs exactly the same campaigns and prints the tally.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.campaigns import targets as t

EXAMPLES = int(os.environ.get("COREOS_LAB_CAMPAIGN_EXAMPLES", t.EXAMPLES))
DERANDOMIZE = os.environ.get("COREOS_LAB_CAMPAIGN_RANDOM") != "1"
SETTINGS = t.campaign_settings(EXAMPLES, derandomize=DERANDOMIZE)
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def _loopback_service() -> Iterator[None]:
    yield
    t.cleanup()


@SETTINGS
@given(t.init_args())
@example((["--instances", "1e999", "--network", "::1/64"], False, "@good"))
@example((["--metadata", "core-01=k=\u2028", "--tls"], True, "@good"))
@example((["--bootstrap", "discovery", "--tls"], False, "<html>oops</html>"))
def test_init_flags(case: tuple[list[str], bool, str]) -> None:
    t.run_init_case(*case)


@SETTINGS
@given(t.garbled_toml())
def test_lab_config(case: tuple[bool, bytes]) -> None:
    t.run_config_case(*case)


@SETTINGS
@given(t.unit_texts())
def test_unit_files(case: tuple[str, str | None]) -> None:
    t.run_unit_case(*case)


@SETTINGS
@given(t.discovery_replies)
def test_discovery_answers(reply: tuple[int, str, bytes, float, str]) -> None:
    t.run_discovery_case(reply)
    assert not t.HINTLESS, f"a discovery failure without the offline hint: {t.HINTLESS[0]}"


# The client and fleet targets run per operation, so every parser gets its share of the cases.
PER_OP = max(25, EXAMPLES // 4)
PER_OP_SETTINGS = t.campaign_settings(PER_OP, derandomize=DERANDOMIZE)


ETCD_OP_PARAMS = sorted(t.ETCD_OPS)


@pytest.mark.parametrize("op", ETCD_OP_PARAMS)
@PER_OP_SETTINGS
@given(data=st.data())
def test_etcd_answers(op: str, data: st.DataObject) -> None:
    replies, prefix = data.draw(t.etcd_case(op))
    t.run_etcd_case(op, replies, prefix)


@pytest.mark.parametrize("op", sorted(t.FLEET_OPS))
@PER_OP_SETTINGS
@given(data=st.data())
def test_fleet_answers(op: str, data: st.DataObject) -> None:
    t.run_fleet_case(op, data.draw(t.fleet_case(op)))


@SETTINGS
@given(t.show_outputs())
@example(("Id=a.service\nActiveEnterTimestamp=@1e20\n", ["a.service"]))
def test_systemctl_show(case: tuple[str, list[str]]) -> None:
    t.run_show_case(*case)


# target -> the calls that run its whole campaign (for benchmarks/reliability.py)
CAMPAIGNS: dict[str, list[Callable[[], None]]] = {
    "init_flags": [test_init_flags],
    "lab_config": [test_lab_config],
    "unit_files": [test_unit_files],
    "discovery": [test_discovery_answers],
    "etcd_json": [functools.partial(test_etcd_answers, op) for op in sorted(t.ETCD_OPS)],
    "fleet_json": [functools.partial(test_fleet_answers, op) for op in sorted(t.FLEET_OPS)],
    "systemctl_show": [test_systemctl_show],
}


# ---------------------------------------------------------------- defects the campaigns found (fixed), pinned


@pytest.mark.parametrize(
    "body",
    [
        b'{"result": "x"}',
        b'{"result": {"events": ["x"]}}',
        b'{"result": {"header": {"revision": "abc"}}}',
        b'{"result": {"header": {"revision": []}}}',
        b'{"result": {"events": [{"kv": {"key": "!!"}}]}}',
    ],
    ids=["result-not-object", "event-not-object", "revision-not-number", "revision-a-list", "key-not-base64"],
)
def test_found_watch_garbage_is_an_etcd_error(body: bytes) -> None:
    t.run_etcd_case("watch", [(200, body)])


@pytest.mark.parametrize("stamp", ["@1e20", "@inf", "@99999999999999"])
def test_found_huge_timestamps_are_never(stamp: str) -> None:
    t.run_show_case(f"Id=a.service\nActiveEnterTimestamp={stamp}\n", ["a.service"])
