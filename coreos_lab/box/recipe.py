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
DISK_GB: Final = 10
KERNEL_CMDLINE: Final = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"


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
    """Cache key of the debootstrap stage: suite, variant and package list only."""
    return _digest([SUITE.encode(), VARIANT.encode(), "\n".join(packages()).encode()])


def box_key() -> str:
    """Cache key of the finished box: the rootfs key plus every shipped file, the agent and the build steps."""
    parts = [rootfs_key().encode(), BOX_VERSION.encode(), KERNEL_CMDLINE.encode(), " ".join(INITRAMFS_MODULES).encode()]
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
