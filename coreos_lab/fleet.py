"""fleet, read and driven three ways: its HTTP API v1, fleetctl's tables, and its etcd v2 key layout.

Everything is checked against the captures of a real fleet v1.0.0 (``tests/fixtures/fleet-v1.0.0``).

- :class:`FleetClient` talks to ``/fleet/v1`` over TCP (``http://host:port``), a local unix socket
  (``unix:///var/run/fleet.sock``), or a node's socket through a :class:`~coreos_lab.runner.Runner`
  running curl (:meth:`FleetClient.over_runner`). fleet's ``{"error": {...}}`` answers, transport failures and
  malformed JSON all become a one-line :class:`~coreos_lab.errors.FleetError`.
- ``parse_list_machines`` / ``parse_list_units`` / ``parse_list_unit_files`` read fleetctl's tab-padded tables
  (with or without legend, ``--full`` or truncated IDs, ``--fields``).
- :func:`parse_etcd_registry` reads fleet's keys under ``/_coreos.com/fleet/`` (an etcd v2 recursive GET) into
  the same dataclasses the API client returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode, urlsplit

from coreos_lab.errors import FleetError, UnitFileError
from coreos_lab.runner import Runner
from coreos_lab.unitfile import UnitFile

DESIRED_STATES: tuple[str, ...] = ("inactive", "loaded", "launched")
API_PREFIX = "/fleet/v1/"
ETCD_PREFIX = "/_coreos.com/fleet/"
DEFAULT_SOCKET = "/var/run/fleet.sock"
_MAX_PAGES = 10_000


# ---- data ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FleetMachine:
    """A machine in the fleet cluster (API ``/machines``, etcd ``machines/<id>/object``)."""

    id: str
    primary_ip: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FleetUnit:
    """A unit known to fleet (API ``/units``, etcd ``job/<name>/``).

    ``current_state`` is None when fleet did not report one (it omits it for global units on GET /units/<name>).
    """

    name: str
    options: tuple[tuple[str, str, str], ...]
    desired_state: str
    current_state: str | None = None
    machine_id: str | None = None

    def unit_file(self) -> UnitFile:
        """The unit as a :class:`UnitFile` (raises UnitFileError if fleet holds something systemd would not)."""
        return UnitFile.from_options(self.options, name=self.name)

    @property
    def hash(self) -> str:
        return self.unit_file().hash

    def to_json(self) -> dict[str, Any]:
        """The API's JSON shape (as GET /units answers it)."""
        out: dict[str, Any] = {
            "name": self.name,
            "desiredState": self.desired_state,
            "options": [{"section": s, "name": n, "value": v} for s, n, v in self.options],
        }
        if self.current_state is not None:
            out["currentState"] = self.current_state
        if self.machine_id:
            out["machineID"] = self.machine_id
        return out


@dataclass(frozen=True, slots=True)
class FleetUnitState:
    """What systemd reports for a unit on one machine (API ``/state``, etcd ``states/<name>/<machine>``)."""

    name: str
    machine_id: str
    hash: str
    load_state: str
    active_state: str
    sub_state: str


