"""What Flatcar's box would pick up from a lab unexpectedly: pickup_problems, `up` refusing, the records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab import pickup, tls
from coreos_lab.cli import app
from coreos_lab.config import LabConfig
from coreos_lab.errors import CoreosLabError
from coreos_lab.render import init_lab, render_existing

from .test_render import lab

SEED = "#cloud-config\nwrite_files:\n  - path: /etc/hello\n    content: hi from $private_ipv4\n"
IGN = json.dumps({"ignition": {"version": "3.3.0"}})


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    init_lab(tmp_path, lab())
    return tmp_path


def test_a_freshly_rendered_lab_has_no_problems(lab_dir: Path) -> None:
    assert pickup.pickup_problems(lab_dir) == []
    (lab_dir / "user-data").write_text(SEED)
    (lab_dir / "config.ign").write_text(IGN)
    render_existing(lab_dir)
    assert pickup.pickup_problems(lab_dir) == []


def test_user_data_added_changed_and_removed_since_the_render(lab_dir: Path) -> None:
    (lab_dir / "user-data").write_text(SEED)
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("user-data was added since the last render")
    assert "(recorded in 3 of 3 node cloud-configs)" in problem
    render_existing(lab_dir)
    (lab_dir / "user-data").write_text(SEED + "ssh_authorized_keys: [k]\n")
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("user-data changed since the last render")
    (lab_dir / "user-data").unlink()
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("user-data was removed since the last render")
    render_existing(lab_dir)
    assert pickup.pickup_problems(lab_dir) == []


def test_config_ign_added_or_changed_is_a_problem_removed_is_not(lab_dir: Path) -> None:
    (lab_dir / "config.ign").write_text(IGN)
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("config.ign was added since the last render")
    render_existing(lab_dir)
    (lab_dir / "config.ign").write_text(IGN + "\n")
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("config.ign changed since the last render")
    (lab_dir / "config.ign").unlink()
    assert pickup.pickup_problems(lab_dir) == [], "nothing for the box to hand over, nothing rendered from it"


def test_a_partial_render_is_counted(lab_dir: Path) -> None:
    (lab_dir / "user-data").write_text(SEED)
    render_existing(lab_dir)
    rendered = (lab_dir / "cloud-config" / "core-01.yaml").read_text()
    (lab_dir / "user-data").write_text(SEED + "\n")
    render_existing(lab_dir)
    (lab_dir / "cloud-config" / "core-01.yaml").write_text(rendered)
    (problem,) = pickup.pickup_problems(lab_dir)
    assert "changed since the last render" in problem
    assert "(recorded in 1 of 3 node cloud-configs)" in problem


def test_config_ign_too_big_for_virtualbox_even_when_rendered(tmp_path: Path) -> None:
    big = json.dumps({"ignition": {"version": "3.3.0"}, "x": "y" * 2000})
    (tmp_path / "config.ign").write_text(big)
    init_lab(tmp_path, lab(provider="libvirt", box="coreos-lab/lab"))
    assert pickup.pickup_problems(tmp_path) == []
    (problem,) = pickup.pickup_problems(tmp_path, LabConfig(provider="virtualbox"))
    assert problem.startswith(f"config.ign is {len(big)} bytes: VirtualBox guest properties hold 1024 bytes")


def test_an_old_layout_directory_is_a_problem(lab_dir: Path) -> None:
    (lab_dir / "user-data").mkdir()
    (lab_dir / "user-data" / "core-01.yaml").write_text(f"#cloud-config\n# {pickup.HEADER}\n")
    (problem,) = pickup.pickup_problems(lab_dir)
    assert problem.startswith("user-data/ is a directory (coreos-lab's old layout): Flatcar's box would upload it")
    (lab_dir / "user-data" / "notes.txt").write_text("mine")
    (problem,) = pickup.pickup_problems(lab_dir)
    assert "and 1 file(s) coreos-lab did not render" in problem


def test_other_entries_the_box_reads(lab_dir: Path) -> None:
    (lab_dir / "config.ign").mkdir()
    problems = pickup.pickup_problems(lab_dir)
    assert problems == ["config.ign is a directory: Flatcar's box would fail to read it as the nodes' Ignition config"]


def test_missing_and_old_cloud_configs_matter_only_with_root_files(lab_dir: Path) -> None:
    (lab_dir / "cloud-config" / "core-02.yaml").unlink()
    old = lab_dir / "cloud-config" / "core-03.yaml"
    old.write_text("\n".join(line for line in old.read_text().splitlines() if not line.startswith("# Lab root")))
    assert pickup.pickup_problems(lab_dir) == [], "nothing for the box to pick up"
    (lab_dir / "user-data").write_text(SEED)
    problems = pickup.pickup_problems(lab_dir)
    assert problems == [
        "user-data in the lab, but cloud-config/core-02.yaml, cloud-config/core-03.yaml are missing or rendered by "
        "an older coreos-lab: Flatcar's box would hand the nodes what no render checked",
        "user-data was added since the last render: Flatcar's box would hand it to the nodes unchecked "
        "(recorded in 1 of 3 node cloud-configs)",
    ]


def test_a_lab_never_rendered_has_no_problems_without_root_files(tmp_path: Path) -> None:
    from coreos_lab import config as config_mod

    config_mod.save(tmp_path, LabConfig(instances=2))
    assert pickup.pickup_problems(tmp_path) == []


def test_records_round_trip() -> None:
    user = pickup.UserData.from_bytes(SEED.encode(), Path("user-data"))
    lines = pickup.record_lines(user, None)
    assert pickup.recorded_inputs("#cloud-config\n" + "\n".join(lines) + "\n") == (f"sha256:{user.sha256}", "none")
    assert pickup.recorded_inputs("#cloud-config\nhostname: x\n") is None


def test_owned_path_prefixes_match_what_coreos_lab_writes() -> None:
    assert f"{tls.FLATCAR_ETCD_DIR}/" in pickup.OWNED_PATH_PREFIXES
    assert f"{tls.NODE_TLS_DIR.rsplit('/', 1)[0]}/" in pickup.OWNED_PATH_PREFIXES
    assert pickup.owned_path("/etc/coreos-lab") is not None
    assert pickup.owned_path("/etc/coreos-lab-extra/x") is None
    assert pickup.owned_path("/etc/systemd/system/../system/etcd2.service.d/x.conf") is not None
    assert pickup.owned_path("/etc/systemd/system/hello.service") is None


# ---------------------------------------------------------------- `coreos-lab up` refuses before Vagrant


class VagrantCalled(CoreosLabError):
    pass


@pytest.fixture
def no_vagrant(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import coreos_lab.cli.vm as vm

    calls: list[Any] = []

    def fake(path: Path, cfg: LabConfig) -> None:
        calls.append(path)
        raise VagrantCalled("vagrant reached")

    monkeypatch.setattr(vm, "_vagrant", fake)
    return calls


def test_up_refuses_to_boot_with_problems(lab_dir: Path, no_vagrant: list[Any]) -> None:
    (lab_dir / "user-data").write_text(SEED)
    (lab_dir / "config.ign").write_text(IGN)
    result = CliRunner().invoke(app, ["up", "--lab", str(lab_dir)])
    assert result.exit_code == 2
    assert no_vagrant == [], "up must fail before it calls Vagrant"
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("error: user-data was added since the last render")
    assert lines[1].startswith("error: config.ign was added since the last render")
    assert lines[2].startswith("hint: run 'coreos-lab render'")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_up_goes_on_to_vagrant_without_problems(lab_dir: Path, no_vagrant: list[Any]) -> None:
    result = CliRunner().invoke(app, ["up", "--lab", str(lab_dir)])
    assert no_vagrant == [lab_dir.resolve()]
    assert result.stderr == "error: vagrant reached\n"


def test_up_refuses_an_old_layout(lab_dir: Path, no_vagrant: list[Any]) -> None:
    (lab_dir / "user-data").mkdir()
    result = CliRunner().invoke(app, ["up", "--lab", str(lab_dir)])
    assert result.exit_code == 2
    assert no_vagrant == []
    assert "error: user-data/ is a directory" in result.stderr
    assert CliRunner().invoke(app, ["render", "--lab", str(lab_dir)]).exit_code == 0
    assert not (lab_dir / "user-data").exists()
    CliRunner().invoke(app, ["up", "--lab", str(lab_dir)])
    assert no_vagrant == [lab_dir.resolve()]
