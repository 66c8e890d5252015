"""Rendered labs against the real tools: `ruby -c`, `ruby -e`, `vagrant validate`, `vagrant status`.

Vagrant runs with a temp VAGRANT_HOME, checkpoint off, VAGRANT_DEFAULT_PROVIDER=libvirt (this machine has
vagrant-libvirt and no VirtualBox) and, where we may (root + unshare), in a network namespace with no
network at all: validating a lab must never download anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coreos_lab.config import LabConfig
from coreos_lab.render import init_lab, render_existing, ruby_str
from tests.conftest import require, require_binary
from tests.unit.test_render import HOSTILE, MATRIX, lab

pytestmark = pytest.mark.integration


def _offline_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare:
        probe = subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=10, check=False)
        if probe.returncode == 0:
            return [unshare, "--net", "--"]
    return []


OFFLINE = _offline_prefix()


def vagrant(
    lab_dir: Path, *args: str, home: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = require_binary("vagrant")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "COREOS_LAB_"))}
    env.update(
        VAGRANT_HOME=str(home),
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_DEFAULT_PROVIDER="libvirt",
        VAGRANT_NO_COLOR="1",
        **(env_extra or {}),
    )
    return subprocess.run(
        [*OFFLINE, binary, *args], cwd=lab_dir, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def ruby(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("ruby")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def vagrant_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vagrant-home")


@pytest.mark.parametrize(("os_name", "provider", "bootstrap"), MATRIX)
def test_matrix_passes_ruby_and_vagrant(
    os_name: str, provider: str, bootstrap: str, tmp_path: Path, vagrant_home: Path
) -> None:
    init_lab(tmp_path, lab(os_name, provider, bootstrap))
    for name in ("Vagrantfile", "config.rb"):
        proc = ruby("-c", name, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "Syntax OK"
    proc = vagrant(tmp_path, "validate", home=vagrant_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    assert not list((vagrant_home / "boxes").glob("*")), "validate must not add a box"


def test_validate_catches_a_broken_libvirt_block(tmp_path: Path, vagrant_home: Path) -> None:
    # The validation above can fail: a wrong libvirt setting is reported.
    init_lab(tmp_path, lab(provider="libvirt"))
    vf = tmp_path / "Vagrantfile"
    vf.write_text(vf.read_text().replace("lv.cpus = $vm_cpus", "lv.cpus = $vm_cpus\n        lv.no_such_setting = 1"))
    proc = vagrant(tmp_path, "validate", home=vagrant_home)
    assert proc.returncode != 0
    assert "no_such_setting" in proc.stdout + proc.stderr


def test_status_lists_the_configured_machines(tmp_path: Path, vagrant_home: Path) -> None:
    init_lab(tmp_path, lab(provider="libvirt", box="coreos-lab/lab", instances=2, name_prefix="web", metadata={}))
    proc = vagrant(tmp_path, "status", "--machine-readable", home=vagrant_home)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in proc.stdout.splitlines()]
    states = {r[1]: r[3] for r in rows if len(r) > 3 and r[2] == "state"}
    providers = {r[1]: r[3] for r in rows if len(r) > 3 and r[2] == "provider-name"}
    assert states == {"web-01": "not_created", "web-02": "not_created"}
    assert providers == {"web-01": "libvirt", "web-02": "libvirt"}


def test_all_config_rb_features_validate(tmp_path: Path, vagrant_home: Path) -> None:
    cfg = lab(
        provider="libvirt",
        box="coreos-lab/lab",
        enable_serial_logging=True,
        forwarded_ports={"8080": 18080},
        expose_docker_tcp=12375,
        vm_gui=True,
        memory=2048,
        cpus=2,
    )
    init_lab(tmp_path, cfg)
    proc = vagrant(tmp_path, "validate", home=vagrant_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "log" / "core-01-serial.txt").exists()


def test_libvirt_driver_env(tmp_path: Path, vagrant_home: Path) -> None:
    init_lab(tmp_path, lab(provider="libvirt", box="coreos-lab/lab"))
    assert (
        vagrant(tmp_path, "validate", home=vagrant_home, env_extra={"COREOS_LAB_LIBVIRT_DRIVER": "kvm"}).returncode == 0
    )
    assert (
        vagrant(tmp_path, "validate", home=vagrant_home, env_extra={"COREOS_LAB_LIBVIRT_DRIVER": "qemu"}).returncode
        == 0
    )
    proc = vagrant(tmp_path, "validate", home=vagrant_home, env_extra={"COREOS_LAB_LIBVIRT_DRIVER": "xen"})
    assert proc.returncode != 0
    assert "COREOS_LAB_LIBVIRT_DRIVER must be qemu or kvm" in proc.stdout + proc.stderr


# A stand-in for Vagrant's module so plain Ruby can load the Vagrantfile's top level (config.rb, box choice,
# IP arithmetic); `vagrant validate` above covers the configure block itself.
HARNESS = """
require "json"
module Vagrant
  def self.require_version(*) end
  def self.configure(*) end
  def self.has_plugin?(*) false end
