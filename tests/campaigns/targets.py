"""Bad-input campaigns: hypothesis strategies and one case runner per target, shared by pytest and the benchmark.

A case ends in one of: ``ok`` (accepted), ``clean`` (a CoreosLabError, or for the CLI exit 1/2 with exactly one
``error: ...`` line on stderr), ``traceback`` (anything else) or ``partial`` (a failed case left files behind,
or any case left a ``*.tmp``). The last two are defects. Every case is counted in :data:`TALLY`, which
``benchmarks/reliability.py`` prints.

Network: nothing leaves 127.0.0.0/8. Servers are loopback threads or in-process fakes, and
:func:`loopback_only` makes any other address fail inside the campaign (DNS included), so a generated
``--discovery-service`` cannot reach the internet even by accident.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter
from typer.testing import CliRunner

from coreos_lab import discovery
from coreos_lab.cli import app
from coreos_lab.config import CONFIG_NAME, SETTINGS, LabConfig
from coreos_lab.errors import CoreosLabError, DiscoveryError
from coreos_lab.etcd import EtcdClient, cluster_health
from coreos_lab.fleet import FleetClient, HTTPAnswer
from coreos_lab.render import init_lab
from coreos_lab.systemd import SHOW_PROPERTIES, parse_show
from coreos_lab.unitfile import UnitFile, XFleet

EXAMPLES = 200
TARGETS = ("init_flags", "lab_config", "unit_files", "discovery", "etcd_json", "fleet_json", "systemctl_show")


def campaign_settings(examples: int = EXAMPLES, *, derandomize: bool = True) -> settings:
    """Bounded: ``examples`` cases, 5 s per case, no example database written into the work tree.

    The test suite runs derandomized (the same cases every run: a red test is never luck); the benchmark
    passes ``derandomize=False`` to explore new cases each time.
    """
    return settings(
        max_examples=examples,
        deadline=5000,
        database=None,
        derandomize=derandomize,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


# ---------------------------------------------------------------- the tally


@dataclass
class Tally:
    cases: int = 0
    ok: int = 0
    clean: int = 0
    tracebacks: int = 0
    partial: int = 0
    samples: list[str] = field(default_factory=list)
    signatures: dict[str, int] = field(default_factory=dict)  # "file:line ExceptionType" of each defect -> count

    def record(self, outcome: str, detail: str = "") -> None:
        self.cases += 1
        if outcome == "ok":
            self.ok += 1
        elif outcome == "clean":
            self.clean += 1
        elif outcome == "traceback":
            self.tracebacks += 1
        elif outcome == "partial":
            self.partial += 1
        else:
            raise ValueError(outcome)
        if outcome in ("traceback", "partial"):
            if len(self.samples) < 5:
                self.samples.append(detail)
            key = _signature(detail) if outcome == "traceback" else "partial file"
            self.signatures[key] = self.signatures.get(key, 0) + 1


def _signature(detail: str) -> str:
    """Where a traceback ended, in the code under test: ``coreos_lab/etcd.py:562 AttributeError``."""
    frames = re.findall(r'File "[^"]*?(coreos_lab/[^"]+)", line (\d+)', detail)
    error = re.findall(r"^((?:\w+\.)*\w*(?:Error|Exception|Interrupt|Group)\w*)(?::|$)", detail, re.MULTILINE)
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else "?"
    return f"{where} {error[-1] if error else 'not a one-line error'}"


TALLY: dict[str, Tally] = {name: Tally() for name in TARGETS}
# Discovery failures whose one line lacks the "use --bootstrap static" hint (checked by the discovery campaign).
HINTLESS: list[str] = []
# pytest wants the first defect raised (hypothesis then shrinks it); the benchmark counts every case instead.
RAISE_ON_DEFECT = True


def reset_tally() -> None:
    for name in TARGETS:
        TALLY[name] = Tally()


class CampaignDefect(AssertionError):
    """A case ended in a traceback or left a partial file."""


def _finish(target: str, outcome: str, detail: str = "") -> str:
    TALLY[target].record(outcome, detail)
    if outcome in ("traceback", "partial") and RAISE_ON_DEFECT:
        raise CampaignDefect(f"{target}: {outcome}: {detail}")
    return outcome


def library_case(target: str, call: Callable[[], object]) -> str:
    """Run a library call: a value is ok, a one-line CoreosLabError is clean, anything else a traceback."""
    try:
        call()
    except CoreosLabError as exc:
        text = str(exc)
        if "\n" in text or not text.strip():
            return _finish(target, "traceback", f"error text not one line: {text!r}")
        return _finish(target, "clean")
    except Exception:
        return _finish(target, "traceback", traceback.format_exc(limit=6))
    return _finish(target, "ok")


# ---------------------------------------------------------------- loopback only


def _is_loopback(host: object) -> bool:
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block, resolving or connecting to anything but loopback fails like an unreachable host."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            raise socket.gaierror(socket.EAI_NONAME, "campaign: only loopback may be resolved")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise ConnectionRefusedError(111, "campaign: only loopback may be reached")
        return real_connect(self, address)

    with mock.patch.object(socket, "getaddrinfo", getaddrinfo), mock.patch.object(socket.socket, "connect", connect):
        yield


# ---------------------------------------------------------------- file checks

# Case directories live on tmpfs when there is one: the code under test fsyncs every file it writes, and on a
# shared disk that, not the code, would dominate the campaign's time.
_SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


def scratch(prefix: str) -> Path:
    """A new empty directory for one case (removed by the caller)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH))


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes); {} if it does not exist."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*.tmp")] if path.exists() else []


