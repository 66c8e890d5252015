"""The cluster's desired state for units, as records stored in etcd (layout, records, strict JSON).

One key per unit, ``/coreos-lab/units/<name>``, holding a JSON record: the unit's content and its hash
(fleet's hash, see :mod:`coreos_lab.unitfile`), the desired state (inactive|loaded|launched) and the target
node(s). Writes are compare-and-swap on the key's etcd ``mod_revision``, so two concurrent deploys of one
unit cannot both win: the loser gets ``None`` back and must re-read.

No I/O happens here. :class:`KeyValueStore` is the small byte-level protocol an etcd client implements
(a v3 transaction comparing ``mod_revision``, or ``create_revision == 0`` for "must not exist");
:class:`RecordStore` turns any such store into a :class:`DesiredStateStore` (tests use
:class:`coreos_lab.testing.InMemoryKV`).

>>> from coreos_lab.testing import InMemoryKV
>>> from coreos_lab.unitfile import UnitFile
>>> store = RecordStore(InMemoryKV())
>>> rec = UnitRecord.new(UnitFile.parse("[Service]\\nExecStart=/bin/true\\n", name="a.service"), "launched")
>>> stored = store.put(rec, expected_revision=0)
>>> store.put(rec, expected_revision=0) is None          # someone (us) created it already
True
>>> store.get("a.service").desired_state
'launched'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, cast

from coreos_lab.errors import EtcdError, UnitFileError
from coreos_lab.scheduler import DesiredUnit
from coreos_lab.unitfile import UnitFile, XFleet, validate_unit_name

PREFIX = "/coreos-lab/units/"
SCHEMA_VERSION = 1
UNKNOWN_REVISION = -1  # a write that happened but whose revision is unknown; no compare-and-swap matches it
MAX_CONTENT_BYTES = 1 << 20  # etcd's default request limit is 1.5 MiB; leave room for the envelope
DesiredState = Literal["inactive", "loaded", "launched"]
DESIRED_STATES: tuple[str, ...] = ("inactive", "loaded", "launched")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
_REQUIRED = {"v", "name", "hash", "content", "desiredState", "targets"}
_OPTIONAL = {"generation", "updatedBy", "updatedAt"}


def unit_key(name: str) -> str:
    """The etcd key of a unit's record (the name is validated)."""
    validate_unit_name(name)
    return PREFIX + name


