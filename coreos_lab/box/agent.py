#!/usr/bin/python3
"""The lab box's cloud-config agent, installed in the image as ``/usr/bin/coreos-cloudinit``.

It applies the subset of cloud-config our templates use with the semantics of Flatcar's coreos-cloudinit:

1. ``$private_ipv4`` / ``$public_ipv4`` (and ``_ipv6``) are replaced textually in the raw user-data, from
   ``COREOS_*`` variables of the environment or ``/etc/environment``; unset means empty.
2. ``hostname`` (cut at the first ``.``, at most 63 characters) and the core user's ``ssh_authorized_keys``,
   then ``users``, then ``write_files``, then ``manage_etc_hosts``, then units.
3. ``coreos.etcd``/``etcd2``/``fleet`` become runtime drop-ins ``20-cloudinit.conf`` with one
   ``Environment="PREFIX_KEY=value"`` per non-empty key (``flannel`` -> ``/run/flannel/options.env``);
   they neither enable nor start anything by themselves.
4. ``coreos.units``: content / drop-ins / mask / enable, then ONE ``daemon-reload`` if anything was written,
   then each unit's ``command`` in order (without waiting for the job, like coreos-cloudinit's D-Bus call).

Unknown keys are warned about, never fatal. A unit that does not exist in the box (Docker before issue 7) is
a warning, not a failed run. Runs with nothing but the Python standard library and PyYAML, so it can live
inside the image; the unit tests drive it against a temporary root with a recording command runner.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

RunFn = Callable[[Sequence[str]], "tuple[int, str]"]

HEADER: Final = "#cloud-config"
UNIT_COMMANDS: Final = frozenset(
    {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "reload-or-try-restart"}
)
NETWORK_SUFFIXES: Final = (".network", ".netdev", ".link")
TOP_KEYS: Final = frozenset({"hostname", "ssh_authorized_keys", "users", "write_files", "coreos", "manage_etc_hosts"})
COREOS_KEYS: Final = frozenset({"units", "etcd", "etcd2", "fleet", "flannel", "update", "locksmith", "oem"})
UNIT_KEYS: Final = frozenset({"name", "runtime", "enable", "content", "command", "mask", "drop_ins"})
USER_KEYS: Final = frozenset(
    {
        "name",
        "passwd",
        "gecos",
        "homedir",
        "no_create_home",
        "primary_group",
        "groups",
        "no_user_group",
        "ssh_authorized_keys",
        "system",
        "shell",
    }
)
FILE_KEYS: Final = frozenset({"path", "content", "encoding", "permissions", "owner"})
# coreos.<section> -> (unit whose drop-in carries it, environment prefix)
ENV_SECTIONS: Final = {
    "etcd": ("etcd.service", "ETCD_"),
    "etcd2": ("etcd2.service", "ETCD_"),
    "fleet": ("fleet.service", "FLEET_"),
}
PLACEHOLDERS: Final = ("private_ipv4", "public_ipv4", "private_ipv6", "public_ipv6")


class AgentError(Exception):
    """The user-data cannot be applied at all (unreadable, not cloud-config, broken YAML)."""


class _Int(int):
    """An int that remembers how it was written: ``permissions: 0644`` means octal text, as in Go's parser."""

    text: str = ""


class _Loader(yaml.SafeLoader):
    pass