# ---------------------------------------------------------------- hostile text

HOSTILE = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "$(reboot)",
    "`id`",
    "; rm -rf /",
    "#{system('id')}",
    "\n",
    "\r\n",
    "\x00",
    "\u2028",
    "\x85",
    "ünï€",
    "%s%n",
    "{{ cfg }}",
    "-1",
    "0",
    "99999999999999999999",
    "1e999",
    "nan",
    "true",
    "null",
    "[]",
    "{}",
    "a" * 300,
]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE), st.text(max_size=40), st.text(alphabet="ab-_.:/0123456789", max_size=20)
)


# ---------------------------------------------------------------- target: init flags (CLI)


class _Service:
    """A loopback HTTP server answering scripted replies (status, content-type, body, delay)."""

    def __init__(self) -> None:
        self.reply: tuple[int, str, bytes, float] = (200, "text/plain", b"", 0.0)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status, ctype, body, delay = owner.reply
                if delay:
                    threading.Event().wait(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


_SERVICE: _Service | None = None
_SERVICE_LOCK = threading.Lock()


def service() -> _Service:
    """One loopback server per process, started on first use (stopped at exit by the caller or the OS)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = _Service()
        return _SERVICE


def cleanup() -> None:
    """Stop the loopback server and remove the template lab (end of a campaign run)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is not None:
            _SERVICE.close()
            _SERVICE = None
    for path in _TEMPLATE_LABS.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    _TEMPLATE_LABS.clear()


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


FAST_POLICY = discovery.RetryPolicy(timeout=0.5, attempts=2, backoff=0.0)
GOOD_TOKEN = "0123456789abcdef0123456789abcdef"

_flag_values: dict[str, st.SearchStrategy[str]] = {
    "--instances": st.one_of(st.integers(-5, 40).map(str), hostile_text),
    "--channel": st.one_of(st.sampled_from(["stable", "beta", "alpha", "lts", "edge"]), hostile_text),
    "--os": st.one_of(st.sampled_from(["flatcar", "coreos", "rhel"]), hostile_text),
    "--provider": st.one_of(st.sampled_from(["virtualbox", "libvirt", "vmware"]), hostile_text),
    "--box": hostile_text,
    "--box-url": hostile_text,
    "--box-version": hostile_text,
    "--memory": st.one_of(st.integers(-1, 4096).map(str), hostile_text),
    "--cpus": st.one_of(st.integers(-1, 80).map(str), hostile_text),
    "--name-prefix": st.one_of(st.sampled_from(["core", "node", "a-b", "Core", "-x"]), hostile_text),
    "--network": st.one_of(
        st.sampled_from(["192.168.56.0/24", "10.9.0.0/24", "192.168.56.0/28", "::1/64", "300.1.1.1/24", "10.0.0.0/8"]),
        hostile_text,
    ),
    "--bootstrap": st.one_of(st.sampled_from(["static", "discovery", "self-hosted", "magic"]), hostile_text),
    "--discovery-url": st.one_of(
        st.just(f"https://discovery.etcd.io/{GOOD_TOKEN}"), st.just("http://127.0.0.1:1/x y"), hostile_text
    ),
    # Only loopback URLs or strings that can never be a URL: the campaign must not reach a real host.
    "--discovery-service": st.sampled_from(["@service", "@refused", "not a url", "ftp://127.0.0.1/", ""]),
    "--discovery-endpoint": st.sampled_from(["@service", "@refused", "not a url", ""]),
    "--metadata": st.one_of(
        st.sampled_from(["core-01=role=web", "core-01", "core-09=a=b", "core-01=k=v,w", "=x=y", "core-01==v"]),
        hostile_text,
    ),
    "--tls": st.just(""),
    "--force": st.just(""),
    "--json": st.just(""),
    "--bogus-flag": st.just(""),
}
_FLAGS_WITHOUT_VALUE = {"--tls", "--force", "--json", "--bogus-flag"}


@st.composite
def init_args(draw: st.DrawFn) -> tuple[list[str], bool, str]:
    """(flags after 'init DIR', whether DIR exists beforehand, the discovery service's reply body)."""
    names = draw(st.lists(st.sampled_from(sorted(_flag_values)), max_size=6))
    args: list[str] = []
    for name in names:
        args.append(name)
        if name not in _FLAGS_WITHOUT_VALUE:
            args.append(draw(_flag_values[name]))
    exists = draw(st.booleans())
    body = draw(
        st.sampled_from(
            [
                "@good",
                "",
                "<html>oops</html>",
                "https://discovery.etcd.io/short",
                '{"action":"set","node":{"key":"/x","value":"3"}}',
            ]
        )
    )
    return args, exists, body


def _substitute(args: list[str], svc: _Service, refused: str) -> list[str]:
    return [svc.url if a == "@service" else refused if a == "@refused" else a for a in args]


def _one_error_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("error: ")


def run_init_case(args: list[str], exists: bool, body: str) -> str:
    """``coreos-lab init DIR <args>`` in a fresh temp dir; classify the outcome."""
    svc = service()
    reply_body = f"{svc.url}/{GOOD_TOKEN}" if body == "@good" else body
    svc.reply = (200, "text/plain", reply_body.encode(), 0.0)
    root = scratch("cl-campaign-init-")
    try:
        target = root / "lab"
        if exists:
            target.mkdir()
        argv = ["init", str(target), *_substitute(args, svc, _refused_url())]
        with (
            loopback_only(),
            mock.patch.object(discovery.RetryPolicy, "from_env", classmethod(lambda cls: FAST_POLICY)),
        ):
            result = CliRunner().invoke(app, argv, env={discovery.SERVICE_ENV: svc.url, "COREOS_LAB_DEBUG": ""})
        detail = f"argv={argv!r} exit={result.exit_code} stderr={result.stderr[-400:]!r}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            tb = "".join(traceback.format_exception(result.exception, limit=6))
            return _finish("init_flags", "traceback", f"{detail} {tb}")
        if leftovers(root):
            return _finish("init_flags", "partial", f"{detail} tmp files {leftovers(root)}")
        if result.exit_code == 0:
            if not (target / CONFIG_NAME).is_file():
                return _finish("init_flags", "partial", f"{detail}: exit 0 without {CONFIG_NAME}")
            return _finish("init_flags", "ok")
        if result.exit_code not in (1, 2) or not _one_error_line(result.stderr):
            return _finish("init_flags", "traceback", f"{detail}: not exit 1/2 with one error line")
        if snapshot(target) or (not exists and target.exists()):
            return _finish("init_flags", "partial", f"{detail}: left {sorted(snapshot(target))}")
        return _finish("init_flags", "ok" if result.exit_code == 0 else "clean")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- target: the lab config file (render)

_TEMPLATE_LABS: dict[bool, Path] = {}


def template_lab(use_tls: bool = False) -> Path:
    """A valid 2-node lab (static, with metadata; with its CA when ``use_tls``), made once; cases use copies."""
    path = _TEMPLATE_LABS.get(use_tls)
    if path is None or not path.exists():
        path = scratch("cl-campaign-template-") / "lab"
        cfg = LabConfig(instances=2, metadata={"core-01": {"role": "web"}}, cluster_token="campaign", tls=use_tls)
        init_lab(path, cfg)
        _TEMPLATE_LABS[use_tls] = path
    return path


toml_values = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.booleans().map(lambda b: "true" if b else "false"),
    hostile_text.map(json.dumps),
    st.sampled_from(
        [
            '"static"',
            '"discovery"',
            '"self-hosted"',
            "[]",
            "[1, 2]",
            "{}",
            '{ core-01 = { role = "db" } }',
            '{ core-09 = { a = "b" } }',
            '{ core-01 = "x" }',
            '"http://127.0.0.1:1/v2/keys/discovery/abc"',
            "1979-05-27T07:32:00Z",
            '"""multi\nline"""',
            "'literal'",
        ]
    ),
)
toml_keys = st.one_of(st.sampled_from(sorted(SETTINGS)), st.sampled_from(["bogus", "a.b", '"q"']))


