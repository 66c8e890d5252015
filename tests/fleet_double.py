"""A fleet v1.0.0 HTTP API double, plus loaders for the real fleet captures in tests/fixtures/fleet-v1.0.0.

The double is a real HTTP server (127.0.0.1 and optionally a unix socket) that answers byte-for-byte as the
captured fleetd did: same status lines, header order (Content-Type, Server, Date, Content-Length), Go-style
compact JSON with sorted keys, and fleet's error bodies and codes (201/204/400/404/405/409/415). Its state is
seeded from the captured API answers; PUT/DELETE change it the way fleet's API handlers do (api/units.go).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http
import json
import os
import socketserver
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fleet-v1.0.0"
PREFIX = "/fleet/v1/"


# ---- capture loaders ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetctlRun:
    """One ``$ fleetctl ...`` block of fleetctl.txt (or fleetctl-more.txt)."""

    cmd: str
    stdout: str
    stderr: str
    rc: int

    @property
    def argv(self) -> tuple[str, ...]:
        """The arguments after ``fleetctl``."""
        return tuple(self.cmd.split()[1:])


@dataclass(frozen=True)
class ApiExchange:
    """One ``$ curl -i ...`` block of api.txt."""

    title: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        """The request path for GET captures (``/fleet/v1/...?query``), else ''."""
        for word in self.title.split():
            if "://" in word:
                parts = urlsplit(word)
                return parts.path + (f"?{parts.query}" if parts.query else "")
        return ""


def fixtures_dir() -> Path:
    return FIXTURES


def load_fleetctl_runs() -> list[FleetctlRun]:
    text = (FIXTURES / "fleetctl.txt").read_text()
    main = text.split("--- list outputs with tabs visible")[0]
    runs: list[FleetctlRun] = []
    cmd: str | None = None
    out: list[str] = []
    err: list[str] = []
    for line in main.splitlines():
        if line.startswith("$ "):
            cmd, out, err = line[2:], [], []
        elif line.startswith("stdout| "):
            out.append(line[len("stdout| ") :])
        elif line.startswith("stderr| "):
            err.append(line[len("stderr| ") :])
        elif line.startswith("rc=") and cmd is not None:
            runs.append(FleetctlRun(cmd, "".join(x + "\n" for x in out), "".join(x + "\n" for x in err), int(line[3:])))
            cmd = None
    return runs


def load_more_runs() -> dict[str, FleetctlRun]:
    """fleetctl-more.txt by command: ``$ fleetctl ARGS`` then ``stdout| ``/``stderr| `` lines and ``rc=N``."""
    runs: dict[str, FleetctlRun] = {}
    for block in (FIXTURES / "fleetctl-more.txt").read_text().split("\n$ "):
        lines = block.removeprefix("$ ").split("\n")
        cmd = lines[0]
        out = "".join(ln.removeprefix("stdout| ") + "\n" for ln in lines[1:] if ln.startswith("stdout| "))
        err = "".join(ln.removeprefix("stderr| ") + "\n" for ln in lines[1:] if ln.startswith("stderr| "))
        rc = next(int(ln[3:]) for ln in lines[1:] if ln.startswith("rc="))
        runs[cmd] = FleetctlRun(cmd, out, err, rc)
    return runs


def load_cat_a_tables() -> list[str]:
    """The ``cat -A`` section of fleetctl.txt, decoded back to text, split into tables at each header line."""
    text = (FIXTURES / "fleetctl.txt").read_text()
    tail = text.split("--- list outputs with tabs visible (cat -A) ---", 1)[1]
    tables: list[list[str]] = []
    for raw in tail.splitlines():
        if not raw.endswith("$"):
            continue
        line = raw[:-1].replace("^I", "\t")
        if line.split("\t", 1)[0] in {"MACHINE", "UNIT"}:
            tables.append([])
        if tables and line:
            tables[-1].append(line)
    return ["".join(x + "\n" for x in t) for t in tables]


def load_api_exchanges() -> list[ApiExchange]:
    text = (FIXTURES / "api.txt").read_text()
    blocks = [b for b in text.split("\n$ ") if b.strip()]
    found: list[ApiExchange] = []
    for block in blocks:
        block = block.removeprefix("$ ")
        title, _, rest = block.partition("\n")
        if not rest.startswith("HTTP/1.1 "):
            continue  # the truncated discovery document
        head, _, body = rest.partition("\n\n")
        status_line, *header_lines = head.split("\n")
        _, code, reason = status_line.split(" ", 2)
        headers = tuple((k, v.strip()) for k, _, v in (h.partition(":") for h in header_lines))
        found.append(ApiExchange(title, int(code), reason, headers, body.strip("\n").encode()))
    return found


def load_etcd_dump() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "etcd-dump.json").read_text())
    return data


# ---- Go-compatible JSON --------------------------------------------------------------------------------------
def go_json(obj: Any) -> bytes:
    """encoding/json.Marshal: compact, keys sorted (fleet's schema structs are alphabetical), HTML-escaped."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def encode_page_token(limit: int, page: int) -> str:
    """fleet's page token: base64url of little-endian uint16 Limit, uint16 Page."""
    return base64.urlsafe_b64encode(struct.pack("<HH", limit, page)).decode()


def decode_page_token(token: str) -> tuple[int, int]:
    limit, page = struct.unpack("<HH", base64.urlsafe_b64decode(token.encode())[:4])
    return int(limit), int(page)


# ---- the server ----------------------------------------------------------------------------------------------
_UNIT_TYPES = {
    "service", "socket", "busname", "target", "snapshot", "device", "mount", "automount", "swap", "timer", "path",
    "slice", "scope",
}  # fmt: skip
_VALID_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:-_.\\@")


def _validate_name(name: str) -> str | None:
    """fleet's api.ValidateName, message for message."""
    if not name:
        return "unit name cannot be empty"
    if len(name) > 256:
        return "unit name exceeds maximum length (256)"
    dot = name.rfind(".")
    if dot == -1:
        return 'unit name must contain "."'
    if dot == len(name) - 1:
        return 'unit name cannot end in "."'
    suffix = name[dot + 1 :]
    if suffix not in _UNIT_TYPES:
        return f"invalid unit type: {json.dumps(suffix)}"
    for ch in name[:dot]:
        if ch not in _VALID_CHARS:
            return f"invalid character {json.dumps(ch)} in unit name"
    if name.startswith("@"):
        return 'unit name cannot start in "@"'
    return None


@dataclass
class FleetState:
    """What the double knows. Seeded from the captures by :meth:`from_captures`."""

    machines: list[dict[str, Any]] = field(default_factory=list)
    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[dict[str, Any]] = field(default_factory=list)
    page_limit: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[tuple[str, str]] = field(default_factory=list)
    # unit -> the machine ID fleet puts it on (default: the first machine that meets its MachineMetadata). An ID
    # that /machines does not list is a machine fleet has not said anything about yet.
    placements: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_captures(cls, page_limit: int = 100) -> FleetState:
        by_path = {x.path: x for x in load_api_exchanges() if x.path}
        machines = json.loads(by_path["/fleet/v1/machines"].body)["machines"]
        units = {u["name"]: u for u in json.loads(by_path["/fleet/v1/units"].body)["units"]}
        states = json.loads(by_path["/fleet/v1/state"].body)["states"]
        return cls(machines=machines, units=units, states=states, page_limit=page_limit)

    @staticmethod
    def _is_global(unit: dict[str, Any]) -> bool:
        vals = [o["value"] for o in unit.get("options", []) if o["section"] == "X-Fleet" and o["name"] == "Global"]
        return bool(vals) and vals[-1].lower() in {"true", "yes", "1", "on", "t"}

    @staticmethod
    def _fits(unit: dict[str, Any], machine: dict[str, Any]) -> bool:
        """fleet's MachineMetadata rule: for every key the unit names, the machine has one of its values."""
        wanted: dict[str, set[str]] = {}
        for o in unit.get("options", []):
            if o["section"] == "X-Fleet" and o["name"] == "MachineMetadata":
                for pair in o["value"].split():
                    key, _, value = pair.partition("=")
                    wanted.setdefault(key, set()).add(value)
        have = machine.get("metadata") or {}
        return all(have.get(key) in values for key, values in wanted.items())

    def set_desired(self, name: str, desired: str) -> None:
        """Apply a target state at once (real fleet converges a moment later)."""
        unit = self.units[name]
        unit["desiredState"] = desired
        self.states = [s for s in self.states if s["name"] != name]
        if self._is_global(unit):
            unit["currentState"] = "inactive"  # fleet never reports a current state for global units
            targets = [m["id"] for m in self.machines] if desired != "inactive" else []
        elif "@." in name:
            targets = []
        else:
            where = self.placements.get(name) or next((m["id"] for m in self.machines if self._fits(unit, m)), None)
            targets = [where] if desired != "inactive" and where else []
            # fleet keeps a unit no machine can take launched, and inactive where it is: nowhere
            unit["currentState"] = desired if targets else "inactive"
            if targets:
                unit["machineID"] = targets[0]
            else:
                unit.pop("machineID", None)
        for mid in targets:
            active = desired == "launched"
            self.states.append(
                {
                    "hash": "0" * 40 if not unit.get("hash") else unit["hash"],
                    "machineID": mid,
                    "name": name,
                    "systemdActiveState": "active" if active else "inactive",
                    "systemdLoadState": "loaded",
                    "systemdSubState": "running" if active else "dead",
                }
            )
        self.states.sort(key=lambda s: (s["name"], s["machineID"]))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleetd/v1.0.0"
    state: FleetState  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def version_string(self) -> str:
        return self.server_version

    # -- response writing, header order as captured --
    def _send(self, code: int, body: bytes | None) -> None:
        phrase = http.HTTPStatus(code).phrase
        lines = [f"HTTP/1.1 {code} {phrase}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Server: {self.server_version}")
        lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if code == 201:
            lines.append("Content-Length: 0")
        elif body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.wfile.write(head + (body or b""))
        self.wfile.flush()

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, go_json(obj))

    def _error(self, code: int, message: str = "") -> None:
        self._json(code, {"error": {"code": code, "message": message}})

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- routing --
    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        st = self.state
        with st.lock:
            st.requests.append((method, self.path))
        body = self._read_body() if method in {"PUT", "POST", "PATCH"} else b""
        with st.lock:
            if path in {PREFIX + "units", PREFIX + "units/"}:
                if method != "GET":
                    return self._error(405, "only GET supported against this resource")
                return self._list_units(parse_qs(parts.query, keep_blank_values=True))
            if path.startswith(PREFIX + "units/"):
                item = unquote(path[len(PREFIX + "units/") :])
                if "/" in item:
                    return self._error(404)
                if method == "GET":
                    return self._get_unit(item)
                if method == "DELETE":
                    return self._delete_unit(item)
                if method == "PUT":
                    return self._put_unit(item, body)
                return self._error(405, "only GET, PUT and DELETE supported against this resource")
            if path == PREFIX + "machines":
                if method != "GET":
                    return self._error(405, "only GET supported against this resource")
                return self._json(200, {"machines": st.machines} if st.machines else {})
            if path == PREFIX + "state":
                if method != "GET":
                    return self._error(405, "only GET supported against this resource")
                q = parse_qs(parts.query)
                states = [
                    s
                    for s in st.states
                    if all(s.get(key) in q[key] for key in ("machineID",) if key in q)
                    and ("unitName" not in q or s["name"] in q["unitName"])
                ]
                return self._json(200, {"states": states} if states else {})
            return self._error(404)

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_POST(self) -> None:
        self._route("POST")

    # -- handlers (api/units.go) --
    def _list_units(self, query: dict[str, list[str]]) -> None:
        st = self.state
        tokens = query.get("nextPageToken", [])
        if len(tokens) > 1:
            return self._error(400, "too many values for page token")
        limit, page = st.page_limit, 1
        if tokens:
            try:
                limit, page = decode_page_token(tokens[0])
            except (ValueError, struct.error):
                return self._error(400, "illegal base64 data at input byte 0")
            if limit != st.page_limit:
                return self._error(400, f"token limit must be {st.page_limit}")
            if page == 0:
                return self._error(400, "token page must be greater than zero")
        units = [st.units[k] for k in sorted(st.units)]
        start, stop = (page - 1) * limit, page * limit
        page_obj: dict[str, Any] = {}
        # extractUnitPageData: a next token whenever the page is full, even if nothing follows;
        # empty lists are omitted (omitempty in fleet's generated schema).
        if start < len(units):
            if stop <= len(units):
                page_obj["nextPageToken"] = encode_page_token(limit, page + 1)
            page_obj["units"] = units[start:stop]
        return self._json(200, page_obj)

    def _get_unit(self, name: str) -> None:
        unit = self.state.units.get(name)
        if unit is None:
            return self._error(404, "unit does not exist")
        shown = dict(unit)
        if FleetState._is_global(unit):
            shown.pop("currentState", None)  # as captured: GET /units/<global> carries no currentState
        return self._json(200, shown)

    def _delete_unit(self, name: str) -> None:
        st = self.state
        if name not in st.units:
            return self._error(404, "unit does not exist")
        del st.units[name]
        st.states = [s for s in st.states if s["name"] != name]
        return self._send(204, None)

    def _put_unit(self, item: str, raw: bytes) -> None:
        st = self.state
        ctypes = self.headers.get_all("Content-Type") or []
        if len(ctypes) != 1:
            return self._error(415, f"expected 1 Content-Type, got {len(ctypes)}")
        if ctypes[0].split(";", 1)[0].strip() != "application/json":
            return self._error(415, "only acceptable Content-Type is application/json")
        try:
            su = json.loads(raw)
            if not isinstance(su, dict):
                raise ValueError("json: cannot unmarshal into Go value of type schema.Unit")
            name = su.get("name") or item
            desired = su.get("desiredState") or ""
            options = su.get("options") or []
            if not isinstance(name, str) or not isinstance(desired, str) or not isinstance(options, list):
                raise ValueError("json: cannot unmarshal into Go struct field of type schema.Unit")
            for o in options:
                if not isinstance(o, dict) or not all(isinstance(o.get(k), str) for k in ("section", "name", "value")):
                    raise ValueError("json: cannot unmarshal into Go struct field Unit.options")
        except ValueError as exc:
            return self._error(400, f"unable to decode body: {exc}")
        if item != name:
            return self._error(
                400, f"name in URL {json.dumps(item)} differs from unit name in request body {json.dumps(name)}"
            )
        why = _validate_name(name)
        if why:
            return self._error(400, why)
        if name not in st.units:
            if not options:
                return self._error(409, "unit does not exist and options field empty")
            why = _validate_options(options)
            if why:
                return self._error(400, why)
            if desired and desired not in {"inactive", "loaded", "launched"}:
                return self._error(400, f"invalid value {json.dumps(desired)} for JobState")
            st.units[name] = {
                "currentState": "inactive",
                "desiredState": "inactive",
                "name": name,
                "options": [{"name": o["name"], "section": o["section"], "value": o["value"]} for o in options],
            }
            st.set_desired(name, desired or "inactive")
            return self._send(201, None)
        if not desired:
            return self._error(409, "must provide DesiredState to update existing unit")
        if "@." in name and desired != "inactive":
            return self._error(400, f"cannot activate template {json.dumps(name)}")
        if desired not in {"inactive", "loaded", "launched"}:
            return self._error(400, f"invalid value {json.dumps(desired)} for JobState")
        st.set_desired(name, desired)
        return self._send(204, None)


