"""The lab box's own Vagrantfile against real Ruby and real Vagrant: Flatcar's project-directory rules.

Flatcar's 2026 box Vagrantfile picks up `user-data` (a file or a whole directory) and `config.ign` from the
directory vagrant runs in. The twin's box Vagrantfile must do exactly that, since the VM suite boots every
lab through it. Checked three ways: a recorder that logs what the configure block asks for (per project
directory), real Vagrant loading the box from a `vagrant box add`ed box (`vagrant validate`), and the
configure_networks patch loaded into Vagrant's own CoreOS guest code.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from coreos_lab.box import build
from tests.conftest import require_binary
from tests.integration.test_rendered_real import vagrant

pytestmark = pytest.mark.integration

RECORDER = """
require "json"
class Rec
  def initialize(path, log) @path = path; @log = log end
  def method_missing(name, *args, **kw, &blk)
    path = "#{@path}.#{name}"
    @log << [path, args.map { |a| a.is_a?(Array) ? a.map(&:to_s) : a.to_s }, kw.map { |k, v| [k.to_s, v.to_s] }.to_h]
    child = Rec.new(path, @log)
    blk.call(child, child) if blk
    child
  end
  def respond_to_missing?(*) true end
end
LOG = []
module Vagrant
  def self.require_version(*) end
  def self.configure(version) yield Rec.new("config", LOG) end
end
$LOADED_FEATURES << File.expand_path("configure_networks.rb", File.dirname(ARGV[0]))
load ARGV[0]
print JSON.generate(LOG)
"""


@pytest.fixture(scope="module")
def box_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("box")
    build.write_box_metadata(directory, "test-key")
    return directory


def record(box_dir: Path, project: Path) -> list[tuple[str, list[Any], dict[str, str]]]:
    proc = subprocess.run(
        [require_binary("ruby"), "-e", RECORDER, str(box_dir / "Vagrantfile")],
        cwd=project, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [(path, args, kw) for path, args, kw in json.loads(proc.stdout)]


def provisions(log: list[tuple[str, list[Any], dict[str, str]]]) -> list[tuple[list[Any], dict[str, str]]]:
    return [(args, kw) for path, args, kw in log if path == "config.vm.provision"]


def initrds(log: list[tuple[str, list[Any], dict[str, str]]]) -> list[str]:
    return [args[0] for path, args, _ in log if path == "config.vm.provider.initrd="]


def test_empty_project_gets_no_provisioner_and_no_ignition(box_dir: Path, tmp_path: Path) -> None:
    log = record(box_dir, tmp_path)
    assert initrds(log) == [str(box_dir / "initrd.img")]  # the small initrd: nothing to apply
    assert provisions(log) == []
    assert not [entry for entry in log if "qemuargs" in entry[0] or "guestproperty" in json.dumps(entry[1])]
    calls = {path: args for path, args, _ in log}
    assert calls["config.ssh.username="] == ["core"]
    assert calls["config.ssh.insert_key="] == ["false"]
    synced = [(args, kw) for path, args, kw in log if path == "config.vm.synced_folder"]
    assert synced == [([".", "/vagrant"], {"disabled": "true"})]


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_user_data_is_uploaded_and_moved_for_a_file_or_a_directory(box_dir: Path, tmp_path: Path, kind: str) -> None:
    if kind == "file":
        (tmp_path / "user-data").write_text("#cloud-config\n")
    else:
        (tmp_path / "user-data").mkdir()
        (tmp_path / "user-data" / "core-01.yaml").write_text("#cloud-config\n")
    assert provisions(record(box_dir, tmp_path)) == [
        (["file"], {"source": "user-data", "destination": "/tmp/vagrantfile-user-data"}),
        (["shell"], {"inline": "mv /tmp/vagrantfile-user-data /var/lib/flatcar-vagrant/", "privileged": "true"}),
    ]


def test_config_ign_goes_to_the_guest_property_and_to_fw_cfg(box_dir: Path, tmp_path: Path) -> None:
    ignition = '{"ignition": {"version": "3.3.0"}}'
    (tmp_path / "config.ign").write_text(ignition)
    log = record(box_dir, tmp_path)
    customize = [args[0] for path, args, _ in log if path == "config.vm.provider.customize"]
    assert ["guestproperty", "set", "id", "/Ignition/Config", ignition] in customize
    qemu = [kw["value"] for path, _, kw in log if path == "config.vm.provider.qemuargs"]
    assert qemu == ["-fw_cfg", f"name=opt/org.flatcar-linux/config,file={tmp_path / 'config.ign'}"]
    assert initrds(log) == [str(box_dir / "initrd-ignition.img")]  # the initrd that runs Ignition
    assert provisions(log) == []  # config.ign alone uploads nothing


def test_configure_networks_patch_forces_vagrants_cloud_config_path(box_dir: Path) -> None:
    # Vagrant's own CoreOS guest code, loaded from the installed vagrant, with the box's patch on top.
    script = """