@st.composite
def garbled_toml(draw: st.DrawFn) -> tuple[bool, bytes]:
    """The template's coreos-lab.toml with a few mutations: values swapped, lines dropped or added, bytes broken."""
    use_tls = draw(st.booleans())
    lines = (template_lab(use_tls) / CONFIG_NAME).read_text().splitlines()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "set", "drop", "dup", "junk", "table"]))
        if op == "set":
            key, value = draw(toml_keys), draw(toml_values)
            lines = [line for line in lines if not line.startswith(f"{key} =")]
            lines.insert(draw(st.integers(0, 4)), f"{key} = {value}")
        elif op == "drop" and lines:
            lines.pop(draw(st.integers(0, len(lines) - 1)))
        elif op == "dup" and lines:
            lines.append(lines[draw(st.integers(0, len(lines) - 1))])
        elif op == "junk":
            lines.insert(draw(st.integers(0, len(lines))), draw(hostile_text))
        else:
            lines.append(f"[{draw(st.sampled_from(['metadata', 'metadata.core-01', 'shared_folders', 'x']))}]")
            lines.append(f"{draw(toml_keys)} = {draw(toml_values)}")
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # broken encoding or a truncated file
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"", b"\xff\xfe", b"\x00", b"\xc3"]))
    return use_tls, data


