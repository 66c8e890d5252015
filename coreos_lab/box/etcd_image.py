"""etcd as a Docker image for the lab box, so ``etcd-member.service`` runs etcd in a container as Flatcar does.

Flatcar's etcd-member.service runs ``/usr/lib/flatcar/etcd-wrapper``, which ``docker run``s
``quay.io/coreos/etcd:<tag>`` with ``--entrypoint /usr/local/bin/etcd``. Nodes have no internet, so the box
makes that image at build time from Debian's etcd (``etcd-server``, ``/usr/bin/etcd`` in the box's rootfs) and
ships it as a ``docker load`` archive at :data:`ARCHIVE`; ``coreos-lab-etcd-image.service`` loads it into
Docker's store before etcd-member first starts.

The image has one layer: ``usr/local/bin/etcd`` (and ``etcdctl`` when the tree has it), the dynamic loader
and the libraries the binaries need, copied from the tree (symlinks resolved inside the tree, never on the
build host), ``/tmp``, ``/var/lib/etcd``, ``/etc/ssl/certs`` and a minimal ``/etc/passwd``/``/etc/group``
naming the tree's etcd user. The archive is the classic docker-archive format (``manifest.json``, the config
``<hex>.json``, ``<hex>/layer.tar`` uncompressed, ``repositories``) that Debian 12's docker.io 20.10 loads.
Everything is byte-for-byte reproducible (fixed mtimes and owners), so the same rootfs gives the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import struct
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from coreos_lab.box.registry import EPOCH, _json, digest
from coreos_lab.errors import BoxError, UnitFileError
from coreos_lab.unitfile import UnitFile

IMAGE_URL: Final = "quay.io/coreos/etcd"  # ETCD_IMAGE_URL in Flatcar's etcd-member.service
PACKAGE: Final = "etcd-server"  # the Debian package whose /usr/bin/etcd becomes the image
# Debian 12's etcd-server (3.4.23-4+b4) as an image tag. The shipped units name it; add_etcd_image checks them
# against the tag it derives from the tree's dpkg status, so a newer etcd-server fails the build loudly.
TAG: Final = "v3.4.23"
ARCHIVE: Final = "usr/share/coreos-lab/images/etcd.tar"
HOST_ETCD: Final = "usr/bin/etcd"
HOST_ETCDCTL: Final = "usr/bin/etcdctl"
# Where hide_host_etcd moves the host binary: Flatcar has only etcdctl on the host; etcd2.service runs this one.
HIDDEN_ETCD: Final = "usr/lib/coreos-lab/bin/etcd"
IMAGE_ETCD: Final = "usr/local/bin/etcd"
IMAGE_ETCDCTL: Final = "usr/local/bin/etcdctl"
UNIT: Final = "usr/lib/systemd/system/etcd-member.service"
LOAD_UNIT: Final = "usr/lib/systemd/system/coreos-lab-etcd-image.service"
# Shipped by files/ (copied 0644 by build._copy_files): these must be made 0755.
EXECUTABLES: Final = ("usr/lib/flatcar/etcd-wrapper", "usr/libexec/sdnotify-proxy")
# A binary that is not an ELF file (a test's stand-in) gets what Debian's dynamically linked etcd needs.
DEFAULT_INTERP: Final = "/lib64/ld-linux-x86-64.so.2"
DEFAULT_NEEDED: Final = ("libc.so.6",)
# Where DT_NEEDED libraries are looked up in the tree, and where the image keeps them (in ld.so's default path).
LIB_DIRS: Final = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")
IMAGE_LIB_DIR: Final = "lib/x86_64-linux-gnu"
PATH_ENV: Final = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CREATED: Final = "2000-01-01T00:00:00Z"  # registry.EPOCH as RFC 3339
# Directories of the layer beyond the parents of its files: (mode, owned by etcd).
DIRS: Final = {"tmp": (0o1777, False), "etc/ssl/certs": (0o755, False), "var/lib/etcd": (0o700, True)}
_MAX_SYMLINKS: Final = 40
_UPSTREAM: Final = re.compile(r"\d+\.\d+\.\d+")


@dataclass(frozen=True, slots=True)
class EtcdImage:
    """The etcd image written into a box tree."""

    reference: str  # quay.io/coreos/etcd:v3.4.23, what etcd-member.service runs
    tag: str
    archive: Path  # the docker-archive in the tree
    image_id: str  # sha256:<hex> of the config: the Id `docker image inspect` reports after loading


@dataclass(frozen=True, slots=True)
class LayerFile:
    """A regular file of the layer."""

    data: bytes
    mode: int = 0o644


# ---------------------------------------------------------------- reading the tree


def package_version(status: str, package: str = PACKAGE) -> str | None:
    """The version of ``package`` in dpkg's status file text, if it is installed."""
    for stanza in re.split(r"\n\s*\n", status):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (Description, Conffiles) carry nothing we read
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields.get("package") == package and fields.get("status", "").endswith(" installed"):
            return fields.get("version")
    return None


