"""The nspawn node rig: N Debian 12 containers with a real systemd, sshd and one etcd cluster.

Everything lives inside ONE network namespace the rig creates (``coreos-lab-test-<pid>``): a bridge with
10.213.0.1/24, and one container per node at 10.213.0.11, .12, ... This address range exists only inside
that namespace. The host never routes to it: the rig forwards ports from 127.0.0.1 on the host into the
namespace (a thread per connection that joins the namespace with setns), so tests, paramiko and requests
only ever talk to loopback.

Usage (pytest): the session fixture ``nspawn_nodes`` (in ``tests/nspawn/conftest.py``) yields a
``list[Node]`` of 3 booted nodes with a healthy 3-member etcd cluster. Outside pytest::

    from tests.nspawn.rig import NspawnRig
    with NspawnRig(n=3) as rig:
        node = rig.nodes[0]
        node.runner().run(["systemctl", "is-system-running"])   # inside the container, as user core
        requests.get(node.etcd_url + "/health")                   # 127.0.0.1:<port> -> node:2379
        # SSH: 127.0.0.1:node.ssh_port, user rig.user, key rig.key_path, known hosts rig.known_hosts_path

Each node: hostname ``core-01``..; user ``core`` with passwordless sudo and the rig's key; sshd on 22;
etcd (Debian's 3.4, ``--enable-v2``) on 2379/2380 configured by ``/etc/coreos-lab/etcd.env`` (bound in
read-only); systemd-networkd gives ``host0`` its address. The root file system is the cached rootfs
(``tests/nspawn/rootfs.py``) under ``--volatile=overlay``: every write lands in a tmpfs that vanishes at
shutdown, so nodes always start clean.

Teardown: SIGRTMIN+4 (systemd's "poweroff") to each container's PID 1, SIGKILL of nspawn by PID after a
timeout, port forwarders closed, the namespace deleted, the temp dir removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coreos_lab.runner import Cmd, CommandResult, render_cmd, run_argv
from tests.nspawn import rootfs as rootfs_mod

if TYPE_CHECKING:
    from coreos_lab.sshconfig import SSHTarget

SUBNET = "10.213.0"  # only inside the rig's own network namespace
BRIDGE = "br-lab"
CLONE_NEWNET = 0x40000000
USER = "core"
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_INSTANCES = itertools.count(1)


class RigError(Exception):
    """The rig could not build, boot or reach its nodes."""


def _sh(argv: Sequence[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RigError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc


_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def connect_in_netns(netns_path: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP socket connected to ``host:port`` from inside the namespace (usable from any thread).

    A socket keeps the namespace it was created in, so a short-lived thread joins the namespace, connects,
    and hands the socket back. Useful as paramiko's ``sock=`` to reach a node without a port forward.
    """
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            _enter_netns(netns_path)
            box["sock"] = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-connect-{host}:{port}", daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if "sock" in box:
        sock = box["sock"]
        assert isinstance(sock, socket.socket)
        sock.settimeout(None)
        return sock
    raise OSError(f"cannot connect to {host}:{port} in {netns_path}: {box.get('error', 'timed out')}")


class PortForward:
    """Listens on 127.0.0.1:<free port> on the host and pipes each connection to ``host:port`` in a netns."""

    def __init__(self, netns_path: str, host: str, port: int) -> None:
        self.netns_path, self.target_host, self.target_port = netns_path, host, port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"fwd-{self.port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            _enter_netns(self.netns_path)  # this thread only; the client socket stays in the host's namespace
            upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        # A relay must not add Nagle delays: HTTP clients write headers and body separately.
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.update((client, upstream))
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.5):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            with self._lock:
                self._conns.discard(client)
                self._conns.discard(upstream)
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for conn in list(self._conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)