def run_config_case(use_tls: bool, toml_bytes: bytes) -> str:
    """``coreos-lab render --lab COPY`` on a copy of the template lab with a garbled coreos-lab.toml."""
    root = scratch("cl-campaign-config-")
    try:
        lab = root / "lab"
        shutil.copytree(template_lab(use_tls), lab)
        (lab / CONFIG_NAME).write_bytes(toml_bytes)
        before = snapshot(lab)
        with loopback_only():
            result = CliRunner().invoke(app, ["render", "--lab", str(lab)], env={"COREOS_LAB_DEBUG": ""})
        detail = f"toml={toml_bytes[:300]!r} exit={result.exit_code} stderr={result.stderr[-300:]!r}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            tb = "".join(traceback.format_exception(result.exception, limit=6))
            return _finish("lab_config", "traceback", f"{detail} {tb}")
        if leftovers(root):
            return _finish("lab_config", "partial", f"{detail} tmp files {leftovers(root)}")
        if (lab / CONFIG_NAME).read_bytes() != toml_bytes:
            return _finish("lab_config", "partial", f"{detail}: render changed coreos-lab.toml")
        if result.exit_code == 0:
            return _finish("lab_config", "ok")
        if result.exit_code not in (1, 2) or not _one_error_line(result.stderr):
            return _finish("lab_config", "traceback", f"{detail}: not exit 1/2 with one error line")
        if snapshot(lab) != before:
            return _finish("lab_config", "partial", f"{detail}: a failed render changed files")
        return _finish("lab_config", "clean")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- target: unit files + [X-Fleet]

_SECTIONS = ["Unit", "Service", "Install", "X-Fleet", "Socket", "Timer", "X-Other", "", "Unit ", "[Unit]", "Ü"]
_KEYS = [
    "Description",
    "ExecStart",
    "ExecStartPre",
    "Restart",
    "WantedBy",
    "Type",
    "MachineID",
    "MachineOf",
    "MachineMetadata",
    "Conflicts",
    "Global",
    "Replaces",
    "X-ConditionMachineID",
    "X-ConditionMachineOf",
    "X-ConditionMachineMetadata",
    "X-Conflicts",
    "Bogus",
    "",
    "Exec Start",
]
_VALUES = st.one_of(
    hostile_text,
    st.sampled_from(
        [
            "/bin/true",
            "true",
            "false",
            "yes",
            "role=web",
            '"role=web" "zone=a"',
            "role=web zone=a",
            "=x",
            "web*.service",
            "[a-",
            "*",
            "hello.service",
            "hello@1.service",
            "abcdef0123456789abcdef0123456789",
            "%i %n %%",
            "foo \\",
        ]
    ),
)


@st.composite
def unit_texts(draw: st.DrawFn) -> tuple[str, str | None]:
    """(unit file text, unit name or None): section headers, Key=Value lines, comments, continuations, junk."""
    # Mostly a sane skeleton first, so the generated lines reach [X-Fleet] parsing and validation.
    out: list[str] = []
    if draw(st.integers(0, 3)):
        out += ["[Unit]", "Description=campaign", "[Service]", "ExecStart=/bin/true", "[X-Fleet]"]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["section", "kv", "kv", "kv", "comment", "blank", "junk", "cont"]))
        if kind == "section":
            out.append(f"[{draw(st.sampled_from(_SECTIONS))}]")
        elif kind == "kv":
            sep = draw(st.sampled_from(["=", " = ", "=", "=\t"]))
            out.append(f"{draw(st.sampled_from(_KEYS))}{sep}{draw(_VALUES)}")
        elif kind == "comment":
            out.append(draw(st.sampled_from(["#", ";"])) + draw(hostile_text))
        elif kind == "blank":
            out.append("")
        elif kind == "cont":
            out.append(f"{draw(st.sampled_from(_KEYS))}=a \\")
            out.append(draw(hostile_text))
        else:
            out.append(draw(hostile_text))
    text = draw(st.sampled_from(["\n", "\r\n", "\n\n"])).join(out) + draw(st.sampled_from(["", "\n", "\\"]))
    pick = draw(st.integers(0, 9))  # mostly valid names: a bad name stops parsing before the content is read
    if pick < 6:
        name: str | None = draw(st.sampled_from(["hello.service", "web@.service", "web@1.service", "a.timer"]))
    elif pick < 8:
        name = None
    else:
        name = draw(st.one_of(st.sampled_from(["bad name", "x", "@.service"]), hostile_text))
    return text, name


def run_unit_case(text: str, name: str | None) -> str:
    def call() -> None:
        unit = UnitFile.parse(text, name)
        xfleet = XFleet.from_unit(unit, name)
        xfleet.validate(name or "unit")
        xfleet.metadata_requirements()
        UnitFile.parse(unit.to_text(), name)  # what we print must parse again

    return library_case("unit_files", call)


# ---------------------------------------------------------------- target: discovery answers (loopback HTTP)

discovery_replies = st.tuples(
    st.sampled_from([200, 200, 200, 201, 204, 301, 400, 404, 409, 500, 503]),
    st.sampled_from(["text/plain", "application/json", "text/html"]),
    st.one_of(
        st.sampled_from(
            [
                b"@good",
                b"@good\n",
                b"",
                b"   ",
                b"<html><body>503 Service Unavailable</body></html>",
                b"https://discovery.etcd.io/0123",
                b"https://discovery.etcd.io/0123456789ABCDEF0123456789ABCDEF",
                b"javascript:alert(1)/0123456789abcdef0123456789abcdef",
                b'{"action":"set","node":{"key":"/discovery/x/_config/size","value":"3"}}',
                b'{"action":"set","node":{"value":"4"}}',
                b'{"node": null}',
                b'{"node": {"value": 3}}',
                b"[1,2,3]",
                b"\xff\xfe\x00garbage",
                b"x" * 5000,
            ]
        ),
        st.binary(max_size=200),
        st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")),
    ),
    st.sampled_from([0.0] * 15 + [0.3]),  # now and then slower than the timeout
    st.sampled_from(["discovery", "self-hosted"]),
)


