"""Build the offline lab box: debootstrap -> customised rootfs -> ext4 -> qcow2 -> ``coreos-lab-<version>.box``.

Two cached stages under ``~/.cache/coreos-lab/``: ``rootfs-<rootfs_key>/`` (debootstrap, the slow network
part) and ``boxes/<box_key>/coreos-lab-<version>.box`` (+ ``.sha256``). Each is rebuilt only when its part
of the recipe (``recipe.py``, ``files/``, ``agent.py``, this module) changes. Needs root (debootstrap,
chroot, file ownership) and says so before doing anything.

The box boots with nothing but itself: the kernel and initrd ride inside the box and its Vagrantfile points
vagrant-libvirt at them through ``__dir__``; the disk is a bare ext4 filesystem on ``/dev/vda``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coreos_lab.box import etcd_image, recipe, registry
from coreos_lab.errors import BoxError

StepFn = Callable[[str], None]

REQUIRED_TOOLS: Final = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mkfs.ext4": "e2fsprogs",
    "qemu-img": "qemu-utils",
}
VAGRANT_KEY_GLOBS: Final = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/usr/share/vagrant/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant.pub",
)
BOX_INFO: Final = "coreos-lab-box.json"
_CHROOT_ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}  # _run adds DEBIAN_FRONTEND
# The box's own Vagrantfile and the Ruby it requires, packed at the top of the box (sources in vagrant/).
BOX_VAGRANT_FILES: Final = ("Vagrantfile", "configure_networks.rb")
# Units the image enables; etcd-member / etcd2 stay disabled until cloud-config says otherwise.
ENABLE_UNITS: Final = (
    "systemd-networkd.service",
    "ssh.service",
    "coreos-lab-ssh-hostkeys.service",
    "coreos-cloudinit-vagrant-user.path",
    "coreos-cloudinit-vagrant-legacy.path",
    "coreos-lab-readonly-usr.service",
    "coreos-lab-first-boot-done.service",
)
# Flatcar has no python3: the twin's own tools (the cloud-config agent, sdnotify-proxy) keep a private
# interpreter here, off PATH, so a command of ours that silently needs Python on a node fails in our tests too.
PRIVATE_PYTHON: Final = "/usr/lib/coreos-lab/bin/python3"
# Flatcar's /etc/os-release says ID=flatcar, ID_LIKE=coreos: Vagrant then drives the node through its CoreOS
# guest (hostname and networks as cloud-config through system-cloudinit@.service), as it drives Flatcar.
OS_RELEASE: Final = """\
NAME="Flatcar Container Linux by Kinvolk"
ID=flatcar
ID_LIKE=coreos
VERSION_ID=0.0.0
PRETTY_NAME="coreos-lab twin of Flatcar Container Linux (Debian 12)"
VARIANT="coreos-lab twin"
VARIANT_ID=coreos-lab
HOME_URL="https://flatcar.org/"
"""


@dataclass(frozen=True, slots=True)
class BuiltBox:
    """A finished box file and what it is."""

    path: Path
    sha256: str
    key: str
    version: str
    size: int
    cached: bool
    seconds: float


def check_prerequisites() -> None:
    """Raise BoxError naming what is missing: root, debootstrap, mkfs.ext4, qemu-img, Vagrant's public key."""
    if os.geteuid() != 0:
        raise BoxError(
            "building the lab box needs root (debootstrap, chroot, file ownership)",
            hint="run it with sudo",
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise BoxError(
            f"building the lab box needs {', '.join(missing)}",
            hint=f"apt-get install {' '.join(missing)}",
        )
    vagrant_public_key()


def vagrant_public_key() -> str:
    """Vagrant's insecure public key as shipped by the installed vagrant (Debian or upstream package)."""
    for pattern in VAGRANT_KEY_GLOBS:
        for path in sorted(glob.glob(pattern), reverse=True):
            text = Path(path).read_text(encoding="utf-8").strip()
            if text.startswith("ssh-"):
                return text
    raise BoxError("cannot find Vagrant's insecure public key (keys/vagrant.pub)", hint="install vagrant")


def box_path(key: str | None = None) -> Path:
    """Where the box for ``key`` (default: the current recipe) is cached."""
    key = key or recipe.box_key()
    return recipe.cache_dir() / "boxes" / key / f"coreos-lab-{recipe.BOX_VERSION}.box"


def build(*, force: bool = False, on_step: StepFn | None = None) -> BuiltBox:
    """Build (or reuse) the box for the current recipe and return it."""
    say = on_step or (lambda _msg: None)
    start = time.monotonic()
    key = recipe.box_key()
    out = box_path(key)
    sha_file = out.with_name(out.name + ".sha256")
    if out.exists() and sha_file.exists() and not force:
        digest = sha_file.read_text(encoding="utf-8").split()[0]
        return BuiltBox(out, digest, key, recipe.BOX_VERSION, out.stat().st_size, True, time.monotonic() - start)
    check_prerequisites()
    rootfs = ensure_rootfs(force=force, on_step=say)
    work = out.parent.with_name(out.parent.name + ".work")
    if work.exists():
        _rmtree(work)
    work.mkdir(parents=True)
    try:
        tree = work / "rootfs"
        say("copying the rootfs")
        _run(["cp", "-a", "--reflink=auto", str(rootfs), str(tree)])
        say("customising the image (core user, units, networkd, initramfs)")
        customise(tree)
        say("extracting kernel and initrd")
        kernel, initrd, ignition_initrd = _kernel_files(tree)
        shutil.copy2(kernel, work / "vmlinuz")
        shutil.copy2(initrd, work / "initrd.img")
        shutil.copy2(ignition_initrd, work / recipe.IGNITION_INITRD)
        (work / recipe.IGNITION_INITRD).chmod(0o644)  # dracut writes 0600; libvirt's qemu may not run as root
        say(f"making a {recipe.DISK_GB} GB ext4 disk and converting it to qcow2")
        raw = work / "disk.raw"
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "coreos-lab-root",
                "-d",
                str(tree),
                str(raw),
                f"{recipe.DISK_GB}G",
            ]
        )
        _rmtree(tree)
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")])
        raw.unlink()
        write_box_metadata(work, key)
        say("packing the box")
        partial = work / out.name
        with tarfile.open(partial, "w") as tar:
            for name in (
                "metadata.json",
                *BOX_VAGRANT_FILES,
                BOX_INFO,
                "vmlinuz",
                "initrd.img",
                recipe.IGNITION_INITRD,
                "box.img",
            ):
                tar.add(work / name, arcname=name)
        digest = _sha256(partial)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, out)
        sha_file.write_text(f"{digest}  {out.name}\n", encoding="utf-8")
    finally:
        _rmtree(work)
    prune_cache(keep_box=key, keep_rootfs=recipe.rootfs_key())
    return BuiltBox(out, digest, key, recipe.BOX_VERSION, out.stat().st_size, False, time.monotonic() - start)


