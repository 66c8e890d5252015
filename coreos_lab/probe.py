"""The one node probe: who a node is (and, when asked, how its etcd member is doing), in one SSH round trip.

Every command that needs to know the nodes asks this: ``deploy`` and the other unit commands (machine id,
placement metadata, address, whether fleetd runs), ``status`` (the same, plus deployed units' states through
``extra``), and ``up``'s readiness wait (the same, plus the etcd unit's state, ``etcdctl endpoint health`` and
the members it lists). Nothing here prints; unreachable nodes are reported in their :class:`NodeFacts`, never
raised.

On a software-emulated VM every process the login shell starts costs ~200 ms, so the probe reads files with
shell builtins; it starts ``ip`` only when some node's address is known neither from the lab nor from its SSH
host, and ``systemctl``/``etcdctl`` only when the etcd part is asked for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from coreos_lab import nodeshell
from coreos_lab.errors import CoreosLabError
from coreos_lab.scheduler import Node

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec

ETCD_PORT: Final = 2379
# What a node may say provisioned it (nodeshell.PROVISIONED_BY).
PROVISION_CHANNELS: Final = frozenset({"ignition", "cloud-config", "ignition,cloud-config", "none"})
_SEP: Final = "@@coreos-lab@@"
_EXTRA_SEP: Final = "@@coreos-lab-extra@@"
_READ_FN: Final = 'r() { while IFS= read -r l || [ -n "$l" ]; do printf \'%s\\n\' "$l"; done < "$1"; } 2>/dev/null'
_ETCDCTL: Final = "etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=5s --dial-timeout=3s"


def etcdctl(*, tls: bool = False) -> str:
    """The node-side etcdctl command line (``tls``: https with the node's copy of the lab's client certificate).

    The key on the node is root's (0600), hence ``sudo -n`` (never wait for a password prompt: a node that
    wants one fails the probe instead of hanging).

    >>> etcdctl()
    'etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=5s --dial-timeout=3s'
    """
    if not tls:
        return _ETCDCTL
    from coreos_lab.tls import NODE_ETCDCTL_FLAGS  # cryptography loads only for TLS labs

    endpoint = "--endpoints=https://127.0.0.1:2379"
    return f"sudo -n etcdctl {endpoint} {NODE_ETCDCTL_FLAGS} --command-timeout=5s --dial-timeout=3s"


def probe_command(addresses: bool, *, etcd_unit: str | None = None, tls: bool = False) -> str:
    """The probe's shell line.

    ``addresses`` adds the address listing; ``etcd_unit`` adds that unit's state, ``etcdctl endpoint health``
    and ``etcdctl member list`` (``tls``: over https).
    """
    sections = [
        f"{_READ_FN}; r /etc/machine-id",
        f"r {nodeshell.METADATA_PATH}",
        "r /proc/sys/kernel/hostname",
        nodeshell.ADDRESSES if addresses else ":",
        f"{{ test -S {nodeshell.FLEET_SOCKET} && echo fleet || echo -; }}; {nodeshell.PROVISIONED_BY}",
    ]
    if etcd_unit is not None:
        ctl = etcdctl(tls=tls)
        sections += [
            f"systemctl is-active {etcd_unit} 2>/dev/null",
            f"if {ctl} endpoint health >/dev/null 2>&1; then echo ok; else echo bad; fi",
            f"{ctl} member list 2>/dev/null; true",
        ]
    return f"; echo {_SEP}; ".join(sections)


@dataclass(frozen=True, slots=True)
class EtcdSeen:
    """What a node said of its etcd member: the unit's state, endpoint health, and the members it lists."""

    unit_state: str = ""
    healthy: bool = False
    members: tuple[tuple[str, str], ...] = ()  # (member name, status) from `etcdctl member list`

    @property
    def started_members(self) -> int:
        return sum(1 for _, status in self.members if status == "started")

    def ready(self, expected_members: int) -> bool:
        """The unit is active, the endpoint healthy, and ``expected_members`` members have started."""
        return self.unit_state == "active" and self.healthy and self.started_members == expected_members


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What one node told us about itself (``reachable`` False: the rest is the lab config's, or empty)."""

    name: str
    reachable: bool
    ip: str = ""
    machine_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    error: str | None = None
    runs_fleet: bool = False
    addresses: tuple[str, ...] = ()  # the node's global IPv4 addresses, when they were listed
    etcd: EtcdSeen | None = None  # when the probe asked for the etcd member
    provisioned_by: str = ""  # one of PROVISION_CHANNELS (as the node says); "" when not known

    @property
    def machine(self) -> str:
        """fleetctl's MACHINE column, ``<node>/<ip>``."""
        return f"{self.name}/{self.ip}" if self.ip else self.name

    def to_node(self, load: int = 0) -> Node:
        """The scheduler's view (healthy = reachable)."""
        return Node(self.name, self.machine_id, self.ip, dict(self.metadata), self.reachable, load)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reachable": self.reachable,
            "ip": self.ip or None,
            "machine_id": self.machine_id or None,
            "metadata": dict(sorted(self.metadata.items())),
            "hostname": self.hostname or None,
            "runs_fleet": self.runs_fleet,
            "provisioned_by": self.provisioned_by or None,
            "error": self.error,
        }