def run_discovery_case(reply: tuple[int, str, bytes, float, str]) -> str:
    """``init_lab`` with a discovery (or self-hosted) bootstrap against a loopback server answering ``reply``."""
    status, ctype, body, delay, mode = reply
    svc = service()
    if body.startswith(b"@good"):
        body = f"{svc.url}/{GOOD_TOKEN}".encode() + body[len(b"@good") :]
    svc.reply = (status, ctype, body, delay)
    root = scratch("cl-campaign-discovery-")
    policy = discovery.RetryPolicy(timeout=0.2, attempts=2, backoff=0.0)
    detail = f"reply={(status, ctype, body[:200], delay, mode)!r}"
    try:
        draft = LabConfig(instances=3, bootstrap=mode, cluster_token="campaign")
        kwargs: dict[str, Any] = (
            {"discovery_service": svc.url} if mode == "discovery" else {"discovery_endpoint": svc.url}
        )
        failed = False
        try:
            with loopback_only():
                init_lab(root / "lab", draft, policy=policy, **kwargs)
        except CoreosLabError as exc:
            if "\n" in str(exc) or not str(exc).strip():
                return _finish("discovery", "traceback", f"{detail}: error text not one line: {str(exc)!r}")
            if isinstance(exc, DiscoveryError) and discovery.OFFLINE_HINT not in str(exc):
                HINTLESS.append(f"{detail}: {exc}")  # the issue wants the offline hint on every such failure
            failed = True
        except Exception:
            return _finish("discovery", "traceback", f"{detail} {traceback.format_exc(limit=6)}")
        if leftovers(root):
            return _finish("discovery", "partial", f"{detail} tmp files {leftovers(root)}")
        if failed and snapshot(root):
            return _finish("discovery", "partial", f"{detail} left {sorted(snapshot(root))}")
        return _finish("discovery", "clean" if failed else "ok")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- target: etcd JSON answers (fake adapter)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["", "0", "-1", "abc", "AAAA", "!!", "3.4.23", "true", "9" * 30]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_ETCD_FIELDS = [
    "header",
    "kvs",
    "count",
    "key",
    "value",
    "members",
    "ID",
    "name",
    "peerURLs",
    "clientURLs",
    "leader",
    "raftTerm",
    "raftIndex",
    "version",
    "dbSize",
    "deleted",
    "succeeded",
    "revision",
    "member_id",
    "create_revision",
    "mod_revision",
    "node",
    "nodes",
    "dir",
    "errorCode",
    "message",
    "cause",
    "ttl",
    "createdIndex",
    "modifiedIndex",
    "result",
    "events",
    "type",
    "kv",
    "canceled",
    "error",
    "health",
    "etcdserver",
    "etcdcluster",
]