# ---- JSON validation helpers ---------------------------------------------------------------------------------
class _Shape:
    """Walks untrusted JSON, raising FleetError with the path of the first bad value."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, why: str) -> FleetError:
        return FleetError(f"{self.where}: malformed answer: {path} {why}")

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, "is not an object")
        return value

    def lst(self, value: object, path: str) -> Sequence[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "is not a list")
        return value

    def string(self, m: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
        value = m.get(key)
        if value is None and not required:
            return None
        return self.req(m, key, path)

    def req(self, m: Mapping[str, Any], key: str, path: str) -> str:
        value = m.get(key)
        if not isinstance(value, str):
            raise self.fail(f"{path}.{key}", "is missing or not a string")
        return value

    def state(self, m: Mapping[str, Any], key: str, path: str, *, required: bool) -> str | None:
        value = self.string(m, key, path, required=required)
        if value is not None and value not in DESIRED_STATES:
            raise self.fail(f"{path}.{key}", f"is {value[:40]!r}, not one of {', '.join(DESIRED_STATES)}")
        return value

    def metadata(self, value: object, path: str) -> dict[str, str]:
        if value is None:
            return {}
        m = self.obj(value, path)
        out: dict[str, str] = {}
        for k, v in m.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise self.fail(f"{path}.{k}", "is not a string")
            out[k] = v
        return out


def _decode_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = raw[:60].decode("utf-8", "replace")
        raise FleetError(f"{where}: answer is not JSON ({exc.__class__.__name__}): {snippet!r}") from None


def _recursion_safe(fn: Callable[[], Any], where: str) -> Any:
    try:
        return fn()
    except RecursionError:
        raise FleetError(f"{where}: answer nested too deeply") from None


def parse_machines(doc: object, where: str = "fleet /machines") -> list[FleetMachine]:
    """The JSON of GET /fleet/v1/machines -> machines."""
    sh = _Shape(where)
    top = sh.obj(doc, "answer")
    out: list[FleetMachine] = []
    for i, item in enumerate(sh.lst(top.get("machines"), "machines")):
        path = f"machines[{i}]"
        m = sh.obj(item, path)
        out.append(
            FleetMachine(
                id=sh.req(m, "id", path),
                primary_ip=sh.string(m, "primaryIP", path, required=False) or "",
                metadata=sh.metadata(m.get("metadata"), f"{path}.metadata"),
            )
        )
    return out


def parse_unit(doc: object, path: str = "unit", where: str = "fleet /units") -> FleetUnit:
    """One unit object of the API -> FleetUnit."""
    sh = _Shape(where)
    m = sh.obj(doc, path)
    options: list[tuple[str, str, str]] = []
    for j, o in enumerate(sh.lst(m.get("options"), f"{path}.options")):
        opath = f"{path}.options[{j}]"
        om = sh.obj(o, opath)
        options.append((sh.req(om, "section", opath), sh.req(om, "name", opath), sh.req(om, "value", opath)))
    desired = sh.state(m, "desiredState", path, required=True) or ""
    return FleetUnit(
        name=sh.req(m, "name", path),
        options=tuple(options),
        desired_state=desired,
        current_state=sh.state(m, "currentState", path, required=False),
        machine_id=sh.string(m, "machineID", path, required=False) or None,
    )


def parse_units_page(doc: object, where: str = "fleet /units") -> tuple[list[FleetUnit], str | None]:
    """One page of GET /fleet/v1/units -> (units, nextPageToken or None)."""
    sh = _Shape(where)
    top = sh.obj(doc, "answer")
    units = [parse_unit(u, f"units[{i}]", where) for i, u in enumerate(sh.lst(top.get("units"), "units"))]
    token = sh.string(top, "nextPageToken", "answer", required=False)
    return units, token or None


def parse_states(doc: object, where: str = "fleet /state") -> list[FleetUnitState]:
    """The JSON of GET /fleet/v1/state -> unit states."""
    sh = _Shape(where)
    top = sh.obj(doc, "answer")
    out: list[FleetUnitState] = []
    for i, item in enumerate(sh.lst(top.get("states"), "states")):
        path = f"states[{i}]"
        m = sh.obj(item, path)
        out.append(
            FleetUnitState(
                name=sh.req(m, "name", path),
                machine_id=sh.req(m, "machineID", path),
                hash=sh.req(m, "hash", path),
                load_state=sh.req(m, "systemdLoadState", path),
                active_state=sh.req(m, "systemdActiveState", path),
                sub_state=sh.req(m, "systemdSubState", path),
            )
        )
    return out


# ---- transports ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    status: int
    body: bytes


class Transport(Protocol):
    """Sends one request to fleet's API; raises FleetError when fleet cannot be reached."""

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer: ...