class NsenterRunner:
    """A Runner that executes inside a container through nsenter, as user ``core`` (sudo when asked).

    Commands run like they would over SSH: ``/bin/sh -c LINE`` as ``core`` with a clean environment, so a
    command that forgets ``sudo=True`` fails here exactly as it would on a real node.
    """

    def __init__(self, leader_pid: int, host: str, *, user: str = USER, default_timeout: float = 60.0) -> None:
        self.leader_pid = leader_pid
        self._host = host
        self.user = user
        self.default_timeout = default_timeout

    @property
    def host(self) -> str:
        return self._host

    def _argv(self, line: str) -> list[str]:
        return [
            "nsenter", "-t", str(self.leader_pid), "-m", "-u", "-i", "-n", "-p", "--",
            "runuser", "-u", self.user, "--",
            "env", "-i", f"PATH={ENV_PATH}", f"HOME=/home/{self.user}", f"USER={self.user}", "LANG=C.UTF-8",
            "/bin/sh", "-c", line,
        ]  # fmt: skip

    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult:
        line = render_cmd(cmd, sudo=sudo)
        limit = timeout if timeout is not None else self.default_timeout
        return run_argv(self._host, self._argv(line), line, stdin=stdin, timeout=limit)

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        tmp = f"{path}.coreos-lab-tmp"
        qtmp, qpath = shlex.quote(tmp), shlex.quote(path)
        self.run(f"cat > {qtmp} && chmod {mode:o} {qtmp} && mv -f {qtmp} {qpath}", sudo=sudo, stdin=data).check()

    def close(self) -> None:
        return None


