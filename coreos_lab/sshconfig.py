"""OpenSSH client configs <-> ``SSHTarget``: how to reach each node.

One parser for three sources that share a format: ``vagrant ssh-config`` output, ``coreos-lab ssh-config``
output, and hand-written inventories (``Host`` blocks). Each concrete ``Host`` alias becomes a node; blocks
with wildcard patterns (``Host *``, ``Host core-*``) are not nodes but supply defaults to the aliases they
match, with OpenSSH's rule that the first value obtained for a keyword wins.

>>> targets = parse_ssh_config("Host core-01\\n  HostName 127.0.0.1\\n  Port 2222\\n  User core\\n")
>>> targets["core-01"].port
2222
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from coreos_lab.errors import ConfigError

STRICT_CHOICES: Final = ("yes", "no", "accept-new", "ask", "off")
DEFAULT_KNOWN_HOSTS: Final = "~/.ssh/known_hosts"

# Keywords we understand; everything else is kept verbatim in ``SSHTarget.options`` so that
# ``format_ssh_config`` can write it back (Vagrant's LogLevel, ForwardAgent, HostKeyAlgorithms ...).
_KNOWN: Final = frozenset(
    {
        "hostname",
        "port",
        "user",
        "identityfile",
        "userknownhostsfile",
        "stricthostkeychecking",
        "identitiesonly",
        "connecttimeout",
        "serveraliveinterval",
    }
)


@dataclass(frozen=True, slots=True)
class SSHTarget:
    """Everything needed to open an SSH connection to one node.

    ``strict_host_key_checking`` is OpenSSH's value: ``yes`` (verify, refuse unknown), ``accept-new``
    (verify, record unknown), ``no`` (Vagrant: record nothing, verify nothing when the known-hosts file
    is /dev/null).
    """

    name: str
    hostname: str
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    user_known_hosts_file: str = DEFAULT_KNOWN_HOSTS
    strict_host_key_checking: str = "yes"
    identities_only: bool = False
    connect_timeout: float | None = None
    server_alive_interval: float | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    @property
    def verify_host_key(self) -> bool:
        """False only for targets that opted out of host-key checking (Vagrant's throwaway VMs)."""
        return self.strict_host_key_checking not in ("no", "off")

    @property
    def known_hosts_path(self) -> Path | None:
        """The expanded known_hosts path, or None when it is /dev/null (nothing recorded)."""
        path = os.path.expanduser(self.user_known_hosts_file.split()[0])
        return None if path == os.devnull else Path(path)

    def with_defaults(self, user: str | None = None) -> SSHTarget:
        """Return a copy with the local user filled in when the config named none (ssh's behaviour)."""
        if self.user is not None:
            return self
        return replace(self, user=user or _local_user())


def _local_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _split_line(raw: str, lineno: int) -> tuple[str, list[str]] | None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    # "Key value", "Key=value" and "Key = value" are all valid OpenSSH syntax.
    key, sep, rest = line.partition("=") if "=" in line.split(None, 1)[0] else (line, "", "")
    if sep:
        keyword, value = key.strip(), rest.strip()
    else:
        parts = line.split(None, 1)
        keyword = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if value.startswith("="):
            value = value[1:].strip()
    try:
        args = shlex.split(value, comments=True, posix=True)
    except ValueError as exc:
        raise ConfigError(f"ssh config line {lineno}: {exc}: {line!r}") from exc
    if not args:
        raise ConfigError(f"ssh config line {lineno}: {keyword} needs a value")
    return keyword.lower(), args


def _is_pattern(alias: str) -> bool:
    return any(ch in alias for ch in "*?!")


def _matches(patterns: Iterable[str], alias: str) -> bool:
    """OpenSSH host matching: any positive pattern matches and no negated pattern does."""
    hit = False
    for pat in patterns:
        if pat.startswith("!"):
            if fnmatch.fnmatchcase(alias, pat[1:]):
                return False
        elif fnmatch.fnmatchcase(alias, pat):
            hit = True
    return hit


@dataclass(slots=True)
class _Block:
    patterns: list[str]
    settings: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (keyword, original, args)
    skip: bool = False  # a Match block: not supported, ignored as a whole


def parse_ssh_config(text: str) -> dict[str, SSHTarget]:
    """Parse an OpenSSH client config into ``{alias: SSHTarget}`` in file order.

    Raises ConfigError (one line, with the line number) on syntax we cannot use: a bad port, an
    unknown StrictHostKeyChecking value, a concrete Host without HostName is fine (HostName defaults to
    the alias, as in ssh).
    """
    blocks: list[_Block] = [_Block(["*"])]  # settings before the first Host apply to every host
    aliases: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        parsed = _split_line(raw, lineno)
        if parsed is None:
            continue
        keyword, args = parsed
        original = raw.strip().split(None, 1)[0].split("=", 1)[0]
        if keyword == "host":
            blocks.append(_Block(args))
            for alias in args:
                if not _is_pattern(alias) and alias not in aliases:
                    aliases.append(alias)
            continue
        if keyword == "match":
            blocks.append(_Block([], skip=True))
            continue
        if keyword == "include":
            raise ConfigError(f"ssh config line {lineno}: Include is not supported in an inventory")
        blocks[-1].settings.append((keyword, original, args))

    targets: dict[str, SSHTarget] = {}
    for alias in aliases:
        targets[alias] = _resolve(alias, blocks)
    return targets


def _resolve(alias: str, blocks: list[_Block]) -> SSHTarget:
    first: dict[str, list[str]] = {}
    identity_files: list[str] = []
    extra: dict[str, tuple[str, str]] = {}
    for block in blocks:
        if block.skip or not _matches(block.patterns, alias):
            continue
        for keyword, original, args in block.settings:
            if keyword == "identityfile":
                # IdentityFile accumulates across blocks, like ssh.
                path = args[0]
                if path not in identity_files:
                    identity_files.append(path)
            elif keyword in _KNOWN:
                first.setdefault(keyword, args)
            else:
                extra.setdefault(keyword, (original, " ".join(_quote_arg(a) for a in args)))

    def one(key: str) -> str | None:
        vals = first.get(key)
        return vals[0] if vals else None

    port_text = one("port") or "22"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"ssh config: host {alias}: bad Port {port_text!r}")
    strict = (one("stricthostkeychecking") or "yes").lower()
    if strict not in STRICT_CHOICES:
        raise ConfigError(f"ssh config: host {alias}: bad StrictHostKeyChecking {strict!r}")
    known = first.get("userknownhostsfile")
    return SSHTarget(
        name=alias,
        hostname=(one("hostname") or alias).replace("%h", alias),
        port=port,
        user=one("user"),
        identity_files=tuple(identity_files),
        user_known_hosts_file=known[0] if known else DEFAULT_KNOWN_HOSTS,
        strict_host_key_checking=strict,
        identities_only=(one("identitiesonly") or "no").lower() == "yes",
        connect_timeout=_float(one("connecttimeout"), alias, "ConnectTimeout"),
        server_alive_interval=_float(one("serveraliveinterval"), alias, "ServerAliveInterval"),
        options=tuple(extra.values()),
    )