def prune_cache(*, keep_box: str, keep_rootfs: str) -> list[Path]:
    """Remove boxes and rootfs trees of older recipes (each is ~0.8-1 GB); return what was removed."""
    cache = recipe.cache_dir()
    stale = [d for d in (cache / "boxes").glob("*") if d.is_dir() and d.name != keep_box]
    stale += [d for d in cache.glob("rootfs-*") if d.is_dir() and d.name != f"rootfs-{keep_rootfs}"]
    for path in stale:
        _rmtree(path)
    return stale


def ensure_rootfs(*, force: bool = False, on_step: StepFn | None = None) -> Path:
    """debootstrap the recipe's rootfs into the cache, unless it is already there."""
    say = on_step or (lambda _msg: None)
    key = recipe.rootfs_key()
    target = recipe.cache_dir() / f"rootfs-{key}"
    if target.is_dir() and not force:
        return target
    partial = target.with_name(target.name + ".partial")
    for stale in (partial, target):
        if stale.exists():
            _rmtree(stale)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"debootstrap {recipe.SUITE} ({len(recipe.packages())} packages); this takes a few minutes")
    # No mirror argument: debootstrap's own default, never a hostname written into this repository.
    _run(
        [
            "debootstrap",
            f"--variant={recipe.VARIANT}",
            "--include=" + ",".join(recipe.packages()),
            recipe.SUITE,
            str(partial),
        ]
    )
    # Fetched now, with the network stage; installed only in the box's copy (see build_ignition_initramfs).
    say(f"apt-get --download-only {' '.join(recipe.LATE_PACKAGES)} (the Ignition initramfs)")
    with _mounted_proc(partial):
        _run(
            [
                "chroot",
                str(partial),
                "apt-get",
                "install",
                "-y",
                "--download-only",
                "--no-install-recommends",
                *recipe.LATE_PACKAGES,
            ],
            env=dict(_CHROOT_ENV),
        )
    os.replace(partial, target)
    return target


