"""Flatcar `init --tls` the way etcd-wrapper runs it, against Debian's real etcd 3.4.

On Flatcar, etcd-member.service runs /usr/lib/flatcar/etcd-wrapper, which starts etcd in a Docker container:
``docker run -u $(id -u ${ETCD_USER}):$(id -g ${ETCD_USER}) ... -v ${etcd_data_dir}:/var/lib/etcd:rw
-v ${ETCD_SSL_DIR}:/etc/ssl/certs:ro --env-file <(env; ...)`` (flatcar/scripts,
sdk_container/src/third_party/coreos-overlay/app-admin/etcd-wrapper/files/etcd-wrapper; the same on Flatcar
4459.2.0). etcd gets the unit's whole environment and reads every ETCD_*_FILE *inside* the container, where of
the host's files only ETCD_SSL_DIR (at /etc/ssl/certs) and the data dir (at /var/lib/etcd) exist, and it runs
as the etcd user. These tests emulate exactly that, from the rendered user-data and nothing else:

- the node's files: each ``write_files`` entry written under a per-node host root with its rendered
  permissions and owner;
- the container's view: a path under the wrapper's mount point /etc/ssl/certs maps to the host root's
  ETCD_SSL_DIR (the directory the drop-in names), any other path to an empty "image" root (the container does
  not see the rest of the host);
- the environment: the drop-in's ``Environment=`` lines as systemd parses them, ETCD_SSL_DIR included (the
  wrapper passes it on); only the node IPs and fixed ports become 127.0.0.1 and free ports (members share one
  loopback) and ETCD_DATA_DIR is added (the wrapper sets it);
- etcd runs as the etcd user (setpriv), like the container's ``-u``.

The last test drops the path translation: etcd in a private mount namespace where the node's ETCD_SSL_DIR is
bind-mounted read-only at /etc/ssl/certs and a data dir at /var/lib/etcd, with the rendered paths unchanged.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from coreos_lab import tls
from coreos_lab.config import LabConfig, NodeSpec
from coreos_lab.errors import EtcdError
from coreos_lab.etcd import EtcdClient
from coreos_lab.render import init_lab
from tests.conftest import require, require_binary, require_root
from tests.integration.etcd_rig import free_port
from tests.unit.test_render import parse_unit, unquote_env

pytestmark = pytest.mark.integration

ETCD = "/usr/bin/etcd"
# Fixed in etcd-wrapper (not taken from coreos_lab.tls, so the test checks the renderer against the wrapper).
WRAPPER_SSL_MOUNT = "/etc/ssl/certs"
WRAPPER_DATA_MOUNT = "/var/lib/etcd"
FILE_VARS = (
    "ETCD_CERT_FILE",
    "ETCD_KEY_FILE",
    "ETCD_TRUSTED_CA_FILE",
    "ETCD_PEER_CERT_FILE",
    "ETCD_PEER_KEY_FILE",
    "ETCD_PEER_TRUSTED_CA_FILE",
)
AS_ETCD = ["setpriv", "--reuid=etcd", "--regid=etcd", "--clear-groups"]


def rendered_node(lab_dir: Path, node: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(environment of the etcd-member drop-in, write_files entries) of one node's rendered user-data."""
    doc = yaml.safe_load((lab_dir / "cloud-config" / f"{node}.yaml").read_text())
    (unit,) = [u for u in doc["coreos"]["units"] if u["name"] == "etcd-member.service"]
    (dropin,) = unit["drop_ins"]
    env = dict(unquote_env(v) for k, v in parse_unit(dropin["content"])["Service"] if k == "Environment")
    return env, doc["write_files"]


