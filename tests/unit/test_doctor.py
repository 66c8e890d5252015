from __future__ import annotations

import json
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


# ---------------------------------------------------------------- what Flatcar's box would pick up


def test_pickup_problems_are_warnings(tmp_path: Path) -> None:
    from coreos_lab.render import init_lab

    cfg = init_lab(tmp_path, LabConfig(instances=2)).config
    (ok,) = doctor.check_pickup(tmp_path, cfg)
    assert ok.ok
    assert ok.status == "ok"
    (tmp_path / "user-data").write_text("#cloud-config\n")
    (tmp_path / "config.ign").write_text('{"ignition": {"version": "3.3.0"}}')
    checks = doctor.check_pickup(tmp_path, cfg)
    assert [c.status for c in checks] == ["warn", "warn"]
    assert checks[0].detail.startswith("user-data was added since the last render")
    assert checks[1].detail.startswith("config.ign was added since the last render")
    assert "coreos-lab render" in checks[0].fix
    assert checks[1].fix == "", "the fix is said once"


def test_run_checks_with_a_lab_dir_adds_the_pickup_warnings(tmp_path: Path) -> None:
    from coreos_lab.render import init_lab

    cfg = init_lab(tmp_path, LabConfig(instances=1)).config
    (tmp_path / "user-data").mkdir()
    without = doctor.run_checks(cfg, fake_exec({}))
    with_lab = doctor.run_checks(cfg, fake_exec({}), lab_dir=tmp_path)
    assert [c.name for c in with_lab[: len(without)]] == [c.name for c in without]
    (extra,) = with_lab[len(without) :]
    assert (extra.name, extra.status) == ("lab files", "warn")
    assert "user-data/ is a directory" in extra.detail


def test_pickup_check_of_an_unrendered_lab_with_a_config_ign_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "config.ign").write_text("{}")
    (check,) = doctor.check_pickup(tmp_path, LabConfig())
    assert check.status == "warn"
    assert check.detail.startswith("config.ign in the lab, but cloud-config/core-01.yaml,")


def test_cli_doctor_in_a_lab_shows_what_the_box_would_pick_up(tmp_path: Path) -> None:
    from coreos_lab.render import init_lab

    init_lab(tmp_path, LabConfig(instances=1))
    (tmp_path / "user-data").write_text("#cloud-config\n")
    result = CliRunner().invoke(app, ["doctor", "--lab", str(tmp_path), "--json"], env={"PATH": str(tmp_path)})
    assert "Traceback" not in result.output
    checks = json.loads(result.stdout)["checks"]
    (pickup,) = [c for c in checks if c["name"] == "lab files"]
    assert pickup["status"] == "warn"
    assert pickup["detail"].startswith("user-data was added since the last render")
