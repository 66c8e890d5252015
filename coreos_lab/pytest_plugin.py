"""pytest plugin (entry point ``pytest11``): write cluster checks as tests, like testinfra.

``pytest --coreos-lab DIR`` (a lab directory) or ``pytest --coreos-lab-inventory FILE`` (an OpenSSH
client config, e.g. from ``coreos-lab ssh-config``) gives the fixtures:

- ``cluster``: a :class:`coreos_lab.cluster.Cluster` for the whole session;
- ``node``: a :class:`LabNode`; a test asking for it runs once per node (``--coreos-lab-node`` narrows);
- ``etcd``: an :class:`coreos_lab.etcd.EtcdClient` reaching the first node's etcd through SSH.

Example (``test_cluster.py``)::

    def test_etcd_member_runs(node):
        assert node.systemd.is_active("etcd-member.service")

    def test_cluster_is_healthy(etcd):
        assert len(etcd.member_list()) == 3

Without either option the fixtures skip the test, so the plugin is harmless in other projects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: keep its import cheap, import clients on use
    from coreos_lab.cluster import Cluster
    from coreos_lab.etcd import EtcdClient
    from coreos_lab.runner import Cmd, CommandResult, Runner
    from coreos_lab.systemd import SystemdClient


@dataclass(frozen=True)
class LabNode:
    """One node as a test sees it: its name, a runner, and the clients built on it."""

    name: str
    runner: Runner
    cluster: Cluster

    def run(self, cmd: Cmd, *, sudo: bool = False, timeout: float | None = None) -> CommandResult:
        return self.runner.run(cmd, sudo=sudo, timeout=timeout)

    def check(self, cmd: Cmd, *, sudo: bool = False, timeout: float | None = None) -> CommandResult:
        return self.runner.run(cmd, sudo=sudo, timeout=timeout).check()

    @property
    def systemd(self) -> SystemdClient:
        from coreos_lab.systemd import SystemdClient

        return SystemdClient(self.runner)

    def etcd(self, port: int = 2379) -> EtcdClient:
        return self.cluster.etcd_client(self.name, port)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coreos-lab")
    group.addoption("--coreos-lab", action="store", default=None, metavar="DIR", help="lab directory to test")
    group.addoption(
        "--coreos-lab-inventory",
        action="store",
        default=None,
        metavar="FILE",
        help="OpenSSH client config naming the nodes (instead of a Vagrant lab)",
    )
    group.addoption(
        "--coreos-lab-node",
        action="append",
        default=[],
        metavar="NAME",
        help="only these nodes for the 'node' fixture (repeatable)",
    )


def _source(config: pytest.Config) -> tuple[str, Path] | None:
    inventory = config.getoption("--coreos-lab-inventory")
    if inventory:
        return "inventory", Path(inventory)
    lab = config.getoption("--coreos-lab") or os.environ.get("COREOS_LAB_DIR")
    if lab:
        return "lab", Path(lab)
    return None


def _open(config: pytest.Config) -> Cluster:
    source = _source(config)
    if source is None:
        pytest.skip("no cluster given: pass --coreos-lab DIR or --coreos-lab-inventory FILE")
    kind, path = source
    from coreos_lab.cluster import open_cluster

    # open_cluster also decides whether etcd speaks https (a TLS lab, or $COREOS_LAB_ETCD_TLS_DIR).
    if kind == "inventory":
        return open_cluster(inventory=Path(path), persist=False)
    return open_cluster(lab=Path(path), persist=False)


def _node_names(config: pytest.Config) -> list[str]:
    chosen: list[str] = config.getoption("--coreos-lab-node")
    if chosen:
        return chosen
    source = _source(config)
    if source is None:
        return []
    kind, path = source
    if kind == "inventory":
        from coreos_lab.sshconfig import parse_ssh_config

        return list(parse_ssh_config(path.read_text()))
    from coreos_lab import config as labconfig

    return [n.name for n in labconfig.load(path).nodes]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node" in metafunc.fixturenames:
        names = _node_names(metafunc.config)
        metafunc.parametrize("coreos_lab_node_name", names or ["<no cluster>"], scope="session")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    lab = _open(request.config)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def coreos_lab_node_name() -> str:  # replaced by parametrisation whenever a test asks for ``node``
    return "<no cluster>"


@pytest.fixture
def node(cluster: Cluster, coreos_lab_node_name: str) -> LabNode:
    return LabNode(coreos_lab_node_name, cluster.runner(coreos_lab_node_name), cluster)


@pytest.fixture
def etcd(cluster: Cluster) -> Iterator[EtcdClient]:
    first = cluster.names[0]
    client = cluster.etcd_client(first, 2379)
    try:
        yield client
    finally:
        client.close()
