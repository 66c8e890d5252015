"""A throwaway OpenSSH server for tests and benchmarks: Debian's /usr/sbin/sshd on 127.0.0.1:<free port>.

Each ``Sshd`` gets its own directory with a fresh ed25519 host key, config, pid file and an
``authorized_keys`` holding one client key (shared by all servers of a ``KeyPair``), authorized for the
current user. Start with ``Sshd.start(...)``, stop with ``stop()`` (by PID). ``ssh_config_block()`` and
``known_hosts_line()`` plug it into coreos-lab inventories.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "coreos-lab-test") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@dataclass(frozen=True)
class KeyPair:
    """A client key pair in ``directory`` (``id_ed25519`` and ``id_ed25519.pub``)."""

    directory: Path

    @classmethod
    def create(cls, directory: Path) -> KeyPair:
        directory.mkdir(parents=True, exist_ok=True)
        keygen(directory / "id_ed25519", "coreos-lab-test-user")
        return cls(directory)

    @property
    def private(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def public_text(self) -> str:
        return (self.directory / "id_ed25519.pub").read_text()


class Sshd:
    """One sshd process (foreground, -D) serving 127.0.0.1:<port>."""

    def __init__(self, directory: Path, port: int, proc: subprocess.Popen[bytes], user: str) -> None:
        self.directory = directory
        self.port = port
        self.proc = proc
        self.user = user

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def host_key_public(self) -> str:
        return (self.directory / "host_ed25519.pub").read_text().split()[1]

    @classmethod
    def start(
        cls,
        keys: KeyPair,
        base: Path | None = None,
        *,
        port: int | None = None,
        timeout: float = 10.0,
        user: str | None = None,
    ) -> Sshd:
        """Start sshd and wait until it answers with an SSH banner.

        ``user`` is the login the key is authorized for (default: the current user); ``base`` and the
        key directory must be readable by that user.
        """
        if not os.path.exists(SSHD):
            raise FileNotFoundError(SSHD)
        # sshd refuses to start without its privilege-separation directory (normally made by systemd).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="sshd-", dir=base))
        directory.chmod(0o755)
        keygen(directory / "host_ed25519", "coreos-lab-test-host")
        shutil.copyfile(keys.directory / "id_ed25519.pub", directory / "authorized_keys")
        (directory / "authorized_keys").chmod(0o644)
        user = user or pwd.getpwuid(os.getuid()).pw_name
        last_error = ""
        for _ in range(5):  # a free port can be taken between probing and binding; retry a few times
            chosen = port or free_port()
            config = directory / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        f"Port {chosen}",
                        "ListenAddress 127.0.0.1",
                        f"HostKey {directory / 'host_ed25519'}",
                        f"PidFile {directory / 'sshd.pid'}",
                        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                        "StrictModes no",
                        "UsePAM no",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "AllowTcpForwarding yes",
                        "AllowStreamLocalForwarding yes",
                        "MaxStartups 200",
                        "ClientAliveInterval 0",
                        "LogLevel ERROR",
                        "Subsystem sftp internal-sftp",
                        "",
                    ]
                )
            )
            log = open(directory / "sshd.log", "ab")  # noqa: SIM115 - the child keeps it
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
            log.close()
            server = cls(directory, chosen, proc, user)
            if server._wait_ready(timeout):
                return server
            last_error = (directory / "sshd.log").read_text(errors="replace").strip()[-500:]
            server.stop(remove=False)
            if port is not None:
                break
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"sshd did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.settimeout(1.0)
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    @staticmethod
    def _children_map() -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        return children

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes (direct children of the listener)."""
        return self._children_map().get(self.pid, [])

    def _subtree(self, roots: list[int]) -> list[int]:
        children = self._children_map()
        out: list[int] = []
        todo = list(roots)
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, []))
        return out

    def command_pids(self, needle: str) -> list[int]:
        """PIDs of the commands (descendants of this server) whose command line contains ``needle``."""
        found = []
        for pid in self._subtree(self.session_pids()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline and pid != os.getpid():
                found.append(pid)
        return found

    def kill_commands(self, needle: str) -> int:
        """SIGKILL the commands (descendants of this server) whose command line contains ``needle``."""
        pids = self.command_pids(needle)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill_sessions(self) -> int:
        """SIGKILL every connection (and the commands it runs): clients see the connection drop.

        Returns how many connections were killed. The whole subtree is collected before killing so no
        command is left running as an orphan.
        """
        sessions = self.session_pids()
        for pid in self._subtree(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(sessions)

    def stop(self, *, remove: bool = True) -> None:
        """Stop the listener and its session processes, by PID; remove the directory."""
        self.kill_sessions()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def known_hosts_line(self, hostname: str = "127.0.0.1") -> str:
        return f"[{hostname}]:{self.port} ssh-ed25519 {self.host_key_public}\n"

    def ssh_config_block(
        self, name: str, keys: KeyPair, *, known_hosts: Path | str = "/dev/null", strict: str = "no"
    ) -> str:
        return (
            f"Host {name}\n"
            f"  HostName 127.0.0.1\n"
            f"  Port {self.port}\n"
            f"  User {self.user}\n"
            f"  IdentityFile {keys.private}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            f"  StrictHostKeyChecking {strict}\n"
        )


def start_many(keys: KeyPair, count: int, base: Path | None = None, *, user: str | None = None) -> list[Sshd]:
    """Start ``count`` servers (each on its own port); on any failure stop the ones started."""
    servers: list[Sshd] = []
    try:
        for _ in range(count):
            servers.append(Sshd.start(keys, base, user=user))
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers
