"""TLS wiring: the node-side etcdctl probe of ``up``, Cluster.etcd_client's http/https choice, TLS on a unix socket."""

from __future__ import annotations

import http.server
import json
import socketserver
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from coreos_lab import health, probe, tls
from coreos_lab.cluster import ETCD_TLS_ENV, Cluster, lab_etcd_tls_dir, open_cluster
from coreos_lab.config import LabConfig
from coreos_lab.errors import ConfigError
from coreos_lab.health import EtcdStatus
from coreos_lab.http import UNIX_TLS_BASE_URL, TLSFiles, unix_session
from coreos_lab.render import init_lab
from coreos_lab.runner import LocalRunner
from coreos_lab.testing import FakeRunner

SEP = "@@coreos-lab@@\n"
# What the probe with its etcd part prints on a healthy 1-node lab (sections as the node's shell writes them).
PROBE_OUT = SEP.join(
    [
        "0123abcd\n",
        "",
        "core-01\n",
        "10.0.2.15 192.168.56.101 ",
        "",
        "active\n",
        "ok\n",
        "8e9e05c52164694d, started, core-01, https://x:2380, https://x:2379, false\n",
    ]
)


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lab = tmp_path_factory.mktemp("tlslab")
    init_lab(lab, LabConfig(instances=1, tls=True, cluster_token="unit-tls-wiring"))
    return lab


# -- up's etcd health check on the nodes --------------------------------------------------------------------
def test_probe_command_plain_lab_is_unchanged() -> None:
    cmd = probe.probe_command(True, etcd_unit="etcd-member.service")
    assert "etcdctl --endpoints=http://127.0.0.1:2379 " in cmd
    assert "https" not in cmd
    # no sudo for etcd on a plain lab (the provisioning check may sudo to read Ignition's 0600 result file)
    assert "sudo" not in cmd.replace('sudo -n grep -qs \'"userConfigProvided"', "")
    assert "--cacert" not in cmd


def test_probe_command_tls_lab_uses_https_certs_and_sudo() -> None:
    cmd = probe.probe_command(True, etcd_unit="etcd-member.service", tls=True)
    assert "http://" not in cmd
    # Both etcdctl calls (health and member list): https, the node's client certificate, sudo -n (key is 0600 etcd).
    assert cmd.count("sudo -n etcdctl --endpoints=https://127.0.0.1:2379 ") == 2
    assert cmd.count(tls.NODE_ETCDCTL_FLAGS) == 2
    assert f"--cacert={tls.NODE_TLS_DIR}/ca.pem" in cmd
    assert f"--key={tls.NODE_TLS_DIR}/client-key.pem" in cmd


def test_probe_cluster_runs_the_tls_probe_on_every_node() -> None:
    ok = FakeRunner("core-01", {r"sudo -n etcdctl --endpoints=https://127\.0\.0\.1:2379 --cacert=": PROBE_OUT})
    plain_only = FakeRunner("core-02", {r"etcdctl --endpoints=http://127\.0\.0\.1:2379 ": PROBE_OUT})
    cluster = Cluster({"core-01": ok, "core-02": plain_only})
    facts = probe.probe_nodes(cluster, etcd_unit="etcd-member.service", tls=True)
    seen = facts["core-01"].etcd
    assert seen is not None
    assert seen.healthy
    assert seen.started_members == 1
    # core-02 answers only the plain-http probe: the TLS probe did not match, so it is not reachable/healthy.
    assert not facts["core-02"].reachable
    assert "https://127.0.0.1:2379" in ok.calls[0]
    assert not health.ready(facts, 1)
    plain = probe.probe_nodes(Cluster({"core-02": plain_only}), etcd_unit="etcd-member.service")
    assert health.ready(plain, 1)


# -- the one decision: http or https --------------------------------------------------------------------------
def test_etcd_client_plain_without_tls_dir() -> None:
    cluster = Cluster({"m1": LocalRunner("m1")})
    client = cluster.etcd_client("m1", 2379, timeout=2.0)
    assert client.base_url == "http://127.0.0.1:2379"
    assert client.timeout == 2.0


def test_etcd_client_https_with_the_labs_material(tls_lab: Path) -> None:
    cluster = Cluster({"m1": LocalRunner("m1")})
    cluster.etcd_tls_dir = tls_lab
    client = cluster.etcd_client("m1", 2379)
    assert client.base_url == "https://127.0.0.1:2379"
    material = tls.client_material(tls_lab)
    assert material is not None
    cert, key, ca = material
    assert tls.client_kwargs(tls_lab) == {"cert": (str(cert), str(key)), "verify": str(ca)}
    assert client._cert == (str(cert), str(key))
    assert client._verify == str(ca)