def place_files(write_files: list[dict[str, Any]], host_root: Path) -> None:
    """What coreos-cloudinit does with write_files (parents 0755, permissions, owner), under ``host_root``."""
    for entry in write_files:
        target = host_root / entry["path"].lstrip("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_text(entry["content"])
        os.chmod(target, int(entry["permissions"], 8))
        user, _, group = (entry.get("owner") or "root:root").partition(":")
        os.chown(target, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)


@dataclass(frozen=True)
class ContainerView:
    """etcd-wrapper's container, seen from the host: only ETCD_SSL_DIR is mounted (at /etc/ssl/certs)."""

    host_root: Path  # the node's file system
    image_root: Path  # an empty directory: what the container has where the host is not mounted
    ssl_dir: str  # ETCD_SSL_DIR from the drop-in (a host path)

    def host_path(self, container_path: str) -> Path:
        """The host file behind ``container_path`` (under the empty image root if nothing is mounted there)."""
        if container_path == WRAPPER_SSL_MOUNT or container_path.startswith(WRAPPER_SSL_MOUNT + "/"):
            rest = container_path[len(WRAPPER_SSL_MOUNT) :].lstrip("/")
            return self.host_root / self.ssl_dir.lstrip("/") / rest
        return self.image_root / container_path.lstrip("/")


def localize(value: str, cfg: LabConfig, ports: dict[str, tuple[int, int]], me: NodeSpec) -> str:
    """Node IPs and the fixed ports -> 127.0.0.1 and this test's free ports (all members share loopback)."""
    for other in cfg.nodes:
        client, peer = ports[other.name]
        value = value.replace(f"{other.ip}:2379", f"127.0.0.1:{client}").replace(
            f"{other.ip}:2380", f"127.0.0.1:{peer}"
        )
    value = value.replace("127.0.0.1:2379", f"127.0.0.1:{ports[me.name][0]}")
    if "," in value and value.startswith("https://127.0.0.1:"):  # the node IP and 127.0.0.1 are one address here
        value = ",".join(dict.fromkeys(value.split(",")))
    return value


@dataclass
class Member:
    node: NodeSpec
    host_root: Path
    client_port: int
    peer_port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env},
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

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-800:] if self.log.exists() else ""


def prerequisites() -> None:
    require_binary("etcd")
    require_binary("setpriv")
    require_root()
    try:
        pwd.getpwnam("etcd")
    except KeyError:
        require(False, "no etcd user (Debian's etcd-server package creates it)")


def workdir() -> Path:
    """A scratch dir the etcd user can traverse (pytest's tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="cl-flatcar-tls-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def scratch() -> Iterator[Path]:
    """workdir(), removed after the test whatever happens."""
    path = workdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_healthy(members: list[Member], cert: tuple[str, str], ca: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok = all(
                requests.get(m.url + "/health", cert=cert, verify=ca, timeout=1).json()["health"] == "true"
                for m in members
            )
        except (requests.RequestException, ValueError, KeyError):
            ok = False
        if ok:
            return
        if time.monotonic() > deadline or any(m.proc is not None and m.proc.poll() is not None for m in members):
            pytest.fail("Flatcar TLS etcd not healthy: " + " | ".join(m.log_tail() for m in members))
        time.sleep(0.2)


def wrapper_members(
    cfg: LabConfig, lab_dir: Path, root: Path, *, env_override: dict[str, str] | None = None
) -> list[Member]:
    """One member per node, started as etcd-wrapper would: container paths translated through ContainerView."""
    ports = {n.name: (free_port(), free_port()) for n in cfg.nodes}
    image_root = root / "image"
    image_root.mkdir(exist_ok=True)
    members = []
    for node in cfg.nodes:
        rendered, write_files = rendered_node(lab_dir, node.name)
        host_root = root / node.name
        place_files(write_files, host_root)
        assert "ETCD_SSL_DIR" in rendered, "the wrapper mounts ETCD_SSL_DIR: the drop-in must name it"
        rendered = {**rendered, **(env_override or {})}
        view = ContainerView(host_root, image_root, rendered["ETCD_SSL_DIR"])
        env = {}
        for key, value in rendered.items():
            if key in FILE_VARS:
                env[key] = str(view.host_path(value))
            else:
                env[key] = localize(value, cfg, ports, node)
        # Only the documented substitutions: each address-bearing value still says what the rendered one says.
        for key, value in env.items():
            if key not in FILE_VARS and key != "ETCD_LISTEN_CLIENT_URLS":
                norm = re.sub(r"127\.0\.0\.1:\d+", "X", value)
                assert norm == re.sub(r"(192\.168\.56\.\d+|127\.0\.0\.1):23(79|80)", "X", rendered[key]), key
        data_dir = root / f"{node.name}.etcd"
        data_dir.mkdir(mode=0o700)
        os.chown(data_dir, pwd.getpwnam("etcd").pw_uid, grp.getgrnam("etcd").gr_gid)
        env.update(ETCD_DATA_DIR=str(data_dir), ETCD_LOGGER="zap", ETCD_LOG_LEVEL="warn")
        client, peer = ports[node.name]
        members.append(Member(node, host_root, client, peer, [*AS_ETCD, ETCD], env, root / f"{node.name}.log"))
    return members


@dataclass(frozen=True)
class Cluster:
    cfg: LabConfig
    lab_dir: Path
    members: list[Member]
    cert: tuple[str, str]
    ca: str


@pytest.fixture(scope="module")
def flatcar_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 2-node Flatcar TLS lab rendered by init_lab; both members started from their drop-ins as the wrapper would."""
    prerequisites()
    lab_dir = tmp_path_factory.mktemp("flatcar-tls-lab")
    root = workdir()
    members: list[Member] = []
    try:
        cfg = init_lab(lab_dir, LabConfig(instances=2, os="flatcar", tls=True, cluster_token="flatcar-tls-test")).config
        members = wrapper_members(cfg, lab_dir, root)
        for member in members:
            member.start()
        material = tls.client_material(lab_dir)
        assert material is not None
        cert, key, ca = material
        wait_healthy(members, (str(cert), str(key)), str(ca))
        yield Cluster(cfg, lab_dir, members, (str(cert), str(key)), str(ca))
    finally:
        for member in members:
            member.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_every_etcd_file_is_inside_the_wrapper_mount(flatcar_tls: Cluster) -> None:
    for member in flatcar_tls.members:
        rendered, _ = rendered_node(flatcar_tls.lab_dir, member.node.name)
        for key in FILE_VARS:
            assert rendered[key].startswith(WRAPPER_SSL_MOUNT + "/"), f"{key}={rendered[key]} is not in the container"
            host_file = Path(member.env[key])
            assert host_file.is_file()
            assert host_file.stat().st_uid == pwd.getpwnam("etcd").pw_uid
            if "KEY" in key:
                assert host_file.stat().st_mode & 0o777 == 0o600