def image_tag(version: str) -> str:
    """The upstream image tag of a Debian version: ``3.4.23-4+b4`` and ``1:3.4.23-1`` -> ``v3.4.23``."""
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]  # no epoch, no Debian revision
    match = _UPSTREAM.match(upstream)
    if match is None:
        raise BoxError(f"cannot make an etcd image tag from the Debian version {version!r}")
    return "v" + match.group(0)


def user_ids(passwd: str, user: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of ``user`` in passwd(5) text."""
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == user:
            try:
                return int(fields[2]), int(fields[3])
            except ValueError:
                return None
    return None


def tree_path(tree: Path, path: str) -> Path:
    """``path`` (absolute or relative to the tree's root) with every symlink resolved inside ``tree``.

    Absolute link targets are taken relative to the tree's root and ``..`` stops there, as a chroot would
    see it: ``/lib64 -> usr/lib64`` and ``ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...`` never reach
    the build host's files.
    """
    pending = [p for p in PurePosixPath(path).parts if p != "/"]
    pending.reverse()
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = tree.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise BoxError(f"too many levels of symbolic links below {tree} resolving /{path.lstrip('/')}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in PurePosixPath(target).parts if p != "/"]))
    return tree.joinpath(*resolved)


def elf_needs(data: bytes) -> tuple[str | None, tuple[str, ...]] | None:
    """``(PT_INTERP, DT_NEEDED names)`` of a little-endian ELF64 file; None when ``data`` is not one.

    A static binary gives ``(None, ())``.
    """
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        return None
    try:
        (phoff,) = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz) of every program header
        segments = [struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
        interp: str | None = None
        needed: list[int] = []
        strtab: int | None = None
        for p_type, _flags, offset, _vaddr, _paddr, filesz in segments:
            if p_type == 3:  # PT_INTERP
                interp = data[offset : offset + filesz].split(b"\0", 1)[0].decode()
            elif p_type == 2:  # PT_DYNAMIC: (d_tag, d_val) pairs up to DT_NULL
                for pos in range(offset, offset + filesz - 15, 16):
                    tag, value = struct.unpack_from("<qQ", data, pos)
                    if tag == 0:  # DT_NULL
                        break
                    if tag == 1:  # DT_NEEDED: an offset into the string table
                        needed.append(value)
                    elif tag == 5:  # DT_STRTAB: a virtual address
                        strtab = value
        if not needed:
            return interp, ()
        if strtab is None:
            raise ValueError("DT_NEEDED without DT_STRTAB")
        # the file offset of the string table, through the PT_LOAD segment that maps it
        loads = [(off, vaddr, size) for t, _f, off, vaddr, _p, size in segments if t == 1]
        base = next((off + strtab - vaddr for off, vaddr, size in loads if vaddr <= strtab < vaddr + size), None)
        if base is None:
            raise ValueError("DT_STRTAB outside every PT_LOAD segment")
        names = tuple(data[base + n : data.index(b"\0", base + n)].decode() for n in needed)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise BoxError(f"cannot read the ELF headers of a binary for the etcd image: {exc}") from None
    return interp, names


def _read(tree: Path, path: str, what: str) -> bytes:
    real = tree_path(tree, path)
    try:
        return real.read_bytes()
    except OSError as exc:
        raise BoxError(f"the box tree has no readable {what} /{path.lstrip('/')}: {exc.strerror}") from None


def runtime_files(tree: Path, binaries: Iterable[bytes]) -> dict[str, LayerFile]:
    """The loader and libraries ``binaries`` need, read from ``tree``, keyed by their path in the image.

    The loader keeps its PT_INTERP path (``lib64/ld-linux-x86-64.so.2``); libraries go to
    :data:`IMAGE_LIB_DIR`, which glibc's loader searches without an ``ld.so.cache``.
    """
    out: dict[str, LayerFile] = {}
    loaders: set[str] = set()
    queue: list[bytes] = list(binaries)
    seen: set[str] = set()
    while queue:
        needs = elf_needs(queue.pop(0))
        interp, names = needs if needs is not None else (DEFAULT_INTERP, DEFAULT_NEEDED)
        if interp and interp.lstrip("/") not in out:
            out[interp.lstrip("/")] = LayerFile(_read(tree, interp, "dynamic loader"), 0o755)
            loaders.add(PurePosixPath(interp).name)
        for name in names:
            if name in seen or name in loaders:
                continue
            seen.add(name)
            found = next((p for d in LIB_DIRS if (p := tree_path(tree, f"{d}/{name}")).is_file()), None)
            if found is None:
                raise BoxError(f"the box tree has no {name} (needed by etcd) in {', '.join(LIB_DIRS)}")
            data = found.read_bytes()
            out[f"{IMAGE_LIB_DIR}/{name}"] = LayerFile(data, 0o755)
            queue.append(data)
    return out


# ---------------------------------------------------------------- making the image


def layer_tar(files: Mapping[str, LayerFile], uid: int, gid: int) -> bytes:
    """An uncompressed, reproducible layer tar: ``files``, their parent directories and :data:`DIRS`.

    Everything belongs to root except ``var/lib/etcd`` (``uid:gid``, the etcd user).
    """
    dirs: dict[str, tuple[int, bool]] = {}
    for path in [*files, *DIRS]:
        parents = PurePosixPath(path).parents
        for parent in parents:
            if str(parent) != ".":
                dirs.setdefault(str(parent), (0o755, False))
    dirs.update(DIRS)
    entries = sorted([*dirs, *files])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in entries:
            if name in files:
                info = _entry(name, tarfile.REGTYPE, files[name].mode)
                info.size = len(files[name].data)
                tar.addfile(info, io.BytesIO(files[name].data))
                continue
            mode, etcd_owned = dirs[name]
            tar.addfile(_entry(name, tarfile.DIRTYPE, mode, (uid, gid) if etcd_owned else (0, 0)))
    return buf.getvalue()


def image_config(diff_id: str) -> bytes:
    """The image config: amd64/linux, one layer, Entrypoint ``/usr/local/bin/etcd`` as quay's image has."""
    return _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": {"Entrypoint": ["/" + IMAGE_ETCD], "Env": [PATH_ENV]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": CREATED, "created_by": f"coreos-lab: Debian {PACKAGE}"}],
        }
    )


