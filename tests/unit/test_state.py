"""Desired-state records: key layout, strict JSON, compare-and-swap semantics, concurrent writers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coreos_lab.errors import EtcdError, UnitFileError
from coreos_lab.scheduler import plan_reconcile
from coreos_lab.state import (
    PREFIX,
    UNKNOWN_REVISION,
    EtcdKV,
    RecordStore,
    UnitRecord,
    name_from_key,
    unit_key,
    update_record,
)
from coreos_lab.testing import InMemoryKV
from coreos_lab.unitfile import UnitFile
from tests.fleet_double import FIXTURES

HELLO = (FIXTURES / "unitfiles/hello.service").read_text()


def _rec(name: str = "hello.service", state: str = "launched", targets: tuple[str, ...] = ()) -> UnitRecord:
    return UnitRecord.new(UnitFile.parse(HELLO, name=name), state, targets, updated_by="test@host")


def test_key_layout():
    assert unit_key("web@1.service") == "/coreos-lab/units/web@1.service"
    assert name_from_key("/coreos-lab/units/web@1.service") == "web@1.service"
    with pytest.raises(EtcdError, match="not under"):
        name_from_key("/other/web.service")
    with pytest.raises(EtcdError, match="must end in one of"):
        name_from_key("/coreos-lab/units/web.txt")
    with pytest.raises(UnitFileError):
        unit_key("bad name.service")


def test_record_round_trip_and_fleet_hash():
    rec = _rec(targets=("core-02",))
    assert rec.hash == "c643d3fec7075e0b4cd6d8840bb1b32fcf88d33e"  # the hash fleet gave this file
    doc = json.loads(rec.to_json())
    assert doc == {
        "v": 1,
        "name": "hello.service",
        "hash": rec.hash,
        "content": HELLO,
        "desiredState": "launched",
        "targets": ["core-02"],
        "generation": 1,
        "updatedBy": "test@host",
    }
    back = UnitRecord.from_json(rec.to_json(), key=rec.key, revision=7)
    assert back == UnitRecord(**{**{f: getattr(rec, f) for f in rec.__slots__}, "revision": 7})
    assert back.to_desired().targets == ("core-02",)
    assert back.unit_file().to_text() == HELLO


def test_comments_in_content_are_kept_and_hash_is_fleets():
    text = "# my app\n[Service]\nExecStart=/bin/true\n\n[X-Fleet]\nConflicts=web*\n"
    rec = UnitRecord.new(UnitFile.parse(text), "loaded", name="web.service")
    assert rec.content == text
    assert rec.constraints().conflicts == ("web*",)
    assert UnitRecord.from_json(rec.to_json()).hash == rec.hash


def _mutated(**changes: object) -> bytes:
    doc = json.loads(_rec().to_json())
    for k, v in changes.items():
        if v is ...:
            del doc[k]
        else:
            doc[k] = v
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"{}", "missing schema version"),
        (_mutated(v=2), "newer coreos-lab"),
        (_mutated(v=True), "missing schema version"),
        (_mutated(hash=...), "missing hash"),
        (_mutated(extra=1), "unknown field"),
        (_mutated(name=5), "name is not a string"),
        (_mutated(name="bad name.service"), "invalid unit name"),
        (_mutated(desiredState="running"), "desiredState 'running'"),
        (_mutated(hash="ABC"), "40 lowercase hex"),
        (_mutated(hash="0" * 40), "does not match the content"),
        (_mutated(content="garbage"), "content:"),
        (_mutated(targets="core-01"), "targets is not a list"),
        (_mutated(targets=["core 01"]), "targets is not a list"),
        (_mutated(targets=["a", "a"]), "duplicates"),
        (_mutated(generation=0), "generation"),
        (_mutated(updatedAt="x\ny"), "updatedAt"),
    ],
)
def test_garbage_records_are_one_line_etcd_errors(data, needle):
    with pytest.raises(EtcdError) as info:
        UnitRecord.from_json(data, key=PREFIX + "hello.service")
    assert needle in str(info.value)
    assert str(info.value).startswith("etcd /coreos-lab/units/hello.service: invalid unit record")
    assert "\n" not in str(info.value)


def test_record_under_the_wrong_key():
    with pytest.raises(EtcdError, match="stored under another key"):
        UnitRecord.from_json(_rec().to_json(), key=PREFIX + "other.service")


def test_new_rejects_bad_input():
    with pytest.raises(UnitFileError, match="desired state"):
        _rec(state="running")
    with pytest.raises(UnitFileError, match="needs a unit name"):
        UnitRecord.new(UnitFile.parse(HELLO), "launched")


# ---- store semantics ---------------------------------------------------------------------------------------------
def test_compare_and_swap_lifecycle():
    kv = InMemoryKV()
    store = RecordStore(kv)
    assert store.get("hello.service") is None
    first = store.put(_rec(), expected_revision=0)
    assert first is not None
    assert first.revision > 0
    assert store.put(_rec(), expected_revision=0) is None  # exists already
    moved = store.put(first.evolve(targets=("core-03",)), expected_revision=first.revision)
    assert moved is not None
    assert moved.generation == 2
    assert store.put(first.evolve(targets=("core-01",)), expected_revision=first.revision) is None  # stale
    assert store.get("hello.service").targets == ("core-03",)  # type: ignore[union-attr]
    store.put(_rec("web@1.service"), expected_revision=0)
    assert [r.name for r in store.list()] == ["hello.service", "web@1.service"]
    assert store.delete("hello.service", expected_revision=first.revision) is False
    assert store.delete("hello.service", expected_revision=moved.revision) is True
    assert store.delete("hello.service") is False
    assert [r.name for r in store.list()] == ["web@1.service"]


def test_garbage_in_the_store_surfaces_as_etcd_error():
    kv = InMemoryKV()
    kv.raw_put(PREFIX + "hello.service", b"{not json")
    with pytest.raises(EtcdError, match="not JSON"):
        RecordStore(kv).get("hello.service")
    with pytest.raises(EtcdError):
        RecordStore(kv).list()


def test_concurrent_deploys_of_one_unit_only_one_wins():
    store = RecordStore(InMemoryKV())
    barrier = threading.Barrier(8)
    results: list[UnitRecord | None] = []
    lock = threading.Lock()

    def deploy(i: int) -> None:
        rec = _rec(targets=(f"core-0{i}",))
        barrier.wait(timeout=5)
        got = store.put(rec, expected_revision=0)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=deploy, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    winners = [r for r in results if r is not None]
    assert len(results) == 8
    assert len(winners) == 1
    assert store.get("hello.service").targets == winners[0].targets  # type: ignore[union-attr]


def test_update_record_retries_lost_races():
    store = RecordStore(InMemoryKV())
    store.put(_rec(), expected_revision=0)
    barrier = threading.Barrier(4)

    def add_target(i: int) -> None:
        barrier.wait(timeout=5)
        update_record(
            store,
            "hello.service",
            lambda cur: cur.evolve(targets=(*cur.targets, f"n{i}")) if cur else None,
            attempts=50,
        )

    threads = [threading.Thread(target=add_target, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    final = store.get("hello.service")
    assert final is not None
    assert sorted(final.targets) == ["n0", "n1", "n2", "n3"]  # no update lost
    assert final.generation == 5


def test_update_record_gives_up_with_a_clear_error():
    class Loser(RecordStore):
        def put(self, record, *, expected_revision):  # type: ignore[no-untyped-def]
            return None

    store = Loser(InMemoryKV())
    with pytest.raises(EtcdError, match="3 concurrent writers"):
        update_record(store, "hello.service", lambda cur: _rec(), attempts=3)


def test_records_feed_the_scheduler():
    from coreos_lab.scheduler import Node

    store = RecordStore(InMemoryKV())
    store.put(_rec(), expected_revision=0)
    desired = {r.name: r.to_desired() for r in store.list()}
    plan = plan_reconcile(desired, {}, [Node("core-01"), Node("core-02", load=0)])
    assert [(a.kind, a.node) for a in plan] == [("schedule", "core-01"), ("load", "core-01"), ("start", "core-01")]


@settings(max_examples=300, deadline=1000)
@given(
    st.binary(max_size=80)
    | st.dictionaries(
        st.sampled_from(["v", "name", "hash", "content", "desiredState", "targets", "generation", "x"]),
        st.none() | st.integers() | st.text(max_size=12) | st.lists(st.text(max_size=5), max_size=3),
        max_size=8,
    ).map(lambda d: json.dumps(d).encode())
)
def test_random_records_raise_only_etcd_error(data):
    try:
        UnitRecord.from_json(data, key=PREFIX + "x.service")
    except EtcdError as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message


class _FakeEtcd:
    """Just enough of EtcdClient for EtcdKV; ``interfere`` runs between a txn and the read-back."""

    def __init__(self) -> None:
        self.kv = InMemoryKV()
        self.interfere: Callable[[], None] | None = None

    def get(self, key: str) -> SimpleNamespace | None:
        found = self.kv.get(key)
        return None if found is None else SimpleNamespace(key=key.encode(), value=found[0], mod_revision=found[1])

    def range(self, prefix: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(key=k.encode(), value=v, mod_revision=r) for k, v, r in self.kv.list_prefix(prefix)]

    def delete(self, key: str) -> int:
        return int(self.kv.delete_if(key))

    def txn_put_if(self, key: str, value: bytes, *, expect_mod_revision: int | None) -> bool:
        ok = self.kv.put_if(key, value, expect_mod_revision or 0) is not None
        if ok and self.interfere:
            self.interfere()
        return ok

    def txn_delete_if(self, key: str, *, expect_mod_revision: int) -> bool:
        return self.kv.delete_if(key, expect_mod_revision)


def test_etcd_adapter_reports_a_superseded_write_as_done_not_lost():
    fake = _FakeEtcd()
    store = RecordStore(EtcdKV(fake))
    first = store.put(_rec(), expected_revision=0)
    assert first is not None
    assert first.revision == fake.kv.get(PREFIX + "hello.service")[1]  # type: ignore[index]
    # another writer replaces our value between our txn and the read-back
    fake.interfere = lambda: fake.kv.raw_put(PREFIX + "hello.service", _rec(targets=("x",)).to_json())
    second = store.put(first.evolve(targets=("core-09",)), expected_revision=first.revision)
    assert second is not None
    assert second.revision == UNKNOWN_REVISION
    fake.interfere = None
    assert store.put(second.evolve(), expected_revision=second.revision) is None  # stale, as it should be
    assert [r.name for r in store.list()] == ["hello.service"]
    assert store.delete("hello.service") is True
    assert store.delete("hello.service") is False