def test_client_certificate_over_https(flatcar_tls: Cluster) -> None:
    first, second = flatcar_tls.members
    with EtcdClient(first.url, cert=flatcar_tls.cert, verify=flatcar_tls.ca, timeout=5) as client:
        assert client.health() is True
        assert client.put("/flatcar/tls", b"through the wrapper") > 0
    # Written on one member, read on the other: the peers talk TLS with their peer certificates.
    with EtcdClient(second.url, cert=flatcar_tls.cert, verify=flatcar_tls.ca, timeout=5) as client:
        kv = client.get("/flatcar/tls")
        assert kv is not None
        assert kv.value == b"through the wrapper"
        members = client.member_list()
        assert sorted(m.name for m in members) == ["core-01", "core-02"]
        assert all(u.startswith("https://") for m in members for u in m.peer_urls)


def test_no_client_certificate_is_refused(flatcar_tls: Cluster) -> None:
    url = flatcar_tls.members[0].url
    with EtcdClient(url, verify=flatcar_tls.ca, timeout=3) as anonymous, pytest.raises(EtcdError) as err:
        anonymous.put("/flatcar/anon", b"x")
    assert str(err.value).startswith(f"etcd {url}")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/health", verify=flatcar_tls.ca, timeout=3)
    with EtcdClient(url.replace("https://", "http://"), timeout=3) as plain, pytest.raises(EtcdError):
        plain.put("/flatcar/plain", b"x")


def test_node_etcdctl_files_work(flatcar_tls: Cluster) -> None:
    """The CA and client files user-data writes for the host's etcdctl (tls.NODE_ETCDCTL_FLAGS) reach etcd."""
    etcdctl = require_binary("etcdctl")
    member = flatcar_tls.members[0]
    flags = [
        re.sub(r"=(/.*)$", lambda m: "=" + str(member.host_root / m.group(1).lstrip("/")), flag)
        for flag in tls.NODE_ETCDCTL_FLAGS.split()
    ]
    argv = [etcdctl, f"--endpoints={member.url}", *flags, "--command-timeout=5s", "--dial-timeout=3s"]
    env = {"PATH": "/usr/bin:/bin", "ETCDCTL_API": "3"}
    put = subprocess.run([*argv, "put", "/flatcar/etcdctl", "ok"], capture_output=True, text=True, timeout=20, env=env)
    assert put.returncode == 0, put.stderr
    get = subprocess.run(
        [*argv, "get", "--print-value-only", "/flatcar/etcdctl"], capture_output=True, text=True, timeout=20, env=env
    )
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "ok"
    key_file = Path(next(f for f in flags if f.startswith("--key=")).removeprefix("--key="))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.stat().st_uid == 0


