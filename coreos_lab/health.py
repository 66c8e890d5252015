"""``coreos-lab status``: is my cluster OK? Nodes, etcd, units, as one report and a minikube-style exit bitmask.

Exit code bits: 1 a node is down or unreachable, 2 etcd is unhealthy and has no quorum (one member of three
down is *not* a failure: the cluster still commits writes), 4 a unit is not in its desired state.

Every node is asked once, in parallel, over its own SSH connection (the probe command, then etcd through a
forward on that same connection, then systemd for the deployed units). Nothing here prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from coreos_lab.errors import CoreosLabError
from coreos_lab.fsutil import atomic_write
from coreos_lab.probe import ETCD_PORT, NodeFacts, probe_nodes, probe_nodes_and
from coreos_lab.state import EtcdKV, RecordStore, UnitRecord
from coreos_lab.units.observe import observe, unit_rows
from coreos_lab.units.results import UnitRow

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.etcd import ClusterHealth, EtcdClient
    from coreos_lab.systemd import UnitState

log = logging.getLogger(__name__)

NODE_DOWN: Final = 1
ETCD_UNHEALTHY: Final = 2
UNIT_NOT_DESIRED: Final = 4
MAX_GUESSED_UNITS: Final = 200  # a cached list longer than this is not worth a speculative `systemctl show`


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node: Vagrant's state (None when the lab is not a Vagrant lab), SSH, etcd member, leader."""

    name: str
    ip: str
    vagrant_state: str | None
    ssh_ok: bool
    etcd_ok: bool
    etcd_leader: bool
    error: str | None = None
    provisioned_by: str = ""  # ignition, cloud-config or none, as the node says ("" unknown)

    @property
    def down(self) -> bool:
        return not self.ssh_ok or (self.vagrant_state not in (None, "unknown", "running"))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ip": self.ip or None,
            "vagrant_state": self.vagrant_state,
            "ssh": self.ssh_ok,
            "etcd": self.etcd_ok,
            "leader": self.etcd_leader,
            "provisioned_by": self.provisioned_by or None,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """The etcd cluster: healthy (all members agree on a leader), quorum, and members seen vs expected."""

    healthy: bool
    has_quorum: bool
    member_count: int
    healthy_members: int
    expected_members: int
    leader: str | None
    error: str | None = None
    tls: bool = False  # reached over https with the lab's client certificate
    raft_term: int = 0  # the leader's term, as the members naming it say (0: no leader)

    def to_json(self) -> dict[str, Any]:
        return {
            "tls": self.tls,
            "healthy": self.healthy,
            "has_quorum": self.has_quorum,
            "member_count": self.member_count,
            "healthy_members": self.healthy_members,
            "expected_members": self.expected_members,
            "leader": self.leader,
            "raft_term": self.raft_term,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The whole answer. ``exit_code`` is the bitmask described in the module docstring."""

    nodes: tuple[NodeStatus, ...]
    etcd: EtcdStatus
    units: tuple[UnitRow, ...]
    units_error: str | None
    duration: float

    @property
    def exit_code(self) -> int:
        code = 0
        if any(n.down for n in self.nodes):
            code |= NODE_DOWN
        if not self.etcd.has_quorum:
            code |= ETCD_UNHEALTHY
        # Without quorum the desired state cannot be read: that is bit 2's fault, not a unit's.
        if (self.units_error is not None and self.etcd.has_quorum) or any(not u.in_desired_state for u in self.units):
            code |= UNIT_NOT_DESIRED
        return code

    @property
    def problems(self) -> list[str]:
        """One line per fault, in bit order."""
        out = [f"node {n.name} is down: {n.error or n.vagrant_state}" for n in self.nodes if n.down]
        if not self.etcd.has_quorum:
            out.append(f"etcd has no quorum ({self.etcd.healthy_members}/{self.etcd.member_count} members answer)")
        if self.units_error is not None:
            out.append(f"units unknown: {self.units_error}")
        for u in self.units:
            if not u.in_desired_state:
                where = f" on {u.machine}" if u.node else " (no node)"
                have = u.error or f"{u.active_state or '-'}/{u.sub_state or '-'}"
                out.append(f"unit {u.unit}{where}: desired {u.desired_state}, is {have}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "nodes": [n.to_json() for n in self.nodes],
            "etcd": self.etcd.to_json(),
            "units": [u.to_json() for u in self.units],
            "units_error": self.units_error,
            "problems": self.problems,
            "duration": round(self.duration, 3),
        }


def vagrant_states(lab_dir: Path | None) -> dict[str, str] | None:
    """``{machine: state}`` from ``vagrant status`` when ``lab_dir`` is a Vagrant lab; None when it is not.

    Any failure (no Vagrant, a broken Vagrantfile) maps every machine to ``unknown``: the SSH and etcd
    checks still say whether the nodes work.
    """
    if lab_dir is None or not (Path(lab_dir) / "Vagrantfile").is_file():
        return None
    from coreos_lab.vagrant import VagrantLab

    try:
        return {m.name: m.state for m in VagrantLab(Path(lab_dir)).status()}
    except (CoreosLabError, OSError):
        return {}


def _etcd_probe(cluster: Cluster, name: str, timeout: float, port: int = ETCD_PORT) -> EtcdClient:
    return cluster.etcd_client(name, port, timeout=timeout)


def etcd_summary(health: ClusterHealth, expected: int, unreachable: Sequence[str] = ()) -> EtcdStatus:
    """Fold :class:`~coreos_lab.etcd.ClusterHealth` (plus members we could not even reach) into EtcdStatus."""
    agreeing = [m for m in health.members if m.ok and health.leader and m.leader == health.leader]
    ok = len(agreeing)
    return EtcdStatus(
        healthy=health.healthy and not unreachable,
        has_quorum=health.has_quorum,
        member_count=health.member_count,
        healthy_members=ok,
        expected_members=expected,
        leader=f"{health.leader:x}" if health.leader else None,
        # Only the members naming the leader: a cut-off member's own term climbs with every election it
        # starts alone, and is not the cluster's.
        raft_term=max((m.raft_term for m in agreeing), default=0),
    )


@dataclass(frozen=True, slots=True)
class _EtcdSide:
    """What the etcd half of ``status`` learned (it runs while the nodes are being probed)."""

    clients: dict[str, EtcdClient]
    health: ClusterHealth
    records: list[UnitRecord]
    records_error: str | None
    states: dict[str, dict[str, UnitState]]
    state_errors: dict[str, str]
    guessed: bool = False  # the units' states come from the probe's speculative `systemctl show`


def _units_cache(cluster: Cluster) -> Path | None:
    """Where the unit names of this cluster's last ``status`` are kept (private runtime dir), or None."""
    if cluster.config_text is None:
        return None
    from coreos_lab.mux import runtime_dir

    digest = hashlib.sha256(cluster.config_text.encode()).hexdigest()[:16]
    try:
        return runtime_dir() / f"units-{digest}.json"
    except CoreosLabError:
        return None


def _cached_unit_names(path: Path | None) -> list[str]:
    """The cached names, each a valid unit name (anything else in the file is ignored); [] when none."""
    from coreos_lab.unitfile import check_unit_name

    if path is None:
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names: set[str] = set()
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, str):
            continue
        with contextlib.suppress(CoreosLabError):
            names.add(check_unit_name(item))
    return sorted(names)[:MAX_GUESSED_UNITS]


