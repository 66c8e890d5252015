"""The pytest plugin against real nodes: a user's cluster checks written as tests, run by a real pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nspawn.rig import NspawnRig

pytestmark = pytest.mark.nspawn

USER_TESTS = """
def test_etcd_runs(node):
    assert node.systemd.is_active("etcd.service")

def test_hostname_is_the_node_name(node):
    assert node.check("hostname").stdout.strip() == node.name

def test_members(etcd):
    assert len(etcd.member_list()) == 3

def test_a_unit_that_is_not_there(node):
    assert node.systemd.is_active("no-such-unit.service")
"""


def test_plugin_fixtures_on_real_nodes(nspawn_rig: NspawnRig, tmp_path: Path) -> None:
    inventory = tmp_path / "ssh_config"
    inventory.write_text(nspawn_rig.ssh_config())
    (tmp_path / "test_mycluster.py").write_text(USER_TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "--coreos-lab-inventory", str(inventory), str(tmp_path / "test_mycluster.py")],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    # 3 nodes x 2 passing node tests + the etcd test pass; the deliberately wrong check fails on all 3 nodes
    assert "7 passed" in out, out
    assert "3 failed" in out, out
    for name in (n.name for n in nspawn_rig.nodes):
        assert f"test_a_unit_that_is_not_there[{name}]" in out, out


def test_plugin_without_a_cluster_skips(tmp_path: Path) -> None:
    (tmp_path / "test_mycluster.py").write_text(USER_TESTS)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_mycluster.py")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert "4 skipped" in proc.stdout, proc.stdout + proc.stderr