def _float(value: str | None, alias: str, what: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"ssh config: host {alias}: bad {what} {value!r}") from None


def _quote_arg(value: str) -> str:
    # OpenSSH accepts double quotes around values with spaces; it has no other escaping.
    return f'"{value}"' if (not value or any(c.isspace() for c in value)) else value


def format_ssh_config(targets: Mapping[str, SSHTarget] | Iterable[SSHTarget]) -> str:
    """Render targets as an OpenSSH client config (``ssh -F``, testinfra, Ansible, fleetctl --tunnel).

    The output parses back to equal targets with ``parse_ssh_config``.
    """
    items = list(targets.values()) if isinstance(targets, Mapping) else list(targets)
    chunks: list[str] = []
    for t in items:
        lines = [f"Host {t.name}", f"  HostName {t.hostname}", f"  Port {t.port}"]
        if t.user:
            lines.append(f"  User {t.user}")
        lines.extend(f"  IdentityFile {_quote_arg(path)}" for path in t.identity_files)
        if t.identities_only:
            lines.append("  IdentitiesOnly yes")
        lines.append(f"  UserKnownHostsFile {_quote_arg(t.user_known_hosts_file)}")
        lines.append(f"  StrictHostKeyChecking {t.strict_host_key_checking}")
        if t.connect_timeout is not None:
            lines.append(f"  ConnectTimeout {t.connect_timeout:g}")
        if t.server_alive_interval is not None:
            lines.append(f"  ServerAliveInterval {t.server_alive_interval:g}")
        lines.extend(f"  {keyword} {value}" for keyword, value in t.options)
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) + ("\n" if chunks else "")