@st.composite
def etcd_shaped(draw: st.DrawFn) -> Any:
    """JSON that looks like an etcd answer: known field names, nested a little, values of any type."""

    def obj(depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in draw(st.lists(st.sampled_from(_ETCD_FIELDS), max_size=5)):
            if depth < 2 and draw(st.booleans()):
                out[key] = (
                    obj(depth + 1) if draw(st.booleans()) else [obj(depth + 1) for _ in range(draw(st.integers(0, 2)))]
                )
            else:
                out[key] = draw(json_values)
        return out

    return obj(0)


@st.composite
def etcd_replies(draw: st.DrawFn) -> tuple[int, bytes] | str:
    """An HTTP answer (status, body) or the name of a requests exception to raise instead."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.sampled_from(
                ["ConnectionError", "Timeout", "ChunkedEncodingError", "SSLError", "ContentDecodingError", "InvalidURL"]
            )
        )
    status = draw(st.sampled_from([200, 200, 200, 200, 201, 204, 400, 404, 412, 500, 503]))
    kind = draw(st.sampled_from(["shaped", "shaped", "json", "raw", "stream"]))
    if kind == "shaped":
        body = json.dumps(draw(etcd_shaped())).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "stream":
        body = b"\n".join(json.dumps(draw(etcd_shaped())).encode() for _ in range(draw(st.integers(1, 3))))
    else:
        body = draw(st.binary(max_size=120))
    return status, body


# Valid answers (the shapes etcd 3.4 sends), which :func:`mutated` then breaks in one or two places: random JSON
# alone almost never gets past the first type check, a valid answer with one wrong node reaches every parser.
_B64K, _B64V = "L2sva2V5", "dmFsdWU="
_HEADER = {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437", "revision": "7", "raft_term": "2"}
_KV = {"key": _B64K, "create_revision": "5", "mod_revision": "7", "version": "2", "value": _B64V}
ETCD_VALID: Mapping[str, Any] = {
    "version": {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"},
    "health": {"health": "true", "reason": ""},
    "status": {
        "header": _HEADER,
        "version": "3.4.23",
        "dbSize": "20480",
        "leader": "10276657743932975437",
        "raftIndex": "9",
        "raftTerm": "2",
        "raftAppliedIndex": "9",
        "dbSizeInUse": "20480",
    },
    "member_list": {
        "header": _HEADER,
        "members": [
            {
                "ID": "10276657743932975437",
                "name": "m1",
                "peerURLs": ["http://127.0.0.1:2380"],
                "clientURLs": ["http://127.0.0.1:2379"],
            },
            {"ID": "2", "name": "", "peerURLs": ["http://127.0.0.1:2381"], "isLearner": True},
        ],
    },
    "put": {"header": _HEADER},
    "get": {"header": _HEADER, "kvs": [_KV], "count": "1"},
    "range": {"header": _HEADER, "kvs": [_KV, {**_KV, "key": "L2svYg==", "value": ""}], "count": "2"},
    "delete": {"header": _HEADER, "deleted": "2"},
    "txn_put_if": {"header": _HEADER, "succeeded": True, "responses": [{"response_put": {"header": _HEADER}}]},
    "txn_delete_if": {"header": _HEADER, "responses": []},
    "v2_get": {
        "action": "get",
        "node": {
            "key": "/k",
            "dir": True,
            "modifiedIndex": 4,
            "createdIndex": 4,
            "nodes": [
                {
                    "key": "/k/a",
                    "value": "v",
                    "modifiedIndex": 5,
                    "createdIndex": 5,
                    "ttl": 30,
                    "expiration": "2026-11-26T20:00:00Z",
                }
            ],
        },
    },
    "v2_set": {"action": "set", "node": {"key": "/k", "value": "v", "modifiedIndex": 6, "createdIndex": 6, "ttl": 5}},
    "v2_mkdir": {"action": "set", "node": {"key": "/d", "dir": True, "modifiedIndex": 8, "createdIndex": 8}},
    "v2_delete": {
        "action": "delete",
        "node": {"key": "/k", "modifiedIndex": 9, "createdIndex": 6},
        "prevNode": {"key": "/k", "value": "v"},
    },
    "v2_error": {"errorCode": 100, "message": "Key not found", "cause": "/k", "index": 7},
    "watch_created": {"result": {"header": _HEADER, "created": True}},
    "watch_events": {"result": {"header": _HEADER, "events": [{"kv": _KV}, {"type": "DELETE", "kv": {"key": _B64K}}]}},
    "watch_canceled": {"result": {"header": _HEADER, "canceled": True, "cancel_reason": "compacted"}},
    "grpc_error": {"error": "etcdserver: request timed out", "code": 14, "message": "etcdserver: request timed out"},
}
# Which valid answers each operation expects (the first one, and for streams/v2 the others too).
_ETCD_ANSWERS_FOR: Mapping[str, tuple[str, ...]] = {
    "watch": ("watch_created", "watch_events", "watch_canceled"),
    "v2_get": ("v2_get", "v2_error"),
    "v2_set": ("v2_set", "v2_error"),
    "v2_mkdir": ("v2_mkdir", "v2_error"),
    "v2_delete": ("v2_delete", "v2_error"),
    "cluster_health": ("status", "member_list"),
}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        copy = dict(doc)
        if value is _DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(doc[head], rest, value)
        return copy
    copy_list = list(doc)
    if value is _DELETE and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replace(doc[head], rest, value)
    return copy_list


_DELETE = object()
_WRONG = st.one_of(
    st.sampled_from(
        [None, True, False, 0, -1, 2**64, 1.5, "", "abc", "!!", "-5", "1e999", "nan", [], {}, ["x"], {"x": 1}]
    ),
    json_values,
)


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one to three nodes replaced by a wrong type or value, or deleted."""
    doc = valid
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        value = _DELETE if path and draw(st.integers(0, 4)) == 0 else draw(_WRONG)
        doc = _replace(doc, path, value)
    return doc


@st.composite
def etcd_case(draw: st.DrawFn, op: str) -> tuple[list[tuple[int, bytes] | str], str | None]:
    """(scripted answers, gateway prefix) for ``op``: mostly a valid answer broken in a place or two."""
    names = _ETCD_ANSWERS_FOR.get(op, (op,))
    replies: list[tuple[int, bytes] | str] = []
    for _ in range(draw(st.integers(1, 3))):
        pick = draw(st.integers(0, 9))
        if pick < 6:
            doc = draw(mutated(ETCD_VALID[draw(st.sampled_from(names))]))
            status = draw(st.sampled_from([200] * 6 + [400, 404, 412, 503]))
            body = json.dumps(doc).encode()
            if op == "watch" and draw(st.booleans()):  # a stream: a valid first message, then the broken one
                body = json.dumps(ETCD_VALID["watch_created"]).encode() + b"\n" + body
            replies.append((status, body))
        elif pick < 8:
            replies.append((200, json.dumps(ETCD_VALID[draw(st.sampled_from(names))]).encode()))
        else:
            replies.append(draw(etcd_replies()))
    prefix = draw(st.sampled_from(["/v3", "/v3", "/v3", None]))
    if prefix is None and draw(st.booleans()):
        replies.insert(0, (200, json.dumps(ETCD_VALID["version"]).encode()))
    return replies, prefix


class FakeEtcdAdapter(BaseAdapter):
    """A requests transport adapter answering from a list of scripted replies (the last one repeats)."""

    def __init__(self, replies: list[tuple[int, bytes] | str]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.calls = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(reply, str):
            raise getattr(requests.exceptions, reply)(f"campaign: injected {reply}")
        status, body = reply
        resp = requests.Response()
        resp.status_code = status
        resp.raw = io.BytesIO(body)
        resp.url = str(request.url)
        resp.request = request
        resp.headers["Content-Type"] = "application/json"
        resp.reason = "campaign"
        return resp

    def close(self) -> None:
        pass


ETCD_OPS: Mapping[str, Callable[[EtcdClient], object]] = {
    "version": lambda c: c.version(),
    "health": lambda c: c.health(),
    "status": lambda c: c.status(),
    "member_list": lambda c: c.member_list(),
    "put": lambda c: c.put("/k", b"v"),
    "get": lambda c: c.get("/k"),
    "range": lambda c: c.range("/k/"),
    "delete": lambda c: c.delete("/k", prefix=True),
    "txn_put_if": lambda c: c.txn_put_if("/k", "v", expect_mod_revision=3),
    "txn_delete_if": lambda c: c.txn_delete_if("/k", expect_mod_revision=3),
    "v2_get": lambda c: c.v2_get("/k", recursive=True),
    "v2_set": lambda c: c.v2_set("/k", "v", ttl=5, prev_exist=False),
    "v2_mkdir": lambda c: c.v2_mkdir("/d"),
    "v2_delete": lambda c: c.v2_delete("/k", recursive=True),
    "watch": lambda c: list(c.watch("/k", prefix=True, timeout=0.5)),
    "cluster_health": lambda c: cluster_health({"a": c}).to_json(),
}


VERSION_ANSWER: tuple[int, bytes] = (200, b'{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}')


def run_etcd_case(op: str, replies: list[tuple[int, bytes] | str], prefix: str | None = "/v3") -> str:
    """One EtcdClient operation against scripted answers; ``prefix`` None makes the client ask /version first."""
    session = requests.Session()
    session.mount("http://etcd.campaign/", FakeEtcdAdapter(replies))
    # A reserved, never-resolved name: the adapter answers before any DNS lookup could happen.
    client = EtcdClient("http://etcd.campaign", session=session, timeout=1.0, api_prefix=prefix)

    def call() -> None:
        result = ETCD_OPS[op](client)
        json.dumps(result, default=str)  # whatever comes back must be printable by the CLI

    with loopback_only():
        return library_case("etcd_json", call)


# ---------------------------------------------------------------- target: fleet JSON answers (fake transport)

_FLEET_FIELDS = [
    "units",
    "machines",
    "states",
    "nextPageToken",
    "name",
    "options",
    "section",
    "value",
    "desiredState",
    "currentState",
    "machineID",
    "id",
    "primaryIP",
    "metadata",
    "hash",
    "systemdLoadState",
    "systemdActiveState",
    "systemdSubState",
    "error",
    "code",
    "message",
]


@st.composite
def fleet_shaped(draw: st.DrawFn) -> Any:
    def obj(depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in draw(st.lists(st.sampled_from(_FLEET_FIELDS), max_size=5)):
            if depth < 3 and draw(st.booleans()):
                out[key] = (
                    [obj(depth + 1) for _ in range(draw(st.integers(0, 2)))] if draw(st.booleans()) else obj(depth + 1)
                )
            else:
                out[key] = draw(
                    st.one_of(
                        json_values,
                        st.sampled_from(["hello.service", "launched", "inactive", "Service", "ExecStart", "/bin/true"]),
                    )
                )
        return out

    return obj(0)


@st.composite
def fleet_replies(draw: st.DrawFn) -> HTTPAnswer | str:
    if draw(st.integers(0, 12)) == 0:
        return "unreachable"
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 400, 404, 409, 500]))
    kind = draw(st.sampled_from(["shaped", "shaped", "json", "raw", "deep"]))
    if kind == "shaped":
        body = json.dumps(draw(fleet_shaped())).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        body = b"[" * 5000 + b"]" * 5000
    else:
        body = draw(st.binary(max_size=120))
    return HTTPAnswer(status, body)


