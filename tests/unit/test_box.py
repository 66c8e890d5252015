"""The lab box recipe and build checks that need no root: prerequisites, cache keys, metadata, shipped units."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coreos_lab.box import build, recipe
from coreos_lab.cli import app
from coreos_lab.errors import BoxError


def test_box_build_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BoxError, match="needs root") as info:
        build.check_prerequisites()
    assert "sudo" in str(info.value)


def test_box_build_names_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr("shutil.which", lambda n: None if n in ("debootstrap", "qemu-img") else real_which(n))
    with pytest.raises(BoxError, match="needs debootstrap, qemu-utils") as info:
        build.check_prerequisites()
    assert "apt-get install debootstrap qemu-utils" in str(info.value)


def test_cli_box_build_as_non_root_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached box here
    result = CliRunner().invoke(app, ["box", "build"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: building the lab box needs root")
    assert "Traceback" not in result.output


def test_cached_box_is_reused_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = build.box_path()
    out.parent.mkdir(parents=True)
    out.write_bytes(b"box")
    out.with_name(out.name + ".sha256").write_text(f"{'ab' * 32}  {out.name}\n")
    built = build.build()
    assert built.cached
    assert built.sha256 == "ab" * 32
    assert built.path == tmp_path / "coreos-lab" / "boxes" / recipe.box_key() / f"coreos-lab-{recipe.BOX_VERSION}.box"


def test_cache_keys_follow_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs, box = recipe.rootfs_key(), recipe.box_key()
    assert (rootfs, box) == (recipe.rootfs_key(), recipe.box_key())  # stable
    monkeypatch.setattr(recipe, "EXTRA_PACKAGES", ("docker.io",))
    assert recipe.rootfs_key() != rootfs
    assert recipe.box_key() != box
    monkeypatch.undo()
    monkeypatch.setattr(recipe, "KERNEL_CMDLINE", recipe.KERNEL_CMDLINE + " debug")
    assert recipe.rootfs_key() == rootfs  # the slow stage is not redone for a box-only change
    assert recipe.box_key() != box


def test_box_metadata_and_vagrantfile(tmp_path: Path) -> None:
    build.write_box_metadata(tmp_path, "k1")
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta == {"provider": "libvirt", "format": "qcow2", "virtual_size": recipe.DISK_GB}
    vf = (tmp_path / "Vagrantfile").read_text()
    assert 'libvirt.driver = "qemu"' in vf
    assert 'File.join(__dir__, "vmlinuz")' in vf
    assert recipe.KERNEL_CMDLINE in vf
    assert 'config.ssh.username = "core"' in vf
    assert "@CMDLINE@" not in vf
    assert 'require_relative "configure_networks.rb"' in vf
    assert "configure_networks_cloud_init(machine, networks)" in (tmp_path / "configure_networks.rb").read_text()
    info = json.loads((tmp_path / build.BOX_INFO).read_text())
    assert info["key"] == "k1"


def test_added_box_key(tmp_path: Path) -> None:
    assert build.added_box_key(tmp_path) is None
    d = tmp_path / "boxes" / "coreos-lab-VAGRANTSLASH-lab" / "0" / "libvirt"
    d.mkdir(parents=True)
    (d / build.BOX_INFO).write_text(json.dumps({"key": "abc"}))
    assert build.added_box_key(tmp_path) == "abc"


def test_shipped_units_follow_the_pitfalls() -> None:
    files = recipe.files_dir()
    network = (files / "etc/systemd/network/99-default.network").read_text()
    assert "ClientIdentifier=mac" in network
    assert "50-vagrant" < "99-default"  # sorts after Vagrant's own .network files
    wait = (files / "etc/systemd/system/systemd-networkd-wait-online.service.d/10-coreos-lab.conf").read_text()
    assert "--any --timeout=20" in wait
    units = files / "usr/lib/systemd/system"
    path_unit = (units / "coreos-cloudinit-vagrant-user.path").read_text()
    assert "PathExists=/var/lib/flatcar-vagrant/vagrantfile-user-data" in path_unit
    # Flatcar's names: the path unit starts user-cloudinit@<escaped path>.service, a RemainAfterExit oneshot
    # (a file replaced later is applied only after a reboot or an explicit restart: no PathChanged re-run).
    assert r"Unit=user-cloudinit@var-lib-flatcar\x2dvagrant-vagrantfile\x2duser\x2ddata.service" in path_unit
    assert not list(units.glob("*rerun*"))
    user = (units / "user-cloudinit@.service").read_text()
    assert "RemainAfterExit=yes" in user
    assert "ExecStart=/usr/bin/coreos-cloudinit --from-file=%f" in user
    assert "EnvironmentFile=-/etc/environment" in user
    # Vagrant's CoreOS guest applies hostname and networks through system-cloudinit@.service.
    assert "ExecStart=/usr/bin/coreos-cloudinit --from-file=%f" in (units / "system-cloudinit@.service").read_text()
    legacy = (units / "coreos-cloudinit-vagrant-legacy.path").read_text()
    assert "/var/lib/coreos-vagrant/vagrantfile-user-data" in legacy
    assert r"user-cloudinit@var-lib-coreos\x2dvagrant-vagrantfile\x2duser\x2ddata.service" in legacy
    assert "coreos-lab-readonly-usr.service" in build.ENABLE_UNITS
    assert "Alias" not in (units / "etcd-member.service").read_text()
    assert (units / "etcd2.service").exists()
    assert not [u for u in build.ENABLE_UNITS if u.startswith("etcd")]  # started by cloud-config only


def test_prune_cache_keeps_only_the_current_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "coreos-lab"
    for rel in ("boxes/old", "boxes/new", "rootfs-old", "rootfs-new", "nspawn-rootfs/other"):
        (cache / rel).mkdir(parents=True)
    removed = build.prune_cache(keep_box="new", keep_rootfs="new")
    assert sorted(p.name for p in removed) == ["old", "rootfs-old"]
    assert sorted(p.name for p in cache.iterdir()) == ["boxes", "nspawn-rootfs", "rootfs-new"]
    assert [p.name for p in (cache / "boxes").iterdir()] == ["new"]


def _fake_rootfs(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/python3.11").write_bytes(b"ELF")
    (tree / "usr/bin/python3").symlink_to("python3.11")
    for name in ("pydoc3", "py3compile", "pygettext3.11", "python3-config"):
        (tree / "usr/bin" / name).write_text("#!/usr/bin/python3\n")
    (tree / "usr/bin/etcdctl").write_bytes(b"ELF")
    return tree


def test_python_is_moved_off_path(tmp_path: Path) -> None:
    tree = _fake_rootfs(tmp_path)
    build.hide_python(tree)
    assert (tree / build.PRIVATE_PYTHON.lstrip("/")).read_bytes() == b"ELF"
    assert sorted(p.name for p in (tree / "usr/bin").iterdir()) == ["etcdctl"]
    assert build.PRIVATE_PYTHON.startswith("/usr/lib/")  # not on any PATH a node has


def test_python_missing_is_a_box_error(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    with pytest.raises(BoxError, match="no python3"):
        build.hide_python(tmp_path)


def test_os_release_makes_vagrant_take_the_coreos_guest() -> None:
    fields = dict(line.split("=", 1) for line in build.OS_RELEASE.splitlines())
    assert fields["ID"] == "flatcar"
    assert "coreos" in fields["ID_LIKE"]  # Vagrant's CoreOS guest: grep -E 'ID_LIKE=.*coreos.*'


def test_box_key_covers_the_box_vagrantfile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    before = recipe.box_key()
    copy = tmp_path / "box"
    shutil.copytree(Path(recipe.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__", "files"))
    monkeypatch.setattr(recipe, "__file__", str(copy / "recipe.py"))
    assert recipe.box_key() == before
    (copy / "vagrant" / "Vagrantfile").write_text("changed\n")
    assert recipe.box_key() != before
