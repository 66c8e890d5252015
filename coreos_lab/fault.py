"""The fault lab: break a cluster on purpose, remember what was broken, undo it.

Faults, each applied on the nodes through their runners (as root through the runner's ``sudo -n``, every
argument quoted), never through a shell of the host:

- ``partition``: on the cut node and on each peer, a chain of ours (``COREOS-LAB-FAULT-<id>``, jumped to first
  from INPUT and OUTPUT) drops packets from and to the other side's *cluster* addresses. The lab's own SSH
  does not come from a peer's cluster address (Vagrant's management network; the nspawn rig's bridge), so it
  keeps working; a node whose SSH does come from one is refused. A node without ``iptables`` gets the same
  rules as an nftables table of ours (``coreos_lab_fault_<id>``).
- ``delay`` / ``loss``: ``tc``: a prio qdisc of ours (handle ``fa17:``) at the root of the interface carrying
  the node's cluster address, netem in its fourth band, and u32 filters that send only packets *to the peers'
  cluster addresses* there: SSH and everything else keep the three ordinary bands.
- ``kill``: ``systemctl kill --kill-who=main --signal=SIGKILL``; ``leader`` does it to the etcd unit of the
  member the others name as leader.
- ``stop``: ``vagrant halt --force`` (a Vagrant lab only).

Every fault is a record in the lab's private dir (:class:`FaultBook`: a JSON file written atomically under a
lock), so ``heal`` works from any shell. A record keeps, for each host the fault touched, a word saying how to
undo it there (``iptables``, ``nft``, ``tc IFACE``, ``unit NAME``), never a command line: heal rebuilds the
commands from those words (:mod:`coreos_lab.faultshell`), so a record file can name nothing but our own chains,
qdiscs and units. With ``--for`` a node-side fault also starts a systemd timer on each host it touched
(``coreos-lab-fault-heal-<id>``) that runs the undo, so it expires even when the host that made it is gone;
``stop`` expires through a detached process of ours (``coreos-lab fault expire``). An expired fault is never
listed as active.

>>> f = Fault("0a1b2c3d", "delay", "core-01", 0.0, hosts={"core-01": "tc eth1"},
...           params={"delay_ms": 200.0, "jitter_ms": 0.0, "peers": ["core-02"]})
>>> f.detail()
'200ms to core-02 (eth1)'
>>> undo_command(f, "core-01").startswith("if tc qdisc show dev eth1")
True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from coreos_lab import faultshell as sh
from coreos_lab.errors import ConfigError, CoreosLabError, EtcdError, UsageError
from coreos_lab.fsutil import atomic_write
from coreos_lab.unitfile import UNIT_SUFFIXES, check_unit_name

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.runner import CommandResult

KINDS: Final = ("partition", "delay", "loss", "kill", "stop")
STATE_FILE: Final = "faults.json"
LOCK_FILE: Final = "faults.lock"
EXPIRE_LOG: Final = "fault-expire.log"
EXIT_NOTHING_TO_HEAL: Final = 3
MAX_DELAY_MS: Final = 60_000.0
MAX_FOR: Final = 7 * 86400.0
LOCK_WAIT: Final = 60.0
_ID_RE: Final = re.compile(r"^[0-9a-f]{8}\Z")


class NothingToHeal(CoreosLabError):
    """``heal`` found no recorded fault (exit 3: "already healthy", apart from 1: "could not heal")."""

    exit_code = EXIT_NOTHING_TO_HEAL


def iso_time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- checks of what the user asked for (pure) ------------------------------------------------------------------------
def check_for(seconds: float | None) -> float | None:
    """``--for``: None (until healed) or a positive number of seconds, at most a week.

    >>> check_for(None), check_for(5)
    (None, 5.0)
    """
    if seconds is None:
        return None
    if not 0 < seconds <= MAX_FOR:
        raise UsageError(f"--for must be more than 0 and at most {MAX_FOR:g} seconds, not {seconds:g}")
    return float(seconds)


def check_delay(ms: float, jitter: float) -> tuple[float, float]:
    """``delay MS --jitter MS``: a positive delay (at most a minute); jitter from 0 up to the delay itself.

    >>> check_delay(200, 20)
    (200.0, 20.0)
    """
    if not 0 < ms <= MAX_DELAY_MS:
        raise UsageError(f"the delay must be more than 0 and at most {MAX_DELAY_MS:g} ms, not {ms:g}")
    if not 0 <= jitter <= ms:
        raise UsageError(f"--jitter must be between 0 and the delay ({ms:g} ms), not {jitter:g}")
    return float(ms), float(jitter)


def check_loss(percent: float) -> float:
    """``loss PERCENT``: in (0, 100].

    >>> check_loss(30)
    30.0
    """
    if not 0 < percent <= 100:
        raise UsageError(f"the loss must be more than 0 and at most 100 percent, not {percent:g}")
    return float(percent)


def unit_to_kill(name: str) -> str:
    """A unit name by systemd's rules; a bare name means a service, as systemctl takes it.

    >>> unit_to_kill("etcd-member")
    'etcd-member.service'
    """
    if not any(name.endswith(s) for s in UNIT_SUFFIXES):
        name += ".service"
    return check_unit_name(name, allow_template=False)


def choose_peers(node: str, names: Sequence[str], given: Sequence[str] = ()) -> list[str]:
    """The peers to cut ``node`` off from: ``given`` (each a node, not ``node`` itself), else all others.

    >>> choose_peers("core-01", ["core-01", "core-02", "core-03"])
    ['core-02', 'core-03']
    """
    check_node(node, names)
    for peer in given:
        if peer == node:
            raise UsageError(f"--from names {node} itself: a node cannot be cut off from itself")
        check_node(peer, names)
    peers = list(dict.fromkeys(given)) or [n for n in names if n != node]
    if not peers:
        raise UsageError(f"{node} has no peers to be cut off from")
    return peers


def check_node(node: str, names: Sequence[str]) -> str:
    if node not in names:
        raise UsageError(f"no node named {node!r} (nodes: {', '.join(names) or 'none'})")
    return node


def _ipv4(node: str, ip: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError:
        raise CoreosLabError(f"{node}'s cluster address {ip!r} is not an IPv4 address") from None


# ---- records ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """One recorded fault. ``hosts``: each node it touched and how to undo it there (empty for ``stop``)."""

    id: str
    kind: str
    node: str
    since: float
    expires: float | None = None
    hosts: Mapping[str, str] = field(default_factory=dict)
    timer: bool = False  # a node-side heal timer runs on every host
    params: Mapping[str, Any] = field(default_factory=dict)

    def active(self, now: float) -> bool:
        return self.expires is None or self.expires > now

    def detail(self) -> str:
        p = self.params
        peers = ", ".join(p.get("peers", ()))
        iface = next((w[3:] for w in self.hosts.values() if w.startswith("tc ")), "")
        if self.kind == "partition":
            return f"from {peers}"
        if self.kind == "delay":
            jitter = f" ±{p['jitter_ms']:g}ms" if p.get("jitter_ms") else ""
            return f"{p['delay_ms']:g}ms{jitter} to {peers} ({iface})"
        if self.kind == "loss":
            return f"{p['loss']:g}% to {peers} ({iface})"
        if self.kind == "kill":
            text = f"{p['unit']} (pid {p.get('pid', '?')})"
            return text + (f", etcd leader {p['member_id']}" if p.get("member_id") else "")
        return "powered off (vagrant halt --force)"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "node": self.node,
            "detail": self.detail(),
            "since": iso_time(self.since),
            "expires": iso_time(self.expires),
            "since_epoch": self.since,
            "expires_epoch": self.expires,
            "hosts": dict(self.hosts),
            "timer": self.timer,
            "params": dict(self.params),
        }

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """A record as written by :meth:`to_json`; ValueError for anything else (the undo words are checked:
        heal builds root commands from them)."""
        if not isinstance(data, dict):
            raise ValueError("a fault is not an object")
        fid, kind, node = data.get("id"), data.get("kind"), data.get("node")
        if not (isinstance(fid, str) and _ID_RE.match(fid) and kind in KINDS and isinstance(node, str) and node):
            raise ValueError(f"bad id, kind or node: {fid!r} {kind!r} {node!r}")
        hosts = data.get("hosts") or {}
        if not isinstance(hosts, dict) or not all(isinstance(h, str) and isinstance(w, str) for h, w in hosts.items()):
            raise ValueError("bad hosts")
        for word in hosts.values():
            if not sh.UNDO_RE.match(word):
                raise ValueError(f"bad undo {word!r}")
            if word.startswith("unit "):
                try:
                    check_unit_name(word[5:])
                except CoreosLabError as exc:
                    raise ValueError(str(exc)) from None
        since, expires = data.get("since_epoch"), data.get("expires_epoch")
        if not isinstance(since, int | float) or not (expires is None or isinstance(expires, int | float)):
            raise ValueError("bad times")
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError("bad params")
        _check_params(kind, params)
        end = None if expires is None else float(expires)
        return cls(fid, kind, node, float(since), end, hosts, bool(data.get("timer")), params)


def _check_params(kind: str, params: Mapping[str, Any]) -> None:
    """What :meth:`Fault.detail` reads, of the right type (a hand-edited record must not break ``list``)."""
    number: tuple[type, ...] = (int, float)
    kinds: dict[str, dict[str, tuple[type, ...]]] = {
        "delay": {"delay_ms": number},
        "loss": {"loss": number},
        "kill": {"unit": (str,)},
    }
    wanted = kinds.get(kind, {})
    for key, types in wanted.items():
        if not isinstance(params.get(key), types) or isinstance(params.get(key), bool):
            raise ValueError(f"bad {key} for a {kind} fault")
    peers = params.get("peers", [])
    if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
        raise ValueError("bad peers")
    if not isinstance(params.get("jitter_ms", 0), number):
        raise ValueError("bad jitter_ms")


def undo_command(fault: Fault, host: str) -> str:
    """The line that undoes ``fault`` on ``host`` (from the record's word for it; never a stored command)."""
    return sh.undo_line(fault.id, fault.hosts[host])


def state_dir_for(lab: Path | None, inventory: Path | None) -> Path:
    """``<lab>/.coreos-lab``; for an inventory, ``.coreos-lab/faults-<file name>`` beside it (as the engine)."""
    from coreos_lab.vagrant import STATE_DIR

    if inventory is not None:
        inv = inventory.resolve()
        return inv.parent / STATE_DIR / f"faults-{inv.name}"
    if lab is None:
        raise UsageError("faults need a lab (--lab) or an inventory (--inventory)")
    return lab.resolve() / STATE_DIR


class FaultBook:
    """The records file (``faults.json``, 0600) and its lock. Readers need no lock: writes are atomic."""

    def __init__(
        self,
        state_dir: Path,
        *,
        gone: Callable[[str], bool] = lambda node: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.gone = gone  # a Vagrant machine destroyed since: its faults went with it
        self.clock = clock

    def load(self) -> list[Fault]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            items = data["faults"] if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ValueError("no list of faults")
            return [Fault.from_json(item) for item in items]
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{self.path} is not a fault record file ({exc})",
                hint="check the nodes by hand (iptables -S, tc qdisc show), then delete the file",
            ) from None

    def current(self, now: float | None = None) -> list[Fault]:
        """The records still to heal: without faults a node-side timer has undone, or whose machines are gone.
        An expired ``stop`` stays until its expire process (or heal) has powered the node on."""
        return self._keep(self.load(), self.clock() if now is None else now)

    def _keep(self, faults: Sequence[Fault], now: float) -> list[Fault]:
        return [
            f
            for f in faults
            if (f.kind == "stop" or f.active(now)) and not all(self.gone(h) for h in (f.hosts or {f.node: ""}))
        ]

    @contextlib.contextmanager
    def edit(self) -> Iterator[list[Fault]]:
        """The current records under the lock, written back (atomically) when the block changed them."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CoreosLabError(f"cannot keep fault records in {self.state_dir}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise CoreosLabError(
                            f"the fault records ({self.path}) stay locked by another command"
                        ) from None
                    time.sleep(0.1)
            before = self.load()
            faults = self._keep(before, self.clock())
            yield faults
            if faults != before:
                body = {"version": 1, "faults": [f.to_json() for f in faults]}
                atomic_write(self.path, json.dumps(body, indent=2, sort_keys=True) + "\n", mode=0o600)
        finally:
            os.close(fd)  # releases the lock


# ---- applying and healing ------------------------------------------------------------------------------------------
class PowerControl(Protocol):
    """What ``stop`` and its heal need of Vagrant (:class:`coreos_lab.vagrant.VagrantLab` is one)."""

    def halt(self, nodes: Sequence[str] | None = None, *, force: bool = False) -> None: ...

    def up(self, nodes: Sequence[str] | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class HealLine:
    fault: Fault
    host: str
    ok: bool
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.fault.id, "kind": self.fault.kind, "host": self.host, "ok": self.ok, "text": self.text}


@dataclass(frozen=True, slots=True)
class HealReport:
    lines: tuple[HealLine, ...]
    healed: tuple[Fault, ...]
    failed: tuple[Fault, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "healed": [f.id for f in self.healed],
            "failed": [f.id for f in self.failed],
            "steps": [line.to_json() for line in self.lines],
        }


class FaultLab:
    """Faults on one lab's nodes. ``names``: the nodes; ``connect``: opens the Cluster (on first use);
    ``ips``: the nodes' cluster addresses (a lab's config), else read from etcd's member list (peer URLs of the
    member named like the node); ``power``: Vagrant, for ``stop`` (None: not a Vagrant lab); ``spawn_expire``:
    starts the detached process that heals a ``stop`` after its ``--for`` (returns its PID)."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        book: FaultBook,
        connect: Callable[[], Cluster],
        ips: Mapping[str, str] | None = None,
        power: Callable[[], PowerControl] | None = None,
        spawn_expire: Callable[[Fault], int] | None = None,
    ) -> None:
        self.names = list(names)
        self.book = book
        self._connect = connect
        self._cluster: Cluster | None = None
        self._ips = dict(ips) if ips is not None else None
        self._power = power
        self._spawn_expire = spawn_expire

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> FaultLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = self._connect()
        return self._cluster

    # -- what the nodes are ------------------------------------------------------------------------------------
    def ips(self, nodes: Sequence[str]) -> dict[str, str]:
        if self._ips is None:
            self._ips = self._ips_from_etcd()
        missing = [n for n in nodes if not self._ips.get(n)]
        if missing:
            raise CoreosLabError(
                f"no cluster address for {', '.join(missing)}: no etcd member of that name lists a peer URL"
            )
        return {n: _ipv4(n, self._ips[n]) for n in nodes}

    def _ips_from_etcd(self) -> dict[str, str]:
        errors = []
        for name in self.names:
            try:
                with self.cluster.etcd_client(name, timeout=3.0) as client:
                    members = client.member_list()
            except CoreosLabError as exc:
                errors.append(f"{name}: {exc}")
                continue
            found: dict[str, str] = {}
            for m in members:
                host = next((urlsplit(u).hostname for u in m.peer_urls if urlsplit(u).hostname), None)
                if m.name and host:
                    found[m.name] = host
            return found
        raise EtcdError("cannot tell the nodes' cluster addresses (etcd's member list): " + "; ".join(errors))

    def _run_each(self, commands: Mapping[str, str], *, timeout: float = 60.0) -> dict[str, CommandResult]:
        """Run each host's line as root, in parallel; raises the first host's error (SSH, timeout)."""

        cluster = self.cluster  # made here, not by the first of several threads

        def one(host: str) -> CommandResult:
            return cluster.runner(host).run(sh.PATH_PREFIX + commands[host], sudo=True, timeout=timeout)

        hosts = list(commands)
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            futures = {h: pool.submit(one, h) for h in hosts}
        results: dict[str, CommandResult] = {}
        for host, fut in futures.items():
            exc = fut.exception()
            if isinstance(exc, CoreosLabError):
                raise CoreosLabError(str(exc) if str(exc).startswith(host) else f"{host}: {exc}") from None
            results[host] = fut.result()
        return results

    def detect(self, hosts: Sequence[str]) -> dict[str, sh.NodeInfo]:
        outcomes = self.cluster.run_all(sh.DETECT, list(hosts), timeout=30)
        infos = {}
        for host, out in outcomes.items():
            if isinstance(out, CoreosLabError):
                raise CoreosLabError(str(out) if str(out).startswith(host) else f"{host}: {out}")
            infos[host] = sh.parse_detect(out.stdout)
        return infos

    # -- applying ------------------------------------------------------------------------------------------------
    def _apply(self, fault: Fault, kind: str, apply: Mapping[str, str]) -> dict[str, CommandResult]:
        """Run each host's apply line; on any failure undo everywhere (best effort) and raise, recording nothing."""
        try:
            results = self._run_each(apply)
        except CoreosLabError:
            self._undo_quietly(fault)
            raise
        bad = next((h for h, r in results.items() if not r.ok), None)
        if bad is not None:
            self._undo_quietly(fault)
            raise sh.explain(bad, kind, results[bad])
        return results

    def _undo_quietly(self, fault: Fault) -> None:
        undo = {h: f"{sh.cancel_timer(fault.id)}; {undo_command(fault, h)}" for h in fault.hosts}
        with contextlib.suppress(CoreosLabError):
            self._run_each(undo, timeout=30)

    def _new(self, kind: str, node: str, duration: float | None, hosts: Mapping[str, str], **params: Any) -> Fault:
        now = self.book.clock()
        used = {f.id for f in self.book.load()}
        fid = next(i for i in iter(lambda: secrets.token_hex(4), None) if i not in used)
        expires = None if duration is None else now + duration
        return Fault(fid, kind, node, now, expires, dict(hosts), duration is not None and bool(hosts), params)

    def _with_timer(self, fault: Fault, host: str, line: str, duration: float | None) -> str:
        if duration is None:
            return line
        return f"{line} && {sh.timer_command(fault.id, duration, undo_command(fault, host))}"

    @staticmethod
    def _need(infos: Mapping[str, sh.NodeInfo], program: str, why: str, alternative: str | None = None) -> None:
        for host, info in infos.items():
            if program not in info.programs and (alternative is None or alternative not in info.programs):
                either = f"{program} (nor {alternative})" if alternative else program
                raise CoreosLabError(f"{host} has no {either}: {why} needs it")

    def partition(self, node: str, given: Sequence[str] = (), duration: float | None = None) -> Fault:
        """Cut ``node`` off ``given`` peers (default: every other node) on the cluster network, both ways."""
        peers = choose_peers(node, self.names, given)
        duration = check_for(duration)
        with self.book.edit() as faults:
            other = next((f for f in faults if f.kind == "partition" and f.node == node), None)
            if other is not None:
                raise UsageError(
                    f"{node} is already partitioned (fault {other.id}, {other.detail()}): "
                    f"heal it first (coreos-lab fault heal {node}); partitions are not merged"
                )
            ips = self.ips([node, *peers])
            hosts = [node, *peers]
            infos = self.detect(hosts)
            self._need(infos, "iptables", "a partition", "nft")
            if duration is not None:
                self._need(infos, "systemd-run", "--for")
            drop = {node: [ips[p] for p in peers], **{p: [ips[node]] for p in peers}}
            for host in hosts:
                if infos[host].ssh_from and infos[host].ssh_from in drop[host]:
                    raise UsageError(
                        f"coreos-lab reaches {host} over SSH from {infos[host].ssh_from}, a cluster address it would "
                        "drop: the partition would cut the lab off"
                    )
            words = {h: "iptables" if "iptables" in infos[h].programs else "nft" for h in hosts}
            fault = self._new("partition", node, duration, words, peers=peers, ips=ips)
            apply = {}
            for host, word in words.items():
                rules = sh.iptables_apply(sh.chain_name(fault.id), drop[host])
                if word == "nft":
                    rules = sh.nft_apply(sh.nft_table(fault.id), drop[host])
                apply[host] = self._with_timer(fault, host, rules, duration)
            self._apply(fault, "partition", apply)
            faults.append(fault)
        return fault

    def shape(
        self,
        node: str,
        *,
        delay_ms: float | None = None,
        jitter_ms: float = 0.0,
        loss: float | None = None,
        duration: float | None = None,
    ) -> Fault:
        """``delay`` (``delay_ms``) or ``loss``: netem on ``node``'s cluster interface, towards its peers only."""
        kind = "delay" if delay_ms is not None else "loss"
        if delay_ms is not None:
            delay_ms, jitter_ms = check_delay(delay_ms, jitter_ms)
        elif loss is not None:
            loss = check_loss(loss)
        else:
            raise UsageError("shape needs a delay or a loss")
        check_node(node, self.names)
        duration = check_for(duration)
        peers = [n for n in self.names if n != node]
        if not peers:
            raise UsageError(f"{node} has no peers to {kind} traffic to")
        with self.book.edit() as faults:
            other = next((f for f in faults if f.kind in ("delay", "loss") and f.node == node), None)
            if other is not None:
                raise UsageError(
                    f"{node} already has a {other.kind} fault (fault {other.id}, {other.detail()}): one netem fault "
                    f"per node; heal it first (coreos-lab fault heal {node})"
                )
            ips = self.ips([node, *peers])
            info = self.detect([node])[node]
            self._need({node: info}, "tc", kind)
            if duration is not None:
                self._need({node: info}, "systemd-run", "--for")
            iface = info.addresses.get(ips[node])
            if iface is None or not sh.IFACE_RE.match(iface):
                raise CoreosLabError(
                    f"{node}: no interface carries its cluster address {ips[node]} ({iface or 'none'})"
                )
            params: dict[str, Any] = {"peers": peers, "ips": ips}
            params.update({"delay_ms": delay_ms, "jitter_ms": jitter_ms} if kind == "delay" else {"loss": loss})
            fault = self._new(kind, node, duration, {node: f"tc {iface}"}, **params)
            args = (
                sh.netem_args(delay_ms=delay_ms, jitter_ms=jitter_ms) if kind == "delay" else sh.netem_args(loss=loss)
            )
            line = sh.netem_apply(iface, [ips[p] for p in peers], args)
            self._apply(fault, kind, {node: self._with_timer(fault, node, line, duration)})
            faults.append(fault)
        return fault

    def kill(
        self, node: str, unit: str | None, duration: float | None = None, *, leader: Mapping[str, Any] | None = None
    ) -> Fault:
        """SIGKILL ``unit``'s main process on ``node`` (None: the node's etcd unit)."""
        check_node(node, self.names)
        if unit is not None:
            unit = unit_to_kill(unit)
        duration = check_for(duration)
        with self.book.edit() as faults:
            if unit is None or duration is not None:
                info = self.detect([node])[node]
                if duration is not None:
                    self._need({node: info}, "systemd-run", "--for")
                if unit is None:
                    unit = info.etcd_unit
                    if unit is None:
                        raise CoreosLabError(f"{node}: no etcd unit is active (looked for {', '.join(sh.ETCD_UNITS)})")
            fault = self._new("kill", node, duration, {node: f"unit {unit}"}, unit=unit, **(leader or {}))
            result = self._run_each({node: self._with_timer(fault, node, sh.kill_command(unit), duration)})[node]
            if result.exit_code == 3:
                raise CoreosLabError(f"{node}: {unit} has no running main process (nothing to kill)")
            if not result.ok:
                raise sh.explain(node, "kill", result)
            pid = result.stdout.strip().splitlines()[0] if result.stdout.strip() else "?"
            fault = replace(fault, params={**fault.params, "pid": pid})
            faults.append(fault)
        return fault

    def leader(self, duration: float | None = None) -> Fault:
        """Kill the etcd unit of the member the cluster names as its leader."""
        from coreos_lab.etcd import cluster_health

        clients = {}
        for name in self.names:
            with contextlib.suppress(CoreosLabError):
                clients[name] = self.cluster.etcd_client(name, timeout=3.0)
        try:
            health = cluster_health(clients)
        finally:
            for c in clients.values():
                c.close()
        found = next((m for m in health.members if m.ok and health.leader and m.member_id == health.leader), None)
        if found is None:
            said = "; ".join(f"{m.name}: {m.error or 'no leader'}" for m in health.members) or "no member answers"
            raise EtcdError(f"no etcd member answers as the leader ({said})")
        return self.kill(
            found.name, None, duration, leader={"member_id": f"{found.member_id:x}", "term": found.raft_term}
        )

    def stop(self, node: str, duration: float | None = None) -> Fault:
        """Power ``node`` off through Vagrant (``vagrant halt --force``)."""
        if self._power is None:
            raise UsageError(
                "fault stop needs a Vagrant lab: coreos-lab cannot power off the nodes of an inventory "
                "(kill or partition them instead)"
            )
        check_node(node, self.names)
        duration = check_for(duration)
        with self.book.edit() as faults:
            other = next((f for f in faults if f.kind == "stop" and f.node == node), None)
            if other is not None:
                raise UsageError(
                    f"{node} is already stopped (fault {other.id}); heal it with coreos-lab fault heal {node}"
                )
            fault = self._new("stop", node, duration, {})
            self._power().halt([node], force=True)
            if duration is not None and self._spawn_expire is not None:
                fault = replace(fault, params={"expire_pid": self._spawn_expire(fault)})
            faults.append(fault)
        return fault

    # -- listing and healing ---------------------------------------------------------------------------------------
    def active(self, node: str | None = None) -> list[Fault]:
        """What is in force now (expired faults are not), oldest first."""
        now = self.book.clock()
        return [f for f in self.book.current(now) if f.active(now) and (node is None or f.node == node)]

    def heal(self, node: str | None = None, *, only: str | None = None, forget: bool = False) -> HealReport:
        """Undo every recorded fault (or ``node``'s, or the one ``only`` names); ``forget`` drops the records
        without touching the nodes. Machines powered off come up first (their own rules went with the reboot)."""
        if node is not None:
            check_node(node, self.names)
        # The lock is not held while the nodes are undone (a `vagrant up` takes minutes): two heals at once
        # undo twice, which every undo line allows, and each removes only the records it healed.
        with self.book.edit() as faults:
            chosen = [f for f in faults if (node is None or f.node == node) and (only is None or f.id == only)]
        if not chosen:
            where = f" on {node}" if node else ""
            raise NothingToHeal(f"nothing to heal: no fault is recorded{where} (records: {self.book.path})")
        if forget:
            lines = [HealLine(f, f.node, True, "record dropped (--forget; the nodes were not touched)") for f in chosen]
        else:
            lines = [self._power_on(f) for f in chosen if f.kind == "stop"]
            reachable = []
            for pair in ((f, h) for f in chosen for h in f.hosts):
                if self.book.gone(pair[1]):
                    lines.append(HealLine(*pair, True, "its machine is gone (destroyed): nothing to undo"))
                else:
                    reachable.append(pair)
            if reachable:
                lines += self._undo_all(reachable)
        failed = {line.fault.id for line in lines if not line.ok}
        healed = tuple(f for f in chosen if f.id not in failed)
        with self.book.edit() as faults:
            faults[:] = [f for f in faults if f.id not in {h.id for h in healed}]
        return HealReport(tuple(lines), healed, tuple(f for f in chosen if f.id in failed))

    def _power_on(self, fault: Fault) -> HealLine:
        if self.book.gone(fault.node):
            return HealLine(fault, fault.node, True, "its machine is gone (destroyed): not recreated")
        pid = fault.params.get("expire_pid")
        if isinstance(pid, int) and pid != os.getpid():
            end_expirer(pid, fault.id)
        if self._power is None:
            return HealLine(fault, fault.node, False, "cannot power it on: not a Vagrant lab")
        try:
            self._power().up([fault.node])
        except CoreosLabError as exc:
            return HealLine(fault, fault.node, False, f"vagrant up failed: {exc}")
        return HealLine(fault, fault.node, True, "powered on (vagrant up)")

    def _undo_all(self, pairs: Sequence[tuple[Fault, str]]) -> list[HealLine]:
        try:
            cluster = self.cluster
        except CoreosLabError as exc:
            return [HealLine(f, h, False, f"cannot reach the nodes: {exc}") for f, h in pairs]

        def one(pair: tuple[Fault, str]) -> HealLine:
            fault, host = pair
            line = undo_command(fault, host)
            if fault.timer:
                line = f"{sh.cancel_timer(fault.id)}; {line}"
            try:
                result = cluster.runner(host).run(sh.PATH_PREFIX + line, sudo=True, timeout=60)
            except CoreosLabError as exc:
                return HealLine(fault, host, False, str(exc))
            if not result.ok:
                return HealLine(fault, host, False, str(sh.explain(host, "heal", result)))
            return HealLine(fault, host, True, sh.undone(fault.id, fault.hosts[host], result.stdout.strip()))

        with ThreadPoolExecutor(max_workers=min(16, len(pairs))) as pool:
            return list(pool.map(one, pairs))

    def expire(self, fault_id: str) -> HealReport | None:
        """What the expire process does when its time is up: heal that fault if it is still recorded."""
        if not any(f.id == fault_id for f in self.book.current()):
            return None
        return self.heal(only=fault_id)


# ---- the expire process of a `stop --for` ----------------------------------------------------------------------
def spawn_expire(state_dir: Path, fault: Fault, where: Sequence[str], *, cwd: Path) -> int:
    """Start ``coreos-lab fault expire ID --after S`` detached (own session, output appended to a log)."""
    after = max(0.0, (fault.expires or 0.0) - time.time())
    argv = [sys.executable, "-m", "coreos_lab", "fault", "expire", fault.id, "--after", f"{after:.1f}", *where]
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state_dir / EXPIRE_LOG, "ab") as log:
        proc = subprocess.Popen(  # our own interpreter and module, arguments as a list
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    return proc.pid


def end_expirer(pid: int, fault_id: str) -> bool:
    """SIGTERM the expire process of ``fault_id`` if ``pid`` is still that process (a reused PID is left alone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"expire" not in argv or fault_id.encode() not in argv:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return True