_OPTIONS = [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]
FLEET_VALID: Mapping[str, Any] = {
    "machines": {
        "machines": [
            {"id": "113f16a7b2d94a5fbd6c83d6b7c2f0aa", "primaryIP": "172.17.8.101", "metadata": {"role": "web"}},
            {"id": "2"},
        ]
    },
    "units": {
        "units": [
            {
                "name": "hello.service",
                "options": _OPTIONS,
                "desiredState": "launched",
                "currentState": "launched",
                "machineID": "113f16a7b2d94a5fbd6c83d6b7c2f0aa",
            }
        ]
    },
    "units_page": {
        "units": [{"name": "a.service", "options": _OPTIONS, "desiredState": "loaded"}],
        "nextPageToken": "abc",
    },
    "unit": {"name": "hello.service", "options": _OPTIONS, "desiredState": "launched", "currentState": "inactive"},
    "states": {
        "states": [
            {
                "name": "hello.service",
                "hash": "2b1b4c7a09f6e0c2a2d3e5b8d9d1c0f1e2a3b4c5",
                "machineID": "113f16a7b2d94a5fbd6c83d6b7c2f0aa",
                "systemdLoadState": "loaded",
                "systemdActiveState": "active",
                "systemdSubState": "running",
            }
        ]
    },
    "error": {"error": {"code": 409, "message": "unit already exists"}},
}
_FLEET_ANSWERS_FOR: Mapping[str, tuple[str, ...]] = {
    "machines": ("machines",),
    "units": ("units", "units_page"),
    "unit": ("unit",),
    "states": ("states",),
    "ensure_unit": ("unit", "error"),
    "create_unit": ("error",),
    "set_desired_state": ("error",),
    "destroy": ("error",),
}