def _remember_unit_names(path: Path | None, names: Sequence[str], known: Sequence[str]) -> None:
    if path is None or sorted(set(names)) == list(known):
        return
    with contextlib.suppress(OSError):
        atomic_write(path, json.dumps(sorted(set(names))[:MAX_GUESSED_UNITS]), mode=0o600)


def _guessed_states(guess: Sequence[str], extras: Mapping[str, str]) -> dict[str, dict[str, UnitState]]:
    """Parse each node's speculative ``systemctl show`` of ``guess``; a node whose answer does not parse is
    left out (the caller asks it again)."""
    from coreos_lab.systemd import parse_show

    states: dict[str, dict[str, UnitState]] = {}
    for node, text in extras.items():
        with contextlib.suppress(CoreosLabError):
            states[node] = {st.name: st for st in parse_show(text, guess)}
    return states


def _etcd_side(cluster: Cluster, timeout: float, guess: Sequence[str] = (), port: int = ETCD_PORT) -> _EtcdSide:
    """etcd health and the desired state, then systemd's view of those units on every node.

    It does not wait for the node probe: a node that is down fails here on its own (bounded by the SSH
    connect timeout and ``timeout``), and the caller drops what it says about nodes the probe found down.
    When every unit in etcd is among ``guess`` (the names the probe already asks systemd about), the
    systemd round is skipped: the probe's answer has the states.
    """
    from coreos_lab.etcd import ClusterHealth, cluster_health

    clients: dict[str, EtcdClient] = {}
    for name in cluster.names:
        try:
            clients[name] = _etcd_probe(cluster, name, timeout, port)
        except CoreosLabError:
            continue
    health = cluster_health(clients) if clients else ClusterHealth((), 0, len(cluster.names))
    records: list[UnitRecord] = []
    error: str | None = None
    if health.has_quorum:
        answering = [m.name for m in health.members if m.ok]
        try:
            records = RecordStore(EtcdKV(clients[answering[0]])).list() if answering else []
        except CoreosLabError as exc:
            error = str(exc)
    else:
        error = "etcd has no quorum: desired state unknown"
    names = [r.name for r in records]
    if set(names) <= set(guess):
        return _EtcdSide(clients, health, records, error, {}, {}, guessed=True)
    everyone = {n: NodeFacts(n, True) for n in cluster.names}
    states, state_errors = observe(cluster, names, everyone)
    return _EtcdSide(clients, health, records, error, states, state_errors)