def _construct_int(loader: yaml.SafeLoader, node: yaml.nodes.ScalarNode) -> _Int:
    value = _Int(loader.construct_yaml_int(node))
    value.text = str(node.value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@dataclass
class Report:
    """What one run did: warnings (non-fatal), errors (the run fails), and the commands it ran."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reloaded: bool = False

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        _log(f"warning: {message}")

    def error(self, message: str) -> None:
        self.errors.append(message)
        _log(f"error: {message}")


def _log(message: str) -> None:
    print(f"coreos-cloudinit: {message}", file=sys.stderr, flush=True)  # noqa: T201 - the journal is our log


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run a command on this host; return (exit code, stdout+stderr)."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def substitute(raw: str, env: Mapping[str, str]) -> str:
    """Replace ``$private_ipv4`` etc. textually from ``COREOS_PRIVATE_IPV4`` etc.; unset -> empty.

    >>> substitute("ip: $private_ipv4/$public_ipv4", {"COREOS_PRIVATE_IPV4": "10.0.0.5"})
    'ip: 10.0.0.5/'
    """
    for name in PLACEHOLDERS:
        raw = raw.replace(f"${name}", env.get(f"COREOS_{name.upper()}", ""))
    return raw


def read_environment_file(path: Path) -> dict[str, str]:
    """Parse KEY=value lines of /etc/environment (quotes stripped, comments ignored)."""
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip("'\"")
    return env


def parse(raw: str) -> dict[str, Any]:
    """Parse cloud-config text; raise AgentError when it is not cloud-config or not valid YAML."""
    if not raw.lstrip().startswith(HEADER):
        raise AgentError(f"user-data does not start with {HEADER!r} (scripts and Ignition are not supported)")
    try:
        data = yaml.load(raw, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise AgentError(f"user-data is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AgentError("user-data must be a YAML mapping")
    return data


class Agent:
    """Applies one parsed cloud-config under ``root`` (``/`` in the box, a temp dir in tests)."""

    def __init__(self, root: Path = Path("/"), run: RunFn = run_command) -> None:
        self.root = root
        self.run = run
        self.report = Report()

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    # -- entry point ---------------------------------------------------------------------------------
    def apply(self, config: Mapping[str, Any]) -> Report:
        """Apply ``config`` in coreos-cloudinit's order and return the report."""
        for key in config:
            if key not in TOP_KEYS:
                self.report.warn(f"unrecognized key {key!r} ignored")
        coreos = config.get("coreos") or {}
        if not isinstance(coreos, dict):
            self.report.warn("'coreos' is not a mapping; ignored")
            coreos = {}
        for key in coreos:
            if key not in COREOS_KEYS:
                self.report.warn(f"unrecognized key 'coreos.{key}' ignored")
        if config.get("hostname"):
            self.set_hostname(str(config["hostname"]))
        if config.get("ssh_authorized_keys"):
            self.add_ssh_keys("core", _str_list(config["ssh_authorized_keys"]))
        for user in _list(config.get("users"), "users", self.report):
            self.apply_user(user)
        for entry in _list(config.get("write_files"), "write_files", self.report):
            self.write_file(entry)
        if config.get("manage_etc_hosts"):
            self.manage_etc_hosts(config["manage_etc_hosts"], str(config.get("hostname") or ""))
        self.apply_units(coreos)
        return self.report

    # -- hostname, keys, users -----------------------------------------------------------------------
    def set_hostname(self, hostname: str) -> None:
        name = hostname.split(".", 1)[0][:63]
        self._write(self.path("/etc/hostname"), (name + "\n").encode(), 0o644)
        rc, out = self.run(["hostname", name])
        if rc != 0:
            self.report.warn(f"hostname {name}: {out}")

    def add_ssh_keys(self, user: str, keys: list[str]) -> None:
        home = self._home(user)
        if home is None:
            self.report.warn(f"ssh_authorized_keys: no user {user!r}")
            return
        auth = self.path(home) / ".ssh" / "authorized_keys"
        existing = auth.read_text(encoding="utf-8").splitlines() if auth.exists() else []
        merged = existing + [k.strip() for k in keys if k.strip() and k.strip() not in existing]
        auth.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write(auth, ("\n".join(merged) + "\n").encode(), 0o600, owner=user)
        self._chown(auth.parent, user)

    def apply_user(self, user: Any) -> None:
        if not isinstance(user, dict) or not user.get("name"):
            self.report.warn("users entry without a name ignored")
            return
        for key in user:
            if key not in USER_KEYS:
                self.report.warn(f"unrecognized key 'users.{key}' ignored")
        name = str(user["name"])
        if self._passwd_entry(name) is not None:
            if user.get("passwd"):
                self._must(["usermod", "--password", str(user["passwd"]), name], f"users {name}")
        else:
            argv = ["useradd"]
            for key, flag in (("passwd", "--password"), ("gecos", "--comment"), ("homedir", "--home-dir")):
                if user.get(key):
                    argv += [flag, str(user[key])]
            argv += ["--no-create-home"] if user.get("no_create_home") else ["--create-home"]
            if user.get("primary_group"):
                argv += ["--gid", str(user["primary_group"])]
            if user.get("groups"):
                argv += ["--groups", ",".join(_str_list(user["groups"]))]
            if user.get("no_user_group"):
                argv.append("--no-user-group")
            if user.get("system"):
                argv.append("--system")
            if user.get("shell"):
                argv += ["--shell", str(user["shell"])]
            self._must([*argv, name], f"users {name}")
        if user.get("ssh_authorized_keys"):
            self.add_ssh_keys(name, _str_list(user["ssh_authorized_keys"]))

    # -- write_files ---------------------------------------------------------------------------------
    def write_file(self, entry: Any) -> None:
        if not isinstance(entry, dict) or not entry.get("path"):
            self.report.warn("write_files entry without a path ignored")
            return
        for key in entry:
            if key not in FILE_KEYS:
                self.report.warn(f"unrecognized key 'write_files.{key}' ignored")
        target = str(entry["path"])
        try:
            data = decode_content(entry.get("content"), entry.get("encoding"))
            mode = parse_permissions(entry.get("permissions"))
        except ValueError as exc:
            self.report.error(f"write_files {target}: {exc}")
            return
        try:
            self._write(self.path(target), data, mode, owner=str(entry["owner"]) if entry.get("owner") else None)
        except OSError as exc:
            self.report.error(f"write_files {target}: {exc}")

    def manage_etc_hosts(self, value: Any, hostname: str) -> None:
        if value != "localhost":
            self.report.warn(f"manage_etc_hosts: only 'localhost' is supported, got {value!r}")
            return
        name = hostname.split(".", 1)[0][:63] or "localhost"
        self._write(self.path("/etc/hosts"), f"127.0.0.1 {name}\n127.0.0.1 localhost\n::1 localhost\n".encode(), 0o644)

    # -- units ---------------------------------------------------------------------------------------
    def apply_units(self, coreos: Mapping[str, Any]) -> None:
        written = False
        network_written = False
        for section, (unit, prefix) in ENV_SECTIONS.items():
            if coreos.get(section):
                written |= self.env_dropin(unit, prefix, coreos[section], section)
        if coreos.get("flannel"):
            written |= self.flannel_env(coreos["flannel"])
        for section in ("update", "locksmith"):
            if coreos.get(section):
                self.report.warn(f"coreos.{section} is not supported by the lab box; ignored")
        actions: list[tuple[str, str]] = []
        for unit in _list(coreos.get("units"), "coreos.units", self.report):
            if not isinstance(unit, dict) or not unit.get("name"):
                continue  # coreos-cloudinit skips nameless units silently
            wrote, net = self.apply_unit(unit)
            written |= wrote
            network_written |= net
            command = unit.get("command")
            if command:
                if str(command) in UNIT_COMMANDS:
                    actions.append((str(unit["name"]), str(command)))
                else:
                    self.report.warn(f"unit {unit['name']}: unknown command {command!r} ignored")
        if written:
            self.report.reloaded = True
            self._must(["systemctl", "daemon-reload"], "daemon-reload")
        if network_written:
            self._must(["systemctl", "restart", "systemd-networkd.service"], "restart systemd-networkd")
        for name, command in actions:
            self.unit_command(name, command)

    def apply_unit(self, unit: Mapping[str, Any]) -> tuple[bool, bool]:
        """Write one unit's files; return (anything written, a network unit written)."""
        name = str(unit["name"])
        for key in unit:
            if key not in UNIT_KEYS:
                hint = " (did you mean drop_ins? hyphenated keys are not read)" if key == "drop-ins" else ""
                self.report.warn(f"unrecognized key 'units.{key}' of {name} ignored{hint}")
        runtime = _bool(unit.get("runtime"), f"{name}.runtime", self.report)
        is_network = name.endswith(NETWORK_SUFFIXES)
        base = self.path("/run/systemd" if runtime else "/etc/systemd") / ("network" if is_network else "system")
        unit_path = base / name
        written = False
        content = unit.get("content")
        if content:
            self._write(unit_path, str(content).encode(), 0o644)
            written = True
        for dropin in _list(unit.get("drop_ins"), f"{name}.drop_ins", self.report):
            if isinstance(dropin, dict) and dropin.get("name") and dropin.get("content"):
                self._write(base / f"{name}.d" / str(dropin["name"]), str(dropin["content"]).encode(), 0o644)
                written = True
            else:
                self.report.warn(f"unit {name}: drop-in without name or content ignored")
        if _bool(unit.get("mask"), f"{name}.mask", self.report):
            unit_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                unit_path.unlink()
            unit_path.symlink_to("/dev/null")
            written = True
        elif runtime and _is_masked_or_empty(self.path("/run/systemd/system") / name):
            (self.path("/run/systemd/system") / name).unlink()  # unmask, as coreos-cloudinit does
            written = True
        if _bool(unit.get("enable"), f"{name}.enable", self.report) and not is_network:
            # `systemctl enable` reads unit files from disk: no daemon-reload needed before it (only one, after
            # all units, as coreos-cloudinit does).
            argv = ["systemctl", "enable", "--force"] + (["--runtime"] if runtime else []) + [name]
            rc, out = self.run(argv)
            if rc != 0:
                self._unit_failed(name, "enable", out)
        return written, is_network and written

    def unit_command(self, name: str, command: str) -> None:
        rc, out = self.run(["systemctl", "--no-block", "--job-mode=replace", command, name])
        if rc != 0:
            self._unit_failed(name, command, out)

    def _unit_failed(self, name: str, what: str, output: str) -> None:
        if _unit_missing(output):
            self.report.warn(f"{what} {name}: this box has no {name}; skipped ({output})")
        else:
            self.report.error(f"{what} {name}: {output}")

    def env_dropin(self, unit: str, prefix: str, section: Any, label: str) -> bool:
        """coreos.etcd2/etcd/fleet -> runtime drop-in 20-cloudinit.conf with Environment= lines."""
        self.report.warn(f"coreos.{label} is deprecated; use coreos.units with a drop-in")
        if not isinstance(section, dict):
            self.report.warn(f"coreos.{label} is not a mapping; ignored")
            return False
        lines = ["[Service]"]
        for key, value in section.items():
            text = _scalar(value)
            if text:
                lines.append(f'Environment="{prefix}{str(key).replace("-", "_").upper()}={text}"')
        path = self.path("/run/systemd/system") / f"{unit}.d" / "20-cloudinit.conf"
        self._write(path, ("\n".join(lines) + "\n").encode(), 0o644)
        return True

    def flannel_env(self, section: Any) -> bool:
        if not isinstance(section, dict):
            self.report.warn("coreos.flannel is not a mapping; ignored")
            return False
        lines = []
        for key, value in section.items():
            name = "IFACE" if key == "interface" else str(key).replace("-", "_").upper()
            if _scalar(value):
                lines.append(f"FLANNELD_{name}={_scalar(value)}")
        self._write(self.path("/run/flannel/options.env"), ("\n".join(lines) + "\n").encode(), 0o644)
        return False

    # -- helpers -------------------------------------------------------------------------------------
    def _must(self, argv: Sequence[str], what: str) -> None:
        rc, out = self.run(argv)
        if rc != 0:
            self.report.error(f"{what}: {out}")

    def _write(self, path: Path, data: bytes, mode: int, owner: str | None = None) -> None:
        """Temp file + chmod + chown + rename; parents 0755."""
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, mode)
            if owner:
                self._chown(Path(tmp), owner)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _chown(self, path: Path, owner: str) -> None:
        user, _, group = owner.partition(":")
        uid = self._id(user, "/etc/passwd")
        gid = self._id(group, "/etc/group") if group else -1
        if uid is None or gid is None:
            self.report.warn(f"{path}: unknown owner {owner!r}; left as root")
            return
        if gid == -1:
            entry = self._passwd_entry(user)
            gid = int(entry[3]) if entry else -1
        os.chown(path, uid, gid)

    def _id(self, name: str, table: str) -> int | None:
        if name.isdigit():
            return int(name)
        entry = self._table_entry(table, name)
        return int(entry[2]) if entry else None

    def _passwd_entry(self, name: str) -> list[str] | None:
        return self._table_entry("/etc/passwd", name)

    def _table_entry(self, table: str, name: str) -> list[str] | None:
        with contextlib.suppress(OSError):
            for line in self.path(table).read_text(encoding="utf-8").splitlines():
                fields = line.split(":")
                if fields and fields[0] == name and len(fields) >= 3:
                    return fields
        return None

    def _home(self, user: str) -> str | None:
        entry = self._passwd_entry(user)
        return entry[5] if entry and len(entry) > 5 else None


