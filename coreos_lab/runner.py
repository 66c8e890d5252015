"""How to run a command on a node: the result type and the protocol every backend implements.

The SSH backend lives in ``ssh.py`` (the only module importing paramiko); ``LocalRunner`` runs on this
host (tests, and the rig); ``testing.FakeRunner`` answers from a table for unit tests.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from coreos_lab.errors import CommandFailed, CommandTimeout

Cmd = str | Sequence[str]


def render_cmd(cmd: Cmd, *, sudo: bool = False) -> str:
    """Turn an argv list (quoted with shlex) or a ready shell string into one shell line.

    >>> render_cmd(["systemctl", "show", "my app.service"])
    "systemctl show 'my app.service'"
    >>> render_cmd("echo $HOME", sudo=True)
    "sudo -n -- sh -c 'echo $HOME'"
    """
    line = cmd if isinstance(cmd, str) else shlex.join(cmd)
    if sudo:
        line = "sudo -n -- sh -c " + shlex.quote(line)
    return line


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command did on one host. A non-zero exit is data, not an exception."""

    host: str
    cmd: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Return self, or raise CommandFailed when the command exited non-zero."""
        if self.exit_code != 0:
            raise CommandFailed(self.host, self.cmd, self.exit_code, self.stderr)
        return self


@runtime_checkable
class Runner(Protocol):
    """Runs shell commands on one host."""

    @property
    def host(self) -> str: ...

    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult: ...

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        """Write ``data`` to ``path`` on the host atomically (temp file + rename)."""
        ...

    def close(self) -> None: ...


def check(runner: Runner, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False) -> CommandResult:
    """Run and raise CommandFailed on a non-zero exit."""
    return runner.run(cmd, timeout=timeout, sudo=sudo).check()


def run_argv(host: str, argv: Sequence[str], line: str, *, stdin: bytes | None, timeout: float) -> CommandResult:
    """Run ``argv`` (which executes the shell ``line``) as a local process and report it as ``host``'s result.

    The one place local processes become CommandResults: LocalRunner and the test rigs' runners share it.
    """
    start = time.monotonic()
    try:
        proc = subprocess.run(
            list(argv), input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(f"{host}: command timed out after {timeout:g}s: {line}") from exc
    return CommandResult(
        host=host,
        cmd=line,
        exit_code=proc.returncode,
        stdout=proc.stdout.decode("utf-8", "replace"),
        stderr=proc.stderr.decode("utf-8", "replace"),
        duration=time.monotonic() - start,
    )


class LocalRunner:
    """Runs commands on this host with /bin/sh (used by tests and the rig, never for nodes)."""

    def __init__(self, host: str = "localhost", default_timeout: float = 60.0) -> None:
        self._host = host
        self.default_timeout = default_timeout

    @property
    def host(self) -> str:
        return self._host

    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult:
        line = render_cmd(cmd, sudo=sudo)
        limit = timeout if timeout is not None else self.default_timeout
        return run_argv(self._host, ["/bin/sh", "-c", line], line, stdin=stdin, timeout=limit)

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        tmp = f"{path}.coreos-lab-tmp"
        qtmp, qpath = shlex.quote(tmp), shlex.quote(path)
        line = f"cat > {qtmp} && chmod {mode:o} {qtmp} && mv -f {qtmp} {qpath}"
        self.run(line, sudo=sudo, stdin=data).check()

    def close(self) -> None:
        return None