end
load ARGV[0]
print JSON.generate({
  "box" => $lab_box, "box_url" => $lab_box_url, "image_version" => $image_version,
  "guest_dir" => $guest_user_data_dir, "ips" => (1..$num_instances).map { |i| lab_node_ip(i) },
  "num" => $num_instances, "prefix" => $instance_name_prefix, "memory" => $vm_memory, "cpus" => $vm_cpus,
  "shared" => $shared_folders, "ports" => $forwarded_ports, "docker" => $expose_docker_tcp,
  "serial" => $enable_serial_logging, "home" => $share_home, "gui" => $vm_gui, "cap" => $vb_cpuexecutioncap,
})
"""


def load_vagrantfile(lab_dir: Path) -> dict[str, Any]:
    proc = ruby("-e", HARNESS, str(lab_dir / "Vagrantfile"), cwd=lab_dir)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"channel": "beta"},
            {
                "box": "flatcar-beta",
                "box_url": "https://beta.release.flatcar-linux.net/amd64-usr/current/flatcar_production_vagrant.json",
                "image_version": "current",
                "guest_dir": "/var/lib/flatcar-vagrant",
            },
        ),
        (
            {"channel": "lts", "box_version": "3975.2.1"},
            {
                "box": "flatcar-lts",
                "box_url": "https://lts.release.flatcar-linux.net/amd64-usr/3975.2.1/flatcar_production_vagrant.json",
                "image_version": "3975.2.1",
            },
        ),
        ({"box": "coreos-lab/lab"}, {"box": "coreos-lab/lab", "box_url": None}),
        ({"box": "mine", "box_url": "file:///srv/mine.json"}, {"box": "mine", "box_url": "file:///srv/mine.json"}),
        ({"os": "coreos"}, {"box": "coreos-stable", "guest_dir": "/var/lib/coreos-vagrant"}),
    ],
)
def test_box_choice(tmp_path: Path, changes: dict[str, Any], expected: dict[str, Any]) -> None:
    init_lab(tmp_path, lab(**changes))
    got = load_vagrantfile(tmp_path)
    assert {k: got[k] for k in expected} == expected


def test_vagrantfile_reads_every_config_rb_variable(tmp_path: Path) -> None:
    cfg = lab(
        instances=4,
        name_prefix="n",
        network="10.40.0.0/16",
        metadata={},
        memory=1536,
        cpus=2,
        shared_folders={"/src": "/home/core/src"},
        forwarded_ports={"80": 8080},
        expose_docker_tcp=2375,
        enable_serial_logging=True,
        share_home=True,
        vm_gui=True,
        vb_cpuexecutioncap=50,
    )
    result = init_lab(tmp_path, cfg)
    got = load_vagrantfile(tmp_path)
    assert got["ips"] == [n.ip for n in result.config.nodes]
    assert (got["num"], got["prefix"], got["memory"], got["cpus"]) == (4, "n", 1536, 2)
    assert got["shared"] == {"/src": "/home/core/src"}
    assert got["ports"] == {"80": 8080}  # JSON turns the integer key into a string
    assert (got["docker"], got["serial"], got["home"], got["gui"], got["cap"]) == (2375, True, True, True, 50)


def test_ruby_str_round_trips_in_ruby(tmp_path: Path) -> None:
    values = [*HOSTILE, "line\nbreak", "nul\x00byte", "tab\t", "#$0 #@x", "\u2028", "'single'", "%q{x}"]
    script = "".join(f'print({ruby_str(v)}); print("\\x00\\x01")\n' for v in values)
    (tmp_path / "t.rb").write_text(script, encoding="utf-8")
    proc = subprocess.run(
        [require_binary("ruby"), str(tmp_path / "t.rb")], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(b"\x00\x01")[:-1] == [v.encode() for v in values]


def test_config_rb_carries_hostile_paths_exactly(tmp_path: Path) -> None:
    folders = {'/h"#{`touch pwned`}': "/g\\", "/ünï €": "#$0"}
    init_lab(tmp_path, lab(shared_folders=folders, box='b"ox#{1}'))
    got = load_vagrantfile(tmp_path)
    assert got["shared"] == folders
    assert got["box"] == 'b"ox#{1}'
    assert not (tmp_path / "pwned").exists()


def test_render_after_edit_still_validates(tmp_path: Path, vagrant_home: Path) -> None:
    init_lab(tmp_path, LabConfig(provider="libvirt", box="coreos-lab/lab"))
    toml_path = tmp_path / "coreos-lab.toml"
    toml_path.write_text(toml_path.read_text().replace("instances = 3", "instances = 5"))
    render_existing(tmp_path)
    proc = vagrant(tmp_path, "status", "--machine-readable", home=vagrant_home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(",state,not_created") == 5


def test_offline_isolation_is_in_force() -> None:
    # CI runs as root with unshare: the vagrant calls above ran with no network at all.
    require(bool(OFFLINE), "vagrant validate could not be isolated from the network (needs root and unshare)")


# Records every call the Vagrantfile's configure block makes (Vagrant's own objects are not loadable outside
# vagrant), so the per-node settings can be checked one by one; `vagrant validate` checks them for real above.
RECORDER = """
require "json"
class Rec
  def initialize(path, log) @path = path; @log = log end
  def method_missing(name, *args, **kw, &blk)
    path = "#{@path}.#{name}"
    @log << [path, args.map { |a| a.is_a?(Array) ? a.map(&:to_s) : a.to_s }, kw.map { |k, v| [k.to_s, v.to_s] }.to_h]
    child = Rec.new(blk ? "#{path}(#{args.first})" : path, @log)
    blk.call(child, child) if blk
    child
  end
  def respond_to_missing?(*) true end