def parse_metadata(text: str) -> dict[str, str]:
    """``/etc/coreos-lab/metadata``: ``key=value`` lines (blank lines and ``#`` comments ignored).

    >>> parse_metadata("role=web\\n# x\\nzone = a\\n")
    {'role': 'web', 'zone': 'a'}
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if eq and key.strip() and value.strip():
            out[key.strip()] = value.strip()
    return out


def usable_ip(text: str) -> bool:
    """An address other nodes can reach: not loopback, link-local or unspecified.

    >>> usable_ip("192.168.56.101"), usable_ip("127.0.0.1"), usable_ip("core-01")
    (True, False, False)
    """
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified)


def parse_members(text: str) -> tuple[tuple[str, str], ...]:
    """``etcdctl member list`` (v3 simple format) -> ``((name, status), ...)``.

    >>> parse_members("8e9e05c52164694d, started, core-01, http://x:2380, http://x:2379, false\\n")
    (('core-01', 'started'),)
    """
    members = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3:
            members.append((fields[2], fields[1]))
    return tuple(members)


def parse_probe(name: str, stdout: str, spec: NodeSpec | None = None, ssh_host: str = "") -> NodeFacts:
    """Turn the probe's output into NodeFacts. The address: the lab's, else the SSH host, else the node's first.

    >>> f = parse_probe("core-01", "abc\\n@@coreos-lab@@\\nrole=web\\n@@coreos-lab@@\\ncore-01\\n@@coreos-lab@@\\n"
    ...                 "10.0.2.15 \\n@@coreos-lab@@\\n")
    >>> (f.machine_id, dict(f.metadata), f.hostname, f.ip, f.addresses, f.etcd)
    ('abc', {'role': 'web'}, 'core-01', '10.0.2.15', ('10.0.2.15',), None)
    """
    parts = [*stdout.split(_SEP + "\n"), *[""] * 8][:8]
    machine_id, meta_text, hostname, addresses, fleet, unit_state, health = (p.strip() for p in parts[:7])
    metadata = parse_metadata(meta_text) if meta_text else dict(spec.metadata if spec else {})
    listed = tuple(addresses.split())
    ip = spec.ip if spec else ""
    if not ip and usable_ip(ssh_host):
        ip = ssh_host
    if not ip:
        ip = next((a for a in listed if usable_ip(a)), "")
    mid = machine_id.split()[0] if machine_id else ""
    etcd = None
    if len(stdout.split(_SEP + "\n")) > 5:
        etcd = EtcdSeen(unit_state, health == "ok", parse_members(parts[7]))
    fleet_word, provisioned = [*fleet.split(), "", ""][:2]
    return NodeFacts(
        name,
        True,
        ip,
        mid,
        metadata,
        hostname,
        runs_fleet=fleet_word == "fleet",
        addresses=listed,
        etcd=etcd,
        provisioned_by=provisioned if provisioned in PROVISION_CHANNELS else "",
    )


def probe_nodes(
    cluster: Cluster,
    specs: Mapping[str, NodeSpec] | None = None,
    *,
    nodes: list[str] | None = None,
    etcd_unit: str | None = None,
    tls: bool = False,
    addresses: bool | None = None,
    timeout: float = 20.0,
) -> dict[str, NodeFacts]:
    """Ask every node (or ``nodes``), in parallel with one command each, who it is.

    ``etcd_unit`` also asks for the etcd member (:class:`EtcdSeen`); ``addresses`` forces (True) or skips
    (False) the address listing, which by default runs only where no address is known.
    """
    return probe_nodes_and(
        cluster, specs, nodes=nodes, etcd_unit=etcd_unit, tls=tls, addresses=addresses, timeout=timeout
    )[0]


def probe_nodes_and(
    cluster: Cluster,
    specs: Mapping[str, NodeSpec] | None = None,
    extra: str | None = None,
    *,
    nodes: list[str] | None = None,
    etcd_unit: str | None = None,
    tls: bool = False,
    addresses: bool | None = None,
    timeout: float = 20.0,
) -> tuple[dict[str, NodeFacts], dict[str, str]]:
    """:func:`probe_nodes`, plus ``extra`` (a shell line) run in the same round trip on every node.

    Returns the facts and ``{node: extra's stdout}`` for the nodes that answered. ``extra`` cannot make a
    node look down: its exit status is ignored (``|| true``) and its stderr dropped.
    """
    specs = specs or {}
    targets = cluster.targets
    names = list(nodes) if nodes is not None else list(cluster.names)
    if addresses is None:
        addresses = any(
            not (specs.get(n) and specs[n].ip) and not (n in targets and usable_ip(targets[n].hostname)) for n in names
        )
    command = probe_command(addresses, etcd_unit=etcd_unit, tls=tls)
    if extra:
        command += f"; echo {_EXTRA_SEP}; {{ {extra}; }} 2>/dev/null || true"
    outcomes = cluster.run_all(command, names if nodes is not None else None, timeout=timeout)
    facts: dict[str, NodeFacts] = {}
    extras: dict[str, str] = {}
    for name, outcome in outcomes.items():
        if extra and not isinstance(outcome, CoreosLabError):
            head, sep, tail = outcome.stdout.partition(f"{_EXTRA_SEP}\n")
            if sep:
                outcome = replace(outcome, stdout=head)
                extras[name] = tail
        spec = specs.get(name)
        if isinstance(outcome, CoreosLabError):
            facts[name] = NodeFacts(
                name, False, spec.ip if spec else "", metadata=dict(spec.metadata if spec else {}), error=str(outcome)
            )
        elif not outcome.ok:
            facts[name] = NodeFacts(name, False, error=f"{name}: probe exited {outcome.exit_code}")
        else:
            target = targets.get(name)
            facts[name] = parse_probe(name, outcome.stdout, spec, target.hostname if target else "")
    return facts, extras
