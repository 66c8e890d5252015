"""An offline ``busybox`` image for the lab box, written straight into a Docker registry's storage directory.

Nodes have no internet, yet the seed's ``myapp.service`` runs ``docker pull busybox``. The box therefore runs
Debian's ``docker-registry`` on 127.0.0.1:5000 as the daemon's registry mirror, and this module fills that
registry's filesystem storage at box-build time with ``library/busybox:latest`` made from Debian's
``busybox-static``: one gzipped tar layer (``/bin/busybox`` plus applet symlinks, ``/bin/sh`` among them),
a Docker image config and a schema2 manifest, every one addressed by its sha256.

Layout (distribution's filesystem driver, below ``rootdirectory``)::

    docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data             every blob: layer, config, manifest
    docker/registry/v2/repositories/<repo>/_layers/sha256/<hex>/link  layer and config links
    docker/registry/v2/repositories/<repo>/_manifests/revisions/sha256/<hex>/link
    docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link
    docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link

A link file holds ``sha256:<hex>`` and nothing else. Everything is byte-for-byte reproducible (fixed mtimes,
owners and gzip header), so the box's cache key and the image digest only change when busybox does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coreos_lab.errors import BoxError

MANIFEST_TYPE: Final = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE: Final = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
REPOSITORY: Final = "library/busybox"
TAG: Final = "latest"
# Applets linked when the binary cannot be asked for its list (cross builds, tests with a stand-in file).
FALLBACK_APPLETS: Final = ("sh", "echo", "sleep", "cat", "ls", "true", "false", "env", "ps", "date")
# 2000-01-01T00:00:00Z: a fixed timestamp keeps the layer and config reproducible.
EPOCH: Final = 946684800


@dataclass(frozen=True, slots=True)
class Image:
    """A single-layer image: the three blobs and the digests that tie them together."""

    layer: bytes  # gzipped tar
    diff_id: str  # sha256 of the uncompressed tar
    config: bytes
    manifest: bytes

    @property
    def layer_digest(self) -> str:
        """``sha256:<hex>`` of the compressed layer blob."""
        return digest(self.layer)

    @property
    def config_digest(self) -> str:
        """``sha256:<hex>`` of the image config blob."""
        return digest(self.config)

    @property
    def manifest_digest(self) -> str:
        """``sha256:<hex>`` of the manifest: what ``docker pull`` reports as the image digest."""
        return digest(self.manifest)


def digest(data: bytes) -> str:
    """The content address of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def applets(busybox: Path) -> tuple[str, ...]:
    """The applets ``busybox --list`` names (always including ``sh``), or a small fallback set."""
    try:
        proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return FALLBACK_APPLETS
    names = {n for n in proc.stdout.split() if n and "/" not in n and n != "busybox"}
    if proc.returncode != 0 or not names:
        return FALLBACK_APPLETS
    return tuple(sorted(names | {"sh"}))


def layer_tar(busybox_bytes: bytes, names: tuple[str, ...]) -> bytes:
    """An uncompressed, reproducible tar: ``bin/busybox`` and ``bin/<applet>`` symlinks to it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        for directory in ("bin", "etc", "tmp", "root"):
            tar.addfile(entry(directory, tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755))
        binary = entry("bin/busybox", tarfile.REGTYPE, 0o755)
        binary.size = len(busybox_bytes)
        tar.addfile(binary, io.BytesIO(busybox_bytes))
        for name in sorted(set(names) - {"busybox"}):
            link = entry(f"bin/{name}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def make_image(busybox: Path, names: tuple[str, ...] | None = None) -> Image:
    """Build the busybox image from the static binary at ``busybox``."""
    try:
        data = busybox.read_bytes()
    except OSError as exc:
        raise BoxError(f"cannot read the busybox binary {busybox}: {exc.strerror}") from None
    raw = layer_tar(data, names if names is not None else applets(busybox))
    layer = gzip.compress(raw, compresslevel=9, mtime=0)
    diff_id = digest(raw)
    created = "2000-01-01T00:00:00Z"
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "coreos-lab: Debian busybox-static"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": LAYER_TYPE, "size": len(layer), "digest": digest(layer)}],
        }
    )
    return Image(layer=layer, diff_id=diff_id, config=config, manifest=manifest)


def write_storage(root: Path, image: Image, *, repository: str = REPOSITORY, tag: str = TAG) -> list[Path]:
    """Write ``image`` as ``repository:tag`` into the registry storage below ``root``; return the files written."""
    v2 = root / "docker" / "registry" / "v2"
    repo = v2 / "repositories" / repository
    written: list[Path] = []

    def put(path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)

    for blob in (image.layer, image.config, image.manifest):
        hexd = digest(blob).split(":", 1)[1]
        put(v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data", blob)
    for d in (image.layer_digest, image.config_digest):
        put(repo / "_layers" / "sha256" / d.split(":", 1)[1] / "link", d.encode())
    m = image.manifest_digest
    mhex = m.split(":", 1)[1]
    put(repo / "_manifests" / "revisions" / "sha256" / mhex / "link", m.encode())
    put(repo / "_manifests" / "tags" / tag / "current" / "link", m.encode())
    put(repo / "_manifests" / "tags" / tag / "index" / "sha256" / mhex / "link", m.encode())
    (repo / "_uploads").mkdir(mode=0o755, parents=True, exist_ok=True)
    return written


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
