"""The engine's leadership on Debian's real etcd 3.4: leases, one leader of several, handover on resign and on
lease expiry (a leader that dies without a word)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from coreos_lab.engine import LEADER_KEY, Leadership, current_leader
from coreos_lab.etcd import EtcdClient
from tests.integration.etcd_rig import EtcdMember, etcd_single

pytestmark = pytest.mark.integration
__all__ = ["etcd_single"]  # fixture used below


@pytest.fixture
def client(etcd_single: EtcdMember) -> Iterator[EtcdClient]:
    with EtcdClient(etcd_single.url) as c:
        c.delete(LEADER_KEY)
        yield c
        c.delete(LEADER_KEY)


def test_lease_grant_keepalive_revoke(client: EtcdClient) -> None:
    lease = client.lease_grant(5)
    assert lease > 0
    assert client.put_if_absent("/test/lease/k", b"v", lease=lease)
    assert not client.put_if_absent("/test/lease/k", b"w", lease=lease)  # exists: not overwritten
    kv = client.get("/test/lease/k")
    assert kv is not None
    assert (kv.value, kv.lease) == (b"v", lease)
    assert 0 < client.lease_keepalive(lease) <= 5
    assert client.lease_revoke(lease)
    assert client.get("/test/lease/k") is None  # the key went with its lease
    assert client.lease_keepalive(lease) == 0  # gone: keepalive says so instead of raising
    assert not client.lease_revoke(lease)


def test_one_leader_and_handover_on_resign(client: EtcdClient) -> None:
    a, b = Leadership("host:1", 5), Leadership("host:2", 5)
    assert a.tick(client)
    assert not b.tick(client)
    assert b.leader == "host:1"
    assert a.tick(client)  # renewing keeps it
    assert json.loads(client.get(LEADER_KEY).value)["id"] == "host:1"  # type: ignore[union-attr]
    assert current_leader(client) == "host:1"
    a.resign(client)
    assert current_leader(client) == ""
    assert b.tick(client)
    assert not a.tick(client)
    assert a.leader == "host:2"


def test_a_silent_leader_loses_the_key_when_its_lease_runs_out(client: EtcdClient) -> None:
    dead, heir = Leadership("host:dead", 2), Leadership("host:heir", 2)
    assert dead.tick(client)
    started = time.monotonic()
    while not heir.tick(client):
        assert time.monotonic() - started < 10, "the dead leader's key did not expire"
        time.sleep(0.2)
    waited = time.monotonic() - started
    assert 1.0 <= waited <= 5.0, waited  # a 2 s lease: etcd expires it within about its TTL
    assert not dead.tick(client)  # the old leader finds out and stands by
    assert dead.lease == 0
    assert dead.leader == "host:heir"


def test_a_key_rewritten_by_hand_makes_the_leader_stand_down(client: EtcdClient) -> None:
    a = Leadership("host:1", 5)
    assert a.tick(client)
    client.put(LEADER_KEY, json.dumps({"id": "someone-else"}))
    assert not a.tick(client)
    assert a.leader == "someone-else"
