"""Snapshots of a whole lab on libvirt: every node at one moment, memory included, so etcd's members agree.

``save`` pauses every node, takes one libvirt internal snapshot per node (disk and memory, in the node's
qcow2 image), then resumes them all: the members' Raft logs and the units they run are those of one instant,
and no node sees the others move on while it is being saved. ``restore`` reverts every node to its snapshot,
paused, and resumes them all together, so the cluster goes on from that instant: what was written to etcd and
deployed after ``save`` is gone from etcd and from the nodes alike. No node boots; the guests' clocks resume
where they were saved.

A snapshot belongs to the machines it was taken of. The lab's record (``.coreos-lab/snapshots.json``) keeps
each node's libvirt domain id, and a restore into a lab whose machines changed (a node added, destroyed or
re-created) is refused before anything is touched. Every libvirt snapshot of ours is named
``coreos-lab-<name>``, so those that Vagrant or the user take on the same domains are never touched.

Every local process goes through :func:`coreos_lab.runner.run_argv` (``virsh``, ``qemu-img``); nothing here
prints. For example (on a running libvirt lab, so not run as a test)::

    lab = SnapshotLab(Path("my-lab"))
    lab.save("clean", on_step=print)
    lab.restore("clean", on_step=print)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from coreos_lab.errors import CoreosLabError, UsageError
from coreos_lab.fsutil import atomic_write
from coreos_lab.runner import run_argv
from coreos_lab.vagrant import VagrantLab

STATE_DIR: Final = ".coreos-lab"
RECORDS: Final = "snapshots.json"
PREFIX: Final = "coreos-lab-"
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
VIRSH_TIMEOUT: Final = 600.0  # one node's memory written out under software emulation
DEFAULT_URI: Final = "qemu:///system"  # vagrant-libvirt's default connection

StepFn = Callable[[str], None]
T = TypeVar("T")


class SnapshotError(CoreosLabError):
    """A snapshot could not be taken, restored, listed or removed."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One lab snapshot as the lab's record keeps it: the nodes and the libvirt domain each was taken of."""

    name: str
    created: float
    domains: Mapping[str, str]  # node -> libvirt domain UUID
    memory: bool = True

    @property
    def libvirt_name(self) -> str:
        return PREFIX + self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "domains": dict(self.domains), "memory": self.memory}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        domains = data.get("domains")
        if not isinstance(data.get("name"), str) or not isinstance(domains, dict):
            raise SnapshotError("a snapshot record is not one (name and domains expected)")
        return cls(str(data["name"]), float(data.get("created", 0)), {str(k): str(v) for k, v in domains.items()})


def check_name(name: str) -> str:
    """A snapshot name: letters, digits, ``.``, ``_``, ``-``; at most 63 characters; not starting with a dot.

    >>> check_name("before-the-drill")
    'before-the-drill'
    >>> check_name("../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    coreos_lab.errors.UsageError: bad snapshot name '../x': use letters, digits, '.', '_' and '-' ...
    """
    if not NAME_RE.match(name):
        raise UsageError(
            f"bad snapshot name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 63, starting with a letter or digit)"
        )
    return name


def lab_domains(lab_dir: Path, provider: str = "libvirt") -> dict[str, str]:
    """node -> machine id (libvirt: the domain's UUID), for every machine Vagrant created with ``provider``."""
    out: dict[str, str] = {}
    machines = lab_dir / ".vagrant" / "machines"
    for ident in sorted(machines.glob(f"*/{provider}/id")):
        value = ident.read_text(encoding="utf-8").strip()
        if value:
            out[ident.parent.parent.name] = value
    return out


def shape_change(snap: Snapshot, now: Mapping[str, str]) -> str | None:
    """Why ``now`` (node -> domain) is not the lab ``snap`` was taken of, or None when it is.

    >>> snap = Snapshot("s", 0, {"core-01": "a", "core-02": "b"})
    >>> shape_change(snap, {"core-01": "a", "core-02": "b"}) is None
    True
    >>> shape_change(snap, {"core-01": "a", "core-02": "b", "core-03": "c"})
    'nodes added since: core-03'
    >>> shape_change(snap, {"core-01": "a", "core-02": "x"})
    're-created since: core-02'
    """
    added = sorted(set(now) - set(snap.domains))
    gone = sorted(set(snap.domains) - set(now))
    remade = sorted(n for n in set(now) & set(snap.domains) if now[n] != snap.domains[n])
    parts = []
    if added:
        parts.append(f"nodes added since: {', '.join(added)}")
    if gone:
        parts.append(f"nodes destroyed since: {', '.join(gone)}")
    if remade:
        parts.append(f"re-created since: {', '.join(remade)}")
    return "; ".join(parts) or None