def name_from_key(key: str) -> str:
    """Inverse of :func:`unit_key`; raises EtcdError for keys outside the layout."""
    if not key.startswith(PREFIX):
        raise EtcdError(f"etcd key {key[:80]!r} is not under {PREFIX}")
    name = key[len(PREFIX) :]
    try:
        validate_unit_name(name)
    except UnitFileError as exc:
        raise EtcdError(f"etcd key {key[:80]!r}: {exc}") from None
    return name


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """A unit's desired state. ``revision`` is the etcd mod_revision it was read at (0: never stored) and is
    not part of the JSON; ``generation`` counts writes."""

    name: str
    content: str
    hash: str
    desired_state: DesiredState
    targets: tuple[str, ...] = ()
    generation: int = 1
    updated_by: str = ""
    updated_at: str = ""
    revision: int = 0

    @classmethod
    def new(
        cls,
        unit: UnitFile,
        desired_state: str,
        targets: tuple[str, ...] = (),
        *,
        name: str | None = None,
        updated_by: str = "",
        updated_at: str = "",
    ) -> UnitRecord:
        """A fresh record for ``unit`` (named ``name`` or ``unit.name``)."""
        uname = name or unit.name
        if not uname:
            raise UnitFileError("a unit record needs a unit name")
        validate_unit_name(uname)
        if desired_state not in DESIRED_STATES:
            raise UnitFileError(f"desired state {desired_state!r} is not one of {', '.join(DESIRED_STATES)}")
        content = unit.to_text()
        return cls(
            name=uname,
            content=content,
            hash=unit.hash,
            desired_state=cast(DesiredState, desired_state),
            targets=tuple(targets),
            updated_by=updated_by,
            updated_at=updated_at,
        )

    @property
    def key(self) -> str:
        return unit_key(self.name)

    def unit_file(self) -> UnitFile:
        return UnitFile.parse(self.content, name=self.name)

    def constraints(self) -> XFleet:
        return XFleet.from_unit(self.unit_file())

    def to_desired(self) -> DesiredUnit:
        """The scheduler's view of this record (for :func:`coreos_lab.scheduler.plan_reconcile`)."""
        return DesiredUnit(self.name, self.constraints(), self.desired_state, self.targets, self.hash)

    def evolve(self, **changes: Any) -> UnitRecord:
        """A copy with ``changes`` applied and the generation bumped (the revision stays: it is the CAS guard)."""
        return replace(self, generation=self.generation + 1, **changes)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "name": self.name,
            "hash": self.hash,
            "content": self.content,
            "desiredState": self.desired_state,
            "targets": list(self.targets),
            "generation": self.generation,
        }
        if self.updated_by:
            doc["updatedBy"] = self.updated_by
        if self.updated_at:
            doc["updatedAt"] = self.updated_at
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str, *, key: str | None = None, revision: int = 0) -> UnitRecord:
        """Parse and check a stored record; anything off raises a one-line EtcdError naming the key."""
        where = f"etcd {key or PREFIX + '?'}"

        def bad(why: str) -> EtcdError:
            return EtcdError(f"{where}: invalid unit record: {why}")

        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            doc = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            snippet = (data[:40] if isinstance(data, bytes) else data[:40].encode()).decode("utf-8", "replace")
            raise bad(f"not JSON: {snippet!r}") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        version = doc.get("v")
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad("missing schema version 'v'")
        if version > SCHEMA_VERSION:
            raise bad(f"schema v{version} was written by a newer coreos-lab (this one reads v{SCHEMA_VERSION})")
        if version < 1:
            raise bad(f"schema v{version} is not valid")
        missing = sorted(_REQUIRED - doc.keys())
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        unknown = sorted(doc.keys() - _REQUIRED - _OPTIONAL)
        if unknown:
            raise bad(f"unknown field(s) {', '.join(repr(k)[:40] for k in unknown[:3])}")
        for field_name in ("name", "hash", "content", "desiredState"):
            if not isinstance(doc[field_name], str):
                raise bad(f"{field_name} is not a string")
        name = doc["name"]
        try:
            validate_unit_name(name)
        except UnitFileError as exc:
            raise bad(str(exc)) from None
        if key is not None and key != PREFIX + name:
            raise bad(f"record names {name!r} but is stored under another key")
        if doc["desiredState"] not in DESIRED_STATES:
            raise bad(f"desiredState {doc['desiredState'][:20]!r} is not one of {', '.join(DESIRED_STATES)}")
        content = doc["content"]
        if len(content.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
            raise bad(f"content larger than {MAX_CONTENT_BYTES} bytes")
        if not _HEX40.fullmatch(doc["hash"]):
            raise bad("hash is not 40 lowercase hex digits")
        try:
            unit = UnitFile.parse(content, name=name)
        except UnitFileError as exc:
            raise bad(f"content: {exc}") from None
        if unit.hash != doc["hash"]:
            raise bad(f"hash {doc['hash'][:7]} does not match the content ({unit.hash[:7]})")
        targets = doc["targets"]
        if not isinstance(targets, list) or not all(isinstance(t, str) and _NODE.fullmatch(t) for t in targets):
            raise bad("targets is not a list of node names")
        if len(set(targets)) != len(targets):
            raise bad("targets has duplicates")
        generation = doc.get("generation", 1)
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise bad("generation is not a positive integer")
        extras = {k: doc.get(k, "") for k in ("updatedBy", "updatedAt")}
        for k, v in extras.items():
            if not isinstance(v, str) or "\n" in v or len(v) > 200:
                raise bad(f"{k} is not a short string")
        return cls(
            name=name,
            content=content,
            hash=doc["hash"],
            desired_state=cast(DesiredState, doc["desiredState"]),
            targets=tuple(targets),
            generation=generation,
            updated_by=extras["updatedBy"],
            updated_at=extras["updatedAt"],
            revision=revision,
        )


# ---- storage protocols ---------------------------------------------------------------------------------------------
class KeyValueStore(Protocol):
    """Byte-level compare-and-swap store (an etcd v3 client implements this with transactions)."""

    def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, mod_revision), or None when the key does not exist."""
        ...

    def put_if(self, key: str, value: bytes, expected_revision: int) -> int | None:
        """Write if the key's mod_revision equals ``expected_revision`` (0: the key must not exist).

        Returns the new mod_revision (``UNKNOWN_REVISION`` if the write happened but its revision cannot be
        known, e.g. it was already overwritten), or None when the comparison failed (nothing written).
        """
        ...

    def delete_if(self, key: str, expected_revision: int | None = None) -> bool:
        """Delete (only at ``expected_revision`` when given); False when absent or the comparison failed."""
        ...

    def list_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """Every (key, value, mod_revision) under ``prefix``, sorted by key."""
        ...


class DesiredStateStore(Protocol):
    """Unit records with compare-and-swap writes; what deploy, undeploy and reconcile use."""

    def get(self, name: str) -> UnitRecord | None: ...

    def put(self, record: UnitRecord, *, expected_revision: int) -> UnitRecord | None:
        """Store ``record`` if the stored one is still at ``expected_revision`` (0: must not exist yet).

        Returns the record with its new revision, or None when another writer got there first.
        """
        ...

    def delete(self, name: str, *, expected_revision: int | None = None) -> bool: ...

    def list(self) -> list[UnitRecord]: ...


class RecordStore:
    """A :class:`DesiredStateStore` over any :class:`KeyValueStore`."""

    def __init__(self, kv: KeyValueStore, prefix: str = PREFIX) -> None:
        if prefix != PREFIX:
            raise ValueError("only the standard prefix is supported")  # the layout is part of the contract
        self.kv = kv

    def get(self, name: str) -> UnitRecord | None:
        key = unit_key(name)
        found = self.kv.get(key)
        if found is None:
            return None
        value, revision = found
        return UnitRecord.from_json(value, key=key, revision=revision)

    def put(self, record: UnitRecord, *, expected_revision: int) -> UnitRecord | None:
        revision = self.kv.put_if(record.key, record.to_json(), expected_revision)
        return None if revision is None else replace(record, revision=revision)

    def delete(self, name: str, *, expected_revision: int | None = None) -> bool:
        return self.kv.delete_if(unit_key(name), expected_revision)

    def list(self) -> list[UnitRecord]:
        return [UnitRecord.from_json(v, key=k, revision=r) for k, v, r in self.kv.list_prefix(PREFIX)]


def update_record(
    store: DesiredStateStore,
    name: str,
    change: Callable[[UnitRecord | None], UnitRecord | None],
    *,
    attempts: int = 5,
) -> UnitRecord | None:
    """Read-modify-write with compare-and-swap, retrying when another writer won.

    ``change`` gets the current record (None if absent) and returns the new one, or None to leave it.
    Raises EtcdError after ``attempts`` lost races.
    """
    for _ in range(attempts):
        current = store.get(name)
        wanted = change(current)
        if wanted is None:
            return current
        stored = store.put(wanted, expected_revision=current.revision if current else 0)
        if stored is not None:
            return stored
    raise EtcdError(f"could not update {unit_key(name)}: {attempts} concurrent writers got there first")


class _StoredKV(Protocol):
    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...

    @property
    def mod_revision(self) -> int: ...


class EtcdV3Like(Protocol):
    """The part of :class:`coreos_lab.etcd.EtcdClient` that :class:`EtcdKV` needs (structural, no import)."""

    def get(self, key: str) -> _StoredKV | None: ...

    def range(self, prefix: str) -> Sequence[_StoredKV]: ...

    def delete(self, key: str) -> int: ...

    def txn_put_if(self, key: str, value: bytes, *, expect_mod_revision: int | None) -> bool: ...

    def txn_delete_if(self, key: str, *, expect_mod_revision: int) -> bool: ...


class EtcdKV:
    """A :class:`KeyValueStore` over an etcd v3 client (``coreos_lab.etcd.EtcdClient``): writes are etcd
    transactions comparing ``mod_revision`` (or ``create_revision == 0`` for "must not exist")."""

    def __init__(self, client: EtcdV3Like) -> None:
        self.client = client

    def get(self, key: str) -> tuple[bytes, int] | None:
        kv = self.client.get(key)
        return None if kv is None else (kv.value, kv.mod_revision)

    def put_if(self, key: str, value: bytes, expected_revision: int) -> int | None:
        exact = getattr(self.client, "txn_put_if_revision", None)
        if exact is not None:  # the real client reports the transaction's revision: no read-back race
            revision: int | None = exact(key, value, expect_mod_revision=expected_revision or None)
            return revision
        if not self.client.txn_put_if(key, value, expect_mod_revision=expected_revision or None):
            return None
        # The client's txn answer carries no revision, so read it back. If another writer has replaced our
        # value meanwhile, our write still happened: say so (-1, a revision no compare will ever match)
        # rather than "lost", or a retrying caller would apply its change twice.
        kv = self.client.get(key)
        return kv.mod_revision if kv is not None and kv.value == value else UNKNOWN_REVISION

    def delete_if(self, key: str, expected_revision: int | None = None) -> bool:
        if expected_revision is None:
            return self.client.delete(key) > 0
        return self.client.txn_delete_if(key, expect_mod_revision=expected_revision)

    def list_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        out = []
        for kv in self.client.range(prefix):
            try:
                out.append((kv.key.decode("utf-8"), kv.value, kv.mod_revision))
            except UnicodeDecodeError:
                raise EtcdError(f"etcd key under {prefix} is not UTF-8: {kv.key[:60]!r}") from None
        return sorted(out)