def docker_archive(layer: bytes, reference: str) -> tuple[bytes, str]:
    """A ``docker load`` archive of the single-layer image ``reference``; returns it and the image id."""
    diff_id = digest(layer)
    layer_dir = diff_id.split(":", 1)[1]
    config = image_config(diff_id)
    image_id = digest(config)
    repo, _, tag = reference.rpartition(":")
    members = [
        (layer_dir, None),
        (f"{layer_dir}/layer.tar", layer),
        (image_id.split(":", 1)[1] + ".json", config),
        (
            "manifest.json",
            _json(
                [
                    {
                        "Config": image_id.split(":", 1)[1] + ".json",
                        "RepoTags": [reference],
                        "Layers": [f"{layer_dir}/layer.tar"],
                    }
                ]
            ),
        ),
        ("repositories", _json({repo: {tag: layer_dir}})),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            if data is None:
                tar.addfile(_entry(name, tarfile.DIRTYPE, 0o755))
                continue
            info = _entry(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), image_id


def etcd_layer(tree: Path) -> tuple[bytes, str]:
    """The layer tar made from ``tree`` and the image tag of the tree's etcd-server."""
    status = _read(tree, "var/lib/dpkg/status", "dpkg status file").decode("utf-8", "replace")
    version = package_version(status)
    if version is None:
        raise BoxError(f"the box tree's dpkg status has no installed {PACKAGE} (is it in the recipe?)")
    tag = image_tag(version)
    etcd = tree_path(tree, HOST_ETCD)
    if not etcd.is_file():
        raise BoxError(f"the box tree has no etcd binary /{HOST_ETCD} to make the etcd image from")
    files = {IMAGE_ETCD: LayerFile(etcd.read_bytes(), 0o755)}
    etcdctl = tree_path(tree, HOST_ETCDCTL)
    if etcdctl.is_file():
        files[IMAGE_ETCDCTL] = LayerFile(etcdctl.read_bytes(), 0o755)
    files.update(runtime_files(tree, [f.data for f in files.values()]))
    ids = user_ids(_read(tree, "etc/passwd", "passwd file").decode("utf-8", "replace"), "etcd")
    if ids is None:
        raise BoxError(f"the box tree's /etc/passwd has no etcd user (made by {PACKAGE}'s postinst)")
    uid, gid = ids
    files["etc/passwd"] = LayerFile(
        f"root:x:0:0:root:/root:/sbin/nologin\netcd:x:{uid}:{gid}:etcd:/var/lib/etcd:/sbin/nologin\n".encode()
    )
    files["etc/group"] = LayerFile(f"root:x:0:\netcd:x:{gid}:\n".encode())
    files["etc/nsswitch.conf"] = LayerFile(b"hosts: files dns\n")
    return layer_tar(files, uid, gid), tag


def add_etcd_image(tree: Path) -> EtcdImage:
    """Write the etcd image archive into ``tree`` (a box rootfs) and check the shipped units name it.

    Run after ``_copy_files`` (the units are checked in the tree) and before :func:`hide_host_etcd`.
    """
    layer, tag = etcd_layer(tree)
    reference = f"{IMAGE_URL}:{tag}"
    archive, image_id = docker_archive(layer, reference)
    image = EtcdImage(reference=reference, tag=tag, archive=tree / ARCHIVE, image_id=image_id)
    check_units(tree, image)
    image.archive.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        image.archive.unlink()
    image.archive.write_bytes(archive)
    image.archive.chmod(0o644)
    return image


def unit_environment(text: str, name: str = "etcd-member.service") -> dict[str, str]:
    """The ``Environment=`` assignments of a unit's [Service] section, last one winning as in systemd."""
    env: dict[str, str] = {}
    for value in UnitFile.parse(text, name=name).get_all("Service", "Environment"):
        for word in shlex.split(value):
            key, sep, val = word.partition("=")
            if sep:
                env[key] = val
    return env


def check_units(tree: Path, image: EtcdImage) -> None:
    """Raise BoxError unless the tree's etcd-member.service and image loader unit name ``image``."""
    try:
        env = unit_environment(_read(tree, UNIT, "unit").decode())
    except UnitFileError as exc:
        raise BoxError(f"/{UNIT} does not parse: {exc}") from None
    shipped = env.get("ETCD_IMAGE_URL", "") + ":" + env.get("ETCD_IMAGE_TAG", "")
    loader = _read(tree, LOAD_UNIT, "unit").decode()
    if shipped != image.reference or image.reference not in loader:
        raise BoxError(
            f"the box's etcd image is {image.reference} but /{UNIT} runs {shipped} (or /{LOAD_UNIT} loads another)",
            hint=f"set ETCD_IMAGE_TAG={image.tag} in files/{UNIT} and files/{LOAD_UNIT}, and etcd_image.TAG",
        )


def hide_host_etcd(tree: Path) -> Path:
    """Move the host's ``/usr/bin/etcd`` to :data:`HIDDEN_ETCD` (after :func:`add_etcd_image`); return it.

    Flatcar has no etcd binary on the host; etcd2.service (the CoreOS Container Linux dialect) runs the moved one.
    """
    source, target = tree / HOST_ETCD, tree / HIDDEN_ETCD
    if not source.exists() and not source.is_symlink():
        if target.is_file():
            return target  # moved already
        raise BoxError(f"the box tree has no etcd binary /{HOST_ETCD} to move to /{HIDDEN_ETCD}")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.replace(source, target)
    return target


def _entry(name: str, kind: bytes, mode: int, owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, EPOCH
    info.uid, info.gid = owner
    info.uname = info.gname = "root" if owner == (0, 0) else "etcd"
    return info