def parse_image_info(text: str, snapshot: str) -> tuple[int, int]:
    """(bytes of saved memory for ``snapshot``, bytes the image takes on disk) from ``qemu-img info --output=json``.

    >>> parse_image_info('{"actual-size": 900, "snapshots": [{"name": "coreos-lab-a", "vm-state-size": 300}]}',
    ...                  "coreos-lab-a")
    (300, 900)
    """
    try:
        data = json.loads(text)
        size = int(data.get("actual-size", 0))
        state = sum(int(s.get("vm-state-size", 0)) for s in data.get("snapshots", []) if s.get("name") == snapshot)
    except (ValueError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"qemu-img answered something unexpected: {exc}") from None
    return state, size


def parallel(fn: Callable[[str], T], items: Iterable[str]) -> dict[str, T | CoreosLabError]:
    """``fn`` over ``items`` at once (one thread each); a CoreosLabError is returned in the item's place."""

    def one(item: str) -> T | CoreosLabError:
        try:
            return fn(item)
        except CoreosLabError as exc:
            return exc

    items = list(items)
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return dict(zip(items, pool.map(one, items), strict=True))


def _failures(results: Mapping[str, object]) -> list[str]:
    return [f"{node}: {r}" for node, r in results.items() if isinstance(r, CoreosLabError)]


