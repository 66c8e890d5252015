"""Node-side shell snippets, run by a real /bin/sh against a stand-in `ip` and the host's real one."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from coreos_lab import nodeshell
from coreos_lab.box import recipe
from tests.conftest import require_binary

IP_OUTPUT = """\
2: eth0    inet 192.168.121.17/24 brd 192.168.121.255 scope global dynamic eth0\\       valid_lft 3590sec
3: eth1    inet 192.168.56.101/24 brd 192.168.56.255 scope global eth1\\       valid_lft forever
"""


def sh(command: str, *, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, env=env, timeout=30, check=False)


def test_addresses_from_a_stand_in_ip(tmp_path: Path) -> None:
    fake = tmp_path / "ip"
    fake.write_text(f"#!/bin/sh\n[ \"$*\" = '-4 -o addr show scope global' ] || exit 9\ncat <<'X'\n{IP_OUTPUT}X\n")
    fake.chmod(0o755)
    proc = sh(nodeshell.ADDRESSES, path=f"{tmp_path}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["192.168.121.17", "192.168.56.101"]


def test_addresses_with_the_real_ip() -> None:
    """The snippet prints what the host's own ``ip`` reports (read here from its JSON), never 127.0.0.1."""
    ip = require_binary("ip")
    proc = sh(nodeshell.ADDRESSES, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert proc.returncode == 0
    shown = subprocess.run([ip, "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True)
    expected = [a["local"] for link in json.loads(shown.stdout or "[]") for a in link.get("addr_info", [])]
    assert proc.stdout.split() == expected
    assert not any(ipaddress.IPv4Address(a).is_loopback for a in expected)


def test_addresses_without_ip_is_empty_not_an_error(tmp_path: Path) -> None:
    proc = sh(nodeshell.ADDRESSES, path=str(tmp_path))
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.fixture
def twin_hostname(tmp_path: Path) -> Path:
    """The box's /usr/bin/hostname with its exec pointed at a stand-in for Debian's hostname."""
    real = tmp_path / "debian-hostname"
    real.write_text('#!/bin/sh\necho "debian-hostname $*"\n')
    real.chmod(0o755)
    text = (recipe.files_dir() / "usr/lib/coreos-lab/hostname").read_text()
    assert "exec /usr/lib/coreos-lab/bin/hostname " in text
    wrapper = tmp_path / "hostname"
    wrapper.write_text(text.replace("/usr/lib/coreos-lab/bin/hostname", str(real)))
    return wrapper


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-I", "invalid option -- 'I'"),
        ("-sI", "invalid option -- 'I'"),
        ("-A", "invalid option -- 'A'"),
        ("--all-ip-addresses", "unrecognized option '--all-ip-addresses'"),
        ("--all-fqdns", "unrecognized option '--all-fqdns'"),
    ],
)
def test_twin_hostname_refuses_what_net_tools_lacks(twin_hostname: Path, args: str, message: str) -> None:
    proc = sh(f"sh {twin_hostname} {args}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"hostname: {message}"
    assert proc.stdout == ""


@pytest.mark.parametrize("args", ["", "-s", "-f", "core-01", "--fqdn"])
def test_twin_hostname_passes_the_rest_through(twin_hostname: Path, args: str) -> None:
    proc = sh(f"sh {twin_hostname} {args}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"debian-hostname {args}".strip()
