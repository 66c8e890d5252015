"""SSH trust through the CLI against a real sshd: what test_ssh_real.py does not cover yet.

The issue's bullet: static inventories verify host keys (known_hosts), ``--accept-new`` records first-seen keys,
a changed key is a hard error naming the host and both fingerprints. test_ssh_real.py proves it on SSHRunner;
here the same through ``coreos-lab exec --inventory`` (exit code, one line, nothing recorded), plus a key known
only under another type (OpenSSH treats that as changed) and the modes of what gets recorded.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.errors import HostKeyError
from coreos_lab.ssh import SSHRunner, fingerprint
from coreos_lab.sshconfig import parse_ssh_config
from tests.conftest import require_binary, require_root
from tests.integration.sshd import KeyPair, Sshd, keygen

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    require_binary("sshd")
    require_binary("ssh-keygen")
    require_root()
    path = Path(tempfile.mkdtemp(prefix="cl-trust-"))
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


def inventory(tmp_path: Path, server: Sshd, keys: KeyPair, known: Path, strict: str = "yes") -> Path:
    path = tmp_path / "inventory"
    path.write_text(server.ssh_config_block("node", keys, known_hosts=known, strict=strict))
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def server_fingerprint(server: Sshd) -> str:
    return fingerprint(paramiko.Ed25519Key(data=base64.b64decode(server.host_key_public)))


def test_cli_refuses_an_unknown_key_then_accept_new_records_it(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    known = tmp_path / "kh" / "known_hosts"
    inv = inventory(tmp_path, server, keys, known)
    code, out, err = run("exec", "--inventory", str(inv), "--no-persist", "--", "echo", "hi")
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "unknown host key" in err
    assert f"[127.0.0.1]:{server.port}" in err
    assert server_fingerprint(server) in err
    assert "--accept-new" in err
    assert not known.exists(), "a refused key must not be recorded"

    code, out, err = run("exec", "--inventory", str(inv), "--no-persist", "--accept-new", "--", "echo", "hi")
    assert code == 0, err
    assert out.strip().endswith("hi")
    assert known.read_text() == server.known_hosts_line()
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert stat.S_IMODE(known.parent.stat().st_mode) == 0o700

    code, out, err = run("exec", "--inventory", str(inv), "--no-persist", "--", "echo", "again")
    assert code == 0, err
    assert known.read_text() == server.known_hosts_line(), "a known key is not recorded twice"


def test_cli_changed_key_is_a_hard_error_even_with_accept_new(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    keygen(tmp_path / "impostor")
    fake = (tmp_path / "impostor.pub").read_text().split()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {fake}\n")
    before = known.read_bytes()
    inv = inventory(tmp_path, server, keys, known, strict="accept-new")
    code, out, err = run("exec", "--inventory", str(inv), "--no-persist", "--accept-new", "--", "echo", "hi")
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "node" in err
    assert "HOST KEY CHANGED" in err
    assert fingerprint(paramiko.Ed25519Key(data=base64.b64decode(fake))) in err
    assert server_fingerprint(server) in err
    assert known.read_bytes() == before


def test_key_known_only_under_another_type_counts_as_changed(server: Sshd, keys: KeyPair, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True, timeout=30)
    ec_pub = (tmp_path / "ec.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {ec_pub[0]} {ec_pub[1]}\n")
    before = known.read_bytes()
    target = parse_ssh_config(server.ssh_config_block("node", keys, known_hosts=known, strict="accept-new"))["node"]
    with pytest.raises(HostKeyError) as info:
        SSHRunner(target, accept_new=True, connect_timeout=10).run("true")
    text = str(info.value)
    assert "\n" not in text
    assert text.count("SHA256:") == 2
    assert "node:" in text
    assert known.read_bytes() == before
