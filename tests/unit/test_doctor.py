from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner

from coreos_lab import doctor
from coreos_lab.cli import app
from coreos_lab.config import LabConfig


def fake_exec(answers: dict[str, tuple[int, str]]) -> doctor.Exec:
    def run(argv: Sequence[str]) -> tuple[int, str]:
        return answers.get(" ".join(argv), (127, f"{argv[0]}: not found"))

    return run


def test_vagrant_missing_names_the_package() -> None:
    check = doctor.check_vagrant(fake_exec({}))
    assert not check.ok
    assert "apt-get install vagrant" in check.fix


def test_vagrant_too_old() -> None:
    check = doctor.check_vagrant(fake_exec({"vagrant --version": (0, "Vagrant 2.2.4")}))
    assert not check.ok
    assert "2.2.4" in check.detail


def test_vagrant_ok() -> None:
    assert doctor.check_vagrant(fake_exec({"vagrant --version": (0, "Vagrant 2.3.4")})).ok


def test_libvirt_plugin_missing() -> None:
    check = doctor.check_provider("libvirt", fake_exec({"vagrant plugin list": (0, "vagrant-share (1.0)")}))
    assert not check.ok
    assert "vagrant-libvirt" in check.fix


def test_vbox_range(tmp_path: Path) -> None:
    conf = tmp_path / "networks.conf"
    outside = LabConfig(provider="virtualbox", network="172.17.8.0/24")
    check = doctor.check_vbox_network(outside, conf)
    assert not check.ok
    assert "192.168.56.0/21" in check.detail
    conf.write_text("* 172.16.0.0/12\n")
    assert doctor.check_vbox_network(outside, conf).ok
    assert doctor.check_vbox_network(LabConfig(provider="virtualbox", network="192.168.60.0/24"), conf).ok


def test_memory_budget(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable:    4000000 kB\n")
    assert not doctor.check_memory(LabConfig(instances=3, memory=2048), meminfo).ok
    assert doctor.check_memory(LabConfig(instances=1, memory=1024), meminfo).ok


def test_cli_doctor_json_and_exit_code(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--provider", "virtualbox", "--json"], env={"PATH": str(tmp_path)})
    assert result.exit_code == 1
    assert '"status": "FAIL"' in result.stdout
