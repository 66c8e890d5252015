"""Fault drills: a scripted fault, measured while it happens, and a check that no acknowledged write was lost.

A drill starts from a healthy cluster with no fault recorded. A writer thread then writes numbered keys
(``/coreos-lab/drill/<run id>/<n>``) for the whole drill, through the first member that answers (a member that
fails a write is left for the next one), and notes which writes etcd acknowledged and how long each took. The
drill makes its fault through :class:`~coreos_lab.fault.FaultLab` (so it is recorded like any other, with
``--for`` set past the drill's end: if this process dies, the nodes' own timers heal it), waits for what it
measures, and heals in a ``finally`` (Ctrl-C included). After the heal every acknowledged key is read back
with one linearizable range; a missing one is a lost write. The keys are deleted at the end.

- ``leader-loss``: kill the etcd leader's etcd. Detection: the other members agree on a leader in a newer
  term; recovery: a write sent after the kill is acknowledged.
- ``partition-minority``: cut a *follower* off. The leader stays in the majority, so the majority keeps
  committing without an election and the drill isolates what the minority does: it refuses a linearizable
  write, and after the heal catches up (its raft index, then a read of the last key through it). Cutting off
  the leader would be an election first: that is ``leader-loss``. Detection: the cut-off member sees no
  leader; recovery: it has caught up.
- ``node-loss`` (a Vagrant lab with the engine running): power off a node that runs deployed units, preferably
  not the etcd leader (an election would mix in). Detection: the engine gives the node up; recovery: each of
  its units is active on another node. After the heal (power on) each unit runs once.
- ``slow-network``: 200 ms on the *leader's* traffic to its peers: every commit waits for the leader's
  appends, so every write feels it (a slow follower is outvoted by the other two and hides the delay). Write
  latency (median, p90) before, during, after. Detection: a write slowed by half the delay or more; recovery:
  a write as fast as before's p90 again.

Nothing here prints: phases go to a ``progress`` callback as they happen, the figures come back as a
:class:`~coreos_lab.drillbook.DrillResult` (the bookkeeping is :mod:`coreos_lab.drillbook`, pure).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from coreos_lab.drillbook import (
    DEFAULT_SAMPLES,
    DEFAULT_TIMEOUT,
    KEY_PREFIX,
    Attempt,
    DrillResult,
    Phase,
    WriteLog,
    check_drill,
    check_samples,
    check_timeout,
    key_for,
    latency_figures,
    longest_gap,
    percentile,
    tally,
)
from coreos_lab.errors import CoreosLabError, EtcdError, UsageError

if TYPE_CHECKING:
    from coreos_lab.etcd import ClusterHealth, EtcdClient
    from coreos_lab.fault import Fault, FaultLab

T = TypeVar("T")

GRACE: Final = 30.0  # heal's checks, the read-back and the clean-up may run this long past --timeout
SAFETY: Final = 30.0  # a drill's fault expires on the nodes this long after the drill's own limit
HEALTHY_WAIT: Final = 30.0  # how long a drill waits for a healthy etcd before it refuses to start
# What the writer gives one write before it tries the next member. Short, so that the recovery it measures is
# not mostly its own wait; slow-network's writes are slow on purpose and get longer (a cut-off latency is no figure).
WRITE_TIMEOUT: Final = 1.0
SLOW_WRITE_TIMEOUT: Final = 5.0
REFUSE_TIMEOUT: Final = 3.0  # the linearizable write through the cut-off member: it must fail, quickly
BASELINE_ACKS: Final = 5
DELAY_MS: Final = 200.0


class DrillTimeout(CoreosLabError):
    """The drill ran out of its time limit (it has healed before this reaches the user)."""


class Writer:
    """Writes ``<prefix><n>`` = ``n`` until stopped, through ``members`` in turn: it stays on a member while
    its writes are acknowledged and moves to the next one when a write fails."""

    def __init__(
        self,
        prefix: str,
        members: Sequence[str],
        client: Callable[[str], EtcdClient],
        log: WriteLog,
        now: Callable[[], float],
        *,
        interval: float = 0.05,
    ) -> None:
        self.prefix = prefix
        self.members = list(members)
        self.client = client
        self.log = log
        self.now = now
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coreos-lab-drill-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * SLOW_WRITE_TIMEOUT + 5)  # one write in flight: connect + read timeouts

    def _loop(self) -> None:
        turn, n = 0, 0
        while not self._stop.is_set():
            n += 1
            member = self.members[turn % len(self.members)]
            start = self.now()
            try:
                self.client(member).put(key_for(self.prefix, n), str(n))
            except CoreosLabError as exc:
                self.log.add(Attempt(n, member, start, self.now(), False, str(exc)))
                turn += 1
            else:
                self.log.add(Attempt(n, member, start, self.now(), True))
            self._stop.wait(self.interval)


class Drill:
    """Runs one drill on ``lab``. ``vagrant``: the nodes can be powered off (a Vagrant lab); ``engine``: the
    engine's status (``EngineStatus.to_json()``), None when there is none; ``client``: an etcd client for a
    member with a timeout (default: through the lab's cluster)."""

    def __init__(
        self,
        lab: FaultLab,
        *,
        vagrant: bool = False,
        engine: Callable[[], Mapping[str, Any] | None] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        samples: int = DEFAULT_SAMPLES,
        progress: Callable[[Phase], None] = lambda phase: None,
        client: Callable[[str, float], EtcdClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        writer_interval: float = 0.05,
    ) -> None:
        self.lab = lab
        self.names = list(lab.names)
        self.vagrant = vagrant
        self.engine = engine
        self.timeout = check_timeout(timeout)
        self.samples = check_samples(samples)
        self.progress = progress
        self._client = client or (lambda name, t: lab.cluster.etcd_client(name, timeout=t))
        self.clock = clock
        self.sleep = sleep
        self.writer_interval = writer_interval
        self._began = clock()
        self._deadline = self._began + self.timeout
        self._clients: dict[tuple[str, float], EtcdClient] = {}
        self._lock = threading.Lock()
        self.prefix = ""
        self.log = WriteLog()
        self.phases: list[Phase] = []
        self.problems: list[str] = []

    # -- plumbing ----------------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock() - self._began

    def say(self, text: str) -> None:
        phase = Phase(self.now(), text)
        self.phases.append(phase)
        self.progress(phase)

    def client(self, name: str, timeout: float) -> EtcdClient:
        with self._lock:  # the writer's thread and the drill's ask for clients at once
            made = self._clients.get((name, timeout))
            if made is None:
                made = self._clients[(name, timeout)] = self._client(name, timeout)
            return made

    def health(self, names: Sequence[str] | None = None) -> ClusterHealth:
        from coreos_lab.etcd import cluster_health

        clients = {}
        for name in self.names if names is None else names:
            with contextlib.suppress(CoreosLabError):
                clients[name] = self.client(name, 1.0)
        return cluster_health(clients)

    def member_name(self, health: ClusterHealth, member_id: int) -> str:
        """The node whose member has ``member_id`` (its hex id when none of the answering ones has it)."""
        return next((m.name for m in health.members if m.ok and m.member_id == member_id), f"{member_id:x}")

    def any_client(self, timeout: float = 5.0) -> EtcdClient:
        """A client of the first member whose etcd answers."""
        errors = []
        for name in self.names:
            try:
                client = self.client(name, timeout)
                client.status()
                return client
            except CoreosLabError as exc:
                errors.append(f"{name}: {exc}")
        raise EtcdError("no etcd member answers: " + "; ".join(errors))

    def wait(self, what: str, check: Callable[[], T | bool | None], *, every: float = 0.1, grace: bool = False) -> T:
        """``check()`` until it returns something other than None or False; DrillTimeout at the limit
        (``grace``: a check after the heal, which gets :data:`GRACE` seconds even when the drill is late)."""
        deadline = max(self._deadline, self.clock() + GRACE) if grace else self._deadline
        while True:
            try:
                got = check()
            except CoreosLabError:
                got = None  # a member that does not answer yet is what the drill waits out
            if got is not None and got is not False:
                return got  # type: ignore[return-value]  # True stands for "done" where T is bool
            if self.clock() >= deadline:
                limit = f"{self.timeout:g} s" + (f" (+{GRACE:g} s after the heal)" if grace else "")
                raise DrillTimeout(f"the drill ran out of its {limit} waiting for {what}")
            self.sleep(every)

    def fault_for(self) -> float:
        """``--for`` of the drill's fault: past the drill's end, so only a drill that died leaves it to expire."""
        return max(1.0, self._deadline - self.clock()) + GRACE + SAFETY

    def _shielded(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (the heal) to its end even through Ctrl-C; the interrupt is raised again afterwards."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # carried to the calling thread and raised there
                box["error"] = exc

        thread = threading.Thread(target=body, name="coreos-lab-drill-heal")
        thread.start()
        interrupted = False
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt:
                interrupted = True
                self.say("interrupted: healing first, so that no fault outlives the drill")
        if "error" in box:
            raise box["error"]
        if interrupted:
            raise KeyboardInterrupt("interrupted; the drill's fault was healed")
        value: T = box["value"]
        return value

    def heal(self, made: list[Fault]) -> None:
        """Heal the drill's own faults (and only those); ``made`` is emptied, so nothing is healed twice."""
        from coreos_lab.fault import NothingToHeal

        def undo() -> list[str]:
            failed = []
            for f in made:
                try:
                    report = self.lab.heal(only=f.id)
                except NothingToHeal:
                    continue  # its --for ran out first (a drill far past its limit): the nodes healed it
                failed += [f"{line.host}: {line.text}" for line in report.lines if not line.ok]
            return failed

        said = ", ".join(f"{f.kind} {f.id}" for f in made)
        failed = self._shielded(undo)
        made.clear()
        if failed:
            raise CoreosLabError(
                f"the drill could not heal its fault: {'; '.join(failed)}", hint="run coreos-lab fault heal"
            )
        self.say(f"healed ({said})")

    # -- the run ---------------------------------------------------------------------------------------------
    def refuse(self, name: str) -> None:
        """The one-line refusals, before anything is done on the nodes."""
        check_drill(name)
        if name == "node-loss":
            if not self.vagrant:
                raise UsageError(
                    "the node-loss drill needs a Vagrant lab: an inventory's nodes cannot be powered off "
                    "(try leader-loss or partition-minority)"
                )
            status = self.engine() if self.engine is not None else None
            if not status or not status.get("running"):
                raise UsageError("the node-loss drill needs the engine running: start it with coreos-lab engine start")
        active = self.lab.active()
        if active:
            said = ", ".join(f"{f.id} ({f.kind} on {f.node})" for f in active)
            raise UsageError(f"a fault is active ({said}): heal it first (coreos-lab fault heal)")

    def _healthy(self) -> ClusterHealth:
        deadline = min(self._deadline, self.clock() + HEALTHY_WAIT)
        while True:
            health = self.health()
            if health.healthy:
                return health
            if self.clock() >= deadline:
                said = "; ".join(f"{m.name}: {m.error or 'no leader'}" for m in health.members if not m.ok) or (
                    "the members do not agree on a leader"
                )
                raise EtcdError(f"etcd is not healthy, a drill starts from a healthy cluster ({said})")
            self.sleep(0.5)

    def run(self, name: str) -> DrillResult:
        self.refuse(name)
        before = self._healthy()
        run_id = secrets.token_hex(4)
        self.prefix = prefix = f"{KEY_PREFIX}{run_id}/"
        write_timeout = SLOW_WRITE_TIMEOUT if name == "slow-network" else WRITE_TIMEOUT
        for member in self.names:  # each client asks its member for the API prefix now, not mid-fault
            with contextlib.suppress(CoreosLabError):
                self.client(member, write_timeout).api_prefix()
        writer = Writer(
            prefix,
            self.names,
            lambda m: self.client(m, write_timeout),
            self.log,
            self.now,
            interval=self.writer_interval,
        )
        writer.start()
        self.say(f"writer started: keys under {prefix} through {', '.join(self.names)}")
        made: list[Fault] = []
        stopped = False
        try:
            try:
                self.wait(f"{BASELINE_ACKS} acknowledged writes", lambda: self.log.acked_count() >= BASELINE_ACKS)
                steps = {
                    "leader-loss": leader_loss,
                    "partition-minority": partition_minority,
                    "node-loss": node_loss,
                    "slow-network": slow_network,
                }
                result = steps[name](self, before, made)
            finally:
                if made:
                    self.heal(made)
            writer.stop()
            stopped = True
            self.say(f"writer stopped after {len(self.log.attempts())} writes")
            found = self.read_back(prefix)
            writes = tally(self.log.attempts(), found, prefix)
            self.say(f"read back {len(found)} keys (linearizable): {len(writes.lost)} acknowledged write(s) missing")
        finally:
            if not stopped:
                writer.stop()
            deleted = self.delete(prefix)
        return DrillResult(
            drill=name,
            run_id=run_id,
            node=result["node"],
            why=result["why"],
            detection_s=result.get("detection_s"),
            detection=result["detection"],
            recovery_s=result.get("recovery_s"),
            recovery=result["recovery"],
            writes=writes,
            figures=result.get("figures", {}),
            phases=tuple(self.phases),
            problems=tuple(self.problems),
            keys_deleted=deleted,
        )

    def read_back(self, prefix: str) -> dict[str, bytes]:
        """Every key under ``prefix``, by one linearizable range (etcd's default) through a member that answers."""
        self.wait("etcd quorum after the heal", lambda: self.health().has_quorum, every=0.2, grace=True)

        def once() -> dict[str, bytes] | None:
            for member in self.names:
                with contextlib.suppress(CoreosLabError):
                    return {kv.key_text: kv.value for kv in self.client(member, 10.0).range(prefix)}
            return None

        return self.wait("a member to answer the read-back", once, every=0.5, grace=True)

    def delete(self, prefix: str) -> int | None:
        """Delete the drill's keys (best effort: a drill that failed must still say why, not fail here)."""
        for member in self.names:
            with contextlib.suppress(CoreosLabError):
                return self.client(member, 10.0).delete(prefix, prefix=True)
        self.problems.append(f"the drill's keys under {prefix} could not be deleted")
        return None


# ---- the four drills: each makes its fault (into ``made``), measures, heals, returns its figures --------------
def _leader(d: Drill, health: ClusterHealth) -> str:
    return d.member_name(health, health.leader)


def _term(health: ClusterHealth) -> int:
    return max((m.raft_term for m in health.members if m.ok and m.leader == health.leader), default=0)


def leader_loss(d: Drill, before: ClusterHealth, made: list[Fault]) -> dict[str, Any]:
    fault = d.lab.leader(d.fault_for())
    made.append(fault)
    killed = d.now()
    old_id, old_term = int(str(fault.params["member_id"]), 16), int(fault.params.get("term") or _term(before))
    d.say(f"killed {fault.params['unit']} on {fault.node}, the leader (member {old_id:x}, term {old_term})")
    others = [n for n in d.names if n != fault.node]

    def elected() -> ClusterHealth | None:
        # A newer term, not a different member: the killed one may restart (systemd) and win again. etcd 3.4's
        # status gives the term of the last *applied* entry, so this is a leader whose first entry (the empty
        # one raft appends on election) is applied on both others: the moment it can serve.
        h = d.health(others)
        return h if h.has_quorum and _term(h) > old_term else None

    new = d.wait("a new leader", elected)
    detected = d.now()
    new_leader = f"{_leader(d, new)} (member {new.leader:x}, term {_term(new)})"
    d.say(f"new leader {new_leader}, {detected - killed:.2f} s after the kill")
    ack = d.wait("a write acknowledged after the kill", lambda: d.log.first_ack_after(killed))
    d.say(f"a write sent after the kill was acknowledged {ack.end - killed:.2f} s after it (through {ack.member})")
    failed = sum(1 for a in d.log.attempts() if not a.ok and a.end >= killed and a.start <= ack.start)
    d.heal(made)
    healed = d.now()
    back = d.wait("every member healthy again", lambda: (h := d.health()).healthy and h, every=0.2, grace=True)
    d.say(f"etcd healthy again {d.now() - healed:.2f} s after the heal: leader {_leader(d, back)}")
    return {
        "node": fault.node,
        "why": "the etcd leader: the others must elect a new one",
        "detection_s": detected - killed,
        "detection": "the other members agree on a leader in a newer term",
        "recovery_s": ack.end - killed,
        "recovery": "a write sent after the kill is acknowledged",
        "figures": {
            "old_leader": f"{fault.node} (member {old_id:x}, term {old_term})",
            "new_leader": new_leader,
            "writes_not_acknowledged_around_the_kill": failed,
            "healthy_after_heal_s": round(d.now() - healed, 3),
        },
    }


def partition_minority(d: Drill, before: ClusterHealth, made: list[Fault]) -> dict[str, Any]:
    leader = _leader(d, before)
    target = next(n for n in d.names if n != leader)
    fault = d.lab.partition(target, (), d.fault_for())
    made.append(fault)
    cut = d.now()
    d.say(f"cut {target} (a follower) off {', '.join(fault.params['peers'])}; the leader {leader} keeps the majority")
    minority = d.client(target, 1.0)
    d.wait(f"{target} to see no leader", lambda: minority.status().leader == 0)
    noticed = d.now()
    d.say(f"{target} sees no leader {noticed - cut:.2f} s after the cut (it stopped hearing the leader)")
    sent = d.now()
    try:
        d.client(target, REFUSE_TIMEOUT).put(key_for(d.prefix, "minority"), "must not commit")
    except EtcdError as exc:
        refused = f"failed after {d.now() - sent:.1f} s ({exc})"
        d.say(f"a linearizable write through {target} {refused}, as it must")
    else:
        refused = "ACKNOWLEDGED"
        d.problems.append(f"a linearizable write through the cut-off member {target} was acknowledged")
    d.wait("writes acknowledged by the majority", lambda: d.log.acked_count(since=cut, besides=target) >= 5)
    majority = d.client(leader, 1.0).status()
    index = majority.raft_index
    lag = minority.status()
    last = d.log.last_ack_before(d.now())
    if last is None:  # cannot be: the baseline's writes were acknowledged before the cut
        raise CoreosLabError("no write was acknowledged before the heal")
    d.say(f"raft index: {leader} {index}, {target} {lag.raft_index}")
    d.heal(made)
    healed = d.now()
    during = [a for a in d.log.acked() if cut <= a.start and a.end <= healed]
    if any(a.member == target for a in during):
        d.problems.append(f"a write through the cut-off member {target} was acknowledged during the cut")

    def caught_up() -> int | None:
        st = minority.status()
        if st.leader == 0 or st.raft_index < index:
            return None
        kv = minority.get(key_for(d.prefix, last.n))  # linearizable: through the leader's read index
        return st.raft_term if kv is not None and kv.value == str(last.n).encode() else None

    term_after = d.wait(f"{target} to catch up", caught_up, grace=True)
    caught = d.now()
    after = d.health()
    d.say(f"{target} caught up {caught - healed:.2f} s after the heal (raft index >= {index}, key {last.n} read)")
    # A newer term than the majority's at the heal is an election after the rejoin: the cut-off member's own
    # campaigns raised its term, and a higher term makes the leader step down (etcd without --pre-vote).
    rejoin = "none" if term_after <= majority.raft_term else f"term {majority.raft_term} -> {term_after}"
    return {
        "node": target,
        "why": "a follower: the leader keeps the majority, so the cut shows the minority alone (no election then)",
        "detection_s": noticed - cut,
        "detection": "the cut-off member sees no leader",
        "recovery_s": caught - healed,
        "recovery": "the cut-off member reaches the majority's raft index and reads the last key",
        "figures": {
            "majority_writes_during_the_cut": len(during),
            "longest_write_gap_during_the_cut_s": round(longest_gap(during, cut, healed), 3),
            "write_through_the_cut_off_member": refused,
            "raft_index_at_heal": {leader: index, target: lag.raft_index},
            "election_after_the_rejoin": rejoin,
            "longest_write_gap_after_the_heal_s": round(longest_gap(d.log.window(healed, caught), healed, caught), 3),
            "leader_after": _leader(d, after) if after.leader else None,
        },
    }


def _movable(d: Drill) -> dict[str, Any]:
    """The deployed units that can move: launched, one target, not pinned to a machine (``MachineID``/
    ``MachineOf`` wait for their machine, as in fleet); ``{name: record}``."""
    from coreos_lab.state import EtcdKV, RecordStore
    from coreos_lab.unitfile import UnitFile, XFleet

    out = {}
    for record in RecordStore(EtcdKV(d.any_client())).list():
        if record.desired_state != "launched" or len(record.targets) != 1:
            continue
        try:
            xf = XFleet.from_unit(UnitFile.parse(record.content, record.name))
        except CoreosLabError:
            continue
        if not (xf.machine_id or xf.machine_of):
            out[record.name] = record
    return out


def _active_on(d: Drill, units: Sequence[str], nodes: Sequence[str]) -> dict[str, list[str]]:
    """``{unit: [nodes where systemd says it is active]}``, asking ``nodes`` only."""
    from coreos_lab.probe import NodeFacts
    from coreos_lab.units.observe import observe

    states, _ = observe(d.lab.cluster, list(units), {n: NodeFacts(n, True) for n in nodes})
    return {u: [n for n in nodes if (st := states.get(n, {}).get(u)) and st.active_state == "active"] for u in units}


def node_loss(d: Drill, before: ClusterHealth, made: list[Fault]) -> dict[str, Any]:
    units = list(_movable(d))
    where = _active_on(d, units, d.names)
    running = [n for n in d.names if any(n in where[u] for u in units)]
    if not running:
        raise UsageError("the node-loss drill needs a deployed unit running on a node (coreos-lab deploy UNIT)")
    leader = _leader(d, before)
    node = next((n for n in running if n != leader), running[0])
    why = "runs deployed units" + (
        " and is not the etcd leader (an election would mix in)"
        if node != leader
        else " (and leads etcd: every node with units does)"
    )
    theirs = [u for u in units if node in where[u]]
    fault = d.lab.stop(node, d.fault_for())
    made.append(fault)
    off = d.now()
    d.say(f"powered off {node} (vagrant halt --force); its units: {', '.join(theirs)}")
    others = [n for n in d.names if n != node]
    moved: dict[str, float] = {}
    seen: dict[str, float] = {}

    def progress() -> bool:
        status = (d.engine() if d.engine is not None else None) or {}
        state = ((status.get("nodes") or {}).get(node) or {}).get("state")
        if state in ("held", "lost") and "held" not in seen:
            seen["held"] = d.now() - off
            d.say(f"the engine holds {node}: it missed a probe ({seen['held']:.1f} s)")
        if state == "lost" and "lost" not in seen:
            seen["lost"] = d.now() - off
            d.say(f"the engine gave {node} up ({seen['lost']:.1f} s)")
        for unit, nodes in _active_on(d, [u for u in theirs if u not in moved], others).items():
            if nodes:
                moved[unit] = d.now() - off
                d.say(f"{unit} is active on {nodes[0]}, {moved[unit]:.1f} s after the power-off")
        return len(moved) == len(theirs)

    d.wait("its units to run elsewhere", progress, every=1.0)
    d.heal(made)
    copies: dict[str, int] = {}

    def once() -> bool:
        on = _active_on(d, theirs, d.names)
        copies.update({u: len(n) for u, n in on.items()})
        return all(len(n) == 1 for n in on.values())

    try:
        d.wait("each unit to run once", once, every=1.0, grace=True)
        d.say(f"{node} is back; each of its units runs once")
    except DrillTimeout:
        d.problems += [f"{u} runs on {n} nodes after the heal" for u, n in copies.items() if n != 1]
    settings = ((d.engine() if d.engine is not None else None) or {}).get("settings") or {}
    return {
        "node": node,
        "why": why,
        "detection_s": seen.get("lost"),
        "detection": "the engine gives the node up",
        "recovery_s": max(moved.values()),
        "recovery": "each of its units is active on another node",
        "figures": {
            "engine_held_s": None if "held" not in seen else round(seen["held"], 2),
            "moved_s": {u: round(t, 2) for u, t in moved.items()},
            "copies_after_heal": copies,
            "engine_agent_ttl_s": settings.get("agent_ttl"),
        },
    }


def slow_network(d: Drill, before: ClusterHealth, made: list[Fault]) -> dict[str, Any]:
    node = _leader(d, before)
    start = d.now()
    d.wait(f"{d.samples} writes before", lambda: len(d.log.window(start, d.now())) >= d.samples)
    base = d.log.window(start, d.now())
    fast = percentile([a.latency for a in base], 0.9)
    fault = d.lab.shape(node, delay_ms=DELAY_MS, duration=d.fault_for())  # no netem: part A's one line, as is
    made.append(fault)
    slowed = d.now()
    d.say(f"{node} (the leader): {fault.detail()}")
    d.wait(f"{d.samples} writes during", lambda: len(d.log.window(slowed, d.now())) >= d.samples)
    during = d.log.window(slowed, d.now())
    felt = next((a for a in during if a.latency >= fast + DELAY_MS / 2000), None)
    d.heal(made)
    healed = d.now()
    d.wait(f"{d.samples} writes after", lambda: len(d.log.window(healed, d.now())) >= d.samples, grace=True)
    after = d.log.window(healed, d.now())
    again = next((a for a in after if a.latency <= fast), None)
    figures = {name: latency_figures(w) for name, w in (("before", base), ("during", during), ("after", after))}
    for name, f in figures.items():
        d.say(f"write latency {name}: median {f['median_ms']} ms, p90 {f['p90_ms']} ms ({f['writes']} writes)")
    return {
        "node": node,
        "why": "the etcd leader: every commit waits for its appends (a slow follower is outvoted and hides it)",
        "detection_s": None if felt is None else felt.end - slowed,
        "detection": f"a write slowed by {DELAY_MS / 2:g} ms or more",
        "recovery_s": None if again is None else again.end - healed,
        "recovery": "a write as fast as before's p90 again",
        "figures": {"delay_ms": DELAY_MS, **{f"latency_{k}": v for k, v in figures.items()}},
    }
