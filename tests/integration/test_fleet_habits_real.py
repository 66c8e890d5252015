"""fleetctl's SSH habits over a real sshd on loopback (tests/integration/sshd.py), with the fleet API double.

- ``--tunnel`` / ``$FLEETCTL_TUNNEL``: fleet's unix socket (or an http endpoint) reached through SSH on a host
  given as ``[USER@]HOST[:PORT]`` or as a node of an inventory; its host key checked against known_hosts.
- ``unit status`` / ``journal`` against a bare endpoint: the unit's machine comes from fleet (the double reports
  its IP as 127.0.0.1, where the sshd listens) and the command runs there over SSH, as fleetctl does.

The client logs in as fleetctl does, with the user's own keys and known_hosts: HOME is a private directory
holding the test key as ~/.ssh/id_ed25519 and the server's key in ~/.ssh/known_hosts. This host has no systemd
running, so what ``systemctl status`` and ``journalctl`` answer is their "not booted with systemd" text; the
tests hold it to what the same command prints when run here directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.fleet import FleetClient
from coreos_lab.unitfile import UnitFile
from tests.conftest import require_binary, require_root
from tests.fleet_double import FIXTURES, FleetDouble, FleetState, load_more_runs
from tests.integration.sshd import KeyPair, Sshd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MACHINE = "3d1219c7c4c5404aaa1f6d2a48adfda4"
MORE = load_more_runs()
LISTED = MORE["fleetctl list-machines --no-legend"]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    require_binary("sshd")
    require_binary("curl")  # the tunnel runs curl against fleet's socket on the far side, as for a node
    require_root()
    path = Path(tempfile.mkdtemp(prefix="cl-fh-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(base: Path) -> KeyPair:
    return KeyPair.create(base / "keys")


@pytest.fixture(scope="module")
def server(base: Path, keys: KeyPair) -> Iterator[Sshd]:
    s = Sshd.start(keys, base)
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path: Path, keys: KeyPair, server: Sshd, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's ~/.ssh: the test key as the default identity, the server in known_hosts; no agent, no mux."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    shutil.copyfile(keys.private, ssh / "id_ed25519")
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "known_hosts").write_text(server.known_hosts_line())
    monkeypatch.setenv("HOME", str(ssh.parent))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("FLEETCTL_ENDPOINT", raising=False)
    monkeypatch.delenv("FLEETCTL_TUNNEL", raising=False)
    monkeypatch.setenv("COREOS_LAB_NO_PERSIST", "1")
    return ssh.parent


@pytest.fixture
def fleet(base: Path) -> Iterator[FleetDouble]:
    """fleetctl-more.txt's machine (IP 127.0.0.1) with hello.service launched on it; TCP and a unix socket."""
    state = FleetState(
        machines=[{"id": MACHINE, "metadata": {"rig": "hidden", "role": "worker"}, "primaryIP": "127.0.0.1"}]
    )
    with FleetDouble(state, unix_socket=base / "fleet.sock") as fd:
        hello = (FIXTURES / "unitfiles-more" / "hello.service").read_text()
        FleetClient(fd.url).create_unit(UnitFile.parse(hello, name="hello.service"), "launched")
        yield fd


def cli(*argv: str) -> Any:
    return CliRunner().invoke(app, list(argv))


def one_line_error(result: Any) -> str:
    assert result.exit_code != 0
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    return str(result.stderr)


