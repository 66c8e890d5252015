"""The hub: named nodes -> runners, parallel fan-out, and HTTP paths to node-side ports.

A ``Cluster`` comes from a Vagrant lab (``from_lab``: one ``vagrant ssh-config`` for all nodes, cached
until the machines change) or from an inventory file (``from_inventory``: an OpenSSH client config).
With ``persist=True`` the connections live in the per-config mux process (see ``mux.py``), so repeated
CLI calls skip the SSH handshakes.

>>> from coreos_lab.testing import FakeRunner
>>> c = Cluster({"core-01": FakeRunner("core-01", {"hostname": "core-01\\n"})})
>>> c.run_all("hostname")["core-01"].stdout
'core-01\\n'
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar, Union

from coreos_lab.errors import ConfigError, CoreosLabError, SSHError, UsageError
from coreos_lab.runner import Cmd, CommandResult, LocalRunner, Runner
from coreos_lab.sshconfig import SSHTarget, format_ssh_config, parse_ssh_config

if TYPE_CHECKING:
    from coreos_lab import http
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.fleet import FleetClient
    from coreos_lab.systemd import SystemdClient

log = logging.getLogger(__name__)

T = TypeVar("T")
RunOutcome = Union[CommandResult, CoreosLabError]  # noqa: UP007 - a runtime alias, readable in docs
ETCD_TLS_ENV: Final = "COREOS_LAB_ETCD_TLS_DIR"
MAX_WORKERS: Final = 64


class Cluster:
    """Named nodes and how to reach them. Node order is the order of the source (core-01, core-02 ...)."""

    def __init__(
        self,
        runners: Mapping[str, Runner] | None = None,
        targets: Mapping[str, SSHTarget] | None = None,
        *,
        config_text: str | None = None,
        factory: Callable[[str], Runner] | None = None,
    ) -> None:
        """Either ready ``runners``, or ``targets`` plus a ``factory`` making each node's runner on first use."""
        if runners is None and (targets is None or factory is None):
            raise TypeError("Cluster needs runners, or targets and a factory")
        self._runners: dict[str, Runner] = dict(runners or {})
        self._names = list(runners) if runners is not None else list(targets or {})
        self._factory = factory
        self.targets: dict[str, SSHTarget] = dict(targets or {})
        self.config_text = config_text
        self._sessions: dict[tuple[str, str, int], tuple[http.Session, str]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # The lab directory whose tls/ holds etcd's client certificate and CA; None: plain http.
        self.etcd_tls_dir: Path | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_targets(
        cls,
        targets: Mapping[str, SSHTarget],
        *,
        accept_new: bool = False,
        persist: bool = False,
        config_text: str | None = None,
        default_timeout: float = 60.0,
    ) -> Cluster:
        """Runners for ``targets``: in the mux when ``persist`` (and not opted out), else in-process."""
        text = config_text if config_text is not None else format_ssh_config(targets)
        factory: Callable[[str], Runner]
        if persist and not _persist_disabled():
            from coreos_lab.mux import MuxClient, MuxRunner

            client = MuxClient(text, accept_new=accept_new)

            def factory(name: str) -> Runner:
                return MuxRunner(client, name, default_timeout=default_timeout)

        else:

            def factory(name: str) -> Runner:
                # Imported on first use: listing commands (ssh-config, inventory) never load paramiko.
                from coreos_lab.ssh import SSHRunner

                return SSHRunner(targets[name], accept_new=accept_new, default_timeout=default_timeout)

        return cls(None, targets, config_text=text, factory=factory)

    @classmethod
    def from_ssh_config(cls, text: str, *, accept_new: bool = False, persist: bool = False) -> Cluster:
        targets = parse_ssh_config(text)
        if not targets:
            raise ConfigError("the ssh config names no hosts (need at least one 'Host NAME' block)")
        return cls.from_targets(targets, accept_new=accept_new, persist=persist, config_text=text)

    @classmethod
    def from_inventory(cls, path: Path | str, accept_new: bool = False, *, persist: bool = False) -> Cluster:
        """Nodes from an OpenSSH client config file; each concrete ``Host`` alias is a node."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read inventory {p}: {exc.strerror or exc}") from None
        try:
            return cls.from_ssh_config(text, accept_new=accept_new, persist=persist)
        except ConfigError as exc:
            raise ConfigError(f"inventory {p}: {exc}") from None

    @classmethod
    def from_lab(cls, lab_dir: Path | str, persist: bool = True, *, accept_new: bool = False) -> Cluster:
        """Nodes of a Vagrant lab, from ``vagrant ssh-config`` (cached: :func:`coreos_lab.vagrant.ssh_config_text`)."""
        from coreos_lab import vagrant

        text = vagrant.ssh_config_text(Path(lab_dir))
        return cls.from_ssh_config(text, accept_new=accept_new, persist=persist)

    # -- nodes ---------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._names)

    def runner(self, name: str) -> Runner:
        """The runner of node ``name`` (UsageError naming the nodes when there is none)."""
        with self._lock:
            existing = self._runners.get(name)
            if existing is not None:
                return existing
            if name not in self._names or self._factory is None:
                raise UsageError(f"no node named {name!r} (nodes: {', '.join(self._names) or 'none'})")
            made = self._runners[name] = self._factory(name)
            return made

    def select(self, names: Iterable[str] | None) -> list[str]:
        """Validate a node selection; None or empty means every node, in cluster order."""
        chosen = list(dict.fromkeys(names or ()))
        if not chosen:
            return self.names
        unknown = [n for n in chosen if n not in self._names]
        if unknown:
            raise UsageError(f"no node named {', '.join(map(repr, unknown))} (nodes: {', '.join(self._names)})")
        return chosen

    # -- fan-out -------------------------------------------------------------------------------------
    def run_all(
        self,
        cmd: Cmd,
        nodes: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        sudo: bool = False,
    ) -> dict[str, RunOutcome]:
        """Run ``cmd`` on the nodes in parallel; every node gets an outcome, in node order.

        A node that is down, times out or fails to authenticate maps to its error (one line in
        ``str(err)``); the others are unaffected.
        """
        chosen = self.select(nodes)

        def one(name: str) -> RunOutcome:
            try:
                return self.runner(name).run(cmd, timeout=timeout, sudo=sudo)
            except CoreosLabError as exc:
                return exc
            except Exception as exc:  # a backend bug on one node must not hide the others
                log.debug("%s: unexpected error", name, exc_info=True)
                return SSHError(f"{name}: {type(exc).__name__}: {exc}")

        if len(chosen) == 1:
            return {chosen[0]: one(chosen[0])}
        outcomes = list(self._executor().map(one, chosen))
        return dict(zip(chosen, outcomes, strict=True))

    def _executor(self) -> ThreadPoolExecutor:
        # Kept for the cluster's lifetime: starting 30 threads per call cost ~20 ms on 2 busy cores,
        # as much as the fan-out itself. Two per node: `status` runs the node probe and its etcd half's
        # systemctl calls at the same time.
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(MAX_WORKERS, max(1, 2 * len(self._names))), thread_name_prefix="coreos-lab-node"
                )
            return self._pool

    def map(self, fn: Callable[[Runner], T], nodes: Sequence[str] | None = None) -> dict[str, T | CoreosLabError]:
        """Call ``fn(runner)`` on the nodes in parallel; a CoreosLabError becomes that node's value."""
        chosen = self.select(nodes)

        def one(name: str) -> T | CoreosLabError:
            try:
                return fn(self.runner(name))
            except CoreosLabError as exc:
                return exc

        return dict(zip(chosen, self._executor().map(one, chosen), strict=True))

    # -- HTTP to node-side ports ---------------------------------------------------------------------
    def http_base(self, name: str, remote_port: int, remote_host: str = "127.0.0.1") -> tuple[http.Session, str]:
        """A requests Session and base URL reaching ``remote_host:remote_port`` as seen from node ``name``.

        Over the mux this is a unix socket held by the mux; in-process it is a local TCP forward; for
        a ``LocalRunner`` (tests on this host) it is the address itself.
        """
        runner = self.runner(name)
        key = (name, remote_host, remote_port)
        with self._lock:
            cached = self._sessions.get(key)
            if cached is not None:
                return cached
            from coreos_lab import http
            from coreos_lab.mux import MuxRunner

            if isinstance(runner, MuxRunner):
                made = http.unix_session(runner.forward_unix(remote_host, remote_port))
            elif isinstance(runner, LocalRunner):
                made = (http.session(trust_env=False), f"http://{_url_host(remote_host)}:{remote_port}")
            else:
                forward = getattr(runner, "forward", None)
                if forward is None:
                    raise SSHError(f"{name}: this runner cannot forward ports")
                host, port = forward(remote_host, remote_port)
                # a proxy from the environment must not see the tunnel
                made = (http.session(trust_env=False), f"http://{host}:{port}")
            self._sessions[key] = made
            return made

    # -- etcd ----------------------------------------------------------------------------------------
    def etcd_client(self, name: str, port: int = 2379, *, timeout: float = 5.0) -> EtcdClient:
        """An etcd client for node ``name``'s ``127.0.0.1:port``, speaking https when the lab has TLS.

        The one place that decides http or https: with ``etcd_tls_dir`` set, an in-process forward
        gets ``https://127.0.0.1:<port>`` with the lab's client certificate and CA, and the mux's
        unix socket gets a TLS-wrapping adapter (the server certificate names ``127.0.0.1``).
        """
        from coreos_lab.etcd import EtcdClient

        if self.etcd_tls_dir is None:
            session, base = self.http_base(name, port)
            return EtcdClient(base, session=session, timeout=timeout)
        from coreos_lab import tls

        material = tls.client_material(self.etcd_tls_dir)
        if material is None:
            raise ConfigError(
                f"the lab uses TLS but {self.etcd_tls_dir / tls.TLS_DIR} has no client certificate",
                hint="run 'coreos-lab render' in the lab to issue it",
            )
        cert, key, ca = material
        runner = self.runner(name)
        from coreos_lab.mux import MuxRunner

        if isinstance(runner, MuxRunner):
            cache_key = (name, "tls:127.0.0.1", port)
            with self._lock:
                cached = self._sessions.get(cache_key)
                if cached is None:
                    from coreos_lab.http import TLSFiles, unix_session

                    path = runner.forward_unix("127.0.0.1", port)
                    try:
                        made = unix_session(path, tls=TLSFiles(cert, key, ca))
                    except OSError as exc:  # ssl.SSLError included: a PEM file that does not load
                        raise ConfigError(f"cannot load the etcd client certificate in {cert.parent}: {exc}") from None
                    cached = self._sessions[cache_key] = made
            session, base = cached
            return EtcdClient(base, session=session, timeout=timeout)
        session, base = self.http_base(name, port)
        if base.startswith("http://"):
            base = "https://" + base.removeprefix("http://")
        return EtcdClient(base, session=session, timeout=timeout, cert=(str(cert), str(key)), verify=str(ca))

    def leader_etcd_client(self, skip: Iterable[str] = (), *, port: int = 2379, timeout: float = 5.0) -> EtcdClient:
        """An etcd client through the first node (not in ``skip``) whose member answers and sees a leader."""
        from coreos_lab.errors import EtcdError

        skipped = set(skip)
        errors: list[str] = []
        for name in self.names:
            if name in skipped:
                errors.append(f"{name}: unreachable")
                continue
            try:
                client = self.etcd_client(name, port, timeout=timeout)
                if client.status().leader == 0:
                    errors.append(f"{name}: etcd member sees no leader")
                    continue
                return client
            except CoreosLabError as exc:
                errors.append(f"{name}: {exc}")
        raise EtcdError("no node's etcd answered with a leader: " + "; ".join(errors))

    def systemd(self, name: str, *, timeout: float = 60.0) -> SystemdClient:
        """A systemd client for node ``name`` (over its runner)."""
        from coreos_lab.systemd import SystemdClient

        return SystemdClient(self.runner(name), timeout=timeout)

    def fleet(self, name: str, socket_path: str) -> FleetClient:
        """A fleet API client for the unix socket ``socket_path`` on node ``name`` (over its SSH connection)."""
        from coreos_lab.fleet import FleetClient

        return FleetClient.over_runner(self.runner(name), socket_path)

    # -- output --------------------------------------------------------------------------------------
    def ssh_config(self) -> str:
        """An OpenSSH client config for every node (``ssh -F``, testinfra, Ansible, fleetctl --tunnel)."""
        return format_ssh_config(self.targets)

    def close_sessions(self) -> None:
        """Close the cached HTTP sessions (their keep-alive connections through the forwards); runners stay."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session, _ in sessions:
            session.close()

    def close(self) -> None:
        self.close_sessions()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            runners = list(self._runners.values())
        for r in runners:
            with contextlib.suppress(Exception):
                r.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _persist_disabled() -> bool:
    from coreos_lab.mux import persist_disabled

    return persist_disabled()


def open_cluster(
    *,
    lab: Path | None = None,
    inventory: Path | None = None,
    accept_new: bool = False,
    persist: bool = True,
) -> Cluster:
    """What every node-targeting CLI command does: an inventory when given, else the lab's Vagrant nodes.

    etcd speaks https (see :meth:`Cluster.etcd_client`) when the lab's coreos-lab.toml says ``tls = true``;
    an inventory names no lab, so it uses plain http unless ``$COREOS_LAB_ETCD_TLS_DIR`` names a lab
    directory whose ``tls/`` holds the client certificate and CA.
    """
    if inventory is not None:
        cluster = Cluster.from_inventory(inventory, accept_new, persist=persist)
        # An inventory says nothing about TLS: the environment may name a lab whose tls/ to use.
        env_dir = os.environ.get(ETCD_TLS_ENV)
        cluster.etcd_tls_dir = Path(env_dir) if env_dir else None
        return cluster
    if lab is None:
        from coreos_lab.config import find_lab_dir

        lab = find_lab_dir()
    cluster = Cluster.from_lab(lab, persist, accept_new=accept_new)
    cluster.etcd_tls_dir = lab_etcd_tls_dir(lab)
    return cluster


def forget_connections(lab_dir: Path) -> None:
    """Stop the background process holding SSH connections to the lab's nodes, if one runs.

    For when the nodes' own side of those connections is gone while their addresses stay (a snapshot
    restore puts every node back to an earlier moment): the next command connects afresh instead of waiting
    out a dead connection.
    """
    from coreos_lab import vagrant
    from coreos_lab.mux import MuxClient

    text = vagrant.ssh_config_text(Path(lab_dir))
    for accept_new in (False, True):
        MuxClient(text, accept_new=accept_new).shutdown()


def lab_etcd_tls_dir(lab_dir: Path) -> Path | None:
    """``lab_dir`` when its coreos-lab.toml says ``tls = true`` (etcd speaks https), else None."""
    from coreos_lab import config as labconfig

    try:
        cfg = labconfig.load(lab_dir)
    except ConfigError:
        return None  # a lab without a readable config has nothing to say about TLS: plain http
    return Path(lab_dir) if cfg.tls else None