end
LOG = []
module Vagrant
  def self.require_version(*) end
  def self.has_plugin?(*) false end
  def self.configure(version) yield Rec.new("config", LOG) end
end
load ARGV[0]
print JSON.generate(LOG)
"""


def record_vagrantfile(
    lab_dir: Path, env_extra: dict[str, str] | None = None, recorder_prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """``recorder_prefix``: Ruby run before the Vagrantfile is loaded (what a box's Vagrantfile would define)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREOS_LAB_")}
    env.update(env_extra or {})
    proc = subprocess.run(
        [require_binary("ruby"), "-e", recorder_prefix + RECORDER, str(lab_dir / "Vagrantfile")],
        cwd=lab_dir, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [tuple(entry) for entry in json.loads(proc.stdout)]


@pytest.mark.parametrize(("os_name", "provider"), [("flatcar", "libvirt"), ("coreos", "virtualbox")])
def test_configure_block_per_node(tmp_path: Path, os_name: str, provider: str) -> None:
    result = init_lab(tmp_path, lab(os_name, provider, memory=1536, cpus=2))
    calls = record_vagrantfile(tmp_path)
    paths = [c[0] for c in calls]
    guest_dir = {"flatcar": "/var/lib/flatcar-vagrant", "coreos": "/var/lib/coreos-vagrant"}[os_name]
    assert ("config.ssh.insert_key=", ["false"], {}) in calls
    providers = [c[1][0] for c in calls if c[0] == "config.vm.provider"]
    assert providers[0] == provider, "the lab's provider must be listed first (Vagrant's default)"
    for node in result.config.nodes:
        pre = f"config.vm.define({node.name})"
        assert (f"{pre}.vm.hostname=", [node.name], {}) in calls
        assert (f"{pre}.vm.network", ["private_network"], {"ip": node.ip}) in calls
        provisions = [c for c in calls if c[0] == f"{pre}.vm.provision"]
        assert [c[1] for c in provisions] == [["file"], ["shell"]], "upload first, then place it"
        file_prov, shell_prov = provisions
        assert file_prov[2] == {
            # not /tmp/vagrantfile-user-data: Flatcar's box uploads the lab's own user-data there
            "source": str(tmp_path / "cloud-config" / f"{node.name}.yaml"),
            "destination": "/tmp/coreos-lab-user-data",
        }
        assert set(shell_prov[2]) == {"privileged", "inline", "args"}
        assert shell_prov[2]["privileged"] == "true"
        assert json.loads(shell_prov[2]["args"]) == [guest_dir, "/tmp/coreos-lab-user-data"]
        script = shell_prov[2]["inline"]
        assert script == place_script(tmp_path), "every node runs the same script"
        assert script.startswith("#!/bin/sh\nset -eu\n")
        lv = {c[0].rsplit(".", 1)[1]: c[1] for c in calls if c[0].startswith(f"{pre}.vm.provider(libvirt).")}
        vb = [c for c in calls if c[0].startswith(f"{pre}.vm.provider(virtualbox).")]
        assert lv == {"driver=": ["qemu"], "memory=": ["1536"], "cpus=": ["2"]}
        assert {c[0].rsplit(".", 1)[1] for c in vb} == {"gui=", "memory=", "cpus=", "customize"}
        assert [c[1][0] for c in vb if c[0].endswith(".customize")] == [["modifyvm", "id", "--cpuexecutioncap", "100"]]
    assert not [p for p in paths if ".vm.provider(libvirt)." in p and ("customize" in p or "gui" in p)]
    assert not [p for p in paths if ".vm.provider(virtualbox)." in p and ("driver" in p or "serial" in p)]


def test_configure_block_driver_env_and_missing_cloud_config(tmp_path: Path) -> None:
    init_lab(tmp_path, lab(provider="libvirt", instances=2, metadata={}))
    (tmp_path / "cloud-config" / "core-02.yaml").unlink()
    calls = record_vagrantfile(tmp_path, {"COREOS_LAB_LIBVIRT_DRIVER": "kvm"})
    assert ("config.vm.define(core-01).vm.provider(libvirt).driver=", ["kvm"], {}) in calls
    assert any(c[0] == "config.vm.define(core-01).vm.provision" for c in calls)
    # a node without a rendered cloud-config gets no provisioner (coreos-vagrant's behaviour), not a broken one
    assert not any(c[0] == "config.vm.define(core-02).vm.provision" for c in calls)


# ---------------------------------------------------------------- the placing script, run for real by /bin/sh


def place_script(lab_dir: Path) -> str:
    """PLACE_CLOUD_CONFIG of the rendered Vagrantfile, as Ruby evaluates the heredoc."""
    harness = HARNESS.split("print JSON.generate")[0] + "print PLACE_CLOUD_CONFIG\n"
    proc = ruby("-e", harness, str(lab_dir / "Vagrantfile"), cwd=lab_dir)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl stand-in: the unit's states come from $STATES (one per is-active call, the last one repeats),
# LoadState from $LOAD; every call is logged.
echo "systemctl $*" >> "$LOG"
case "$1" in
  is-active)
    n=$(cat "$COUNT" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$COUNT"
    set -- $STATES
    shift "$(( n < $# ? n : $# - 1 ))"
    echo "$1"
    [ "$1" = active ] ;;
  show) echo "$LOAD" ;;
  restart|start) [ -z "${FAIL:-}" ] ;;
  *) true ;;