def test_host_paths_are_not_seen_in_the_container(tmp_path: Path, scratch: Path) -> None:
    """Negative control: the layout rendered before this fix (etcd's files in /etc/coreos-lab/tls on the host) fails.

    The files exist on the host, but the wrapper does not mount that directory: etcd must fail to start. This is
    what the emulation is for; a test that started etcd with host paths would have passed.
    """
    prerequisites()
    lab_dir = tmp_path / "lab"
    root = scratch
    cfg = init_lab(lab_dir, LabConfig(instances=1, os="flatcar", tls=True, cluster_token="flatcar-old-layout")).config
    old = {
        key: f"{tls.NODE_TLS_DIR}/{name}"
        for key, name in zip(
            FILE_VARS, ("server.pem", "server-key.pem", "ca.pem", "peer.pem", "peer-key.pem", "ca.pem"), strict=True
        )
    }
    members: list[Member] = []
    try:
        members = wrapper_members(cfg, lab_dir, root, env_override=old)
        (member,) = members
        node_tls = member.host_root / tls.NODE_TLS_DIR.lstrip("/")
        etcd_dir = member.host_root / tls.FLATCAR_ETCD_DIR.lstrip("/")
        for name in ("server.pem", "server-key.pem", "peer.pem", "peer-key.pem"):  # the files *are* on the host
            shutil.copy2(etcd_dir / name, node_tls / name)
            os.chown(node_tls / name, pwd.getpwnam("etcd").pw_uid, grp.getgrnam("etcd").gr_gid)
        member.start()
        assert member.proc is not None
        assert member.proc.wait(20) != 0
        assert "no such file or directory" in member.log_tail()
    finally:
        for member in members:
            member.stop()


def test_bind_mounted_like_the_wrapper_rendered_paths_unchanged(tmp_path: Path, scratch: Path) -> None:
    """No path translation: ETCD_SSL_DIR bind-mounted read-only at /etc/ssl/certs, a data dir at /var/lib/etcd.

    etcd runs in a private mount namespace (unshare), as the etcd user, with the drop-in's file paths exactly as
    rendered and ETCD_DATA_DIR=/var/lib/etcd as the wrapper sets it; only addresses and ports are localized.
    """
    prerequisites()
    require_binary("unshare")
    require(Path(WRAPPER_SSL_MOUNT).is_dir() and Path(WRAPPER_DATA_MOUNT).is_dir(), "no mount points to bind over")
    lab_dir = tmp_path / "lab"
    root = scratch
    cfg = init_lab(lab_dir, LabConfig(instances=1, os="flatcar", tls=True, cluster_token="flatcar-bind")).config
    (node,) = cfg.nodes
    rendered, write_files = rendered_node(lab_dir, node.name)
    host_root = root / node.name
    place_files(write_files, host_root)
    data_dir = root / "data"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, pwd.getpwnam("etcd").pw_uid, grp.getgrnam("etcd").gr_gid)
    ports = {node.name: (free_port(), free_port())}
    env = {key: localize(value, cfg, ports, node) for key, value in rendered.items()}
    assert {k: env[k] for k in FILE_VARS} == {k: rendered[k] for k in FILE_VARS}, "file paths stay as rendered"
    env.update(ETCD_DATA_DIR=WRAPPER_DATA_MOUNT, ETCD_LOGGER="zap", ETCD_LOG_LEVEL="warn")
    source = host_root / rendered["ETCD_SSL_DIR"].lstrip("/")
    # $1 -> $3 read-only (ETCD_SSL_DIR), $2 -> $4 (data dir), then exec the rest: the PID stays etcd's.
    script = 'mount --bind "$1" "$3" && mount -o remount,bind,ro "$3" && mount --bind "$2" "$4" && shift 4 && exec "$@"'
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        script,
        "sh",
        str(source),
        str(data_dir),
        WRAPPER_SSL_MOUNT,
        WRAPPER_DATA_MOUNT,
        *AS_ETCD,
        ETCD,
    ]
    member = Member(node, host_root, *ports[node.name], argv, env, root / "bind.log")
    try:
        member.start()
        cert, key, ca = tls.client_material(lab_dir) or pytest.fail("no client material")
        wait_healthy([member], (str(cert), str(key)), str(ca))
        with EtcdClient(member.url, cert=(str(cert), str(key)), verify=str(ca), timeout=5) as client:
            assert client.put("/flatcar/bind", b"mounted") > 0
            kv = client.get("/flatcar/bind")
            assert kv is not None
            assert kv.value == b"mounted"
        with EtcdClient(member.url, verify=str(ca), timeout=3) as anonymous, pytest.raises(EtcdError):
            anonymous.health()
        # etcd wrote its data through the bind mount, into our data dir, not the host's /var/lib/etcd
        assert (data_dir / "member").is_dir()
    finally:
        member.stop()