def cluster_status(
    cluster: Cluster,
    *,
    lab_dir: Path | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    etcd_timeout: float = 3.0,
    etcd_port: int = ETCD_PORT,
) -> ClusterStatus:
    """Check everything once and return the report (never raises for a sick cluster: that is the answer).

    Two things run at once: the node probe (one SSH command per node) and the etcd half (health, the
    desired state, then one ``systemctl show`` per node for the deployed units). On a software-emulated VM
    a node command costs ~0.2 s, so doing them one after the other was most of ``status``' time.
    """
    from concurrent.futures import ThreadPoolExecutor

    from coreos_lab.systemd import show_argv

    started = time.monotonic()
    # The units etcd listed last time are asked about in the probe itself, so a repeated `status` needs
    # one command per node, not two: a node command costs ~0.2-0.3 s on a software-emulated VM.
    cache = _units_cache(cluster)
    guess = _cached_unit_names(cache)
    extra = shlex.join(show_argv(guess)) if guess else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="coreos-lab-status") as pool:
        etcd_future = pool.submit(_etcd_side, cluster, etcd_timeout, guess, etcd_port)
        facts, extras = probe_nodes_and(cluster, specs, extra)
        side = etcd_future.result()
    if side.records_error is None:
        _remember_unit_names(cache, [r.name for r in side.records], guess)
    if side.guessed:
        states = _guessed_states(guess, extras)
        # A node whose speculative answer is missing or garbled is asked again, the ordinary way.
        again = {n: f for n, f in facts.items() if f.reachable and n not in states}
        more, more_errors = observe(cluster, [r.name for r in side.records], again) if again else ({}, {})
        side = dataclasses.replace(side, states={**states, **more}, state_errors=more_errors)
    reachable = [n for n, f in facts.items() if f.reachable]
    # A node that answered over SSH is running: ask Vagrant (1.5-2 s of Ruby start-up) only about the others.
    vstates: dict[str, str] | None
    if len(reachable) == len(facts):
        is_vagrant_lab = lab_dir is not None and (Path(lab_dir) / "Vagrantfile").is_file()
        vstates = dict.fromkeys(facts, "running") if is_vagrant_lab else None
    else:
        vstates = vagrant_states(lab_dir)
        if vstates is not None:
            vstates.update(dict.fromkeys(reachable, "running"))
    # etcd through a node the probe found down is not trusted (it cannot have answered anyway).
    clients = {n: c for n, c in side.clients.items() if n in reachable}
    health = side.health
    by_member = {m.name: m for m in health.members}
    expected = len(specs) if specs else len(facts)
    etcd = etcd_summary(health, expected, [n for n in facts if n not in clients])
    etcd = dataclasses.replace(etcd, tls=cluster.etcd_tls_dir is not None)

    units_error = side.records_error
    states = {n: s for n, s in side.states.items() if n in reachable}
    errors = {n: e for n, e in side.state_errors.items() if n in reachable}
    units = tuple(unit_rows(side.records, facts, states, errors))

    nodes = []
    for name, f in facts.items():
        m = by_member.get(name)
        vstate = None if vstates is None else vstates.get(name, "unknown")
        nodes.append(
            NodeStatus(
                name=name,
                ip=f.ip,
                vagrant_state=vstate,
                ssh_ok=f.reachable,
                etcd_ok=bool(m and m.ok and m.leader),
                etcd_leader=bool(m and m.ok and m.member_id and m.member_id == health.leader),
                error=f.error if not f.reachable else (m.error if m and not m.ok else None),
                provisioned_by=f.provisioned_by,
            )
        )
    for c in side.clients.values():
        c.close()
    return ClusterStatus(tuple(nodes), etcd, units, units_error, time.monotonic() - started)


