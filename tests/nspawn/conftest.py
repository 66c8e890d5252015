"""Fixtures for tests that need real nodes: systemd as PID 1, sshd and etcd in nspawn containers.

``nspawn_rig`` (session): the booted :class:`tests.nspawn.rig.NspawnRig` with 3 nodes and one etcd
cluster; ``nspawn_nodes`` (session): its ``list[Node]``. ``rig`` (module): a module's own
:class:`tests.nspawn.deploy_rig.DeployRig` (the deploy suites change its state), with ``inventory`` (its
ssh-config) and ``units_dir``. Other suites reuse them with
``from tests.nspawn.conftest import nspawn_rig, nspawn_nodes`` in their own conftest, or put their tests
under tests/nspawn/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.nspawn.deploy_rig import DeployRig
from tests.nspawn.rig import Node, NspawnRig, prerequisites


@pytest.fixture(scope="session")
def nspawn_rig() -> Iterator[NspawnRig]:
    missing = prerequisites()
    require(not missing, f"nspawn rig needs: {', '.join(missing)}")
    with NspawnRig(n=3) as rig:
        yield rig


@pytest.fixture(scope="session")
def nspawn_nodes(nspawn_rig: NspawnRig) -> list[Node]:
    return nspawn_rig.nodes


@pytest.fixture(scope="module")
def rig() -> Iterator[DeployRig]:
    missing = prerequisites()
    require(not missing, f"nspawn rig needs: {', '.join(missing)}")
    with DeployRig(3) as r:
        yield r


@pytest.fixture(scope="module")
def inventory(rig: DeployRig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("deploy-inv") / "ssh_config"
    path.write_text(rig.ssh_config())
    return path


@pytest.fixture(scope="module")
def units_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("units")
