"""The error model: one base class carrying an exit code; only the CLI prints and exits.

Exit codes: 1 runtime failure (a server, a node, a file), 2 bad input (flags, config, unit files).
Never base these on RuntimeError: click's Exit/Abort subclass it.
"""

from __future__ import annotations


class CoreosLabError(Exception):
    """Base of every error coreos-lab raises on purpose.

    ``str(err)`` is a single line meant for the user; ``hint`` is an optional second sentence
    telling them what to do about it.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        text = " ".join(self.message.split())  # one line, always
        if self.hint:
            text = f"{text} ({' '.join(self.hint.split())})"
        return text


class UsageError(CoreosLabError):
    """Bad flags or arguments."""

    exit_code = 2


class ConfigError(CoreosLabError):
    """A lab config file (coreos-lab.toml), inventory or template input is invalid."""

    exit_code = 2


class UnitFileError(CoreosLabError):
    """A systemd unit file (or its [X-Fleet] section) is invalid."""

    exit_code = 2


class DiscoveryError(CoreosLabError):
    """The etcd discovery service failed or answered garbage."""


class VagrantError(CoreosLabError):
    """Vagrant is missing, failed, or answered something we cannot use."""


class VagrantLostSSH(VagrantError):
    """Vagrant lost its SSH connection to machines during its boot steps (``machines``: the ones it named).

    Seen on software-emulated nodes under load (``no route to host`` while a node was busy with its first boot);
    the machines run, but Vagrant's steps after the boot (hostname, networks, provisioners) are incomplete.
    """

    def __init__(self, message: str, *, machines: tuple[str, ...] = (), reason: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.machines = machines
        self.reason = reason


class SSHError(CoreosLabError):
    """A node could not be reached or authenticated over SSH."""


class HostKeyError(SSHError):
    """A host key is unknown (and not accepted) or has changed."""


class CommandFailed(CoreosLabError):
    """A command on a node exited non-zero where success was required."""

    def __init__(self, host: str, cmd: str, exit_code: int, stderr: str) -> None:
        tail = " | ".join(line for line in stderr.strip().splitlines()[-3:] if line.strip())
        message = f"{host}: command exited {exit_code}: {cmd}"
        if tail:
            message += f": {tail}"
        super().__init__(message)
        self.host = host
        self.cmd = cmd
        self.remote_exit_code = exit_code
        self.stderr = stderr


class CommandTimeout(SSHError):
    """A command on a node did not finish within its timeout."""


class EtcdError(CoreosLabError):
    """etcd answered an error, garbage, or not at all."""


class FleetError(CoreosLabError):
    """fleet's API answered an error or garbage."""


class SchedulingError(CoreosLabError):
    """No node satisfies a unit's placement constraints."""


class BoxError(CoreosLabError):
    """Building or adding the lab box failed."""
