"""What goes into the lab box, as data: the Debian suite, the package list and the files shipped into it.

The cache keys are hashes of this recipe, so editing a package list or a shipped file rebuilds exactly the
stages that depend on it: the rootfs (debootstrap) only when the suite or packages change, the box when
anything changes.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Final

BOX_NAME: Final = "coreos-lab/lab"
BOX_VERSION: Final = "0.1.0"
SUITE: Final = "bookworm"
VARIANT: Final = "minbase"
# The box's own packages. etcd-server is Debian's etcd 3.4 (v2 API still available with --enable-v2).
PACKAGES: Final = (
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "iputils-ping",
    "netbase",
    "procps",
    "openssh-server",
    "sudo",
    "rsync",
    "curl",
    "ca-certificates",
    "python3-yaml",
    "libnss-myhostname",  # Flatcar resolves its own hostname through nss-myhostname (no /etc/hosts entry)
    "etcd-server",
    "etcd-client",
    "linux-image-amd64",
    "initramfs-tools",
    "zstd",
)
# Issue 7: Docker for the seed's myapp.service, plus an offline `docker pull busybox`: Debian's registry runs
# on the node as the daemon's mirror, preloaded (registry.py) with an image made from busybox-static.
# apparmor (a docker.io Recommends that debootstrap skips): Debian's kernel enables AppArmor, and dockerd then
# refuses to start containers without apparmor_parser to load its docker-default profile.
EXTRA_PACKAGES: Final[tuple[str, ...]] = ("docker.io", "apparmor", "docker-registry", "busybox-static")
INITRAMFS_MODULES: Final = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "ext4")
# Issue 13: Ignition, as on Flatcar, from an initramfs. Debian's `ignition` (2.14) ships a dracut module
# (30ignition), and dracut conflicts with initramfs-tools, so the box carries two initrds: initramfs-tools' small
# one (6 MB, what cloud-config labs boot) and dracut's with Ignition (about 40 MB, booted when the node is handed
# an Ignition config; a first boot with it costs about 20 s more under TCG, measured). The packages are fetched
# with the rootfs (apt-get --download-only) and installed in the box's copy, after its small initrd is made.
LATE_PACKAGES: Final[tuple[str, ...]] = ("dracut", "dracut-network", "ignition")
IGNITION_INITRAMFS_DRIVERS: Final = (*INITRAMFS_MODULES, "qemu_fw_cfg")
# dracut's modules, named (-m) rather than dracut's generic set: no crypt, dm, lvm, ifcfg, i18n. Ignition's own
# module needs url-lib and a network module, which it gets, unused (rd.neednet=0).
DRACUT_MODULES: Final = (
    "systemd",
    "systemd-initrd",
    "systemd-networkd",
    "network",
    "url-lib",
    "qemu",
    "kernel-modules",
    "rootfs-block",
    "udev-rules",
    "dracut-systemd",
    "base",
    "fs-lib",
    "ignition",
    "coreos-lab-ignition",
)
IGNITION_INITRD: Final = "initrd-ignition.img"
DISK_GB: Final = 10
# One command line for both initrds: initramfs-tools ignores the ignition.* and rd.* words. ignition.firstboot is
# on every boot; whether Ignition runs is decided in the initramfs from the root's /boot/flatcar/first_boot, as
# Flatcar's GRUB does (see the coreos-lab-ignition dracut module).
KERNEL_CMDLINE: Final = (
    "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet ignition.firstboot ignition.platform.id=qemu rd.neednet=0"
)


def packages() -> tuple[str, ...]:
    """Every package debootstrap installs, in recipe order."""
    return PACKAGES + EXTRA_PACKAGES


def files_dir() -> Path:
    """The directory of files copied verbatim into the image (``files/`` next to this module)."""
    return Path(str(resources.files("coreos_lab.box") / "files"))


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:16]


def rootfs_key() -> str:
    """Cache key of the debootstrap stage: suite, variant and package lists only."""
    return _digest(
        [SUITE.encode(), VARIANT.encode(), "\n".join(packages()).encode(), "\n".join(LATE_PACKAGES).encode()]
    )


def box_key() -> str:
    """Cache key of the finished box: the rootfs key plus every shipped file, the agent and the build steps."""
    parts = [
        rootfs_key().encode(),
        BOX_VERSION.encode(),
        KERNEL_CMDLINE.encode(),
        " ".join(INITRAMFS_MODULES).encode(),
        " ".join(IGNITION_INITRAMFS_DRIVERS).encode(),
        " ".join(DRACUT_MODULES).encode(),
    ]
    here = Path(__file__).parent
    for name in (
        "agent.py",
        "build.py",
        "registry.py",
        "etcd_image.py",
        "vagrant/Vagrantfile",
        "vagrant/configure_networks.rb",
    ):
        parts.append((here / name).read_bytes() if (here / name).exists() else b"")
    root = files_dir()
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
            parts.append(str(path.relative_to(root)).encode())
            parts.append(os.readlink(path).encode() if path.is_symlink() else path.read_bytes())
    return _digest(parts)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/coreos-lab`` (default ``~/.cache/coreos-lab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coreos-lab"
