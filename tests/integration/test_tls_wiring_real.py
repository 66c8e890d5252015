"""A TLS lab's etcd reached the way the CLI reaches nodes: real sshd on 127.0.0.1, real etcd 3.4 with client certs.

One member runs from the rendered drop-in of an ``init --tls`` lab (helpers of test_tls_etcd_real); the "node" is
a loopback sshd, so ``Cluster.etcd_client`` forwards to the member through SSH, in-process (``--no-persist``) and
through the mux's unix socket, both with the lab's client certificate and CA (server name 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from coreos_lab import tls
from coreos_lab.cluster import ETCD_TLS_ENV
from coreos_lab.config import LabConfig
from coreos_lab.render import init_lab
from coreos_lab.vagrant import SSH_CONFIG_CACHE, STATE_DIR, machine_ids_fingerprint
from tests.conftest import require_binary, require_root
from tests.integration.sshd import KeyPair, Sshd
from tests.integration.test_tls_etcd_real import Member, localize

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    require_binary("sshd")
    require_binary("etcd")
    require_root()
    path = Path(tempfile.mkdtemp(prefix="cl-tlsw-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def member(base: Path) -> Iterator[tuple[Path, Member]]:
    """A one-node TLS lab and its etcd member, started from the rendered drop-in, healthy over https."""
    lab_dir = base / "lab"
    workdir = base / "run"
    lab_dir.mkdir()
    workdir.mkdir()
    result = init_lab(lab_dir, LabConfig(instances=1, tls=True, cluster_token="coreos-lab-tls-wiring"))
    (m,) = localize(result.config, lab_dir, workdir)
    material = tls.client_material(lab_dir)
    assert material is not None
    cert, key, ca = material
    try:
        m.start(workdir)
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(m.url + "/health", cert=(str(cert), str(key)), verify=str(ca), timeout=1)
                if answer.json().get("health") == "true":
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline or (m.proc is not None and m.proc.poll() is not None):
                pytest.fail("TLS etcd did not become healthy: " + (workdir / "core-01.log").read_text()[-600:])
            time.sleep(0.2)
        yield lab_dir, m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def inventory(base: Path, member: tuple[Path, Member]) -> Iterator[Path]:
    """An inventory whose one node is a loopback sshd; the lab's ssh-config cache says the same (no Vagrant)."""
    lab_dir, _ = member
    keys = KeyPair.create(base / "keys")
    server = Sshd.start(keys, base)
    text = server.ssh_config_block("core-01", keys)
    path = base / "inventory"
    path.write_text(text)
    cache = lab_dir / STATE_DIR / SSH_CONFIG_CACHE
    cache.parent.mkdir(mode=0o700, exist_ok=True)
    cache.write_text(json.dumps({"machine_ids": machine_ids_fingerprint(lab_dir), "configs": {"*": text}}))
    try:
        yield path
    finally:
        server.stop()


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR for the mux (short path for unix sockets); muxes stopped by PID afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cl-rt-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "30")
    monkeypatch.delenv("COREOS_LAB_NO_PERSIST", raising=False)
    monkeypatch.delenv(ETCD_TLS_ENV, raising=False)
    yield path
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"coreos_lab.mux" in cmdline and str(path / "coreos-lab").encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGTERM)
    shutil.rmtree(path, ignore_errors=True)


def _cli(*args: str) -> tuple[int, str, str]:
    from coreos_lab.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("persist", [False, True], ids=["no-persist", "mux"])