def _validate_options(options: list[dict[str, str]]) -> str | None:
    """The combination checks of fleet's api.ValidateOptions, messages as fleet words them."""
    from coreos_lab.unitfile import glob_match, split_multivalue

    req: dict[str, list[str]] = {}
    for o in options:
        if o["section"] == "X-Fleet":
            req.setdefault(o["name"], []).extend(split_multivalue(o["value"]))
    conflicts = req.get("X-Conflicts", []) + req.get("Conflicts", [])
    peers = req.get("X-ConditionMachineOf", []) + req.get("MachineOf", [])
    target = any(req.get(k) for k in ("MachineID", "X-ConditionMachineID", "X-ConditionMachineBootID"))
    glob_vals = req.get("Global", [])
    is_global = bool(glob_vals) and glob_vals[-1].lower() in {"true", "yes", "1", "on", "t"}
    for peer in peers:
        for c in conflicts:
            if glob_match(c, peer):
                return f"unresolvable requirements: peer {json.dumps(peer)} matches conflict {json.dumps(c)}"
    for bad, why in (
        (target and peers, "MachineID cannot be used with Peers"),
        (target and conflicts, "MachineID cannot be used with Conflicts"),
        (target and is_global, "MachineID cannot be used with Global"),
        (is_global and peers, "Global cannot be used with Peers"),
        (is_global and conflicts, "Global cannot be used with Conflicts"),
    ):
        if bad:
            return why
    return None


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FleetDouble:
    """Start with ``with FleetDouble() as fd:``; ``fd.url`` is ``http://127.0.0.1:PORT``, ``fd.socket_path``
    the unix socket when ``unix_socket`` was given."""

    def __init__(self, state: FleetState | None = None, unix_socket: Path | None = None) -> None:
        self.state = state or FleetState.from_captures()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._tcp = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._tcp.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._tcp.server_address[1]}"
        self.socket_path = unix_socket
        self._unix: _UnixHTTPServer | None = None
        if unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_socket)
            self._unix = _UnixHTTPServer(str(unix_socket), handler)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FleetDouble:
        for srv in (self._tcp, self._unix):
            if srv is not None:
                t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        for srv in (self._tcp, self._unix):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


@contextlib.contextmanager
def running_double(**kwargs: Any) -> Iterator[FleetDouble]:
    with FleetDouble(**kwargs) as fd:
        yield fd
