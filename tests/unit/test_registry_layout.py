"""The offline busybox image and the registry storage layout it is written in (no registry, no VM)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from coreos_lab.box import registry
from coreos_lab.errors import BoxError

FAKE_BUSYBOX = b"\x7fELF not really busybox\n"


@pytest.fixture
def busybox(tmp_path: Path) -> Path:
    path = tmp_path / "busybox"
    path.write_bytes(FAKE_BUSYBOX)
    path.chmod(0o755)
    return path


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_image_digests_tie_together(busybox: Path) -> None:
    image = registry.make_image(busybox, ("sh", "sleep", "echo"))
    manifest = json.loads(image.manifest)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == registry.MANIFEST_TYPE
    assert manifest["config"] == {
        "mediaType": registry.CONFIG_TYPE,
        "size": len(image.config),
        "digest": sha(image.config),
    }
    assert manifest["layers"] == [
        {"mediaType": registry.LAYER_TYPE, "size": len(image.layer), "digest": sha(image.layer)}
    ]
    config = json.loads(image.config)
    assert config["os"] == "linux"
    assert config["architecture"] == "amd64"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha(gzip.decompress(image.layer))]}
    assert image.diff_id == config["rootfs"]["diff_ids"][0]
    assert image.manifest_digest == sha(image.manifest)


def test_layer_holds_busybox_and_applet_links(busybox: Path) -> None:
    image = registry.make_image(busybox, ("sh", "sleep", "echo", "busybox"))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(image.layer))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        binary = tar.extractfile("bin/busybox")
        assert binary is not None
        assert binary.read() == FAKE_BUSYBOX
    assert members["bin/busybox"].mode == 0o755
    assert members["bin/busybox"].uid == 0
    for applet in ("sh", "sleep", "echo"):
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"
    assert {"bin", "etc", "tmp"} <= set(members)
    assert not any(m.name.startswith("/") or ".." in m.name for m in members.values())


def test_image_is_reproducible(busybox: Path) -> None:
    first = registry.make_image(busybox, ("sh",))
    second = registry.make_image(busybox, ("sh",))
    assert first == second
    assert first.manifest_digest == second.manifest_digest
    busybox.write_bytes(FAKE_BUSYBOX + b"changed")
    assert registry.make_image(busybox, ("sh",)).manifest_digest != first.manifest_digest


def test_fallback_applets_when_the_binary_cannot_list(busybox: Path) -> None:
    # a stand-in that is no executable busybox: the fixed set, with sh, echo and sleep for the seed's unit
    assert {"sh", "echo", "sleep"} <= set(registry.applets(busybox))


def test_missing_binary_is_a_box_error(tmp_path: Path) -> None:
    with pytest.raises(BoxError, match="cannot read the busybox binary"):
        registry.make_image(tmp_path / "nope")


def test_storage_layout(busybox: Path, tmp_path: Path) -> None:
    image = registry.make_image(busybox, ("sh",))
    root = tmp_path / "store"
    written = registry.write_storage(root, image)
    v2 = root / "docker/registry/v2"
    repo = v2 / "repositories/library/busybox"
    for blob in (image.layer, image.config, image.manifest):
        hexd = hashlib.sha256(blob).hexdigest()
        assert (v2 / "blobs/sha256" / hexd[:2] / hexd / "data").read_bytes() == blob
    m = image.manifest_digest
    mhex = m.removeprefix("sha256:")
    assert (repo / "_manifests/tags/latest/current/link").read_bytes() == m.encode()
    assert (repo / "_manifests/tags/latest/index/sha256" / mhex / "link").read_bytes() == m.encode()
    assert (repo / "_manifests/revisions/sha256" / mhex / "link").read_bytes() == m.encode()
    links = sorted(p.read_text() for p in (repo / "_layers/sha256").glob("*/link"))
    assert links == sorted([image.layer_digest, image.config_digest])
    for link in (repo / "_layers/sha256").glob("*/link"):
        assert link.parent.name == link.read_text().removeprefix("sha256:")
    assert (repo / "_uploads").is_dir()
    assert sorted(written) == sorted(p for p in root.rglob("*") if p.is_file())
    assert len(written) == 8


def test_other_repository_and_tag(busybox: Path, tmp_path: Path) -> None:
    image = registry.make_image(busybox, ("sh",))
    registry.write_storage(tmp_path, image, repository="lab/tool", tag="v1")
    link = tmp_path / "docker/registry/v2/repositories/lab/tool/_manifests/tags/v1/current/link"
    assert link.read_text() == image.manifest_digest
