"""Fixtures for tests that need real nodes: systemd as PID 1, sshd and etcd in nspawn containers.

``nspawn_rig`` (session): the booted :class:`tests.nspawn.rig.NspawnRig` with 3 nodes and one etcd
cluster; ``nspawn_nodes`` (session): its ``list[Node]``. Other suites reuse them with
``from tests.nspawn.conftest import nspawn_rig, nspawn_nodes`` in their own conftest, or put their tests
under tests/nspawn/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import require
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
