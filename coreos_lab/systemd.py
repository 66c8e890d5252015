"""Ask systemd on a node about its units, and change them: a client built on any :class:`~coreos_lab.runner.Runner`.

The client does no I/O of its own: it builds argv lists (quoted by ``render_cmd``; unit names always come
after ``--`` or as ``--unit=NAME``), runs them through the runner and parses the answers into frozen
dataclasses. Privileged operations use ``sudo=True`` (the nodes' user ``core`` has passwordless sudo).

>>> from coreos_lab.testing import FakeRunner
>>> runner = FakeRunner("core-01", {r"systemctl show": "Id=etcd.service\\nActiveState=active\\n"})
>>> SystemdClient(runner).show("etcd.service").active_state
'active'
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coreos_lab.errors import CommandFailed, CoreosLabError, UnitFileError
from coreos_lab.runner import Runner
from coreos_lab.unitfile import UNIT_NAME_MAX, check_unit_name, validate_unit_pattern

UNIT_DIR = "/etc/systemd/system"
# Units that exist only at run time: systemd never loads them from a unit file.
_NOT_INSTALLABLE = (".scope", ".device")

_DROP_IN = re.compile(r"[A-Za-z0-9:_.@-]+\.conf")

SHOW_PROPERTIES = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "ExecMainStatus",
    "ActiveEnterTimestamp",
    "FragmentPath",
    "UnitFileState",
    "Result",
    "NRestarts",
    "InvocationID",
)


def validate_drop_in_name(name: str) -> str:
    """A drop-in file name such as ``10-env.conf`` (no paths, ends in ``.conf``)."""
    if not _DROP_IN.fullmatch(name) or name.startswith(".") or len(name) > UNIT_NAME_MAX:
        raise UnitFileError(f"invalid drop-in name {name[:80]!r}: use [A-Za-z0-9:_.@-] and end in .conf")
    return name


@dataclass(frozen=True, slots=True)
class UnitState:
    """What ``systemctl show`` says about one unit. Empty strings and 0 where systemd reports nothing."""

    name: str
    id: str = ""
    description: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    main_pid: int = 0
    exec_main_status: int = 0
    active_enter_timestamp: datetime | None = None
    fragment_path: str = ""
    unit_file_state: str = ""
    result: str = ""  # why the last run ended: success, exit-code, signal, timeout ...
    n_restarts: int = 0  # automatic restarts (Restart=) since the last manual start
    invocation_id: str | None = None  # changes with every start; None: this systemd does not report it

    @property
    def summary(self) -> str:
        """``failed/failed (result exit-code, status 3)``: the state, and why when systemd says so."""
        text = f"{self.active_state or '-'}/{self.sub_state or '-'}"
        why = []
        if self.result and self.result != "success":
            why.append(f"result {self.result}")
        if self.exec_main_status:
            why.append(f"status {self.exec_main_status}")
        if self.n_restarts:
            why.append(f"{self.n_restarts} restart{'s' if self.n_restarts != 1 else ''}")
        return text + (f" ({', '.join(why)})" if why else "")

    @property
    def is_active(self) -> bool:
        return self.active_state == "active"

    @property
    def is_failed(self) -> bool:
        return self.active_state == "failed"

    @property
    def exists(self) -> bool:
        """False when systemd has no unit file for this name (LoadState=not-found)."""
        return self.load_state not in ("", "not-found")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "description": self.description,
            "load_state": self.load_state,
            "active_state": self.active_state,
            "sub_state": self.sub_state,
            "main_pid": self.main_pid,
            "exec_main_status": self.exec_main_status,
            "active_enter_timestamp": self.active_enter_timestamp.isoformat() if self.active_enter_timestamp else None,
            "fragment_path": self.fragment_path,
            "unit_file_state": self.unit_file_state,
        }


@dataclass(frozen=True, slots=True)
class SystemctlUnit:
    """One line of ``systemctl list-units`` (a unit as the node's systemd lists it)."""

    unit: str
    load: str
    active: str
    sub: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {
            "unit": self.unit,
            "load": self.load,
            "active": self.active,
            "sub": self.sub,
            "description": self.description,
        }


def parse_timestamp(value: str) -> datetime | None:
    """systemd's ``--timestamp=unix`` form (``@1700000000``) to an aware datetime; empty or 0 means never.

    >>> parse_timestamp("@0") is None, parse_timestamp("@1700000000").year
    (True, 2023)
    """
    value = value.strip()
    if not value.startswith("@"):
        return None
    try:
        seconds = float(value[1:])
        return datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else None
    except (ValueError, OverflowError, OSError):  # garbage, inf/nan, or beyond datetime's range
        return None


def _int(value: str) -> int:
    try:
        return int(value.strip() or 0)
    except ValueError:
        return 0


def show_argv(units: Sequence[str]) -> list[str]:
    """``systemctl show`` of several (validated) units with the properties :func:`parse_show` reads."""
    names = [check_unit_name(u) for u in units]
    return ["systemctl", "show", "--timestamp=unix", "-p", ",".join(SHOW_PROPERTIES), "--", *names]


def parse_show(text: str, names: Sequence[str]) -> list[UnitState]:
    """Parse ``systemctl show -p ...`` output for several units: blocks separated by blank lines, in order."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    if len(blocks) != len(names):
        raise CoreosLabError(f"systemctl show answered {len(blocks)} blocks for {len(names)} units")
    return [
        UnitState(
            name=name,
            id=block.get("Id", ""),
            description=block.get("Description", ""),
            load_state=block.get("LoadState", ""),
            active_state=block.get("ActiveState", ""),
            sub_state=block.get("SubState", ""),
            main_pid=_int(block.get("MainPID", "")),
            exec_main_status=_int(block.get("ExecMainStatus", "")),
            active_enter_timestamp=parse_timestamp(block.get("ActiveEnterTimestamp", "")),
            fragment_path=block.get("FragmentPath", ""),
            unit_file_state=block.get("UnitFileState", ""),
            result=block.get("Result", ""),
            n_restarts=_int(block.get("NRestarts", "")),
            invocation_id=block.get("InvocationID"),
        )
        for name, block in zip(names, blocks, strict=True)
    ]


def parse_list_units(text: str) -> list[SystemctlUnit]:
    """``systemctl list-units`` output: JSON (``--output=json``, systemd >= 250) or the plain table."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise CoreosLabError(f"systemctl list-units answered broken JSON: {exc}") from exc
        if not isinstance(items, list):
            raise CoreosLabError("systemctl list-units answered JSON that is not a list")
        return [
            SystemctlUnit(
                unit=str(item.get("unit", "")),
                load=str(item.get("load", "")),
                active=str(item.get("active", "")),
                sub=str(item.get("sub", "")),
                description=str(item.get("description", "")),
            )
            for item in items
            if isinstance(item, dict)
        ]
    rows = []
    for line in stripped.splitlines():
        parts = line.split(None, 4)
        if parts and parts[0] in ("●", "*"):  # the failed/not-found marker some versions print
            parts = line.split(None, 5)[1:]
        if len(parts) < 4:
            continue
        rows.append(SystemctlUnit(parts[0], parts[1], parts[2], parts[3], parts[4] if len(parts) > 4 else ""))
    return rows


def _script(*argvs: Sequence[str]) -> str:
    """Several argv lists as one shell line (each quoted), run in order whatever their exit codes."""
    return "; ".join(shlex.join(list(argv)) for argv in argvs)


class SystemdClient:
    """systemctl and journalctl on one node, through its runner."""

    def __init__(self, runner: Runner, *, timeout: float = 60.0) -> None:
        self.runner = runner
        self.timeout = timeout

    # -- reading ---------------------------------------------------------------------------------------

    def show(self, unit: str) -> UnitState:
        """The state of one unit (a unit systemd does not know has ``load_state == "not-found"``)."""
        return self.show_many([unit])[0]

    def show_many(self, units: Sequence[str]) -> list[UnitState]:
        """The states of several units in one ``systemctl show`` call, in the order given."""
        names = [check_unit_name(u) for u in units]
        if not names:
            return []
        result = self.runner.run(show_argv(names), timeout=self.timeout).check()
        return parse_show(result.stdout, names)

    def is_active(self, unit: str) -> bool:
        return self.show(unit).is_active

    def list_units(self, pattern: str | None = None) -> list[SystemctlUnit]:
        """Loaded units (all states) matching a glob, e.g. ``etcd*`` or ``*.service``."""
        argv = ["systemctl", "list-units", "--all", "--no-legend", "--plain", "--full", "--no-pager", "--output=json"]
        if pattern:
            argv += ["--", validate_unit_pattern(pattern)]
        result = self.runner.run(argv, timeout=self.timeout).check()
        return parse_list_units(result.stdout)

    def journal(self, unit: str, lines: int = 50, since: str | None = None) -> str:
        """The unit's last ``lines`` journal lines (``short-iso``); ``since`` is journalctl's ``--since``."""
        text, _ = self.journal_after(unit, lines=lines, since=since)
        return text

    def journal_after(
        self, unit: str, *, cursor: str | None = None, lines: int | None = 50, since: str | None = None
    ) -> tuple[str, str | None]:
        """Journal lines after ``cursor`` (or the last ``lines``) and the cursor to continue from (for ``-f``)."""
        argv = ["journalctl", f"--unit={check_unit_name(unit)}", "--no-pager", "-o", "short-iso", "--show-cursor"]
        if cursor:
            argv.append(f"--after-cursor={cursor}")
        elif lines is not None:
            if lines < 0:
                raise UnitFileError("journal lines must be >= 0")
            argv.append(f"--lines={lines}")
        if since:
            argv.append(f"--since={since}")
        result = self.runner.run(argv, sudo=True, timeout=self.timeout)
        out_lines, next_cursor = [], cursor
        for line in result.stdout.splitlines():
            if line.startswith("-- cursor: "):
                next_cursor = line[len("-- cursor: ") :].strip()
            elif line.strip() != "-- No entries --":
                out_lines.append(line)
        # journalctl exits 1 for "no entries" with --show-cursor; anything said on stderr is a real failure.
        if result.exit_code != 0 and (out_lines or result.stderr.strip()):
            result.check()
        text = "\n".join(out_lines)
        return (text + "\n" if text else ""), next_cursor

    def wait_active(self, unit: str, timeout: float = 30.0, interval: float = 0.5) -> UnitState:
        """Poll until the unit is active or failed and return its state; raise if neither within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(unit)
            if state.is_active or state.is_failed:
                return state
            if time.monotonic() >= deadline:
                raise CoreosLabError(
                    f"{self.runner.host}: {unit} not active after {timeout:g}s "
                    f"(ActiveState={state.active_state or '-'}, SubState={state.sub_state or '-'})"
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))

    # -- changing --------------------------------------------------------------------------------------

    def _systemctl(self, verb: str, *units: str) -> None:
        names = [check_unit_name(u) for u in units]
        self.runner.run(["systemctl", verb, "--", *names], sudo=True, timeout=self.timeout).check()

    def start(self, unit: str) -> None:
        self._systemctl("start", unit)

    def stop(self, unit: str) -> None:
        self._systemctl("stop", unit)

    def restart(self, unit: str) -> None:
        self._systemctl("restart", unit)

    def enable(self, unit: str) -> None:
        self._systemctl("enable", unit)

    def disable(self, unit: str) -> None:
        self._systemctl("disable", unit)

    def daemon_reload(self) -> None:
        self.runner.run(["systemctl", "daemon-reload"], sudo=True, timeout=self.timeout).check()

    def install(self, name: str, content: str | bytes, drop_ins: Mapping[str, str | bytes] | None = None) -> None:
        """Write a unit file (and its drop-ins) to /etc/systemd/system, then daemon-reload.

        ``name`` must be a unit or a template (``name@.service``), not an instance. Each drop-in lands in
        ``/etc/systemd/system/<name>.d/<dropin>``.
        """
        check_unit_name(name, allow_instance=False)
        if name.endswith(_NOT_INSTALLABLE):
            raise UnitFileError(f"{name}: {name.rsplit('.', 1)[1]} units cannot be installed from a file")
        drop_ins = dict(drop_ins or {})
        for dropin in drop_ins:
            validate_drop_in_name(dropin)
        path = f"{UNIT_DIR}/{name}"
        self.runner.put(_bytes(content), path, mode=0o644, sudo=True)
        if drop_ins:
            self.runner.run(["mkdir", "-p", "--", f"{path}.d"], sudo=True, timeout=self.timeout).check()
            for dropin, text in drop_ins.items():
                self.runner.put(_bytes(text), f"{path}.d/{dropin}", mode=0o644, sudo=True)
        self.daemon_reload()

    def remove(self, name: str) -> None:
        """Stop and disable the unit, delete its file and drop-ins, daemon-reload. Safe to repeat."""
        check_unit_name(name, allow_instance=False)
        path = f"{UNIT_DIR}/{name}"
        # A template has no state of its own: stop (and forget failures of) its instances instead.
        target = name.replace("@.", "@*.", 1) if "@." in name else name
        line = _script(
            ["systemctl", "stop", "--", target],
            ["systemctl", "disable", "--", name],
            ["rm", "-rf", "--", path, f"{path}.d"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "reset-failed", "--", target],
        )
        # Only the last steps must succeed; stop/disable fail harmlessly for units already gone.
        result = self.runner.run(line + " ; " + shlex.join(["test", "!", "-e", path]), sudo=True, timeout=self.timeout)
        if result.exit_code != 0:
            raise CommandFailed(self.runner.host, result.cmd, result.exit_code, result.stderr)


def _bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content
