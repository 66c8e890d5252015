"""`init --tls` against Debian's real etcd 3.4: the rendered drop-in, run as rendered, serves TLS with client certs.

Each member is started with exactly the ``Environment=`` lines of its node's rendered user-data (parsed from the
YAML, unquoted the way systemd does), the files of its ``write_files`` placed under a per-node root, and only
these substitutions, all asserted: the node's IP and the fixed ports become 127.0.0.1 and free ports (two members
share one loopback), node paths get the per-node root as prefix, and a data dir is added (the unit sets it).
The last test drops the address substitution: one network namespace per node, joined by a veth pair, each
member on its node's own IP with the rendered URLs unchanged (node-IP SANs, https peer URLs as rendered).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from coreos_lab import tls
from coreos_lab.config import LabConfig, NodeSpec
from coreos_lab.errors import EtcdError
from coreos_lab.etcd import EtcdClient, cluster_health
from coreos_lab.render import init_lab
from tests.conftest import require, require_binary, require_root
from tests.integration.etcd_rig import free_port
from tests.unit.test_render import parse_unit, unquote_env

pytestmark = pytest.mark.integration

ETCD = "/usr/bin/etcd"
TLS_VARS = {
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_CLIENT_CERT_AUTH",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
    "ETCD_PEER_CLIENT_CERT_AUTH",
}


def rendered_node(lab_dir: Path, node: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(etcd environment of the drop-in, write_files entries) of one node's rendered user-data."""
    doc = yaml.safe_load((lab_dir / "cloud-config" / f"{node}.yaml").read_text())
    (unit,) = [u for u in doc["coreos"]["units"] if u["name"] == "etcd-member.service"]
    (dropin,) = unit["drop_ins"]
    parsed = parse_unit(dropin["content"])
    env = dict(unquote_env(value) for key, value in parsed["Service"] if key == "Environment")
    return env, doc["write_files"]


@dataclass
class Member:
    node: NodeSpec
    root: Path
    client_port: int
    peer_port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def start(self, workdir: Path) -> None:
        log = (workdir / f"{self.node.name}.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [ETCD],
                env={"PATH": "/usr/bin:/bin", **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def localize(cfg: LabConfig, lab_dir: Path, workdir: Path) -> list[Member]:
    """Members whose environment is the rendered one with loopback addresses, free ports and rooted paths."""
    ports = {n.name: (free_port(), free_port()) for n in cfg.nodes}
    members = []
    for node in cfg.nodes:
        rendered, write_files = rendered_node(lab_dir, node.name)
        assert set(rendered) >= TLS_VARS, "the TLS variables are missing from the drop-in"
        root = workdir / node.name
        for entry in write_files:
            target = root / entry["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(entry["content"])
            os.chmod(target, int(entry["permissions"], 8))

        def local(value: str) -> str:
            for other in cfg.nodes:
                client, peer = ports[other.name]
                value = value.replace(f"{other.ip}:2379", f"127.0.0.1:{client}")
                value = value.replace(f"{other.ip}:2380", f"127.0.0.1:{peer}")
            value = value.replace("127.0.0.1:2379", f"127.0.0.1:{ports[node.name][0]}")  # noqa: B023
            # Flatcar: etcd's files are in ETCD_SSL_DIR, mounted by etcd-wrapper at the same path (tls.py).
            value = value.replace(tls.FLATCAR_ETCD_DIR, str(root) + tls.FLATCAR_ETCD_DIR)  # noqa: B023
            return value.replace(tls.NODE_TLS_DIR, str(root) + tls.NODE_TLS_DIR)  # noqa: B023

        env = {}
        for key, value in rendered.items():
            new = local(value)
            if key == "ETCD_LISTEN_CLIENT_URLS":  # node IP and 127.0.0.1 are one address here: listen once
                new = ",".join(dict.fromkeys(new.split(",")))
            env[key] = new
        # Only the substitutions above: every value still says what the rendered one says.
        for key, value in env.items():
            if key not in ("ETCD_LISTEN_CLIENT_URLS",):
                assert re.sub(r"127\.0\.0\.1:\d+", "X", value).replace(str(root), "") == re.sub(
                    rf"({re.escape(node.ip)}|192\.168\.56\.\d+|127\.0\.0\.1):23(79|80)", "X", rendered[key]
                ), key
        env["ETCD_DATA_DIR"] = str(workdir / f"{node.name}.etcd")
        env["ETCD_LOG_LEVEL"] = "warn"
        env["ETCD_LOGGER"] = "zap"
        members.append(Member(node, root, *ports[node.name], env))
    return members


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Member]]]:
    """A 2-node TLS lab rendered by init_lab, both members started from their rendered drop-ins."""
    require_binary("etcd")
    lab_dir = tmp_path_factory.mktemp("tlslab")
    workdir = tmp_path_factory.mktemp("tlsrun")
    result = init_lab(lab_dir, LabConfig(instances=2, tls=True, cluster_token="coreos-lab-tls-test"))
    members = localize(result.config, lab_dir, workdir)
    try:
        for member in members:
            member.start(workdir)
        material = tls.client_material(lab_dir)
        assert material is not None
        cert, key, ca = material
        deadline = time.monotonic() + 30
        while True:
            try:
                ok = all(
                    requests.get(m.url + "/health", cert=(str(cert), str(key)), verify=str(ca), timeout=1).json()[
                        "health"
                    ]
                    == "true"
                    for m in members
                )
            except (requests.RequestException, ValueError, KeyError):
                ok = False
            if ok:
                break
            if time.monotonic() > deadline or any(m.proc and m.proc.poll() is not None for m in members):
                logs = " | ".join((workdir / f"{m.node.name}.log").read_text()[-600:] for m in members)
                pytest.fail(f"TLS etcd cluster did not become healthy: {logs}")
            time.sleep(0.2)
        yield lab_dir, members
    finally:
        for member in members:
            member.stop()


