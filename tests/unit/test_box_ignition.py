"""The lab box's Ignition parts as shipped: two initrds, the first-boot module, the names that must agree."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from coreos_lab.box import build, recipe

MODULE = "usr/lib/dracut/modules.d/99coreos-lab-ignition"


def test_the_box_vagrantfile_names_the_initrd_the_build_ships() -> None:
    vf = (recipe.files_dir().parent / "vagrant" / "Vagrantfile").read_text()
    assert f'"{recipe.IGNITION_INITRD}"' in vf
    assert 'File.join(__dir__, "initrd.img")' in vf
    template = (recipe.files_dir().parent.parent / "templates" / "Vagrantfile.j2").read_text()
    assert "CoreosLabBox::IGNITION_INITRD" in template
    assert "CoreosLabBox::IGNITION_INITRD" in vf


def test_one_command_line_serves_both_initrds() -> None:
    words = recipe.KERNEL_CMDLINE.split()
    assert {"root=/dev/vda", "ignition.firstboot", "ignition.platform.id=qemu", "rd.neednet=0"} <= set(words)
    assert "qemu_fw_cfg" in recipe.IGNITION_INITRAMFS_DRIVERS
    assert set(recipe.INITRAMFS_MODULES) <= set(recipe.IGNITION_INITRAMFS_DRIVERS)
    # Debian's module and ours; the module named on dracut's command line is the directory's name minus "99"
    assert recipe.DRACUT_MODULES[-2:] == ("ignition", "coreos-lab-ignition")
    assert (recipe.files_dir() / MODULE).is_dir()


def test_the_first_boot_flag_ships_and_every_boot_path_removes_it() -> None:
    files = recipe.files_dir()
    assert (files / "boot/flatcar/first_boot").is_file()
    presets = (files / MODULE / "coreos-lab-ignition-presets.sh").read_text()
    assert "rm -f /sysroot/boot/flatcar/first_boot" in presets  # the Ignition initrd's first boot
    done = (files / "usr/lib/systemd/system/coreos-lab-first-boot-done.service").read_text()
    assert "ConditionPathExists=/boot/flatcar/first_boot" in done  # the small initrd's first boot
    assert "coreos-lab-first-boot-done.service" in build.ENABLE_UNITS
    assert "SELINUX=disabled" in (files / "etc/selinux/config").read_text()


def test_every_ignition_stage_waits_for_the_first_boot_decision() -> None:
    setup = (recipe.files_dir() / MODULE / "module-setup.sh").read_text()
    for stage in ("fetch-offline", "fetch", "kargs", "disks", "mount", "files"):
        assert stage in setup.split("for stage in", 1)[1].split(";", 1)[0], stage
    conf = (recipe.files_dir() / MODULE / "10-coreos-lab-first-boot.conf").read_text()
    assert "ConditionPathExists=!/run/coreos-lab/ignition-skip" in conf
    assert "echo ignition" in setup  # depends on Debian's 30ignition


@pytest.mark.parametrize(
    "script", ["coreos-lab-ignition-source.sh", "coreos-lab-ignition-presets.sh", "setfiles.sh", "module-setup.sh"]
)
def test_the_module_scripts_parse(script: str) -> None:
    shell = "bash" if script == "module-setup.sh" else "sh"
    binary = shutil.which(shell)
    assert binary, shell
    proc = subprocess.run(
        [binary, "-n", str(recipe.files_dir() / MODULE / script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_box_key_follows_the_ignition_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs, box = recipe.rootfs_key(), recipe.box_key()
    monkeypatch.setattr(recipe, "DRACUT_MODULES", recipe.DRACUT_MODULES[:-1])
    assert (recipe.rootfs_key(), recipe.box_key() != box) == (rootfs, True)
    monkeypatch.undo()
    monkeypatch.setattr(recipe, "LATE_PACKAGES", ("dracut",))
    assert recipe.rootfs_key() != rootfs  # fetched with the rootfs
