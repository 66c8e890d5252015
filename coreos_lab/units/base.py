"""Two ways of running units, one protocol: :class:`UnitBackend`, and :func:`get_backend` to pick one.

``systemd`` (:mod:`coreos_lab.units.systemd_backend`): our own scheduler, desired state in etcd, systemd over
SSH. ``fleet`` (:mod:`coreos_lab.units.fleet_backend`): fleet's API, where fleetd runs. ``auto`` is fleet when a
reachable node runs fleetd, else systemd. The backends are imported only when chosen.

    >>> check_endpoint("fleet", "tcp://x")
    Traceback (most recent call last):
    ...
    coreos_lab.errors.UsageError: --fleet-endpoint must be http://HOST:PORT or unix:///PATH, got 'tcp://x'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, Literal, Protocol

from coreos_lab.errors import CoreosLabError, UsageError
from coreos_lab.nodeshell import FLEET_SOCKET

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.config import NodeSpec
    from coreos_lab.fleet import FleetClient
    from coreos_lab.unitfile import UnitFile
    from coreos_lab.units.results import DeployOutcome, Listing, NodeOutcome, Report, StateChange, UndeployOutcome

BACKENDS: Final = ("auto", "fleet", "systemd")


class UnitBackend(Protocol):
    """What ``deploy``, ``undeploy``, ``unit start|stop`` and the list commands need from a backend."""

    @property
    def name(self) -> str: ...

    def deploy(
        self, units: Sequence[UnitFile], *, timeout: float = 30.0, settle: float | None = None
    ) -> tuple[DeployOutcome, ...]:
        """Place, record and start ``units``; wait until each is active or failed."""
        ...

    def undeploy(self, names: Sequence[str]) -> tuple[UndeployOutcome, ...]:
        """Stop and remove ``names`` everywhere and forget them. Idempotent."""
        ...

    def set_state(self, name: str, desired: Literal["launched", "loaded"], *, timeout: float = 30.0) -> StateChange:
        """``unit start`` (launched) / ``unit stop`` (loaded) of a deployed unit."""
        ...

    def cat(self, name: str) -> str:
        """The unit file of a deployed unit, as the backend holds it (``unit cat``)."""
        ...

    def where(self, outcome: NodeOutcome) -> str:
        """How messages name the node (or machine) of ``outcome``."""
        ...

    def list_units(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """UNIT MACHINE ACTIVE SUB, or ``fields`` (fleetctl's names, :data:`~.results.LISTING_FIELDS`)."""
        ...

    def list_unit_files(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """UNIT HASH DSTATE STATE TARGET, or ``fields``."""
        ...

    def list_machines(self, *, full: bool = False, fields: Sequence[str] | None = None) -> Listing:
        """MACHINE IP METADATA, or ``fields``."""
        ...


NO_BLOCK_REFUSED: Final = (
    "--no-block needs the fleet backend: the systemd backend starts a unit and judges it before it records "
    "the outcome (--timeout bounds the wait)"
)


def check_endpoint(backend: str, endpoint: str | None, *, tunnel: bool = False, block: bool = True) -> None:
    """Refuse a backend name, fleet endpoint or fleet-only flag that cannot work (UsageError, exit 2), before
    anything runs."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "systemd":
        for asked, flag in ((endpoint is not None, "--fleet-endpoint"), (tunnel, "--tunnel")):
            if asked:
                raise UsageError(f"{flag} needs --backend fleet (or auto)")
        if not block:
            raise UsageError(NO_BLOCK_REFUSED)
    if endpoint is not None and not endpoint.startswith(("http://", "https://", "unix:///")):
        raise UsageError(f"--fleet-endpoint must be http://HOST:PORT or unix:///PATH, got {endpoint!r}")
    if tunnel and endpoint is not None and not endpoint.startswith("unix:"):
        raise UsageError("--tunnel reaches fleet's unix socket on the far side: give no endpoint, or unix:///PATH")


def get_backend(
    backend: str,
    cluster: Cluster,
    *,
    endpoint: str | None = None,
    specs: Mapping[str, NodeSpec] | None = None,
    report: Report | None = None,
    block: bool = True,
) -> UnitBackend:
    """The backend for ``cluster``: probes the nodes once (their facts serve the systemd backend's placement).

    ``fleet`` (or ``auto`` with a node running fleetd, or a ``unix:///`` endpoint) talks to fleet's socket on
    a node, over SSH: the first node that runs fleetd, else the first reachable one. ``report`` and ``block``
    are the fleet backend's (see :class:`~coreos_lab.units.fleet_backend.FleetBackend`); ``block`` False with
    the systemd backend is refused before anything is changed.
    """
    from coreos_lab.probe import probe_nodes

    check_endpoint(backend, endpoint, block=block)
    facts = probe_nodes(cluster, specs)
    reachable = [f for f in facts.values() if f.reachable]
    with_fleet = [f for f in reachable if f.runs_fleet]
    if backend == "fleet" or endpoint is not None or (backend == "auto" and with_fleet):
        from coreos_lab.units.fleet_backend import FleetBackend

        socket_path = endpoint[len("unix://") :] if endpoint else FLEET_SOCKET
        chosen = (with_fleet or reachable)[:1]
        if not chosen:
            raise CoreosLabError("no node is reachable to talk to fleet through")
        client = cluster.fleet(chosen[0].name, socket_path)
        return FleetBackend(client, cluster, facts=facts, report=report, block=block)
    if not block:
        raise UsageError(NO_BLOCK_REFUSED)
    from coreos_lab.units.systemd_backend import SystemdBackend

    return SystemdBackend(cluster, facts)


@contextmanager
def open_backend(
    backend: str,
    connect: Callable[[], Cluster],
    *,
    endpoint: str | None = None,
    specs: Callable[[], Mapping[str, NodeSpec] | None] | None = None,
    tunnel: Callable[[], tuple[Cluster, str]] | None = None,
    report: Report | None = None,
    block: bool = True,
) -> Iterator[UnitBackend]:
    """:func:`get_backend` with the cluster's lifetime: ``connect`` is called only when nodes are needed (an
    ``http(s)://`` fleet endpoint needs none), and the cluster is closed on the way out, Ctrl-C included, so
    in-flight node steps have stopped when this returns.

    ``tunnel`` (fleetctl's ``--tunnel``): the cluster and node to reach fleet through over SSH, at its unix
    socket there (``endpoint``'s path, else /var/run/fleet.sock).
    """
    check_endpoint(backend, endpoint, tunnel=tunnel is not None, block=block)
    if tunnel is not None:
        from coreos_lab.units.fleet_backend import FleetBackend

        cluster, node = tunnel()
        try:
            yield FleetBackend(_tunnelled(cluster, node, endpoint), cluster, report=report, block=block)
        finally:
            cluster.close()
        return
    if endpoint is not None and not endpoint.startswith("unix:"):
        from coreos_lab.fleet import FleetClient
        from coreos_lab.units.fleet_backend import FleetBackend

        yield FleetBackend(FleetClient(endpoint), report=report, block=block)
        return
    cluster = connect()
    try:
        yield get_backend(
            backend, cluster, endpoint=endpoint, specs=specs() if specs else None, report=report, block=block
        )
    finally:
        cluster.close()


def _tunnelled(cluster: Cluster, node: str, endpoint: str | None) -> FleetClient:
    """A fleet client for the unix socket ``endpoint`` (default /var/run/fleet.sock) on node ``node``."""
    return cluster.fleet(node, endpoint[len("unix://") :] if endpoint else FLEET_SOCKET)