def test_client_cert_put_get_health(tls_cluster: tuple[Path, list[Member]]) -> None:
    lab_dir, members = tls_cluster
    material = tls.client_material(lab_dir)
    assert material is not None
    cert, key, ca = material
    with EtcdClient(members[0].url, cert=(str(cert), str(key)), verify=str(ca)) as first:
        assert first.health() is True
        rev = first.put("/tls/greeting", b"hello over TLS")
        assert rev > 0
    # Written on one member, read on the other: the peers replicate over TLS with peer client certs.
    with EtcdClient(members[1].url, cert=(str(cert), str(key)), verify=str(ca)) as second:
        kv = second.get("/tls/greeting")
        assert kv is not None
        assert kv.value == b"hello over TLS"
        names = sorted(m.name for m in second.member_list())
        assert names == ["core-01", "core-02"]
        assert all(u.startswith("https://") for m in second.member_list() for u in m.peer_urls)
    clients = {m.node.name: EtcdClient(m.url, cert=(str(cert), str(key)), verify=str(ca)) for m in members}
    health = cluster_health(clients)
    assert health.healthy
    assert health.member_count == 2


def test_no_client_cert_is_refused(tls_cluster: tuple[Path, list[Member]]) -> None:
    lab_dir, members = tls_cluster
    material = tls.client_material(lab_dir)
    assert material is not None
    with EtcdClient(members[0].url, verify=str(material[2]), timeout=3) as anonymous, pytest.raises(EtcdError) as err:
        anonymous.put("/tls/anon", b"x")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"etcd {members[0].url}")
    # Plain HTTP to a TLS port is refused too (no silent fallback).
    with EtcdClient(members[0].url.replace("https", "http"), timeout=3) as plain, pytest.raises(EtcdError):
        plain.put("/tls/plain", b"x")