def decode_content(content: Any, encoding: Any) -> bytes:
    """Decode a write_files ``content`` per its ``encoding`` (b64/base64, gz/gzip, gz+b64 and spellings)."""
    text = "" if content is None else str(content)
    enc = str(encoding or "").strip().lower()
    if enc in ("", "text", "text/plain"):
        return text.encode()
    if enc in ("b64", "base64"):
        return _b64(text)
    if enc in ("gz", "gzip"):
        return _gunzip(text.encode("latin-1"))
    if enc in ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
        return _gunzip(_b64(text))
    raise ValueError(f"unsupported encoding {encoding!r}")


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError as exc:
        raise ValueError("content is not valid base64") from exc


def _gunzip(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise ValueError("content is not valid gzip") from exc


def parse_permissions(value: Any) -> int:
    """Octal permissions as written (``0644``, ``'0644'``, ``644``); default 0644."""
    if value is None or value == "":
        return 0o644
    text = value.text if isinstance(value, _Int) and value.text else str(value)
    text = text.strip()
    if text.lower().startswith("0o"):
        text = text[2:]
    if not re.fullmatch(r"[0-7]{1,4}", text):
        raise ValueError(f"permissions {value!r} is not an octal mode")
    return int(text, 8)


def _is_masked_or_empty(path: Path) -> bool:
    if path.is_symlink():
        return os.readlink(path) == "/dev/null"
    return path.is_file() and path.stat().st_size == 0


def _unit_missing(output: str) -> bool:
    low = output.lower()
    return "not found" in low or "does not exist" in low or "no such file" in low


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _bool(value: Any, label: str, report: Report) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        report.warn(f"{label}: expected true or false, got {value!r}")
        return str(value).lower() in ("true", "yes", "1")
    return value


def _list(value: Any, label: str, report: Report) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        report.warn(f"{label} is not a list; ignored")
        return []
    return value


def _str_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def apply_file(
    path: Path, *, root: Path = Path("/"), run: RunFn = run_command, env: Mapping[str, str] | None = None
) -> Report:
    """Read, substitute, parse and apply one user-data file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc}") from exc
    environment = dict(read_environment_file(root / "etc/environment"))
    environment.update(env if env is not None else os.environ)
    return Agent(root, run).apply(parse(substitute(raw, environment)))


def main(argv: Sequence[str] | None = None) -> int:
    """``coreos-cloudinit --from-file=PATH [--root DIR]``: 0 applied (maybe with warnings), 1 failed."""
    parser = argparse.ArgumentParser(prog="coreos-cloudinit", description=__doc__.splitlines()[0])
    parser.add_argument("--from-file", required=True, type=Path, help="cloud-config user-data file")
    parser.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A `vagrant provision` may replace the file while we run: apply until the content we applied is current.
    applied: str | None = None
    failed = False
    for _ in range(3):
        try:
            digest = hashlib.sha256(args.from_file.read_bytes()).hexdigest()
        except OSError as exc:
            _log(f"error: cannot read {args.from_file}: {exc}")
            return 1
        if digest == applied:
            break
        try:
            report = apply_file(args.from_file, root=args.root)
        except AgentError as exc:
            _log(f"error: {exc}")
            return 1
        applied = digest
        failed = bool(report.errors)
        _log(f"applied {args.from_file} ({len(report.warnings)} warnings, {len(report.errors)} errors)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
