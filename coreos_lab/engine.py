"""The engine: keeps a cluster's units at their desired state by itself, as fleet's engine did.

One engine acts for a cluster at a time, whichever host it runs on: the one whose entry holds the etcd key
``/coreos-lab/engine/leader``, written with a lease that it keeps alive (fleet's engine leader was an etcd
lease too). An engine that finds the key taken waits; when the leader stops, it revokes its lease and another
engine takes over at its next round; when the leader dies, its lease runs out after ``lease_ttl`` seconds.

Every ``interval`` seconds the leader

1. probes every node over SSH (one command each, in parallel, bounded by ``probe_timeout``);
2. updates :class:`Liveness`: a node that stops answering is *held* (its units stay where they are and nothing
   is done on it) until it has missed two probes and ``agent_ttl`` seconds have passed since it last answered;
   then it is *lost* and its units move. A slow node therefore does not make units flap;
3. runs :func:`coreos_lab.units.systemd_backend.reconcile` with the held nodes held: units move off lost
   nodes (a unit pinned with ``MachineID=`` waits for its machine, as in fleet), copies left on a node that
   comes back are stopped (a unit never runs twice), units that should run but stopped are started again.

Every action is one line in the log and in the status file (:class:`EngineStatus`). The process side:
:func:`spawn` starts ``python -m coreos_lab engine run`` detached, :func:`stop` ends it by the PID it
recorded (only while it still holds its lock, so a reused PID is never signalled), :func:`read_status`
reads what it last wrote. When the cluster runs fleet (fleetd on the nodes) the engine stays idle: fleet's
own engine reschedules there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from coreos_lab.errors import CoreosLabError, UsageError
from coreos_lab.fsutil import atomic_write
from coreos_lab.probe import ETCD_PORT, NodeFacts, probe_nodes

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.units.results import ActionOutcome

LEADER_KEY: Final = "/coreos-lab/engine/leader"
STATE_SUBDIR: Final = "engine"
STATUS_FILE: Final = "status.json"
LOG_FILE: Final = "engine.log"
PID_FILE: Final = "engine.pid"
LOCK_FILE: Final = "lock"
KEEP_ACTIONS: Final = 50


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the engine paces itself. fleet's defaults were agent_ttl 30 s and a 2 s reconcile interval."""

    agent_ttl: float = 10.0
    interval: float = 2.0
    lease_ttl: int = 10
    probe_timeout: float = 5.0
    connect_timeout: float = 3.0
    start_timeout: float = 20.0

    def check(self) -> EngineSettings:
        if not 0.5 <= self.interval <= 300:
            raise UsageError(f"--interval must be between 0.5 and 300 seconds, not {self.interval:g}")
        if not 1 <= self.agent_ttl <= 3600:
            raise UsageError(f"--agent-ttl must be between 1 and 3600 seconds, not {self.agent_ttl:g}")
        if not 2 <= self.lease_ttl <= 300:
            raise UsageError(f"--lease-ttl must be between 2 and 300 seconds, not {self.lease_ttl}")
        return self