class RequestsTransport:
    """HTTP over TCP, or over a local unix socket (``unix:///path``), with a requests.Session."""

    _UNIX_HOST = "fleet-unix-socket"

    def __init__(self, base_url: str, session: Any | None = None) -> None:
        from coreos_lab import http  # requests loads only when a client talks HTTP

        parts = urlsplit(base_url)
        if session is None:
            # an explicit fleet endpoint must never go through an environment proxy
            session = http.session(trust_env=False)
        self.session = session
        if parts.scheme == "unix":
            path = parts.path or DEFAULT_SOCKET
            self.session.mount(f"http://{self._UNIX_HOST}/", http.UnixAdapter(path))
            self.base = f"http://{self._UNIX_HOST}"
        elif parts.scheme in {"http", "https"} and parts.netloc:
            self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
            if self.base.endswith("/fleet/v1"):
                self.base = self.base[: -len("/fleet/v1")]
        else:
            raise FleetError(f"fleet endpoint {base_url!r}: expected http://HOST:PORT or unix:///PATH")

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer:
        from coreos_lab.http import RequestException, short_reason

        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            resp = self.session.request(method, self.base + path, data=body, headers=headers, timeout=timeout)
        except RequestException as exc:
            # One line naming the URL, as fleetctl does ("dial tcp ...: connect: connection refused").
            raise FleetError(f"cannot reach fleet at {self.base} ({method} {path}): {short_reason(exc)}") from None
        return HTTPAnswer(resp.status_code, resp.content)


class RunnerTransport:
    """fleet's unix socket on a node, through a Runner (SSH) running curl there, as fleetctl --tunnel does."""

    _MARK = "\n__coreos_lab_http_status="

    def __init__(self, runner: Runner, socket_path: str = DEFAULT_SOCKET) -> None:
        self.runner = runner
        self.socket_path = socket_path

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer:
        argv = ["curl", "-sS", "--max-time", f"{timeout:g}", "--unix-socket", self.socket_path, "-X", method]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        argv += ["-w", self._MARK + "%{http_code}", f"http://localhost{path}"]
        result = self.runner.run(argv, timeout=timeout + 5, stdin=body)
        if result.exit_code != 0:
            tail = " ".join(result.stderr.split())[:200]
            where = f"{self.runner.host}:{self.socket_path}"
            raise FleetError(f"cannot reach fleet at {where}: curl exited {result.exit_code}: {tail}")
        out, mark, code = result.stdout.rpartition(self._MARK)
        if not mark or not code.strip().isdigit():
            raise FleetError(f"fleet on {self.runner.host}: could not read curl's answer for {method} {path}")
        return HTTPAnswer(int(code.strip()), out.encode("utf-8"))


class _Unread:
    """The default of ``ensure_unit(existing=...)``: the unit has not been read yet."""


UNREAD: Final = _Unread()