def test_certificate_from_another_ca_is_refused(tls_cluster: tuple[Path, list[Member]], tmp_path: Path) -> None:
    lab_dir, members = tls_cluster
    material = tls.client_material(lab_dir)
    assert material is not None
    our_ca = str(material[2])
    other = tls.generate(LabConfig(instances=1, tls=True, cluster_token="another-lab"))
    (tmp_path / "c.pem").write_text(other.client_cert)
    (tmp_path / "k.pem").write_text(other.client_key)
    (tmp_path / "ca.pem").write_text(other.ca_cert)
    foreign = (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with EtcdClient(members[0].url, cert=foreign, verify=our_ca, timeout=3) as client, pytest.raises(EtcdError) as err:
        client.put("/tls/foreign", b"x")
    assert "\n" not in str(err.value)
    # ...and a client trusting only the other CA refuses our server.
    ours = (str(material[0]), str(material[1]))
    with (
        EtcdClient(members[0].url, cert=ours, verify=str(tmp_path / "ca.pem"), timeout=3) as client,
        pytest.raises(EtcdError, match=r"etcd https://127\.0\.0\.1.*TLS error: .*certificate verify failed"),
    ):
        client.health()
    # A member of another lab (peer cert of another CA) cannot talk to our peers either.
    peer_port = members[0].peer_port
    (tmp_path / "pc.pem").write_text(other.node("core-01").peer_cert)
    (tmp_path / "pk.pem").write_text(other.node("core-01").peer_key)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(
            f"https://127.0.0.1:{peer_port}/members",
            cert=(str(tmp_path / "pc.pem"), str(tmp_path / "pk.pem")),
            verify=our_ca,
            timeout=3,
        )
    # The same request with our lab's peer certificate is answered: the refusal above is about the CA.
    ok = requests.get(
        f"https://127.0.0.1:{peer_port}/members",
        cert=(
            str(members[1].root / tls.FLATCAR_ETCD_DIR.lstrip("/") / "peer.pem"),
            str(members[1].root / tls.FLATCAR_ETCD_DIR.lstrip("/") / "peer-key.pem"),
        ),
        verify=our_ca,
        timeout=3,
    )
    assert ok.status_code == 200
    assert "core-02" in ok.text


# ---------------------------------------------------------------- on the nodes' own addresses, in a netns

_NETNS_CLIENT = r"""
import json, sys
from coreos_lab.etcd import EtcdClient
from coreos_lab.errors import EtcdError
cert, key, ca, url1, url2 = sys.argv[1:6]
out = {}
with EtcdClient(url1, cert=(cert, key), verify=ca, timeout=5) as c1:
    out["health1"] = c1.health()
    out["put"] = c1.put("/tls/netns", b"on node addresses")
with EtcdClient(url2, cert=(cert, key), verify=ca, timeout=5) as c2:
    kv = c2.get("/tls/netns")
    out["get2"] = kv.value.decode() if kv else None
    out["peer_urls"] = sorted(u for m in c2.member_list() for u in m.peer_urls)
try:
    with EtcdClient(url1, verify=ca, timeout=5) as anon:
        anon.health()
    out["anonymous"] = "accepted"
except EtcdError as exc:
    out["anonymous"] = str(exc)
print(json.dumps(out))
"""


def test_rendered_drop_ins_unchanged_on_node_addresses_in_a_netns(tmp_path: Path) -> None:
    """The rendered environment with no address or port changed: etcd on 192.168.56.101/102, one netns each.

    Only the certificate paths get the per-node root as prefix and a data dir is added; every URL is exactly
    as rendered, so the node-IP SANs and the https peer URLs are what is tested. etcd runs as the etcd user
    with the files' rendered owner and permissions, so keys that only root could read would fail here.
    """
    require_binary("etcd")
    require_binary("ip")
    require_root()
    require_binary("setpriv")
    try:
        pwd.getpwnam("etcd")
    except KeyError:
        require(False, "no etcd user (Debian's etcd-server package creates it)")
    lab_dir = tmp_path / "lab"
    # etcd runs as the etcd user, as on a node: its files must be reachable outside pytest's 0700 tmp dirs.
    workdir = Path(tempfile.mkdtemp(prefix="cl-tls-netns-"))
    workdir.chmod(0o755)
    etcd_user = pwd.getpwnam("etcd")
    cfg = init_lab(lab_dir, LabConfig(instances=2, tls=True, cluster_token="coreos-lab-netns")).config
    # One netns per node (each has its own loopback, as a VM does), joined by a veth pair on the lab network.
    namespaces = [f"cl-tls-{os.getpid()}-{i}" for i in (1, 2)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "veth-a",
                "netns",
                namespaces[0],
                "type",
                "veth",
                "peer",
                "name",
                "veth-b",
                "netns",
                namespaces[1],
            ],
            check=True,
            timeout=10,
        )
        for ns, dev, node in zip(namespaces, ("veth-a", "veth-b"), cfg.nodes, strict=True):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{node.ip}/24", "dev", dev], check=True, timeout=10)
            for link in ("lo", dev):
                subprocess.run(["ip", "-n", ns, "link", "set", link, "up"], check=True, timeout=10)
        for ns, node in zip(namespaces, cfg.nodes, strict=True):
            rendered, write_files = rendered_node(lab_dir, node.name)
            root = workdir / node.name
            for entry in write_files:
                target = root / entry["path"].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(entry["content"])
                os.chmod(target, int(entry["permissions"], 8))
                if entry.get("owner"):  # what cloudinit does with owner: "user:group"
                    user, _, group = entry["owner"].partition(":")
                    os.chown(target, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
            env = {k: v.replace(tls.FLATCAR_ETCD_DIR, str(root) + tls.FLATCAR_ETCD_DIR) for k, v in rendered.items()}
            assert {k: v for k, v in env.items() if "_FILE" not in k} == {
                k: v for k, v in rendered.items() if "_FILE" not in k
            }, "only file paths may differ from the rendered drop-in"
            data_dir = workdir / f"{node.name}.etcd"
            data_dir.mkdir(mode=0o700)
            os.chown(data_dir, etcd_user.pw_uid, etcd_user.pw_gid)
            env.update(ETCD_DATA_DIR=str(data_dir), ETCD_LOG_LEVEL="warn", ETCD_LOGGER="zap")
            log = (workdir / f"{node.name}.log").open("ab")
            with log:
                procs.append(
                    subprocess.Popen(
                        # ip and setpriv exec: the PID is etcd's. As the etcd user, like the node's unit (User=etcd).
                        ["ip", "netns", "exec", ns, "setpriv", "--reuid=etcd", "--regid=etcd", "--clear-groups", ETCD],
                        env={"PATH": "/usr/sbin:/usr/bin:/bin", **env},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        cert, key, ca = tls.client_material(lab_dir) or pytest.fail("no client material")
        urls = [f"https://{n.ip}:2379" for n in cfg.nodes]
        argv = [
            "ip",
            "netns",
            "exec",
            namespaces[0],
            sys.executable,
            "-c",
            _NETNS_CLIENT,
            str(cert),
            str(key),
            str(ca),
            *urls,
        ]
        deadline = time.monotonic() + 40
        while True:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
            if run.returncode == 0:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = " | ".join((workdir / f"{n.name}.log").read_text()[-1500:] for n in cfg.nodes)
                pytest.fail(f"TLS cluster on node addresses not usable: {run.stderr[-500:]} {logs}")
            time.sleep(0.5)
        out = json.loads(run.stdout)
        assert out["health1"] is True
        assert out["put"] > 0
        assert out["get2"] == "on node addresses"
        assert out["peer_urls"] == [f"https://{n.ip}:2380" for n in cfg.nodes]
        assert out["anonymous"].startswith(f"etcd {urls[0]}")
        assert "\n" not in out["anonymous"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        for ns in namespaces:  # deleting a netns removes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
