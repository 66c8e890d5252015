"""Debian's docker-registry serves the box's preloaded busybox image exactly as ``docker pull`` asks for it.

The registry binary runs on a free 127.0.0.1 port against a storage directory written by
``coreos_lab.box.registry``; the test walks the Registry v2 pull protocol (the daemon's requests to a
mirror) and checks every digest, so a layout mistake shows here instead of in a VM.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from coreos_lab.box import registry
from tests.conftest import require_binary
from tests.integration.etcd_rig import free_port

pytestmark = pytest.mark.integration

ACCEPT = ", ".join(
    [
        registry.MANIFEST_TYPE,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, registry.Image]]:
    binary = require_binary("docker-registry")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF stand-in for busybox-static\n" * 64)
    image = registry.make_image(busybox, ("sh", "echo", "sleep"))
    store = tmp_path / "store"
    registry.write_storage(store, image)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {store}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/v2/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            assert time.monotonic() < deadline, "docker-registry did not answer within 30s"
            time.sleep(0.2)
        yield url, image
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_pull_protocol_serves_the_image(served: tuple[str, registry.Image]) -> None:
    url, image = served
    repo = f"{url}/v2/library/busybox"
    resp = requests.get(f"{repo}/manifests/latest", headers={"Accept": ACCEPT}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == registry.MANIFEST_TYPE
    assert resp.headers["Docker-Content-Digest"] == image.manifest_digest
    assert resp.content == image.manifest
    assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == image.manifest_digest
    manifest = json.loads(resp.content)
    # by digest, as the daemon asks after resolving the tag
    by_digest = requests.get(f"{repo}/manifests/{image.manifest_digest}", headers={"Accept": ACCEPT}, timeout=10)
    assert by_digest.status_code == 200
    assert by_digest.content == image.manifest
    config = requests.get(f"{repo}/blobs/{manifest['config']['digest']}", timeout=10)
    assert config.status_code == 200
    assert "sha256:" + hashlib.sha256(config.content).hexdigest() == manifest["config"]["digest"]
    assert len(config.content) == manifest["config"]["size"]
    (layer_ref,) = manifest["layers"]
    layer = requests.get(f"{repo}/blobs/{layer_ref['digest']}", timeout=10)
    assert layer.status_code == 200
    assert "sha256:" + hashlib.sha256(layer.content).hexdigest() == layer_ref["digest"]
    assert len(layer.content) == layer_ref["size"]
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer.content)).hexdigest()
    assert json.loads(config.content)["rootfs"]["diff_ids"] == [diff_id]


def test_catalog_tags_and_unknown_names(served: tuple[str, registry.Image]) -> None:
    url, _image = served
    assert requests.get(f"{url}/v2/_catalog", timeout=10).json() == {"repositories": ["library/busybox"]}
    assert requests.get(f"{url}/v2/library/busybox/tags/list", timeout=10).json() == {
        "name": "library/busybox",
        "tags": ["latest"],
    }
    missing = requests.get(f"{url}/v2/library/busybox/manifests/nope", headers={"Accept": ACCEPT}, timeout=10)
    assert missing.status_code == 404
    absent = requests.get(f"{url}/v2/library/alpine/manifests/latest", headers={"Accept": ACCEPT}, timeout=10)
    assert absent.status_code == 404