# ---- the report through the mux ------------------------------------------------------------------------------------
def _specs_to_wire(specs: Mapping[str, NodeSpec] | None) -> list[dict[str, Any]] | None:
    if specs is None:
        return None
    return [{"index": s.index, "name": s.name, "ip": s.ip, "metadata": dict(s.metadata)} for s in specs.values()]


def _specs_from_wire(raw: object) -> dict[str, NodeSpec] | None:
    from coreos_lab.config import NodeSpec

    if not isinstance(raw, list):
        return None
    return {
        str(s["name"]): NodeSpec(int(s["index"]), str(s["name"]), str(s["ip"]), dict(s.get("metadata") or {}))
        for s in raw
    }


def status_request(cluster: Cluster, req: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a ``status`` request made by :func:`report` (in the mux process, over its runners)."""
    lab_dir = req.get("lab_dir")
    result = cluster_status(
        cluster,
        lab_dir=Path(lab_dir) if lab_dir else None,
        specs=_specs_from_wire(req.get("specs")),
        etcd_timeout=float(req.get("etcd_timeout", 3.0)),
        etcd_port=int(req.get("etcd_port", ETCD_PORT)),
    )
    return result.to_json()


def report(
    cluster: Cluster,
    *,
    lab_dir: Path | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    etcd_timeout: float = 3.0,
    etcd_port: int = ETCD_PORT,
) -> dict[str, Any]:
    """:func:`cluster_status` as JSON, computed where the connections are.

    With persistent connections the mux computes it, next to its open connections and warm etcd sessions (the
    CLI then needs no hop through the mux per etcd request); without them, or when that mux cannot (an older
    mux process, or a failure of the mux itself), right here.
    """
    from coreos_lab.mux import MuxRunner

    first = cluster.runner(cluster.names[0]) if cluster.names else None
    if isinstance(first, MuxRunner):
        req = {
            "op": "status",
            "lab_dir": str(lab_dir) if lab_dir else None,
            "tls_dir": str(cluster.etcd_tls_dir) if cluster.etcd_tls_dir else None,
            "etcd_timeout": etcd_timeout,
            "etcd_port": etcd_port,
            "specs": _specs_to_wire(specs),
        }
        try:
            answer = first.client.request(req, timeout=600).get("report")
        except CoreosLabError as exc:
            log.debug("mux status failed, checking in this process: %s", exc)
        else:
            if isinstance(answer, dict):
                return answer
    return cluster_status(
        cluster, lab_dir=lab_dir, specs=specs, etcd_timeout=etcd_timeout, etcd_port=etcd_port
    ).to_json()


# ---- is the cluster ready? (`up`'s bounded wait) --------------------------------------------------------------------
def ready(facts: Mapping[str, NodeFacts], expected_members: int, *, etcd: bool = True) -> bool:
    """Every node reachable; with ``etcd``, every node's etcd unit active and healthy with the expected
    number of started members."""
    if not facts or not all(f.reachable for f in facts.values()):
        return False
    if not etcd:
        return True
    return all(f.etcd is not None and f.etcd.ready(expected_members) for f in facts.values())


def wait_ready(
    connect: Callable[[], Cluster],
    nodes: Sequence[str],
    *,
    etcd_unit: str,
    expected_members: int,
    etcd: bool,
    timeout: float,
    on_round: Callable[[dict[str, NodeFacts]], None] | None = None,
    interval: float = 5.0,
    tls: bool = False,
) -> tuple[bool, dict[str, NodeFacts]]:
    """Probe ``nodes`` (one command each, :mod:`coreos_lab.probe` with the etcd part) until :func:`ready` or
    ``timeout`` seconds passed; return (ready, the last facts). ``connect`` makes a fresh cluster each round
    (a booting node's SSH address may still change); ``tls``: etcd speaks https."""
    deadline = time.monotonic() + timeout
    last: dict[str, NodeFacts] = {}
    while True:
        try:
            with connect() as cluster:
                last = probe_nodes(cluster, nodes=list(nodes), etcd_unit=etcd_unit, tls=tls, addresses=True, timeout=40)
        except CoreosLabError as exc:
            last = {n: NodeFacts(n, False, error=str(exc)) for n in nodes}
        if on_round:
            on_round(last)
        if ready(last, expected_members, etcd=etcd):
            return True, last
        if time.monotonic() + interval >= deadline:
            return False, last
        time.sleep(interval)