def customise(tree: Path) -> None:
    """Turn a debootstrapped tree into the lab image (runs as root on the build host)."""
    _copy_files(recipe.files_dir(), tree)
    for rel in etcd_image.EXECUTABLES:
        (tree / rel).chmod(0o755)
    hide_python(tree)
    net_tools_hostname(tree)
    agent = tree / "usr/bin/coreos-cloudinit"
    source = Path(__file__).with_name("agent.py").read_text(encoding="utf-8")
    body = source.partition("\n")[2]
    agent.write_text(f"#!{PRIVATE_PYTHON}\n{body}", encoding="utf-8")
    agent.chmod(0o755)
    flatcar_name = tree / "usr/bin/flatcar-cloudinit"
    with contextlib.suppress(FileNotFoundError):
        flatcar_name.unlink()
    flatcar_name.symlink_to("coreos-cloudinit")
    os_release = tree / "usr/lib/os-release"
    with contextlib.suppress(FileNotFoundError):
        os_release.unlink()
    os_release.write_text(OS_RELEASE, encoding="utf-8")
    (tree / "etc/initramfs-tools/modules").write_text("\n".join(recipe.INITRAMFS_MODULES) + "\n", encoding="utf-8")
    (tree / "etc/hostname").write_text("coreos-lab\n", encoding="utf-8")
    (tree / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n", encoding="utf-8")
    (tree / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n", encoding="utf-8")
    (tree / "etc/sudoers.d/core").chmod(0o440)
    for sub in ("var/lib/flatcar-vagrant", "var/lib/coreos-vagrant", "etc/coreos-lab"):
        (tree / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    with _mounted_proc(tree):
        _chroot(tree, ["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "core"])
        _chroot(tree, ["passwd", "--lock", "root"])
        _chroot(tree, ["update-initramfs", "-u", "-k", "all"])
        build_ignition_initramfs(tree)
        add_docker_image(tree)
    # etcd-member runs etcd in a container, as on Flatcar: the image is made from Debian's etcd, which then
    # leaves the host's PATH (Flatcar has only etcdctl there).
    image = etcd_image.add_etcd_image(tree)
    preload_docker_images(tree, [image.archive])
    etcd_image.hide_host_etcd(tree)
    ssh_dir = tree / "home/core/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(vagrant_public_key() + "\n", encoding="utf-8")
    (ssh_dir / "authorized_keys").chmod(0o600)
    _chroot(tree, ["chown", "-R", "core:core", "/home/core/.ssh"])
    # Debian enables etcd.service (single-node default, alias etcd2.service): disable and mask it so only
    # our etcd-member / etcd2 units run, and only once cloud-config has configured them.
    _run(["systemctl", f"--root={tree}", "disable", "etcd.service"])
    _run(["systemctl", f"--root={tree}", "mask", "etcd.service"])
    # Flatcar runs no AppArmor service. Debian's compiles its profiles at every boot before sysinit.target:
    # 13 s of a node's boot under TCG (measured on a qemu boot of the box). dockerd loads its own docker-default
    # profile with apparmor_parser by itself, so containers keep it.
    _run(["systemctl", f"--root={tree}", "mask", "apparmor.service"])
    _run(["systemctl", f"--root={tree}", "enable", *ENABLE_UNITS])
    # Per-node identity is made at first boot: no host keys, an empty machine-id, no etcd data.
    for key in tree.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    (tree / "etc/machine-id").write_text("", encoding="utf-8")
    dbus_id = tree / "var/lib/dbus/machine-id"
    with contextlib.suppress(FileNotFoundError):
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    etcd_dir = tree / "var/lib/etcd"
    for child in etcd_dir.iterdir() if etcd_dir.is_dir() else ():
        _rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for child in (tree / junk).glob("*"):
            if child.is_file():
                child.unlink()
    for log in (tree / "var/log").rglob("*"):
        if log.is_file():
            log.write_bytes(b"")


def hide_python(tree: Path) -> None:
    """Move the image's python3 to :data:`PRIVATE_PYTHON` and take every python command off PATH."""
    private = tree / PRIVATE_PYTHON.lstrip("/")
    private.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # usr/bin/python3 -> python3.11, the real binary; found by name so a newer suite's python3.X moves too.
    link = tree / "usr/bin/python3"
    real = link.parent / os.readlink(link) if link.is_symlink() else link
    if real.is_file() and not real.is_symlink():
        os.replace(real, private)
    if not private.is_file():
        raise BoxError("the rootfs has no python3 for the cloud-config agent (is python3-yaml in the recipe?)")
    for pattern in ("python3*", "pydoc3*", "py3*", "pygettext3*"):
        for path in tree.glob(f"usr/bin/{pattern}"):
            path.unlink()


def net_tools_hostname(tree: Path) -> None:
    """Debian's hostname moves off PATH; /usr/bin/hostname becomes files/usr/lib/coreos-lab/hostname."""
    debian = tree / "usr/bin/hostname"
    private = tree / "usr/lib/coreos-lab/bin/hostname"
    private.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if debian.is_file() and not private.exists():
        os.replace(debian, private)
    if not private.is_file():
        raise BoxError("the rootfs has no hostname command (package hostname)")
    shutil.copyfile(tree / "usr/lib/coreos-lab/hostname", debian)
    debian.chmod(0o755)


def box_vagrant_files() -> dict[str, str]:
    """The box's own Vagrantfile and what it requires (``vagrant/`` next to this module), ready to pack."""
    here = Path(__file__).with_name("vagrant")
    files = {name: (here / name).read_text(encoding="utf-8") for name in BOX_VAGRANT_FILES}
    files["Vagrantfile"] = files["Vagrantfile"].replace("@CMDLINE@", recipe.KERNEL_CMDLINE)
    return files


def write_box_metadata(work: Path, key: str) -> None:
    """metadata.json (vagrant-libvirt v1 box), the box's own Vagrantfile, and coreos-lab's box info."""
    virtual_size = recipe.DISK_GB
    (work / "metadata.json").write_text(
        json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_size}) + "\n", encoding="utf-8"
    )
    for name, text in box_vagrant_files().items():
        (work / name).write_text(text, encoding="utf-8")
    info = {"name": recipe.BOX_NAME, "version": recipe.BOX_VERSION, "key": key, "packages": list(recipe.packages())}
    (work / BOX_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def added_box_key(vagrant_home: Path | None = None) -> str | None:
    """The recipe key of the box currently added as ``coreos-lab/lab`` (None when absent or foreign)."""
    home = vagrant_home or Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")
    escaped = recipe.BOX_NAME.replace("/", "-VAGRANTSLASH-")
    for info in sorted((home / "boxes" / escaped).glob(f"*/libvirt/{BOX_INFO}")):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(info.read_text(encoding="utf-8"))
            key = data.get("key")
            return key if isinstance(key, str) else None
    return None


def _copy_files(src: Path, tree: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        dest = tree / rel
        if path.is_dir():
            dest.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
        shutil.copyfile(path, dest)
        dest.chmod(0o644)


def _kernel_files(tree: Path) -> tuple[Path, Path, Path]:
    kernels = sorted(tree.glob("boot/vmlinuz-*"))
    if not kernels:
        raise BoxError("the rootfs has no kernel in /boot (is linux-image-amd64 in the recipe?)")
    kernel = kernels[-1]
    initrd = tree / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    if not initrd.exists():
        raise BoxError(f"the rootfs has no initrd for {kernel.name}")
    ignition = tree / "boot" / kernel.name.replace("vmlinuz-", f"{recipe.IGNITION_INITRD}-")
    if not ignition.exists():
        raise BoxError(f"the rootfs has no Ignition initrd for {kernel.name}")
    return kernel, initrd, ignition


def preload_docker_images(tree: Path, archives: Sequence[Path]) -> None:
    """``docker load`` each archive into the image's own Docker store, at build time.

    On a software-emulated node `docker load` of etcd's 40 MB image took 28 s alone and 113 s with three nodes
    booting on 2 cores; done here, the node's Docker has the image from its first start. The image's own
    dockerd runs in a chroot of the tree (bind-mounted onto itself: Docker's tar extraction remounts "/"), on a
    private socket, with no networking of its own; its runtime state is removed afterwards.
    """
    if not archives:
        return
    sock = "/run/coreos-lab-build/docker.sock"
    with _chroot_mounts(tree):
        (tree / "run/coreos-lab-build").mkdir(parents=True, exist_ok=True)
        log = (tree / "run/coreos-lab-build/dockerd.log").open("wb")
        dockerd = subprocess.Popen(
            ["chroot", str(tree), "/usr/sbin/dockerd", "--data-root=/var/lib/docker",
             "--exec-root=/run/coreos-lab-build/exec", "--pidfile=/run/coreos-lab-build/docker.pid",
             f"--host=unix://{sock}", "--bridge=none", "--iptables=false", "--ip-masq=false",
             "--storage-driver=overlay2"],
            stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(["chroot", str(tree), "docker", f"--host=unix://{sock}", "version"],
                                 capture_output=True, check=False).returncode != 0:  # fmt: skip
                if dockerd.poll() is not None or time.monotonic() > deadline:
                    tail = (tree / "run/coreos-lab-build/dockerd.log").read_text(errors="replace")[-400:]
                    raise BoxError(f"the image's dockerd did not start for the image preload: {tail.strip()}")
                time.sleep(0.5)
            for archive in archives:
                inside = "/" + str(archive.relative_to(tree))
                _chroot(tree, ["docker", f"--host=unix://{sock}", "load", "--quiet", "--input", inside])
        finally:
            dockerd.terminate()
            try:
                dockerd.wait(timeout=60)
            except subprocess.TimeoutExpired:
                dockerd.kill()
                dockerd.wait()
            log.close()
    # Runtime state of that daemon, not of the node's: the node's Docker makes its own networks and ids.
    for rel in ("var/lib/docker/network", "var/lib/docker/containers", "var/lib/docker/tmp", "var/lib/docker/runtimes",
                "var/lib/docker/engine-id"):  # fmt: skip
        target = tree / rel
        if target.is_dir():
            _rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def _chroot_mounts(tree: Path):  # type: ignore[no-untyped-def]
    """The tree as a mount point with /proc, /sys, /dev and a fresh /run, for a daemon run in a chroot of it.

    Everything mounted at or below the tree is unmounted afterwards, deepest first (dockerd adds mounts of its
    own below /var/lib/docker).
    """
    root = str(tree.resolve())
    _run(["mount", "--bind", root, root])
    try:
        _run(["mount", "--make-private", root])
        _run(["mount", "-t", "proc", "proc", f"{root}/proc"])
        _run(["mount", "--rbind", "/sys", f"{root}/sys"])
        _run(["mount", "--make-rslave", f"{root}/sys"])
        _run(["mount", "--rbind", "/dev", f"{root}/dev"])
        _run(["mount", "--make-rslave", f"{root}/dev"])
        _run(["mount", "-t", "tmpfs", "tmpfs", f"{root}/run"])
        yield
    finally:
        for point in _mounts_below(root):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _mounts_below(root: str) -> list[str]:
    """Mount points at or below ``root``, deepest first (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


@contextlib.contextmanager
def _mounted_proc(tree: Path):  # type: ignore[no-untyped-def]
    proc = tree / "proc"
    _run(["mount", "-t", "proc", "proc", str(proc)])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)


def build_ignition_initramfs(tree: Path) -> None:
    """The second initrd, ``/boot/initrd-ignition.img-<version>``: dracut with Debian's Ignition module and the
    box's first-boot module, for nodes handed an Ignition config (``/proc`` must be mounted in ``tree``).

    dracut replaces initramfs-tools when installed, so initramfs-tools' initrds (made just before) are kept aside
    and put back: both initrds ship in the box, and Vagrant picks one per node (the box's Vagrantfile).
    """
    kernels = sorted(tree.glob("boot/vmlinuz-*"))
    kept = {k: (tree / "boot" / k.name.replace("vmlinuz-", "initrd.img-")).read_bytes() for k in kernels}
    # The packages came with the rootfs (ensure_rootfs); nothing is fetched here.
    _chroot(tree, ["apt-get", "install", "-y", "--no-download", "--no-install-recommends", *recipe.LATE_PACKAGES])
    for kernel in kernels:
        version = kernel.name.removeprefix("vmlinuz-")
        _chroot(
            tree,
            [
                "dracut",
                "--force",
                "--no-hostonly",  # the build host is not the node
                "--no-hostonly-cmdline",
                "--drivers",
                " ".join(recipe.IGNITION_INITRAMFS_DRIVERS),
                "--modules",
                " ".join(recipe.DRACUT_MODULES),
                f"/boot/{recipe.IGNITION_INITRD}-{version}",
                version,
            ],
        )
        (tree / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")).write_bytes(kept[kernel])
    _chroot(tree, ["apt-get", "clean"])


def _chroot(tree: Path, argv: Sequence[str]) -> None:
    _run(["chroot", str(tree), *argv], env=dict(_CHROOT_ENV))


def _run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    full_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", **(env or {}))
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise BoxError(f"{' '.join(argv[:3])} failed (exit {proc.returncode}): {tail}")


def _rmtree(path: Path) -> None:
    # Never follow a mount left behind by an interrupted build into the host's /proc.
    proc = path / "proc"
    if os.path.ismount(proc):
        subprocess.run(["umount", "-l", str(proc)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


REGISTRY_ROOT: Final = "var/lib/docker-registry"  # rootdirectory in files/etc/docker/registry/config.yml


def add_docker_image(tree: Path) -> None:
    """Preload the node's registry mirror with busybox (from busybox-static) and let core use docker.

    Without it ``docker pull busybox`` fails on a node without internet; with internet the daemon still
    falls back from the mirror to Docker Hub for anything the mirror lacks.
    """
    busybox = tree / "bin/busybox"
    if not busybox.exists():
        return  # a recipe without docker (EXTRA_PACKAGES emptied): nothing to preload
    image = registry.make_image(busybox)
    store = tree / REGISTRY_ROOT
    if store.is_dir():
        _rmtree(store / "docker")
    registry.write_storage(store, image)
    _chroot(tree, ["chown", "-R", "docker-registry:docker-registry", "/" + REGISTRY_ROOT])
    _chroot(tree, ["usermod", "--append", "--groups", "docker", "core"])
    # Flatcar starts Docker on demand: docker.socket at boot, docker.service on its first client (etcd-member's
    # wrapper, a unit's `docker run`). Debian's packages enable the services themselves; the registry mirror
    # comes up with Docker (Wants= in docker.service.d/10-coreos-lab.conf). containerd stays enabled, as Flatcar
    # keeps it running from multi-user.target.
    _run(["systemctl", f"--root={tree}", "disable", "docker.service", "docker-registry.service"])
    _run(["systemctl", f"--root={tree}", "enable", "docker.socket"])