def test_etcd_client_tls_dir_without_client_cert_is_config_error(tmp_path: Path) -> None:
    cluster = Cluster({"m1": LocalRunner("m1")})
    cluster.etcd_tls_dir = tmp_path
    with pytest.raises(ConfigError, match="has no client certificate"):
        cluster.etcd_client("m1")


def test_lab_tls_dir_follows_the_labs_config(tls_lab: Path, tmp_path: Path) -> None:
    assert lab_etcd_tls_dir(tls_lab) == tls_lab
    plain = tmp_path / "plain"
    init_lab(plain, LabConfig(instances=1))
    assert lab_etcd_tls_dir(plain) is None
    assert lab_etcd_tls_dir(tmp_path / "nothing") is None


def test_open_cluster_inventory_takes_tls_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv = tmp_path / "inv"
    inv.write_text("Host core-01\n  HostName 127.0.0.1\n  Port 2222\n")
    monkeypatch.delenv(ETCD_TLS_ENV, raising=False)
    assert open_cluster(inventory=inv, persist=False).etcd_tls_dir is None
    monkeypatch.setenv(ETCD_TLS_ENV, str(tmp_path))
    assert open_cluster(inventory=inv, persist=False).etcd_tls_dir == tmp_path


def test_status_json_and_line_carry_tls() -> None:
    status = EtcdStatus(True, True, 1, 1, 1, "1", tls=True)
    assert status.to_json()["tls"] is True
    assert EtcdStatus(True, True, 1, 1, 1, "1").to_json()["tls"] is False


# -- http.unix_session over TLS against a real TLS server on a unix socket -------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        peer = self.connection.getpeercert()
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        body = json.dumps({"path": self.path, "client": subject.get("commonName")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


class _TLSUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[ssl.SSLSocket, str]:
        sock, addr = self.socket.accept()
        sock.settimeout(5)
        try:
            return self.context.wrap_socket(sock, server_side=True), addr
        except (ssl.SSLError, OSError):
            sock.close()
            raise


@pytest.fixture
def tls_socket(tls_lab: Path) -> Iterator[str]:
    """A unix socket serving HTTPS with node core-01's server certificate, requiring a client cert of the lab CA."""
    base = tls_lab / tls.TLS_DIR
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(base / "core-01" / "server.pem"), str(base / "core-01" / "server-key.pem"))
    ctx.load_verify_locations(str(base / tls.CA_CERT))
    ctx.verify_mode = ssl.CERT_REQUIRED
    directory = tempfile.mkdtemp(prefix="cl-uht-")
    path = str(Path(directory) / "tls.sock")
    srv = _TLSUnixServer(path, ctx)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield path
    srv.shutdown()
    srv.server_close()
    Path(path).unlink(missing_ok=True)
    Path(directory).rmdir()


def test_unix_session_speaks_tls_with_client_cert(tls_lab: Path, tls_socket: str) -> None:
    material = tls.client_material(tls_lab)
    assert material is not None
    session, base = unix_session(tls_socket, tls=TLSFiles(*material))
    assert base == UNIX_TLS_BASE_URL
    with session:
        for _ in range(2):  # the second request reuses the TLS connection
            answer = session.get(base + "/version", timeout=5)
            assert answer.json() == {"path": "/version", "client": "coreos-lab-client"}


def test_unix_session_refuses_a_server_of_another_ca(tls_lab: Path, tls_socket: str, tmp_path: Path) -> None:
    other = tls.generate(LabConfig(instances=1, tls=True, cluster_token="other"))
    (tmp_path / "ca.pem").write_text(other.ca_cert)
    cert, key, _ = tls.client_material(tls_lab) or (Path(), Path(), Path())
    session, base = unix_session(tls_socket, tls=TLSFiles(cert, key, tmp_path / "ca.pem"))
    with session, pytest.raises(requests.exceptions.SSLError, match="certificate verify failed"):
        session.get(base + "/version", timeout=5)


def test_unix_session_plain_against_tls_socket_fails(tls_socket: str) -> None:
    session, base = unix_session(tls_socket)
    assert base.startswith("http://")
    with session, pytest.raises(requests.exceptions.RequestException):
        session.get(base + "/version", timeout=5)