@dataclass
class Node:
    """One booted container. Ports are on the host's 127.0.0.1 and forward into the namespace."""

    name: str  # hostname, e.g. core-01
    machine: str  # nspawn machine name (unique per rig)
    address: str  # inside the rig's namespace only
    netns_path: str
    nspawn: subprocess.Popen[bytes]
    leader_pid: int = 0
    ssh_port: int = 0
    etcd_port: int = 0
    log_path: Path = field(default_factory=Path)
    forwards: list[PortForward] = field(default_factory=list)

    @property
    def etcd_url(self) -> str:
        """This node's etcd client URL as reachable from the host (a loopback forward)."""
        return f"http://127.0.0.1:{self.etcd_port}"

    def runner(self, user: str = USER) -> NsenterRunner:
        return NsenterRunner(self.leader_pid, self.name, user=user)

    def root(self, line: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a shell line as root in the container (rig plumbing; tests should prefer ``runner()``)."""
        argv = ["nsenter", "-t", str(self.leader_pid), "-m", "-u", "-i", "-n", "-p", "--", "/bin/sh", "-c", line]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def forward(self, port: int) -> PortForward:
        """A new loopback forward to ``port`` on this node (closed with the rig)."""
        fwd = PortForward(self.netns_path, self.address, port)
        self.forwards.append(fwd)
        return fwd

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        """A socket connected to ``port`` on this node, made inside the namespace (e.g. paramiko ``sock=``)."""
        return connect_in_netns(self.netns_path, self.address, port, timeout)


class NspawnRig:
    """Boots ``n`` nodes in a fresh network namespace; use as a context manager (teardown is guaranteed)."""

    def __init__(self, n: int = 3, *, etcd: bool = True, boot_timeout: float = 120.0) -> None:
        if not 1 <= n <= 9:
            raise ValueError("the rig boots between 1 and 9 nodes")
        self.n = n
        self.etcd = etcd
        self.boot_timeout = boot_timeout
        self.netns = f"coreos-lab-test-{os.getpid()}"
        self.netns_path = f"/run/netns/{self.netns}"
        self.nodes: list[Node] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="coreos-lab-nspawn-"))
        self.build_dir = rootfs_mod.build_dir()
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts_path = self.workdir / "known_hosts"
        self.user = USER
        self.boot_seconds = 0.0
        self._instance = next(_INSTANCES)
        self._cgroups: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> NspawnRig:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.build_dir = rootfs_mod.ensure_rootfs()
        shutil.copy(self.build_dir / "id_ed25519", self.key_path)
        self.key_path.chmod(0o600)
        self._make_netns()
        names = [f"core-{i:02d}" for i in range(1, self.n + 1)]
        addresses = {name: f"{SUBNET}.{10 + i}" for i, name in enumerate(names, start=1)}
        for name in names:
            self.nodes.append(self._boot(name, addresses[name], addresses))
        for node in self.nodes:
            node.leader_pid = self._find_leader(node)
        for node in self.nodes:
            self._wait_booted(node, started + self.boot_timeout)
        for node in self.nodes:
            node.ssh_port = node.forward(22).port
            node.etcd_port = node.forward(2379).port
        self._write_known_hosts()
        if self.etcd:
            self._wait_etcd(started + self.boot_timeout)
        self.boot_seconds = time.monotonic() - started

    def ssh_target(self, node: Node) -> SSHTarget:
        """How coreos-lab's SSHRunner reaches ``node``: the loopback forward, the rig's key, strict host keys."""
        from coreos_lab.sshconfig import SSHTarget

        return SSHTarget(
            node.name,
            "127.0.0.1",
            node.ssh_port,
            self.user,
            identity_files=(str(self.key_path),),
            user_known_hosts_file=str(self.known_hosts_path),
            strict_host_key_checking="yes",
            identities_only=True,
        )

    def ssh_config(self) -> str:
        """An OpenSSH client config (``Host core-01`` ...) for ``ssh -F``, inventories and testinfra."""
        blocks = []
        for node in self.nodes:
            blocks.append(
                f"Host {node.name}\n  HostName 127.0.0.1\n  Port {node.ssh_port}\n  User {self.user}\n"
                f"  IdentityFile {self.key_path}\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.known_hosts_path}\n  StrictHostKeyChecking yes\n"
            )
        return "\n".join(blocks)

    def _machine_prefix(self) -> str:
        """Short and unique per rig (two rigs may live in one process): nspawn derives 15-char link names from it."""
        digest = hashlib.sha256(f"{self.netns}/{os.getpid()}/{self._instance}".encode()).hexdigest()
        return "n" + digest[:7]

    def _make_netns(self) -> None:
        if Path(self.netns_path).exists():  # left over by a crashed run of a process with our PID
            _sh(["ip", "netns", "del", self.netns], check=False)
        _sh(["ip", "netns", "add", self.netns])
        _sh(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", self.netns, "link", "add", BRIDGE, "type", "bridge"])
        _sh(["ip", "-n", self.netns, "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
        _sh(["ip", "-n", self.netns, "link", "set", BRIDGE, "up"])

    def _boot(self, name: str, address: str, addresses: dict[str, str]) -> Node:
        nodedir = self.workdir / name
        nodedir.mkdir()
        (nodedir / "host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={address}/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        # /etc/hosts names every node (sudo wants its own hostname to resolve; there is no DNS in the netns)
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        hosts += [f"{a} {n}" for n, a in addresses.items()]
        (nodedir / "hosts").write_text("\n".join(hosts) + "\n")
        binds = [
            f"--bind-ro={nodedir / 'host0.network'}:/etc/systemd/network/80-container-host0.network",
            f"--bind-ro={nodedir / 'hosts'}:/etc/hosts",
        ]
        if self.etcd:
            cluster = ",".join(f"{n}=http://{a}:2380" for n, a in addresses.items())
            (nodedir / "etcd.env").write_text(
                "\n".join(
                    [
                        f"ETCD_NAME={name}",
                        "ETCD_DATA_DIR=/var/lib/etcd/default",
                        "ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380",
                        "ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379",
                        f"ETCD_ADVERTISE_CLIENT_URLS=http://{address}:2379",
                        f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://{address}:2380",
                        f"ETCD_INITIAL_CLUSTER={cluster}",
                        "ETCD_INITIAL_CLUSTER_STATE=new",
                        f"ETCD_INITIAL_CLUSTER_TOKEN={self.netns}",
                        "ETCD_ENABLE_V2=true",
                        "",
                    ]
                )
            )
            binds.append(f"--bind-ro={nodedir / 'etcd.env'}:/etc/coreos-lab/etcd.env")
        machine = f"{self._machine_prefix()}-{name[-2:]}"
        log_path = self.workdir / f"{name}.console.log"
        argv = [
            "nsenter", f"--net={self.netns_path}", "--",
            "systemd-nspawn", "--boot", f"--directory={self.build_dir / 'rootfs'}",
            "--register=no", "--keep-unit", "--volatile=overlay",
            f"--machine={machine}", f"--hostname={name}", f"--uuid={uuid.uuid4()}",
            f"--network-bridge={BRIDGE}", "--console=read-only", "--quiet",
            *binds,
        ]  # fmt: skip
        # Each container gets its own cgroup before nspawn starts. Without systemd on the host, nspawn
        # --keep-unit stays in its caller's cgroup and puts the container in "<that>/payload": containers
        # started from one process would share (and tear down each other's) cgroups, so units fail at
        # random with status 219/CGROUP. The wrapper joins the cgroup, then execs nspawn (argv, no quoting).
        cgroups = [str(root / self.netns / machine) for root in _cgroup_roots()]
        join = 'for d in "$@"; do [ "$d" = -- ] && break; mkdir -p "$d" && echo $$ > "$d/cgroup.procs" || exit 125; '
        join += 'shift; done; shift; exec "$@"'
        argv = ["/bin/sh", "-c", join, "sh", *cgroups, "--", *argv]
        self._cgroups.extend(cgroups)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return Node(name, machine, address, self.netns_path, proc, log_path=log_path)

    def _find_leader(self, node: Node) -> int:
        """The container's PID 1 as the host sees it: the child of nspawn that runs systemd."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if node.nspawn.poll() is not None:
                raise RigError(f"{node.name}: systemd-nspawn exited {node.nspawn.returncode}: {self._tail(node)}")
            for child in _children(node.nspawn.pid):
                try:
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                except OSError:
                    continue
                if comm == "systemd":
                    return child
            time.sleep(0.1)
        raise RigError(f"{node.name}: no systemd inside the container after 30s: {self._tail(node)}")

    def _wait_booted(self, node: Node, deadline: float) -> None:
        state = ""
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            try:
                proc = node.root("systemctl is-system-running --wait", timeout=left)
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = node.root("systemctl --failed --no-legend --plain").stdout.strip()
                    raise RigError(f"{node.name}: booted degraded: {failed}")
                return
            time.sleep(0.3)
        raise RigError(f"{node.name}: not booted before the deadline (state {state!r}): {self._tail(node)}")

    def _wait_etcd(self, deadline: float) -> None:
        import requests

        pending = list(self.nodes)
        last = ""
        while pending and time.monotonic() < deadline:
            for node in list(pending):
                try:
                    resp = requests.get(node.etcd_url + "/health", timeout=2)
                    if resp.ok and resp.json().get("health") == "true":
                        pending.remove(node)
                    else:
                        last = f"{node.name}: {resp.status_code} {resp.text.strip()}"
                except (requests.RequestException, ValueError) as exc:
                    last = f"{node.name}: {exc}"
            if pending:
                time.sleep(0.3)
        if pending:
            journals = "; ".join(
                f"{n.name}: {n.root('journalctl -u etcd --no-pager -n 5 -o cat').stdout.strip()}" for n in pending
            )
            raise RigError(f"etcd not healthy on {[n.name for n in pending]} ({last}); {journals}")

    def _write_known_hosts(self) -> None:
        key = (self.build_dir / "ssh_host_ed25519_key.pub").read_text().split()
        lines = [f"[127.0.0.1]:{node.ssh_port},{node.address} {key[0]} {key[1]}" for node in self.nodes]
        self.known_hosts_path.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        """Power every node off (kill by PID if it will not), close forwards, delete netns and temp files."""
        for node in self.nodes:
            if node.nspawn.poll() is None and node.leader_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.leader_pid, signal.SIGRTMIN + 4)  # systemd: poweroff
        deadline = time.monotonic() + 20
        for node in self.nodes:
            try:
                node.nspawn.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.nspawn.kill()  # nspawn takes its container down with it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.nspawn.wait(10)
            for fwd in node.forwards:
                fwd.close()
        self.nodes.clear()
        for cgroup in self._cgroups:
            _remove_cgroup(Path(cgroup).parent)
        self._cgroups.clear()
        if Path(self.netns_path).exists():
            _sh(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _tail(self, node: Node, lines: int = 5) -> str:
        try:
            text = node.log_path.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _cgroup_roots() -> list[Path]:
    """Where to make per-container cgroups: the v2 root, or (hybrid v1 hosts) the systemd + unified trees."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.controllers").exists():
        return [base]
    return [base / name for name in ("systemd", "unified") if (base / name / "cgroup.procs").exists()]


def _remove_cgroup(path: Path) -> None:
    """Remove a cgroup tree bottom-up (rmdir works once a cgroup has no processes)."""
    if not path.is_dir() or path == Path("/sys/fs/cgroup"):
        return
    for dirpath, _dirs, _files in sorted(os.walk(path, topdown=False), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def prerequisites() -> list[str]:
    """What is missing on this host for the rig (empty when it can run)."""
    missing = [b for b in ("systemd-nspawn", "nsenter", "ip", "debootstrap", "runuser") if shutil.which(b) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@contextlib.contextmanager
def nspawn_cluster(n: int = 3, *, etcd: bool = True) -> Iterator[list[Node]]:
    """``with nspawn_cluster(3) as nodes: ...``: the rig as a plain context manager."""
    with NspawnRig(n, etcd=etcd) as rig:
        yield rig.nodes