esac
"""


def run_place(
    tmp_path: Path, *, states: str, load: str = "loaded", fail: bool = False, old_dir: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    """Run the rendered script with stand-ins for systemctl, systemd-escape, sleep and timeout."""
    init_lab(tmp_path / "lab", lab(instances=1, metadata={}))
    script = tmp_path / "place.sh"
    script.write_text(place_script(tmp_path / "lab"))
    script.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemd-escape").write_text('#!/bin/sh\necho "escaped-$2"\n')
    (bin_dir / "sleep").write_text("#!/bin/sh\ntrue\n")
    (bin_dir / "timeout").write_text('#!/bin/sh\nshift\nexec "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    guest = tmp_path / "guest"
    if old_dir:
        (guest / "vagrantfile-user-data").mkdir(parents=True)
        (guest / "vagrantfile-user-data" / "core-01.yaml").write_text("old layout")
    upload = tmp_path / "upload"
    upload.write_text("#cloud-config\nours\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(tmp_path / "log"),
        "COUNT": str(tmp_path / "count"),
        "STATES": states,
        "LOAD": load,
        **({"FAIL": "1"} if fail else {}),
    }
    proc = subprocess.run(
        ["/bin/sh", str(script), str(guest), str(upload)], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return proc, log, guest


def test_place_script_on_a_fresh_node_starts_the_unit_for_a_path_unit_that_gave_up(tmp_path: Path) -> None:
    proc, log, guest = run_place(tmp_path, states="inactive")
    assert proc.returncode == 0, proc.stderr
    assert (guest / "vagrantfile-user-data").read_text() == "#cloud-config\nours\n"
    unit = f"user-cloudinit@escaped-{guest}/vagrantfile-user-data.service"
    assert f"systemctl start {unit}" in log  # a no-op when the path unit already ran it
    assert not any("restart" in line for line in log)


def test_place_script_restarts_a_unit_that_applied_another_file(tmp_path: Path) -> None:
    proc, log, guest = run_place(tmp_path, states="activating activating active")
    assert proc.returncode == 0, proc.stderr
    assert "applying the new cloud-config" in proc.stdout
    unit = f"user-cloudinit@escaped-{guest}/vagrantfile-user-data.service"
    assert log.count(f"systemctl is-active {unit}") == 4  # waited while activating, then saw it active
    assert log[-1] == f"systemctl restart {unit}"
    assert (guest / "vagrantfile-user-data").read_text() == "#cloud-config\nours\n"


def test_place_script_replaces_a_directory_the_box_uploaded(tmp_path: Path) -> None:
    proc, log, guest = run_place(tmp_path, states="inactive", old_dir=True)
    assert proc.returncode == 0, proc.stderr
    assert "removed the directory" in proc.stdout
    assert (guest / "vagrantfile-user-data").is_file()
    assert any(line.startswith("systemctl start ") for line in log)


def test_place_script_without_the_unit_only_places_the_file(tmp_path: Path) -> None:
    # The lab box before it had Flatcar's user-cloudinit@ unit: its own path units apply the file.
    proc, log, guest = run_place(tmp_path, states="inactive", load="not-found")
    assert proc.returncode == 0, proc.stderr
    assert (guest / "vagrantfile-user-data").is_file()
    assert not any(" start " in f" {line} " or "restart" in line for line in log)


def test_place_script_fails_loudly(tmp_path: Path) -> None:
    proc, _, _ = run_place(tmp_path, states="active", fail=True)
    assert proc.returncode == 1
    assert "failed to apply" in proc.stderr
    proc, _, guest = run_place(tmp_path / "again", states="activating")
    assert proc.returncode == 1
    assert "still activating after 600 s" in proc.stderr
    assert not (guest / "vagrantfile-user-data").exists(), "nothing is replaced while another run is under way"