def _iso(wall: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if wall is None else wall, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- liveness (pure) -------------------------------------------------------------------------------------------------
class Liveness:
    """Which nodes answer, which are held (missed, not yet given up) and which are lost.

    A node is lost once it has missed two probes in a row *and* ``agent_ttl`` seconds have passed since it
    last answered (or since the engine started, for a node never seen). Time is passed in, so this is pure:

    >>> live = Liveness(agent_ttl=10, now=0)
    >>> up, down = NodeFacts("a", True), NodeFacts("a", False, error="timed out")
    >>> live.update({"a": up}, now=0)
    []
    >>> live.update({"a": down}, now=2)
    ['a missed a probe (timed out); its units stay for up to 10s']
    >>> sorted(live.held), sorted(live.lost)
    (['a'], [])
    >>> live.update({"a": down}, now=12)[0]
    'a is lost: no answer for 12.0s (2 probes missed; timed out); its units move'
    >>> live.update({"a": up}, now=20)
    ['a answers again after 20.0s; copies of units left there are stopped']

    A round in which most nodes miss at once does not count against any of them: that says more about the
    engine's own host or network (seen in CI: three software-emulated VMs on two loaded cores all missed one
    probe together, and a unit moved off a running node). Without a majority answering, etcd has no quorum
    anyway, so nothing could be rescheduled safely.

    >>> live.update({"a": down, "b": down, "c": up}, now=30)[0]
    '2 of 3 nodes missed this probe at once: the round does not count (is the engine host overloaded?)'
    >>> sorted(live.held), sorted(live.lost)
    ([], [])
    """

    def __init__(self, agent_ttl: float, now: float) -> None:
        self.agent_ttl = agent_ttl
        self._started = now
        self._last_ok: dict[str, float] = {}
        self._misses: dict[str, int] = {}
        self._good: dict[str, NodeFacts] = {}
        self.lost: set[str] = set()
        self._blind = False

    @property
    def held(self) -> set[str]:
        return {n for n, m in self._misses.items() if m > 0 and n not in self.lost}

    @property
    def blind(self) -> bool:
        """Whether the last round was one in which most nodes missed at once (it counts for nothing)."""
        return self._blind

    def missing(self) -> set[str]:
        """Nodes that did not answer the last probe (held or lost)."""
        return {n for n, m in self._misses.items() if m > 0}

    def update(self, facts: Mapping[str, NodeFacts], now: float) -> list[str]:
        """Take one round of probes; returns what changed, one line each."""
        events: list[str] = []
        missed = [n for n, f in facts.items() if not f.reachable]
        blind = len(facts) > 1 and len(missed) * 2 > len(facts)
        if blind and not self._blind:
            events.append(
                f"{len(missed)} of {len(facts)} nodes missed this probe at once: the round does not count "
                "(is the engine host overloaded?)"
            )
        self._blind = blind
        for name, f in facts.items():
            since = self._last_ok.get(name, self._started)
            if blind and not f.reachable:
                # Neither a miss nor silence: its clock starts again from here, as if it had answered late.
                if name not in self.lost:
                    self._last_ok[name] = max(since, now - self.agent_ttl / 2)
                continue
            if f.reachable:
                if name in self.lost:
                    events.append(
                        f"{name} answers again after {now - since:.1f}s; copies of units left there are stopped"
                    )
                elif self._misses.get(name, 0):
                    events.append(f"{name} answers again after {self._misses[name]} missed probe(s)")
                self._last_ok[name], self._misses[name], self._good[name] = now, 0, f
                self.lost.discard(name)
                continue
            misses = self._misses[name] = self._misses.get(name, 0) + 1
            why = f.error or "no answer"
            if name not in self.lost and misses >= 2 and now - since >= self.agent_ttl:
                self.lost.add(name)
                events.append(
                    f"{name} is lost: no answer for {now - since:.1f}s ({misses} probes missed; {why}); its units move"
                )
            elif misses == 1:
                events.append(f"{name} missed a probe ({why}); its units stay for up to {self.agent_ttl:g}s")
        return events

    def view(self, facts: Mapping[str, NodeFacts]) -> dict[str, NodeFacts]:
        """``facts`` with each held node's last good probe (its machine id and metadata keep it placeable)."""
        held = self.held
        return {n: (self._good[n] if n in held and n in self._good else f) for n, f in facts.items()}

    def to_json(self, now: float, wall_now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in sorted(set(self._misses) | set(self._last_ok)):
            last = self._last_ok.get(name)
            state = "lost" if name in self.lost else ("held" if self._misses.get(name) else "alive")
            out[name] = {
                "state": state,
                "missed": self._misses.get(name, 0),
                "last_seen": _iso(wall_now - (now - last)) if last is not None else None,
            }
        return out


# ---- leadership ------------------------------------------------------------------------------------------------------
class Leadership:
    """The leader key in etcd, bound to a lease this engine keeps alive."""

    def __init__(self, identity: str, lease_ttl: int, key: str = LEADER_KEY) -> None:
        self.identity = identity
        self.lease_ttl = lease_ttl
        self.key = key
        self.lease = 0
        self.leader = ""  # who leads, as last seen ("" unknown)
        self.renewed = 0.0  # monotonic time of the last confirmed renewal

    @property
    def is_leader(self) -> bool:
        return bool(self.lease) and time.monotonic() - self.renewed < self.lease_ttl

    def _entry(self) -> bytes:
        return json.dumps({"id": self.identity, "since": _iso()}, sort_keys=True).encode()

    def renew(self, client: EtcdClient) -> bool:
        """Keep our lease alive; False (and no lease) when it is gone."""
        if not self.lease:
            return False
        if client.lease_keepalive(self.lease) > 0:
            self.renewed = time.monotonic()
            return True
        self.lease = 0
        return False

    def tick(self, client: EtcdClient) -> bool:
        """Renew, or try to take the key if nobody holds it; returns whether this engine leads now."""
        if self.lease and self.renew(client):
            kv = client.get(self.key)
            if kv is not None and kv.lease == self.lease:
                self.leader = self.identity
                return True
            # The key was deleted or rewritten by hand: stand down (our lease goes), then compete again.
            client.lease_revoke(self.lease)
            self.lease = 0
        kv = client.get(self.key)
        if kv is None:
            lease = client.lease_grant(self.lease_ttl)
            if client.put_if_absent(self.key, self._entry(), lease=lease):
                self.lease, self.renewed, self.leader = lease, time.monotonic(), self.identity
                return True
            client.lease_revoke(lease)
            kv = client.get(self.key)
        self.leader = _holder(kv.value) if kv is not None else ""
        return False

    def resign(self, client: EtcdClient) -> None:
        if self.lease:
            with contextlib.suppress(CoreosLabError):
                client.lease_revoke(self.lease)
        self.lease = 0


def _holder(value: bytes) -> str:
    try:
        data = json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")[:80]
    return str(data.get("id", "?")) if isinstance(data, dict) else str(data)[:80]


def current_leader(client: EtcdClient) -> str:
    """Who holds the leader key ("" when nobody does)."""
    kv = client.get(LEADER_KEY)
    return _holder(kv.value) if kv is not None else ""


# ---- the engine ------------------------------------------------------------------------------------------------------
def _identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Engine:
    """One engine process's loop. ``alive`` returns why to stop (the lab is gone) or None."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        state_dir: Path,
        specs: Mapping[str, NodeSpec] | None = None,
        settings: EngineSettings | None = None,
        alive: Callable[[], str | None] = lambda: None,
        identity: str | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.cluster = cluster
        self.specs = dict(specs or {})
        self.settings = (settings or EngineSettings()).check()
        self.state_dir = state_dir
        self.alive = alive
        self.identity = identity or _identity()
        self.out = out if out is not None else sys.stdout
        self.liveness = Liveness(self.settings.agent_ttl, time.monotonic())
        self.leadership = Leadership(self.identity, self.settings.lease_ttl)
        self.started = time.time()
        self.role = "starting"
        self.rounds = 0
        self.actions_taken = 0
        self.actions: deque[str] = deque(maxlen=KEEP_ACTIONS)
        self.last_reconcile: float | None = None
        self.last_error: str | None = None
        self._etcd: EtcdClient | None = None
        self._etcd_lock = threading.Lock()
        self._said: dict[str, str] = {}  # topic -> last line logged, so a repeated condition is logged once
        self._wake = threading.Event()

    # -- log and status ------------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        self.out.write(f"{_iso()} {line}\n")
        self.out.flush()

    def _once(self, topic: str, line: str | None) -> None:
        """Log ``line`` unless it was the last thing said about ``topic`` (None: the condition ended)."""
        if line is None:
            self._said.pop(topic, None)
            return
        if self._said.get(topic) != line:
            self._said[topic] = line
            self.log(line)

    def _act(self, outcome: ActionOutcome) -> None:
        line = f"{outcome.action}: " + ("ok" if outcome.ok else f"failed: {outcome.error}")
        self.actions_taken += 1
        self.actions.append(f"{_iso()} {line}")
        self.log(line)

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "id": self.identity,
            "pid": os.getpid(),
            "role": self.role,
            "leader": self.leadership.leader or None,
            "started": _iso(self.started),
            "updated": _iso(),
            "rounds": self.rounds,
            "last_reconcile": _iso(self.last_reconcile) if self.last_reconcile else None,
            "last_error": self.last_error,
            "actions_taken": self.actions_taken,
            "actions": list(self.actions),
            "nodes": self.liveness.to_json(time.monotonic(), time.time()),
            "settings": {"agent_ttl": s.agent_ttl, "interval": s.interval, "lease_ttl": s.lease_ttl},
        }

    def write_status(self) -> None:
        atomic_write(self.state_dir / STATUS_FILE, json.dumps(self.status(), indent=2) + "\n", mode=0o600)

    # -- etcd ----------------------------------------------------------------------------------------------------
    def _client(self, *, fresh: bool = False) -> EtcdClient:
        """etcd through the first node that answered the last probe and whose member sees a leader."""
        with self._etcd_lock:
            if self._etcd is None or fresh:
                self._etcd = self.cluster.leader_etcd_client(self.liveness.missing(), port=ETCD_PORT, timeout=2.0)
            return self._etcd

    def _drop_client(self) -> None:
        with self._etcd_lock:
            self._etcd = None

    def _keeper(self, stop: threading.Event) -> None:
        """Renew the lease between rounds, so a long reconcile (or a node lost under our etcd connection) does
        not cost the leadership: a failed renewal is retried at once through another node."""
        while not stop.wait(max(0.5, self.settings.lease_ttl / 4)):
            if not self.leadership.lease:
                continue
            for fresh in (False, True):
                try:
                    self.leadership.renew(self._client(fresh=fresh))
                    break
                except CoreosLabError:
                    continue  # the round reports it if etcd stays out of reach

    # -- one round -----------------------------------------------------------------------------------------------
    def round(self) -> None:
        from coreos_lab.state import EtcdKV, RecordStore
        from coreos_lab.units.systemd_backend import reconcile

        self.rounds += 1
        facts = probe_nodes(self.cluster, self.specs, timeout=self.settings.probe_timeout)
        for event in self.liveness.update(facts, time.monotonic()):
            self.log(event)
        try:
            try:
                client = self._client()
                leading = self.leadership.tick(client)
            except CoreosLabError:
                client = self._client(fresh=True)  # the node under our connection may be the one that went
                leading = self.leadership.tick(client)
        except CoreosLabError as exc:
            self._drop_client()
            self.role = "standby" if not self.leadership.is_leader else self.role
            self.last_error = f"etcd: {exc}"
            self._once("etcd", f"cannot reach etcd; not acting: {exc}")
            return
        self._once("etcd", None)
        self._once("role", f"leading ({self.identity})" if leading else f"standing by: {self.leadership.leader} leads")
        if not leading:
            self.role = "standby"
            return
        self.role = "leader"
        if any(f.reachable and f.runs_fleet for f in facts.values()):
            self._once("fleet", "fleetd runs on the nodes: fleet's own engine reschedules; idle")
            return
        self._once("fleet", None)
        if self.liveness.blind:
            return  # Liveness said so in the log; nothing seen this round is trusted enough to act on
        try:
            result = reconcile(
                self.cluster,
                store=RecordStore(EtcdKV(client)),
                facts=self.liveness.view(facts),
                hold=self.liveness.held,
                hold_unobservable=True,  # a node that fails the unit query mid-round waits for its TTL too
                timeout=self.settings.start_timeout,
            )
        except CoreosLabError as exc:
            self._drop_client()
            self.last_error = f"reconcile: {exc}"
            self._once("reconcile", f"reconcile failed: {exc}")
            return
        self._once("reconcile", None)
        self.last_reconcile = time.time()
        self.last_error = None
        for outcome in result.actions:
            self._act(outcome)
        for name in result.deleted_records:
            self.log(f"record of {name} deleted (undeployed, no node has it any more)")
        for unit, why in result.unplaceable:
            self._once(f"unplaceable:{unit}", f"{unit} cannot be placed: {why}")
        for topic in [t for t in self._said if t.startswith("unplaceable:")]:
            if topic.removeprefix("unplaceable:") not in dict(result.unplaceable):
                self._said.pop(topic)

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> str:
        """Rounds until ``stop`` is set or ``alive`` says the lab is gone; returns why it ended."""
        s = self.settings
        self.log(
            f"engine {self.identity} starting: agent TTL {s.agent_ttl:g}s, interval {s.interval:g}s, "
            f"lease {s.lease_ttl}s, nodes {', '.join(self.cluster.names)}"
        )
        self.write_status()
        keeper = threading.Thread(target=self._keeper, args=(stop,), name="engine-lease", daemon=True)
        keeper.start()
        why = "stopped"
        while not stop.is_set():
            gone = self.alive()
            if gone:
                why = gone
                break
            began = time.monotonic()
            try:
                self.round()
            except CoreosLabError as exc:
                self.last_error = str(exc)
                self._once("round", f"round failed: {exc}")
            except Exception as exc:  # a daemon outlives one bad round; the traceback is logged
                import traceback

                self.last_error = f"{type(exc).__name__}: {exc}"
                self._once("round", "round failed: " + "".join(traceback.format_exception(exc)).rstrip())
            self.write_status()
            stop.wait(max(0.05, s.interval - (time.monotonic() - began)))
        if self._etcd is not None and self.leadership.lease:
            self.leadership.resign(self._etcd)
            self.log("resigned the leadership")
        self.role = "stopped"
        self.leadership.leader = ""
        with contextlib.suppress(OSError):
            self.write_status()
        self.log(f"engine {self.identity} exiting: {why}")
        return why


# ---- where an engine keeps its files ---------------------------------------------------------------------------------
def state_dir_for(lab: Path | None, inventory: Path | None) -> Path:
    """``<lab>/.coreos-lab/engine``; for an inventory, ``.coreos-lab/engine-<file name>`` beside it."""
    from coreos_lab.vagrant import STATE_DIR

    if inventory is not None:
        inv = inventory.resolve()
        return inv.parent / STATE_DIR / f"{STATE_SUBDIR}-{inv.name}"
    if lab is None:
        raise UsageError("the engine needs a lab (--lab) or an inventory (--inventory)")
    return lab.resolve() / STATE_DIR / STATE_SUBDIR


def lab_gone(lab: Path | None, inventory: Path | None) -> Callable[[], str | None]:
    """The engine's ``alive`` check: it ends by itself once the lab (or the inventory file) is gone."""
    from coreos_lab.config import CONFIG_NAME
    from coreos_lab.vagrant import STATE_DIR, created_machines

    def check() -> str | None:
        if inventory is not None:
            return None if inventory.is_file() else f"the inventory {inventory} is gone"
        if lab is None:
            return "no lab"
        if not (lab / CONFIG_NAME).is_file():
            return f"the lab {lab} is gone (no {CONFIG_NAME})"
        if not (lab / STATE_DIR).is_dir():
            return f"the lab {lab} was destroyed (no {STATE_DIR}/)"
        if not created_machines(lab):
            return f"the lab {lab} was destroyed (no machine is created)"
        return None

    return check


def open_engine_cluster(lab: Path | None, inventory: Path | None, settings: EngineSettings) -> Cluster:
    """The engine's own connections (in-process, persistent), with a short connect timeout: a node that is
    powered off must cost a probe seconds, not a minute."""
    from coreos_lab.cluster import ETCD_TLS_ENV, Cluster, lab_etcd_tls_dir
    from coreos_lab.sshconfig import parse_ssh_config

    if inventory is not None:
        try:
            text = inventory.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read inventory {inventory}: {exc.strerror or exc}") from None
    else:
        from coreos_lab import vagrant

        if lab is None:
            raise UsageError("the engine needs a lab (--lab) or an inventory (--inventory)")
        text = vagrant.ssh_config_text(lab)
    targets = {n: replace(t, connect_timeout=settings.connect_timeout) for n, t in parse_ssh_config(text).items()}
    if not targets:
        raise UsageError("the ssh config names no hosts")
    cluster = Cluster.from_targets(targets, persist=False, default_timeout=30.0)
    env_dir = os.environ.get(ETCD_TLS_ENV)
    cluster.etcd_tls_dir = lab_etcd_tls_dir(lab) if lab is not None else (Path(env_dir) if env_dir else None)
    return cluster


# ---- the process -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class EngineStatus:
    """What ``engine status`` shows: whether an engine process runs for this lab here, and its last report."""

    running: bool
    pid: int | None
    state_dir: Path
    report: Mapping[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE

    def to_json(self) -> dict[str, Any]:
        r = dict(self.report)
        return {
            "running": self.running,
            "pid": self.pid,
            "role": r.get("role") if self.running else "stopped",
            "leader": r.get("leader") if self.running else None,
            "last_reconcile": r.get("last_reconcile"),
            "actions_taken": r.get("actions_taken", 0),
            "actions": r.get("actions", []),
            "nodes": r.get("nodes", {}),
            "last_error": r.get("last_error"),
            "updated": r.get("updated"),
            "settings": r.get("settings"),
            "log": str(self.log_path),
        }


class _Lock:
    """The engine's lock file: held (flock) for the life of the process, so one engine per state dir."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def close(self) -> None:
        os.close(self.fd)


def running_pid(state_dir: Path) -> int | None:
    """The PID of the engine running on ``state_dir``, or None. The lock says whether one runs; the PID file
    which one, so a stale PID file (or a reused PID) never counts."""
    if not (state_dir / LOCK_FILE).exists():
        return None
    lock = _Lock(state_dir)
    try:
        if lock.try_acquire():
            return None  # nobody holds it (released again when closed)
    finally:
        lock.close()
    try:
        pid = int((state_dir / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def read_status(state_dir: Path) -> EngineStatus:
    pid = running_pid(state_dir)
    try:
        report = json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        report = {}
    if not isinstance(report, dict):
        report = {}
    return EngineStatus(pid is not None, pid, state_dir, report)


def hold_lock(state_dir: Path) -> _Lock:
    """Take the state dir for this process (``engine run``); UsageError when another engine has it."""
    lock = _Lock(state_dir)
    if not lock.try_acquire():
        lock.close()
        other = running_pid(state_dir)
        raise UsageError(f"an engine already runs for this lab (pid {other or '?'}); see `coreos-lab engine status`")
    atomic_write(state_dir / PID_FILE, f"{os.getpid()}\n", mode=0o600)
    return lock


def spawn(state_dir: Path, args: Sequence[str], *, cwd: Path, wait: float = 20.0) -> tuple[int, bool]:
    """Start ``coreos-lab engine run ARGS`` detached (its own session, output appended to the log).

    Returns ``(pid, started)``; ``started`` False when an engine was already running. Waits until the new
    process has taken its lock and written its first status, or raises with the log's last lines.
    """
    existing = running_pid(state_dir)
    if existing is not None:
        return existing, False
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATUS_FILE).unlink()
    argv = [sys.executable, "-m", "coreos_lab", "engine", "run", "--state-dir", str(state_dir), *args]
    with open(state_dir / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(  # our own interpreter and module, arguments as a list
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CoreosLabError(
                f"the engine exited at once (code {proc.returncode}): {_last_line(state_dir / LOG_FILE)}"
            )
        if (state_dir / STATUS_FILE).exists() and running_pid(state_dir) == proc.pid:
            return proc.pid, True
        time.sleep(0.1)
    return proc.pid, True  # still starting (slow host); `engine status` will tell


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _is_engine(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"coreos_lab" in cmdline and b"engine" in cmdline


def stop(state_dir: Path, *, timeout: float = 15.0) -> int | None:
    """Stop the engine running on ``state_dir`` (SIGTERM: it resigns its leadership; SIGKILL after
    ``timeout``). Returns its PID, or None when none was running."""
    pid = running_pid(state_dir)
    if pid is None or not _is_engine(pid):
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(state_dir) != pid:
            return pid
        time.sleep(0.1)
    if running_pid(state_dir) == pid and _is_engine(pid):
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if running_pid(state_dir) != pid:
                break
            time.sleep(0.1)
    return pid