class Virsh:
    """The virsh calls a snapshot needs, on one libvirt connection."""

    def __init__(self, uri: str | None = None, *, timeout: float = VIRSH_TIMEOUT) -> None:
        self.uri = uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
        self.timeout = timeout

    def run(self, *args: str, timeout: float | None = None) -> str:
        argv = ["virsh", "-q", "-c", self.uri, *args]
        line = shlex.join(argv)
        try:
            result = run_argv("libvirt", argv, line, stdin=None, timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise SnapshotError(
                "virsh is not installed", hint="apt-get install libvirt-clients (it comes with vagrant-libvirt)"
            ) from None
        except CoreosLabError as exc:
            raise SnapshotError(str(exc)) from None
        if result.exit_code != 0:
            said = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
            raise SnapshotError(f"virsh {args[0]} failed: {said[-1] if said else f'exit {result.exit_code}'}")
        return result.stdout

    def state(self, domain: str) -> str:
        return self.run("domstate", domain, timeout=60).strip()

    def suspend(self, domain: str) -> None:
        self.run("suspend", domain, timeout=60)

    def resume(self, domain: str) -> None:
        if self.state(domain) == "paused":
            self.run("resume", domain, timeout=60)

    def create(self, domain: str, name: str, description: str) -> None:
        self.run("snapshot-create-as", "--domain", domain, "--name", name, "--description", description, "--atomic")

    def revert(self, domain: str, name: str) -> None:
        self.run("snapshot-revert", "--domain", domain, "--snapshotname", name, "--paused")

    def delete(self, domain: str, name: str) -> None:
        self.run("snapshot-delete", "--domain", domain, "--snapshotname", name)

    def names(self, domain: str) -> list[str]:
        return [ln.strip() for ln in self.run("snapshot-list", "--domain", domain, "--name", timeout=60).splitlines()]

    def disk_files(self, domain: str) -> list[str]:
        """The files of the domain's disks (``domblklist --details``: type, device, target, source)."""
        files = []
        for line in self.run("domblklist", domain, "--details", timeout=60).splitlines():
            fields = line.split()
            if len(fields) == 4 and fields[0] == "file" and fields[1] == "disk":
                files.append(fields[3])
        return files


def image_info(path: str) -> str:
    """``qemu-img info --output=json`` of an image a running domain holds open (``-U``: shared, read-only)."""
    argv = ["qemu-img", "info", "-U", "--output=json", path]
    try:
        result = run_argv("libvirt", argv, shlex.join(argv), stdin=None, timeout=60)
    except FileNotFoundError:
        raise SnapshotError("qemu-img is not installed", hint="apt-get install qemu-utils") from None
    if result.exit_code != 0:
        raise SnapshotError(f"qemu-img info {path} failed: {result.stderr.strip()[-200:]}")
    return result.stdout


class SnapshotLab:
    """The snapshots of one libvirt lab directory."""

    def __init__(self, lab_dir: Path, *, virsh: Virsh | None = None) -> None:
        self.lab_dir = Path(lab_dir).resolve()
        self.virsh = virsh or Virsh()
        self.path = self.lab_dir / STATE_DIR / RECORDS

    def machines(self) -> dict[str, str]:
        return lab_domains(self.lab_dir)

    # -- the record ------------------------------------------------------------------------------------------------
    def snapshots(self) -> list[Snapshot]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [Snapshot.from_json(s) for s in data["snapshots"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{self.path} is damaged ({exc}); move it away to start a new record") from None

    def get(self, name: str) -> Snapshot:
        for snap in self.snapshots():
            if snap.name == name:
                return snap
        known = ", ".join(s.name for s in self.snapshots()) or "none"
        raise SnapshotError(f"no snapshot named {name!r} in this lab (snapshots: {known})", exit_code=2)

    def _write(self, snaps: Sequence[Snapshot]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"snapshots": [s.to_json() for s in snaps]}, indent=2) + "\n"
        atomic_write(self.path, text, mode=0o600)

    # -- save ------------------------------------------------------------------------------------------------------
    def _to_save(self, name: str, what: str) -> dict[str, str]:
        """The machines a new snapshot ``name`` would hold; refuses a bad or taken name and a lab without any."""
        check_name(name)
        if any(s.name == name for s in self.snapshots()):
            raise SnapshotError(f"a snapshot named {name!r} exists already", hint=f"coreos-lab snapshot delete {name}")
        machines = self.machines()
        if not machines:
            raise SnapshotError(f"this lab has no {what} machines to snapshot", hint="coreos-lab up")
        return machines

    def save(self, name: str, *, on_step: StepFn | None = None) -> tuple[Snapshot, float]:
        """Snapshot every node at one moment; returns the snapshot and how long the nodes were paused."""
        say = on_step or (lambda _m: None)
        domains = self._to_save(name, "libvirt")
        states = parallel(lambda n: self.virsh.state(domains[n]), domains)
        problems = _failures(states)
        if problems:
            raise SnapshotError(f"cannot read the nodes' state: {'; '.join(problems)}")
        stopped = [n for n in domains if states[n] != "running"]
        if stopped:
            raise SnapshotError(
                f"every node must run for a snapshot ({', '.join(stopped)}: {states[stopped[0]]})",
                hint="coreos-lab up",
            )
        snap = Snapshot(name, time.time(), domains)
        description = f"coreos-lab snapshot {name} of {self.lab_dir}"
        started = time.monotonic()
        say(f"pausing {len(domains)} nodes")
        try:
            paused = parallel(lambda n: self.virsh.suspend(domains[n]), domains)
            problems = _failures(paused)
            if problems:
                raise SnapshotError(f"cannot pause every node: {'; '.join(problems)}")
            say("saving every node's disk and memory")
            made = parallel(lambda n: self.virsh.create(domains[n], snap.libvirt_name, description), domains)
            problems = _failures(made)
            if problems:
                # No half snapshot: drop the nodes' snapshots that were made.
                done = [n for n, result in made.items() if not isinstance(result, CoreosLabError)]
                parallel(lambda n: self.virsh.delete(domains[n], snap.libvirt_name), done)
                raise SnapshotError(f"snapshot {name} not taken: {'; '.join(problems)}")
        finally:
            resumed = parallel(lambda n: self.virsh.resume(domains[n]), domains)
            pause = time.monotonic() - started
        problems = _failures(resumed)
        if problems:
            raise SnapshotError(f"snapshot {name} taken, but nodes did not resume: {'; '.join(problems)}")
        self._write([*self.snapshots(), snap])
        return snap, pause

    # -- restore ---------------------------------------------------------------------------------------------------
    def check_restorable(self, name: str) -> Snapshot:
        snap = self.get(name)
        why = shape_change(snap, self.machines())
        if why:
            raise SnapshotError(
                f"snapshot {name} was taken of other machines ({why}); it restores only the lab it was taken of",
                hint=f"coreos-lab snapshot delete {name}",
            )
        return snap

    def restore(self, name: str, *, on_step: StepFn | None = None) -> float:
        """Every node back to ``name``, resumed together; returns the seconds from first revert to last resume."""
        say = on_step or (lambda _m: None)
        snap = self.check_restorable(name)
        started = time.monotonic()
        say(f"reverting {len(snap.domains)} nodes (paused)")
        domains = snap.domains
        reverted = parallel(lambda n: self.virsh.revert(domains[n], snap.libvirt_name), domains)
        problems = _failures(reverted)
        if problems:
            # Leave nothing paused: the nodes that did revert go on from the snapshot, the others as they were.
            parallel(lambda n: self.virsh.resume(domains[n]), domains)
            raise SnapshotError(
                f"snapshot {name} not restored on every node: {'; '.join(problems)}",
                hint="the lab is mixed now: restore again, or destroy and up",
            )
        say("resuming every node at once")
        resumed = parallel(lambda n: self.virsh.resume(domains[n]), domains)
        problems = _failures(resumed)
        if problems:
            raise SnapshotError(f"snapshot {name} restored, but nodes did not resume: {'; '.join(problems)}")
        return time.monotonic() - started

    # -- list, delete, remove all ----------------------------------------------------------------------------------
    def sizes(self, snap: Snapshot) -> tuple[int, int]:
        """(memory saved with ``snap``, on-disk size of the images holding it), summed over its nodes."""
        memory = disk = 0
        for domain in snap.domains.values():
            for path in self.virsh.disk_files(domain):
                state, size = parse_image_info(image_info(path), snap.libvirt_name)
                memory += state
                disk += size
        return memory, disk

    def delete(self, name: str) -> int:
        """Remove ``name`` from every node that still has it and from the record; returns the nodes cleaned."""
        snap = self.get(name)
        cleaned = self._drop_libvirt(snap)
        self._write([s for s in self.snapshots() if s.name != name])
        return cleaned

    def _drop_libvirt(self, snap: Snapshot) -> int:
        domains = snap.domains
        present = parallel(lambda n: self.virsh.names(domains[n]), domains)
        holders = [n for n, got in present.items() if not isinstance(got, CoreosLabError) and snap.libvirt_name in got]
        problems = _failures(parallel(lambda n: self.virsh.delete(domains[n], snap.libvirt_name), holders))
        if problems:
            raise SnapshotError(f"snapshot {snap.name} not removed everywhere: {'; '.join(problems)}")
        return len(holders)

    def remove_all(self) -> list[str]:
        """Every snapshot of this lab, gone (before its machines are destroyed); returns their names.

        Also any ``coreos-lab-*`` snapshot the lab's current machines hold that the record lost.
        """
        snaps = self.snapshots() if self.path.exists() else []
        for snap in snaps:
            self._drop_libvirt(snap)
        names = [s.name for s in snaps]
        domains = self.machines()
        present = parallel(lambda n: self.virsh.names(domains[n]), domains)
        for node, got in present.items():
            if isinstance(got, CoreosLabError):
                continue  # a machine libvirt no longer has holds nothing
            for libvirt_name in (g for g in got if g.startswith(PREFIX)):
                self.virsh.delete(domains[node], libvirt_name)
                names.append(libvirt_name.removeprefix(PREFIX))
        if self.path.exists():
            self.path.unlink()
        return list(dict.fromkeys(names))


class VagrantSnapshotLab(SnapshotLab):
    """The snapshots of a VirtualBox lab, through Vagrant's own ``vagrant snapshot`` (one machine after another).

    ``save`` suspends every machine first (VirtualBox saves each one's state), snapshots them while they are
    suspended, and resumes them: the saved states are of one moment, as on libvirt. ``restore`` is Vagrant's,
    machine by machine (each restored machine resumes from its saved state at once, seconds apart from the
    next). Sizes are not known: VirtualBox keeps them in its own files.
    """

    def __init__(self, lab_dir: Path, vagrant: VagrantLab) -> None:
        super().__init__(lab_dir)
        self.vagrant = vagrant

    def machines(self) -> dict[str, str]:
        return lab_domains(self.lab_dir, "virtualbox")

    def save(self, name: str, *, on_step: StepFn | None = None) -> tuple[Snapshot, float]:
        say = on_step or (lambda _m: None)
        machines = self._to_save(name, "VirtualBox")
        snap = Snapshot(name, time.time(), machines)
        started = time.monotonic()
        say(f"suspending {len(machines)} machines")
        try:
            self.vagrant.suspend()
            say("taking each machine's snapshot (vagrant snapshot save)")
            self.vagrant.snapshot("save", snap.libvirt_name)
        finally:
            say("resuming them")
            self.vagrant.resume()
        self._write([*self.snapshots(), snap])
        return snap, time.monotonic() - started

    def restore(self, name: str, *, on_step: StepFn | None = None) -> float:
        say = on_step or (lambda _m: None)
        snap = self.check_restorable(name)
        started = time.monotonic()
        say("restoring each machine (vagrant snapshot restore)")
        self.vagrant.snapshot("restore", snap.libvirt_name, "--no-provision")
        return time.monotonic() - started

    def sizes(self, snap: Snapshot) -> tuple[int, int]:
        return 0, 0

    def _drop_libvirt(self, snap: Snapshot) -> int:
        self.vagrant.snapshot("delete", snap.libvirt_name)
        return len(snap.domains)

    def remove_all(self) -> list[str]:
        snaps = self.snapshots() if self.path.exists() else []
        for snap in snaps:
            self._drop_libvirt(snap)
        if self.path.exists():
            self.path.unlink()
        return [s.name for s in snaps]