def here(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command run on this host directly: what the SSH session on this host must answer too."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


# ---- --tunnel ---------------------------------------------------------------------------------------------------
def test_a_tunnel_reaches_fleets_socket_on_the_far_side(home: Path, server: Sshd, fleet: FleetDouble) -> None:
    socket = f"unix://{fleet.socket_path}"
    host = f"{server.user}@127.0.0.1:{server.port}"
    after = cli("list-machines", "--no-legend", "--tunnel", host, "--endpoint", socket)
    before = cli("--tunnel", host, "--endpoint", socket, "list-machines", "--no-legend")
    for result in (after, before):
        assert (result.exit_code, result.stdout, result.stderr) == (LISTED.rc, LISTED.stdout, LISTED.stderr)


def test_fleetctl_tunnel_from_the_environment_with_ssh_username(
    home: Path, server: Sshd, fleet: FleetDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETCTL_TUNNEL", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("FLEETCTL_ENDPOINT", f"unix://{fleet.socket_path}")
    wrong = cli("list-machines", "--no-legend")  # fleetctl's default user, core, is not authorized here
    assert "authentication failed for core@127.0.0.1" in one_line_error(wrong)
    result = cli("--ssh-username", server.user, "list-machines", "--no-legend")
    assert (result.exit_code, result.stdout) == (0, LISTED.stdout)


def test_a_tunnel_to_a_node_of_the_inventory(
    home: Path, server: Sshd, keys: KeyPair, fleet: FleetDouble, tmp_path: Path
) -> None:
    inventory = tmp_path / "inventory"
    known = home / ".ssh" / "known_hosts"
    inventory.write_text(server.ssh_config_block("fleet-node", keys, known_hosts=known, strict="yes"))
    run = MORE["fleetctl list-units --no-legend --fields=unit,sub"]
    socket = f"unix://{fleet.socket_path}"
    result = cli("-i", str(inventory), "--tunnel", "fleet-node", "--endpoint", socket, *run.argv)
    assert (result.exit_code, result.stdout) == (0, "hello.service\trunning\n")


def test_an_unknown_host_key_is_refused_and_accept_new_records_it(home: Path, server: Sshd, fleet: FleetDouble) -> None:
    known = home / ".ssh" / "known_hosts"
    known.write_text("")
    argv = ["list-machines", "--no-legend", "--tunnel", f"{server.user}@127.0.0.1:{server.port}"]
    argv += ["--endpoint", f"unix://{fleet.socket_path}"]
    refused = cli(*argv)
    assert "127.0.0.1" in one_line_error(refused)
    assert known.read_text() == ""
    accepted = cli(*argv, "--accept-new")
    assert (accepted.exit_code, accepted.stdout) == (0, LISTED.stdout)
    assert server.host_key_public in known.read_text()


# ---- unit status / journal on the unit's machine -------------------------------------------------------------------
def test_unit_status_runs_on_the_machine_fleet_names(home: Path, server: Sshd, fleet: FleetDouble) -> None:
    argv = ["unit", "status", "hello.service", "--endpoint", fleet.url, "--ssh-port", str(server.port)]
    result = cli(*argv, "--ssh-username", server.user)
    local = here("systemctl", "status", "--no-pager", "--full", "--lines=10", "--", "hello.service")
    assert result.exit_code == local.returncode
    assert result.stdout == local.stdout + local.stderr
    assert result.stdout  # systemctl said something: an empty answer would prove nothing
    as_json = cli(*argv, "--ssh-username", server.user, "--json")
    [text] = json.loads(as_json.stdout)
    assert (text["node"], text["ip"], text["exit_code"]) == ("3d1219c7...", "127.0.0.1", local.returncode)
    stranger = cli(*argv)  # user core
    assert "authentication failed for core@127.0.0.1" in one_line_error(stranger)


def test_journal_runs_on_the_machine_fleet_names(home: Path, server: Sshd, fleet: FleetDouble) -> None:
    argv = ["journal", "hello.service", "--endpoint", fleet.url, "--ssh-port", str(server.port)]
    result = cli(*argv, "--ssh-username", server.user)
    local = here(*shlex.split("journalctl --unit=hello.service --no-pager -o short-iso --show-cursor --lines=10"))
    if local.returncode == 0 or not local.stderr.strip():
        assert (result.exit_code, result.stdout) == (0, local.stdout.replace("-- No entries --\n", ""))
    else:  # no journal on this host: journalctl's own complaint, from the far side, in one line
        assert " ".join(local.stderr.split()) in one_line_error(result)
    known = home / ".ssh" / "known_hosts"
    known.write_text("")
    unknown = cli(*argv, "--ssh-username", server.user)
    assert "127.0.0.1" in one_line_error(unknown)


# ---- the same through the background connection holder (the default: no COREOS_LAB_NO_PERSIST) --------------
@pytest.fixture
def mux(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Connections held by coreos-lab's mux under a private runtime directory; its processes stopped by PID."""
    runtime = Path(tempfile.mkdtemp(prefix="cl-fh-rt-"))  # short: unix socket paths are limited to 108 bytes
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("COREOS_LAB_MUX_IDLE", "30")
    monkeypatch.delenv("COREOS_LAB_NO_PERSIST")
    yield runtime
    for pid in _mux_pids(runtime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(runtime, ignore_errors=True)


def _mux_pids(runtime: Path) -> list[int]:
    found = []
    for entry in (e for e in os.listdir("/proc") if e.isdigit()):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"coreos_lab.mux" in cmdline and str(runtime).encode() in cmdline:
                found.append(int(entry))
    return found


def test_tunnel_and_status_through_the_connection_holder(mux: Path, server: Sshd, fleet: FleetDouble) -> None:
    host = f"{server.user}@127.0.0.1:{server.port}"
    listed = cli("--tunnel", host, "--endpoint", f"unix://{fleet.socket_path}", "list-machines", "--no-legend")
    assert (listed.exit_code, listed.stdout) == (0, LISTED.stdout)
    argv = ["unit", "status", "hello.service", "--endpoint", fleet.url, "--ssh-port", str(server.port)]
    result = cli(*argv, "--ssh-username", server.user)
    local = here("systemctl", "status", "--no-pager", "--full", "--lines=10", "--", "hello.service")
    assert (result.exit_code, result.stdout) == (local.returncode, local.stdout + local.stderr)
    assert _mux_pids(mux), "the connections went through the mux"