@st.composite
def fleet_case(draw: st.DrawFn, op: str) -> list[HTTPAnswer | str]:
    """Scripted answers for ``op``: mostly a valid answer broken in a place or two."""
    names = _FLEET_ANSWERS_FOR[op]
    replies: list[HTTPAnswer | str] = []
    for _ in range(draw(st.integers(1, 3))):
        pick = draw(st.integers(0, 9))
        if pick < 6:
            doc = draw(mutated(FLEET_VALID[draw(st.sampled_from(names))]))
            status = draw(st.sampled_from([200] * 5 + [201, 204, 404, 409, 500]))
            replies.append(HTTPAnswer(status, json.dumps(doc).encode()))
        elif pick < 8:
            status = draw(st.sampled_from([200, 201, 204, 404]))
            replies.append(HTTPAnswer(status, json.dumps(FLEET_VALID[draw(st.sampled_from(names))]).encode()))
        else:
            replies.append(draw(fleet_replies()))
    return replies


class FakeFleetTransport:
    def __init__(self, replies: list[HTTPAnswer | str]) -> None:
        self.replies = replies
        self.calls = 0

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> HTTPAnswer:
        from coreos_lab.errors import FleetError

        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        if isinstance(reply, str):
            raise FleetError(f"cannot reach fleet at campaign: {reply}")
        return reply


_HELLO = UnitFile.parse("[Service]\nExecStart=/bin/true\n", "hello.service")
FLEET_OPS: Mapping[str, Callable[[FleetClient], object]] = {
    "machines": lambda c: c.machines(),
    "units": lambda c: c.units(),
    "unit": lambda c: c.unit("hello.service"),
    "states": lambda c: c.states(machine_id="abc", unit_name="hello.service"),
    "create_unit": lambda c: c.create_unit(_HELLO, "launched"),
    "set_desired_state": lambda c: c.set_desired_state("hello.service", "loaded"),
    "ensure_unit": lambda c: c.ensure_unit(_HELLO, "launched"),
    "destroy": lambda c: c.destroy("hello.service"),
}


def run_fleet_case(op: str, replies: list[HTTPAnswer | str]) -> str:
    client = FleetClient("http://127.0.0.1:1", transport=FakeFleetTransport(replies))

    def call() -> None:
        result = FLEET_OPS[op](client)
        if isinstance(result, list):
            for item in result:
                to_json = getattr(item, "to_json", None)
                if to_json is not None:
                    json.dumps(to_json(), default=str)

    with loopback_only():
        return library_case("fleet_json", call)


# ---------------------------------------------------------------- target: `systemctl show` output

_SHOW_KEYS = [*SHOW_PROPERTIES, "Bogus", ""]
_SHOW_VALUES = st.one_of(
    hostile_text,
    st.sampled_from(
        [
            "@1700000000",
            "@0",
            "@-5",
            "@1e20",
            "@99999999999999",
            "@inf",
            "@nan",
            "@",
            "Tue 2023-11-14 22:13:20 UTC",
            "123",
            "-1",
            "active",
            "loaded",
            "running",
            "n/a",
        ]
    ),
)


@st.composite
def show_outputs(draw: st.DrawFn) -> tuple[str, list[str]]:
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        lines = [f"{draw(st.sampled_from(_SHOW_KEYS))}={draw(_SHOW_VALUES)}" for _ in range(draw(st.integers(0, 8)))]
        if draw(st.integers(0, 4)) == 0:
            lines.append(draw(hostile_text))
        blocks.append("\n".join(lines))
    text = draw(st.sampled_from(["\n\n", "\n", "\n \n"])).join(blocks) + draw(st.sampled_from(["", "\n"]))
    # Mostly as many names as blocks, so the parsing of the values is reached, not just the count check.
    count = len(blocks) if draw(st.integers(0, 3)) else draw(st.integers(0, 3))
    names = [draw(st.sampled_from(["a.service", "b.service", "x@1.service"])) for _ in range(count)]
    return text, names


def run_show_case(text: str, names: list[str]) -> str:
    def call() -> None:
        for state in parse_show(text, names):
            json.dumps(state.to_json(), default=str)

    return library_case("systemctl_show", call)
