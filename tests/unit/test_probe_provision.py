"""Which channel provisioned a node, as the probe reads it (the real command runs on nodes in tests/vm and
tests/nspawn; here its parsing, and the shell line itself against files in a temporary root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coreos_lab import nodeshell
from coreos_lab.probe import parse_probe

SEP = "@@coreos-lab@@\n"


def probe_out(fleet_section: str) -> str:
    return f"mid\n{SEP}role=web\n{SEP}core-01\n{SEP}10.0.0.1 \n{SEP}{fleet_section}"


@pytest.mark.parametrize(
    ("section", "runs_fleet", "provisioned"),
    [
        ("-\nignition\n", False, "ignition"),
        ("fleet\ncloud-config\n", True, "cloud-config"),
        ("-\nnone\n", False, "none"),
        ("-\nignition,cloud-config\n", False, "ignition,cloud-config"),
        ("\n", False, ""),  # an older probe's answer: unknown
        ("-\nsomething-else\n", False, ""),
    ],
)
def test_the_probe_says_which_channel_provisioned_the_node(section: str, runs_fleet: bool, provisioned: str) -> None:
    facts = parse_probe("core-01", probe_out(section))
    assert (facts.runs_fleet, facts.provisioned_by) == (runs_fleet, provisioned)
    assert facts.to_json()["provisioned_by"] == (provisioned or None)


def run_line(root: Path) -> str:
    line = nodeshell.PROVISIONED_BY.replace("/etc/", f"{root}/etc/").replace("/var/", f"{root}/var/")
    line = line.replace("sudo -n ", "")  # root runs the tests: the unreadable-file branch is the same grep
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True, timeout=10).stdout.strip()


def test_the_shell_line_reads_ignitions_result_file_then_the_vagrant_user_data(tmp_path: Path) -> None:
    assert run_line(tmp_path) == "none"
    (tmp_path / "var/lib/flatcar-vagrant").mkdir(parents=True)
    (tmp_path / "var/lib/flatcar-vagrant/vagrantfile-user-data").write_text("#cloud-config\n")
    assert run_line(tmp_path) == "cloud-config"
    (tmp_path / "etc").mkdir()
    result = tmp_path / "etc/.ignition-result.json"
    result.write_text('{ "provisioningDate": "2026-12-01T18:31:59Z", "userConfigProvided": false }')
    assert run_line(tmp_path) == "cloud-config"  # Ignition ran, but with no config of the user's
    result.write_text('{ "provisioningBootID": "x", "userConfigProvided": true }')
    assert run_line(tmp_path) == "ignition,cloud-config"  # both channels, as Flatcar's box allows
    (tmp_path / "var/lib/flatcar-vagrant/vagrantfile-user-data").unlink()
    assert run_line(tmp_path) == "ignition"
