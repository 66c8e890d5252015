"""Build (once) and cache the Debian 12 rootfs the nspawn nodes boot from.

The rootfs lives in ``~/.cache/coreos-lab/nspawn-rootfs/<recipe-hash>/rootfs`` next to the SSH key pair
the rig logs in with. It is rebuilt only when the recipe below changes (its hash names the directory), and
a build happens in a temporary directory renamed into place, so a half-built tree is never used.

Run it ahead of the tests (it takes minutes) with ``python -m tests.nspawn.rootfs``.

What the recipe does, and why:
- debootstrap bookworm (minbase + the packages nodes need); no mirror argument, so debootstrap uses its own
  default and no mirror host is written in this repository;
- user ``core`` with passwordless sudo and the rig's public key (what Vagrant nodes look like);
- Debian's etcd unit stays enabled but gets a drop-in making it wait for the rig's per-node configuration
  (``ConditionPathExists=/etc/coreos-lab/etcd.env``): without it etcd would start as a single-node cluster
  of its own and could never join the 3-member one;
- systemd-networkd enabled, so the per-node ``.network`` file the rig binds in sets the address at boot;
- an empty /etc/machine-id, so each container boots with its own id (etcd and journald like unique ids).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "etcd-server",
    "etcd-client",
    "sudo",
    "iproute2",
    "procps",
    # the fault lab (coreos_lab/fault.py): iptables for partitions, nft for its nftables backend, tc (iproute2)
    "iptables",
    "nftables",
)
# No python3, as on Flatcar: a node command of ours that silently needs Python fails here too.

# Runs inside the new tree with chroot; keep it idempotent and free of network access.
CONFIGURE = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
id core >/dev/null 2>&1 || useradd --create-home --shell /bin/bash core
printf 'core ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/core
chmod 0440 /etc/sudoers.d/core
install -d -m 0700 -o core -g core /home/core/.ssh
install -m 0600 -o core -g core /tmp/lab_key.pub /home/core/.ssh/authorized_keys
rm -f /tmp/lab_key.pub
mkdir -p /etc/systemd/system/etcd.service.d /etc/coreos-lab
cat > /etc/systemd/system/etcd.service.d/10-coreos-lab.conf <<'UNIT'
[Unit]
ConditionPathExists=/etc/coreos-lab/etcd.env
After=network-online.target
[Service]
EnvironmentFile=/etc/coreos-lab/etcd.env
Restart=on-failure
RestartSec=1
UNIT
systemctl enable etcd.service systemd-networkd.service ssh.service
# timers that would only burn CPU in a short-lived test node
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer dpkg-db-backup.timer
# the hostname comes from nspawn --hostname (the debootstrap copied the build host's name)
rm -f /etc/hostname
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
# sshd: no reverse DNS lookups (there is no resolver in the test network namespace)
printf 'UseDNS no\n' > /etc/ssh/sshd_config.d/10-coreos-lab.conf
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
"""

RECIPE_VERSION = "1"


def base_hash() -> str:
    """Hash of the slow stage (debootstrap): only the suite and the package list."""
    return hashlib.sha256(f"{SUITE}\n{','.join(PACKAGES)}".encode()).hexdigest()[:16]


def recipe_hash() -> str:
    """Hash of everything that shapes the rootfs: a change to the recipe means a new build."""
    text = "\n".join([RECIPE_VERSION, base_hash(), CONFIGURE])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coreos-lab" / "nspawn-rootfs"


def build_dir() -> Path:
    """The directory of the current recipe: ``rootfs/``, ``id_ed25519`` (+ ``.pub``), ``ssh_host_ed25519_key.pub``."""
    return cache_root() / recipe_hash()


def is_built() -> bool:
    return (build_dir() / "ok").exists()


def _run(argv: list[str], log: Path) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=3600)


def _ensure_base(root: Path, log: Path, verbose: bool) -> Path:
    """The debootstrapped tree (minutes to build), kept apart so recipe tweaks only redo the fast stage."""
    base = root / f"base-{base_hash()}"
    if (base / "ok").exists():
        return base
    tmp = root / f"base-{base_hash()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    start = time.monotonic()
    if verbose:
        print(f"debootstrap {SUITE} into {tmp} (log: {log})", file=sys.stderr)
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(tmp / "rootfs")], log)
    (tmp / "build-seconds").write_text(f"{time.monotonic() - start:.1f}\n")
    (tmp / "ok").write_text(base_hash() + "\n")
    if base.exists():
        shutil.rmtree(base)
    tmp.rename(base)
    return base


def _age(path: Path) -> float:
    try:
        return time.time() - max((path / "ok").stat().st_mtime, path.stat().st_mtime)
    except OSError:
        return 0.0


def ensure_rootfs(*, verbose: bool = False) -> Path:
    """Return the build directory, building the rootfs first if this recipe has none yet.

    Concurrent callers wait on a lock file instead of building twice.
    """
    final = build_dir()
    if (final / "ok").exists():
        with contextlib.suppress(OSError):
            (final / "ok").touch()  # "last used", for pruning
        return final
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "ok").exists():
            return final
        log = root / "build.log"
        start = time.monotonic()
        base = _ensure_base(root, log, verbose)
        tmp = root / f"{recipe_hash()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _run(["cp", "-a", "--reflink=auto", str(base / "rootfs"), str(tmp / "rootfs")], log)
        key = tmp / "id_ed25519"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "coreos-lab-rig", "-f", str(key)], log)
        rootfs = tmp / "rootfs"
        shutil.copy(tmp / "id_ed25519.pub", rootfs / "tmp" / "lab_key.pub")
        _run(["chroot", str(rootfs), "/bin/sh", "-c", CONFIGURE], log)
        shutil.copy(rootfs / "etc/ssh/ssh_host_ed25519_key.pub", tmp / "ssh_host_ed25519_key.pub")
        (tmp / "build-seconds").write_text(f"{time.monotonic() - start:.1f}\n")
        (tmp / "ok").write_text(recipe_hash() + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        # Older recipes' trees are dead weight (hundreds of MB each), but a rig started by another test
        # run may still boot from one: only trees unused for a day go.
        for old in root.iterdir():
            if old.is_dir() and old.name not in (final.name, base.name) and _age(old) > 86400:
                with contextlib.suppress(OSError):
                    shutil.rmtree(old)
        if verbose:
            print(f"built in {time.monotonic() - start:.0f}s", file=sys.stderr)
        return final


if __name__ == "__main__":
    print(ensure_rootfs(verbose=True))