def test_etcd_commands_and_status_over_tls(
    member: tuple[Path, Member],
    inventory: Path,
    runtime: Path,
    monkeypatch: pytest.MonkeyPatch,
    persist: bool,
) -> None:
    lab_dir, m = member
    port = str(m.client_port)
    flags = [] if persist else ["--no-persist"]
    monkeypatch.setenv(ETCD_TLS_ENV, str(lab_dir))
    via_inventory = ["--inventory", str(inventory), *flags]
    via_lab = ["--lab", str(lab_dir), *flags]
    key = f"/tls-wiring/{'mux' if persist else 'direct'}"

    code, out, err = _cli("etcd", "health", "--json", "--port", port, *via_inventory)
    assert code == 0, err
    assert json.loads(out)["healthy"] is True
    code, out, err = _cli("etcd", "put", key, "over TLS", "--port", port, *via_inventory)
    assert code == 0, err
    assert out.startswith("OK (revision ")
    # The lab path: coreos-lab.toml says tls = true, no environment needed.
    monkeypatch.delenv(ETCD_TLS_ENV)
    code, out, err = _cli("etcd", "get", key, "--json", "--port", port, *via_lab)
    assert code == 0, err
    assert [(kv["key"], kv["value"]) for kv in json.loads(out)] == [(key, "over TLS")]

    # status asks etcd on the node's 2379 by default: the member listens on a free port here.
    code, out, err = _cli("status", "--json", "--port", port, *via_lab)
    report = json.loads(out)
    assert report["etcd"]["tls"] is True
    assert report["etcd"]["has_quorum"] is True, (out, err)
    assert [n["etcd"] for n in report["nodes"]] == [True]
    code, out, err = _cli("status", "--port", port, *via_lab)
    assert "TLS on" in out, (out, err)
    if persist:
        assert any(True for _ in (runtime / "coreos-lab").iterdir()), "the mux was not used"


@pytest.mark.parametrize("persist", [False, True], ids=["no-persist", "mux"])
def test_without_the_client_certificate_is_one_line_error(
    member: tuple[Path, Member],
    inventory: Path,
    runtime: Path,
    monkeypatch: pytest.MonkeyPatch,
    persist: bool,
    tmp_path: Path,
) -> None:
    lab_dir, m = member
    port = str(m.client_port)
    flags = [] if persist else ["--no-persist"]
    # Plain http (an inventory without TLS material) to the TLS port.
    code, out, err = _cli("etcd", "get", "/tls-wiring/x", "--port", port, "--inventory", str(inventory), *flags)
    assert code == 1
    assert err.startswith("error: no node's etcd answered: core-01: etcd http")
    assert err.count("\n") == 1
    # Our CA, but a client certificate from another lab's CA: the server refuses the handshake.
    other = tls.generate(LabConfig(instances=1, tls=True, cluster_token="another-lab"))
    (tmp_path / tls.TLS_DIR).mkdir()
    shutil.copy(lab_dir / tls.TLS_DIR / tls.CA_CERT, tmp_path / tls.TLS_DIR / tls.CA_CERT)
    (tmp_path / tls.TLS_DIR / tls.CLIENT_CERT).write_text(other.client_cert)
    (tmp_path / tls.TLS_DIR / tls.CLIENT_KEY).write_text(other.client_key)
    monkeypatch.setenv(ETCD_TLS_ENV, str(tmp_path))
    code, out, err = _cli("etcd", "health", "--port", port, "--inventory", str(inventory), *flags)
    assert code == 1
    assert "cluster is unhealthy" in out, (out, err)
    code, _out, err = _cli("etcd", "put", "/tls-wiring/y", "v", "--port", port, "--inventory", str(inventory), *flags)
    assert code == 1
    assert err.startswith("error: no node's etcd answered: core-01: etcd https"), err
    assert "bad certificate" in err
    assert ("https://unix-socket/" in err) == persist  # the mux's socket, or the in-process forward
    assert err.count("\n") == 1
    # The same TLS dir without any client certificate: said before anything is sent.
    (tmp_path / tls.TLS_DIR / tls.CLIENT_CERT).unlink()
    code, _out, err = _cli("etcd", "get", "/tls-wiring/y", "--port", port, "--inventory", str(inventory), *flags)
    assert code == 1
    assert "has no client certificate" in err
    assert err.count("\n") == 1