# ---- the client ----------------------------------------------------------------------------------------------
class FleetClient:
    """fleet's HTTP API v1.

    >>> client = FleetClient("http://127.0.0.1:49153")   # or "unix:///var/run/fleet.sock"
    """

    def __init__(
        self,
        base_url: str = f"unix://{DEFAULT_SOCKET}",
        session: Any | None = None,
        timeout: float = 10.0,
        *,
        transport: Transport | None = None,
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.transport: Transport = transport or RequestsTransport(base_url, session)

    @classmethod
    def over_runner(cls, runner: Runner, socket_path: str = DEFAULT_SOCKET, timeout: float = 10.0) -> FleetClient:
        """A client for the fleet socket of the node behind ``runner`` (needs curl on the node)."""
        return cls(f"unix://{socket_path}", timeout=timeout, transport=RunnerTransport(runner, socket_path))

    # -- plumbing --
    def _call(self, method: str, path: str, *, body: object = None, ok: Sequence[int] = (200,)) -> HTTPAnswer:
        raw = None if body is None else json.dumps(body).encode()
        where = f"fleet API {method} {path}"
        answer = self.transport.request(method, path, raw, self.timeout)
        if answer.status in ok:
            return answer
        message = ""
        try:
            doc = json.loads(answer.body.decode("utf-8"))
            err = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"]
        except (UnicodeDecodeError, ValueError, RecursionError):
            message = answer.body[:80].decode("utf-8", "replace").strip()
        raise FleetError(f"{where}: HTTP {answer.status}" + (f": {message}" if message else ""))

    def _get_json(self, path: str) -> Any:
        answer = self._call("GET", path)
        where = f"fleet API GET {path}"
        return _recursion_safe(lambda: _decode_json(answer.body, where), where)

    @staticmethod
    def _unit_path(name: str) -> str:
        return f"{API_PREFIX}units/{quote(name, safe='@:')}"

    # -- reading --
    def machines(self) -> list[FleetMachine]:
        """GET /machines."""
        path = API_PREFIX + "machines"
        return parse_machines(self._get_json(path), f"fleet API GET {path}")

    def units(self) -> list[FleetUnit]:
        """GET /units, following ``nextPageToken`` until the last page."""
        out: list[FleetUnit] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            path = API_PREFIX + "units" + (f"?{urlencode({'nextPageToken': token})}" if token else "")
            units, token = parse_units_page(self._get_json(path), f"fleet API GET {path}")
            out.extend(units)
            if token is None or not units:
                return out
            if token in seen:
                raise FleetError(f"fleet API GET {path}: pagination loops (token {token[:20]!r} repeated)")
            seen.add(token)
        raise FleetError(f"fleet API GET /units: more than {_MAX_PAGES} pages")

    def unit(self, name: str) -> FleetUnit | None:
        """GET /units/<name>; None when fleet answers 404."""
        path = self._unit_path(name)
        answer = self._call("GET", path, ok=(200, 404))
        if answer.status == 404:
            return None
        where = f"fleet API GET {path}"
        return parse_unit(_recursion_safe(lambda: _decode_json(answer.body, where), where), "unit", where)

    def states(self, machine_id: str | None = None, unit_name: str | None = None) -> list[FleetUnitState]:
        """GET /state, optionally filtered by machine and/or unit."""
        query = {k: v for k, v in (("machineID", machine_id), ("unitName", unit_name)) if v}
        path = API_PREFIX + "state" + (f"?{urlencode(query)}" if query else "")
        return parse_states(self._get_json(path), f"fleet API GET {path}")

    # -- writing --
    def create_unit(self, unit: UnitFile, desired_state: str = "inactive", name: str | None = None) -> None:
        """PUT a new unit with its options (fleetctl submit/load/start of a new unit). 409 if it exists empty."""
        uname = name or unit.name
        if not uname:
            raise FleetError("create_unit: the unit has no name")
        _check_state(desired_state)
        body = {"name": uname, "desiredState": desired_state, "options": unit.to_fleet_options()}
        self._call("PUT", self._unit_path(uname), body=body, ok=(201, 204))

    def set_desired_state(self, name: str, desired_state: str) -> None:
        """PUT ``{"desiredState": ...}`` on an existing unit (fleetctl load/start/stop/unload)."""
        _check_state(desired_state)
        self._call("PUT", self._unit_path(name), body={"desiredState": desired_state}, ok=(204,))

    def ensure_unit(
        self,
        unit: UnitFile,
        desired_state: str,
        name: str | None = None,
        *,
        existing: FleetUnit | _Unread | None = UNREAD,
    ) -> bool:
        """Create ``unit`` or move it to ``desired_state``; True when it was created.

        Like fleetctl, refuses to silently replace a unit whose content differs (destroy it first).
        ``existing``: what ``unit(name)`` answered a moment ago (None: fleet has no such unit), so it is not
        fetched a second time before the PUT.
        """
        uname = name or unit.name
        if not uname:
            raise FleetError("ensure_unit: the unit has no name")
        if isinstance(existing, _Unread):
            existing = self.unit(uname)
        if existing is None:
            self.create_unit(unit, desired_state, uname)
            return True
        check_same_content(existing, unit)
        self.set_desired_state(uname, desired_state)
        return False

    def destroy(self, name: str) -> bool:
        """DELETE /units/<name>; False when fleet did not know the unit (404)."""
        answer = self._call("DELETE", self._unit_path(name), ok=(204, 404))
        return answer.status == 204


def check_same_content(existing: FleetUnit, unit: UnitFile) -> None:
    """FleetError unless fleet's ``existing`` unit holds ``unit``'s content (a unit is never silently replaced)."""
    try:
        old_hash = existing.hash
    except UnitFileError as exc:
        raise FleetError(f"fleet holds an unreadable {existing.name}: {exc}") from None
    if old_hash != unit.hash:
        raise FleetError(
            f"unit {existing.name} already exists in fleet with different content "
            f"(hash {old_hash[:7]}, new {unit.hash[:7]}); destroy it first"
        )


def _check_state(state: str) -> None:
    if state not in DESIRED_STATES:
        raise FleetError(f"desired state {state!r} is not one of {', '.join(DESIRED_STATES)}")


# ---- fleetctl tables -----------------------------------------------------------------------------------------
MACHINE_COLUMNS = ("machine", "ip", "metadata")
UNIT_COLUMNS = ("unit", "machine", "active", "sub")
UNIT_FILE_COLUMNS = ("unit", "hash", "dstate", "state", "target")
_KNOWN_HEADERS = {
    "machines": {"MACHINE", "IP", "METADATA"},
    "units": {"UNIT", "MACHINE", "ACTIVE", "SUB", "LOAD", "HASH", "DESC"},
    "unit-files": {"UNIT", "HASH", "DSTATE", "STATE", "TARGET", "GLOBAL", "TMACHINE", "DESC"},
}


def _cell(value: str) -> str | None:
    return None if value == "-" else value


def split_machine_cell(cell: str | None) -> tuple[str | None, str | None]:
    """``3d1219c7.../127.0.0.1`` -> (``3d1219c7...``, ``127.0.0.1``); ``-`` -> (None, None)."""
    if cell is None or cell == "-":
        return None, None
    machine, slash, ip = cell.partition("/")
    return machine, (ip if slash else None)


def machine_id_matches(shown: str, full_id: str) -> bool:
    """True when fleetctl's (possibly ``...``-truncated) ID refers to ``full_id``."""
    return full_id.startswith(shown[:-3]) if shown.endswith("...") else shown == full_id


def parse_table(text: str, kind: str, default_columns: Sequence[str]) -> list[dict[str, str | None]]:
    """Split a fleetctl table into rows of ``{column: value or None}``.

    Columns are padded with a varying number of tabs, so runs of tabs separate cells. A first line made of
    known column titles is the legend (``--no-legend`` drops it; then ``default_columns`` apply).
    """
    lines = [ln for ln in text.replace("\r", "").split("\n") if ln.strip()]
    if not lines:
        return []
    known = _KNOWN_HEADERS[kind]
    first = [c for c in re.split(r"\t+", lines[0].strip()) if c]
    if first and all(c in known for c in first):
        columns = [c.lower() for c in first]
        lines = lines[1:]
    else:
        columns = list(default_columns)
    rows: list[dict[str, str | None]] = []
    for n, line in enumerate(lines, 1):
        cells = [c for c in re.split(r"\t+", line.strip()) if c != ""]
        if len(cells) != len(columns):
            raise FleetError(
                f"fleetctl {kind} table: row {n} has {len(cells)} columns, expected {len(columns)} "
                f"({', '.join(columns)}): {line[:80]!r}"
            )
        rows.append({col: _cell(cell.strip()) for col, cell in zip(columns, cells, strict=True)})
    return rows


@dataclass(frozen=True, slots=True)
class MachineRow:
    """A row of ``fleetctl list-machines``. ``machine`` may be truncated (``3d1219c7...``)."""

    machine: str
    ip: str | None
    metadata: Mapping[str, str]

    @property
    def truncated(self) -> bool:
        return self.machine.endswith("...")


@dataclass(frozen=True, slots=True)
class FleetctlUnit:
    """A row of ``fleetctl list-units``."""

    unit: str
    machine: str | None
    ip: str | None
    active: str | None = None
    sub: str | None = None
    load: str | None = None
    hash: str | None = None
    desc: str | None = None


@dataclass(frozen=True, slots=True)
class FleetctlUnitFile:
    """A row of ``fleetctl list-unit-files``. ``target`` is the raw cell (``global``, ``ID.../IP`` or None)."""

    unit: str
    hash: str | None
    dstate: str | None
    state: str | None
    target: str | None
    target_machine: str | None = None
    target_ip: str | None = None
    global_: bool = False
    desc: str | None = None


def _metadata(cell: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in (cell or "").split(","):
        if pair:
            k, eq, v = pair.partition("=")
            if not eq:
                raise FleetError(f"fleetctl list-machines: metadata {pair!r} is not KEY=VALUE")
            out[k] = v
    return out


def _required(row: Mapping[str, str | None], key: str, kind: str) -> str:
    value = row.get(key)
    if not value:
        raise FleetError(f"fleetctl {kind} table: a row has no {key.upper()}")
    return value


def parse_list_machines(text: str) -> list[MachineRow]:
    """``fleetctl list-machines [--full] [--no-legend]`` output -> rows."""
    return [
        MachineRow(_required(r, "machine", "list-machines"), r.get("ip"), _metadata(r.get("metadata")))
        for r in parse_table(text, "machines", MACHINE_COLUMNS)
    ]


def parse_list_units(text: str) -> list[FleetctlUnit]:
    """``fleetctl list-units [--full] [--no-legend] [--fields=...]`` output -> rows."""
    out: list[FleetctlUnit] = []
    for r in parse_table(text, "units", UNIT_COLUMNS):
        machine, ip = split_machine_cell(r.get("machine"))
        out.append(
            FleetctlUnit(
                unit=_required(r, "unit", "list-units"),
                machine=machine,
                ip=ip,
                active=r.get("active"),
                sub=r.get("sub"),
                load=r.get("load"),
                hash=r.get("hash"),
                desc=r.get("desc"),
            )
        )
    return out


def parse_list_unit_files(text: str) -> list[FleetctlUnitFile]:
    """``fleetctl list-unit-files [--full] [--no-legend] [--fields=...]`` output -> rows."""
    out: list[FleetctlUnitFile] = []
    for r in parse_table(text, "unit-files", UNIT_FILE_COLUMNS):
        target = r.get("target")
        is_global = target == "global" or (r.get("global") or "").lower() == "true"
        machine, ip = (None, None) if target == "global" else split_machine_cell(target)
        if machine is None and r.get("tmachine"):
            machine, ip = split_machine_cell(r.get("tmachine"))
        out.append(
            FleetctlUnitFile(
                unit=_required(r, "unit", "list-unit-files"),
                hash=r.get("hash"),
                dstate=r.get("dstate"),
                state=r.get("state"),
                target=target,
                target_machine=machine,
                target_ip=ip,
                global_=is_global,
                desc=r.get("desc"),
            )
        )
    return out


# ---- fleet's etcd v2 layout ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FleetRegistry:
    """fleet's state as read from etcd: what the API would answer, plus the unit contents by hash."""

    units: tuple[FleetUnit, ...]
    machines: tuple[FleetMachine, ...]
    states: tuple[FleetUnitState, ...]
    contents: Mapping[str, UnitFile]
    engine_leader: str | None = None


def _walk(node: Mapping[str, Any], sh: _Shape, path: str) -> Iterator[tuple[str, str]]:
    """Yield (key, value) of every leaf of an etcd v2 node tree."""
    stack: list[tuple[Mapping[str, Any], str]] = [(node, path)]
    while stack:
        cur, p = stack.pop()
        key = sh.req(cur, "key", p)
        if cur.get("dir"):
            for i, child in enumerate(sh.lst(cur.get("nodes"), f"{p}.nodes")):
                stack.append((sh.obj(child, f"{p}.nodes[{i}]"), f"{p}.nodes[{i}]"))
        else:
            yield key, sh.string(cur, "value", p, required=False) or ""


def parse_etcd_registry(doc: object) -> FleetRegistry:
    """Read an etcd v2 ``GET /v2/keys/_coreos.com/fleet?recursive=true`` answer into fleet's objects.

    Layout (fleet v1.0.0): ``unit/<sha1>`` {"Raw"}, ``job/<name>/{object,target-state,target,job-state}``,
    ``machines/<id>/object``, ``states/<name>/<machine>``, ``lease/engine-leader``. A unit's current state is
    what fleet derives: inactive without ``target``, launched when the heartbeat (``job-state``) names the
    target, loaded otherwise.
    """
    where = "fleet etcd registry"
    sh = _Shape(where)
    top = sh.obj(doc, "answer")
    root = sh.obj(top.get("node"), "node")
    leaves: dict[str, str] = {}
    for key, value in _walk(root, sh, "node"):
        if key.startswith(ETCD_PREFIX):
            leaves[key[len(ETCD_PREFIX) :]] = value

    def load(key: str) -> Any:
        return _recursion_safe(lambda: _decode_json(leaves[key].encode(), f"{where} {key}"), where)

    contents: dict[str, UnitFile] = {}
    for key in leaves:
        parts = key.split("/")
        if parts[0] == "unit" and len(parts) == 2:
            obj = sh.obj(load(key), key)
            raw = sh.req(obj, "Raw", key)
            try:
                contents[parts[1]] = UnitFile.parse(raw)
            except UnitFileError as exc:
                raise FleetError(f"{where}: {key}: {exc}") from None

    jobs: dict[str, dict[str, str]] = {}
    for key, value in leaves.items():
        parts = key.split("/")
        if parts[0] == "job" and len(parts) == 3:
            jobs.setdefault(parts[1], {})[parts[2]] = value
    units: list[FleetUnit] = []
    for name in sorted(jobs):
        fields = jobs[name]
        if "object" not in fields:
            continue
        obj = sh.obj(load(f"job/{name}/object"), f"job/{name}/object")
        hash_bytes = obj.get("UnitHash")
        if not isinstance(hash_bytes, list) or len(hash_bytes) != 20:
            raise sh.fail(f"job/{name}/object.UnitHash", "is not 20 bytes")
        if not all(isinstance(b, int) and 0 <= b <= 255 for b in hash_bytes):
            raise sh.fail(f"job/{name}/object.UnitHash", "is not 20 bytes")
        digest = bytes(hash_bytes).hex()
        if digest not in contents:
            raise FleetError(f"{where}: job {name} refers to unit/{digest}, which is missing")
        target_state = fields.get("target-state", "inactive")
        if target_state not in DESIRED_STATES:
            raise sh.fail(f"job/{name}/target-state", f"is {target_state[:40]!r}")
        target = fields.get("target") or None
        heartbeat = fields.get("job-state") or None
        current = "inactive" if target is None else ("launched" if heartbeat == target else "loaded")
        options = tuple((o.section, o.name, o.value) for o in contents[digest].options)
        units.append(FleetUnit(name, options, target_state, current, target))

    machines: list[FleetMachine] = []
    for key in sorted(leaves):
        parts = key.split("/")
        if parts[0] == "machines" and len(parts) == 3 and parts[2] == "object":
            m = sh.obj(load(key), key)
            machines.append(
                FleetMachine(
                    id=sh.req(m, "ID", key),
                    primary_ip=sh.string(m, "PublicIP", key, required=False) or "",
                    metadata=sh.metadata(m.get("Metadata"), f"{key}.Metadata"),
                )
            )

    states: list[FleetUnitState] = []
    for key in sorted(leaves):
        parts = key.split("/")
        if parts[0] == "states" and len(parts) == 3:
            s = sh.obj(load(key), key)
            states.append(
                FleetUnitState(
                    name=parts[1],
                    machine_id=parts[2],
                    hash=sh.req(s, "unitHash", key),
                    load_state=sh.req(s, "loadState", key),
                    active_state=sh.req(s, "activeState", key),
                    sub_state=sh.req(s, "subState", key),
                )
            )

    leader = None
    if "lease/engine-leader" in leaves:
        lease = sh.obj(load("lease/engine-leader"), "lease/engine-leader")
        leader = sh.string(lease, "MachineID", "lease/engine-leader", required=False)
    return FleetRegistry(tuple(units), tuple(machines), tuple(states), contents, leader)


# ---- fleetctl's cell values (its tables are printed by the CLI: coreos_lab.cli._common.format_table) ----------
def short_machine_id(machine_id: str, full: bool = False) -> str:
    """fleetctl's machine column: the first 8 characters plus ``...`` unless ``full``."""
    return machine_id if full or len(machine_id) <= 8 else machine_id[:8] + "..."


def machine_cell(machine_id: str | None, ip: str | None, full: bool = False) -> str:
    """``3d1219c7.../127.0.0.1`` as list-units and list-unit-files print it; ``-`` when unscheduled."""
    if not machine_id:
        return "-"
    return f"{short_machine_id(machine_id, full)}/{ip}" if ip else short_machine_id(machine_id, full)


def short_hash(digest: str, full: bool = False) -> str:
    """fleetctl's hash column: 7 characters unless ``full``."""
    return digest if full else digest[:7]


def is_global_unit(unit: FleetUnit) -> bool:
    """Whether fleet treats ``unit`` as global (last ``Global=`` value truthy, as fleet reads it)."""
    values = [v for s, n, v in unit.options if s == "X-Fleet" and n == "Global"]
    return bool(values) and values[-1].lower() in {"true", "yes", "1", "on", "t"}
