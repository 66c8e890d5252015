"""sshconfig: the three inputs (vagrant ssh-config, our own output, hand-written inventories) and round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coreos_lab.errors import ConfigError
from coreos_lab.sshconfig import SSHTarget, format_ssh_config, parse_ssh_config

# What `vagrant ssh-config` prints for a 2-node coreos-vagrant style lab (Vagrant 2.3, insecure key).
VAGRANT_OUTPUT = """\
Host core-01
  HostName 127.0.0.1
  User core
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/me/my labs/.vagrant.d/insecure_private_key"
  IdentitiesOnly yes
  LogLevel FATAL
  ForwardAgent yes
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host core-02
  HostName 127.0.0.1
  User core
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL
  ForwardAgent yes
"""


def test_vagrant_output() -> None:
    targets = parse_ssh_config(VAGRANT_OUTPUT)
    assert list(targets) == ["core-01", "core-02"]
    one = targets["core-01"]
    assert (one.hostname, one.port, one.user) == ("127.0.0.1", 2222, "core")
    assert one.identity_files == ("/home/me/my labs/.vagrant.d/insecure_private_key",)
    assert one.identities_only
    assert not one.verify_host_key
    assert one.known_hosts_path is None
    assert ("LogLevel", "FATAL") in one.options
    assert targets["core-02"].port == 2200


def test_hand_written_inventory_with_wildcards_and_equals() -> None:
    text = """
# defaults first, OpenSSH style: the first value obtained wins
Host web-1 web-2
    HostName=10.0.0.5
Host web-2
    HostName 10.0.0.6
    Port = 2202
Host db
Host !db *
    User deploy
Host *
    User nobody
    IdentityFile ~/.ssh/id_lab
    StrictHostKeyChecking accept-new
    UserKnownHostsFile ~/.ssh/lab_known_hosts
Match host foo
    User ignored
"""
    targets = parse_ssh_config(text)
    assert list(targets) == ["web-1", "web-2", "db"]  # wildcard hosts are not nodes
    assert targets["web-1"].hostname == "10.0.0.5"
    assert targets["web-2"].hostname == "10.0.0.5"  # the first block matching web-2 set it
    assert targets["web-2"].port == 2202
    assert targets["web-1"].user == "deploy"
    assert targets["db"].user == "nobody"  # negated pattern excluded db
    assert targets["db"].hostname == "db"  # HostName defaults to the alias
    assert targets["db"].identity_files == ("~/.ssh/id_lab",)
    assert targets["db"].strict_host_key_checking == "accept-new"
    assert targets["db"].verify_host_key


def test_identity_files_accumulate() -> None:
    text = "Host a\n IdentityFile /k1\nHost *\n IdentityFile /k2\n"
    assert parse_ssh_config(text)["a"].identity_files == ("/k1", "/k2")


def test_defaults_match_openssh() -> None:
    t = parse_ssh_config("Host a\n")["a"]
    assert (t.hostname, t.port, t.user) == ("a", 22, None)
    assert t.strict_host_key_checking == "yes"
    assert t.user_known_hosts_file == "~/.ssh/known_hosts"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("Host a\n Port 99999\n", "bad Port"),
        ("Host a\n Port x\n", "bad Port"),
        ("Host a\n StrictHostKeyChecking maybe\n", "StrictHostKeyChecking"),
        ("Host a\n HostName\n", "needs a value"),
        ('Host a\n IdentityFile "/unterminated\n', "line 2"),
        ("Include other.conf\n", "Include"),
        ("Host a\n ConnectTimeout soon\n", "ConnectTimeout"),
    ],
)
def test_bad_input_is_one_line_config_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_ssh_config(text)
    assert "\n" not in str(info.value)


def test_round_trip_of_vagrant_output() -> None:
    targets = parse_ssh_config(VAGRANT_OUTPUT)
    again = parse_ssh_config(format_ssh_config(targets))
    assert again == targets


def test_format_is_usable_by_openssh_syntax() -> None:
    text = format_ssh_config([SSHTarget("n1", "127.0.0.1", 2222, "core", ("/a b/key",))])
    assert text.startswith("Host n1\n  HostName 127.0.0.1\n  Port 2222\n  User core\n")
    assert '  IdentityFile "/a b/key"\n' in text


_names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
_paths = st.from_regex(r"/[A-Za-z0-9_. /-]{1,30}", fullmatch=True).map(str.rstrip).filter(lambda p: p != "/")


@given(
    name=_names,
    port=st.integers(1, 65535),
    user=st.one_of(st.none(), _names),
    keys=st.lists(_paths, max_size=3, unique=True),
    strict=st.sampled_from(["yes", "no", "accept-new"]),
    known=_paths,
)
def test_round_trip_property(name: str, port: int, user: str | None, keys: list[str], strict: str, known: str) -> None:
    target = SSHTarget(name, "127.0.0.1", port, user, tuple(keys), known, strict)
    assert parse_ssh_config(format_ssh_config([target])) == {name: target}