require "vagrant"
require "vagrant/util/guest_inspection"
load ARGV[0]
cap = VagrantPlugins::GuestCoreOS::Cap::ConfigureNetworks
cap.define_singleton_method(:configure_networks_cloud_init) { |_m, nets| print "cloud-config #{nets.length}" }
cap.configure_networks(nil, [{}, {}])
"""
    proc = subprocess.run(
        [require_binary("ruby"), "-e", script, str(box_dir / "configure_networks.rb")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "cloud-config 2"


def add_twin_box(box_dir: Path, tmp_path: Path, name: str) -> Path:
    """The box's Vagrantfile packed with an empty disk, ``vagrant box add``ed as ``name``; returns VAGRANT_HOME."""
    home = tmp_path / "vagrant-home"
    box = tmp_path / "twin.box"
    (box_dir / "box.img").write_bytes(b"")
    with tarfile.open(box, "w") as tar:
        for member in ("metadata.json", *build.BOX_VAGRANT_FILES, "box.img"):
            tar.add(box_dir / member, arcname=member)
    added = vagrant(tmp_path, "box", "add", "--name", name, str(box), home=home)
    assert added.returncode == 0, added.stderr
    return home


def test_real_vagrant_loads_the_added_box_with_user_files(box_dir: Path, tmp_path: Path) -> None:
    home = add_twin_box(box_dir, tmp_path, "twin-test")
    project = tmp_path / "project"
    project.mkdir()
    (project / "Vagrantfile").write_text('Vagrant.configure("2") { |c| c.vm.box = "twin-test" }\n')
    (project / "user-data").write_text("#cloud-config\n")
    (project / "config.ign").write_text('{"ignition": {"version": "3.3.0"}}')
    env = {"VAGRANT_LOG": "info"}
    proc = vagrant(project, "validate", home=home, env_extra=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    # Vagrant merged the box's own Vagrantfile (its loader logs each config source it sets).
    assert f"{home}/boxes/twin-test/0/libvirt/Vagrantfile" in proc.stderr


def test_a_projects_provider_block_sees_the_box_constant(box_dir: Path, tmp_path: Path) -> None:
    # Vagrant loads the box's Vagrantfile (its top level runs) before it runs the project's provider blocks,
    # each on a fresh object: CoreosLabBox::IGNITION_INITRD is how an Ignition lab's Vagrantfile finds the
    # box's Ignition initrd. Real Vagrant, real vagrant-libvirt config class.
    home = add_twin_box(box_dir, tmp_path, "twin-const")
    project = tmp_path / "project"
    project.mkdir()
    seen = tmp_path / "seen"
    (project / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |c|\n'
        '  c.vm.box = "twin-const"\n'
        '  c.vm.define "n1" do |n|\n'
        "    n.vm.provider :libvirt do |lv|\n"
        f"      File.write({json.dumps(str(seen))}, "
        'defined?(CoreosLabBox::IGNITION_INITRD) ? CoreosLabBox::IGNITION_INITRD : "undefined")\n'
        "    end\n"
        "  end\n"
        "end\n"
    )
    proc = vagrant(project, "validate", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert seen.read_text() == f"{home}/boxes/twin-const/0/libvirt/initrd-ignition.img"
