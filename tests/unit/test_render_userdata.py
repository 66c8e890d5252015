"""The lab root's own files: a user-data cloud-config merged into every node's, a config.ign checked and left to
the box, and the old user-data/ directory moved out of the way."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from coreos_lab import pickup
from coreos_lab.errors import UsageError
from coreos_lab.render import HEADER, dump_yaml, init_lab, render_existing, render_lab

from .test_render import GOLDEN, lab

INPUTS = GOLDEN / "inputs"

SEED = """\
#cloud-config
ssh_authorized_keys:
  - ssh-ed25519 AAAA user@laptop
users:
  - name: alice
    groups: [docker]
    no_create_home: true
write_files:
  - path: /etc/hello/address
    permissions: 0644
    content: |
      address=$private_ipv4 public=$public_ipv4 v6=[$private_ipv6]
      home=$HOME
coreos:
  update:
    reboot_strategy: off
  units:
    - name: hello.service
      command: start
      content: |
        [Service]
        ExecStart=/bin/echo hello
    - name: docker.service
      enable: true
      command: start
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def cloud_config(lab_dir: Path, node: str) -> tuple[str, dict[str, Any]]:
    text = (lab_dir / "cloud-config" / f"{node}.yaml").read_text()
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return text, doc


# ---------------------------------------------------------------- merging user-data


def test_user_data_is_merged_into_every_node_ours_first(tmp_path: Path) -> None:
    write(tmp_path / "user-data", SEED)
    result = init_lab(tmp_path, lab())
    for node in result.config.nodes:
        text, doc = cloud_config(tmp_path, node.name)
        lines = text.splitlines()
        assert lines[0] == "#cloud-config"
        assert lines[1] == f"# {HEADER}"
        sha = hashlib.sha256(SEED.encode()).hexdigest()
        assert f"# Lab root user-data merged into this file: sha256:{sha}" in lines
        assert "$" not in text, "coreos-cloudinit would substitute it"
        assert doc["hostname"] == node.name
        assert doc["ssh_authorized_keys"] == ["ssh-ed25519 AAAA user@laptop"]
        assert doc["users"] == [{"name": "alice", "groups": ["docker"], "no_create_home": True}]
        paths = [f["path"] for f in doc["write_files"]]
        assert paths == ["/etc/coreos-lab/metadata", "/etc/hello/address"]
        hello = doc["write_files"][1]
        assert hello["permissions"] == "0644", "Go reads the text 0644 into the string field: it must stay that"
        assert hello["content"] == f"address={node.ip} public={node.ip} v6=[]\nhome=$HOME\n"
        units = [u["name"] for u in doc["coreos"]["units"]]
        assert units == ["etcd-member.service", "docker.service", "hello.service"], "docker.service once, ours"
        assert doc["coreos"]["units"][2]["content"] == "[Service]\nExecStart=/bin/echo hello\n"
        assert "  update:\n    reboot_strategy: off\n" in text, "a non-string scalar keeps the text it was written as"
    assert result.user_data is not None
    assert result.user_data.nodes == 3
    assert result.user_data.describe() == (
        "+1 unit, +1 file, +1 user, +1 ssh key, +coreos.update (docker.service already enabled and started by "
        "coreos-lab)"
    )
    assert (tmp_path / "user-data").read_text() == SEED, "the user's file is left alone"


def test_coreos_dialect_keeps_a_plain_docker_unit_and_its_own_sections(tmp_path: Path) -> None:
    write(tmp_path / "user-data", SEED)
    init_lab(tmp_path, lab("coreos"))
    _, doc = cloud_config(tmp_path, "core-01")
    assert [u["name"] for u in doc["coreos"]["units"]] == [
        "etcd2.service",
        "fleet.service",
        "hello.service",
        "docker.service",
    ]
    assert doc["coreos"]["etcd2"]["name"] == "core-01"
    assert doc["coreos"]["fleet"]["public_ip"] == "192.168.56.101"


def test_a_lab_without_user_data_is_byte_identical_to_the_template_output(tmp_path: Path) -> None:
    plain = {f.path: f.content for f in render_lab(lab())}
    text = plain["cloud-config/core-01.yaml"]
    assert "# Lab root user-data merged into this file: none" in text
    assert "# Lab root config.ign (Ignition applies it at first boot): none" in text
    assert "# Placement metadata" in text, "the template's own comments stay where nothing is merged"


def test_the_merged_cloud_config_applies_on_the_lab_box(tmp_path: Path) -> None:
    from coreos_lab.box import agent

    write(tmp_path / "lab" / "user-data", SEED.replace("users:\n  - name: alice\n    groups: [docker]\n"
                                                       "    no_create_home: true\n", ""))  # fmt: skip
    init_lab(tmp_path / "lab", lab(provider="libvirt", box="coreos-lab/lab"))
    root = tmp_path / "root"
    write(
        root / "etc" / "passwd", f"root:x:0:0::/root:/bin/sh\ncore:x:{os.getuid()}:{os.getgid()}::/home/core:/bin/sh\n"
    )
    write(root / "etc" / "group", "root:x:0:\n")
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> tuple[int, str]:
        calls.append(list(argv))
        return 0, ""

    report = agent.apply_file(tmp_path / "lab" / "cloud-config" / "core-02.yaml", root=root, run=run, env={})
    assert report.errors == []
    assert report.warnings == ["coreos.update is not supported by the lab box; ignored"]
    assert (
        root / "etc/hello/address"
    ).read_text() == "address=192.168.56.102 public=192.168.56.102 v6=[]\nhome=$HOME\n"
    assert (root / "etc/hello/address").stat().st_mode & 0o777 == 0o644
    assert "ExecStart=/bin/echo hello" in (root / "etc/systemd/system/hello.service").read_text()
    assert "ETCD_NAME=core-02" in (root / "etc/systemd/system/etcd-member.service.d/20-cluster.conf").read_text()
    starts = [c[-1] for c in calls if c[:1] == ["systemctl"] and "start" in c]
    assert starts == ["etcd-member.service", "docker.service", "hello.service"]


def test_private_user_data_makes_private_cloud_configs(tmp_path: Path) -> None:
    write(tmp_path / "user-data", SEED).chmod(0o600)
    init_lab(tmp_path, lab())
    assert stat.S_IMODE((tmp_path / "cloud-config" / "core-01.yaml").stat().st_mode) == 0o600


def test_render_follows_an_edited_user_data(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    assert render_existing(tmp_path).user_data is None
    write(tmp_path / "user-data", SEED)
    result = render_existing(tmp_path)
    assert result.user_data is not None
    assert "hello.service" in cloud_config(tmp_path, "core-03")[0]
    (tmp_path / "user-data").unlink()
    assert render_existing(tmp_path).user_data is None
    assert "hello.service" not in cloud_config(tmp_path, "core-03")[0]


def test_hostile_user_text_round_trips() -> None:
    hostile = ['it\'s "quoted"', "`id` #{system('id')} \\", "ünï € \u2028", "tab\there", " leading", "trailing\n\n"]
    files = "".join(
        f"  - path: /srv/f{i}\n    content: {json.dumps(v)}\n" for i, v in enumerate(hostile)
    )  # JSON strings are YAML
    user = pickup.UserData.from_bytes(f"#cloud-config\nwrite_files:\n{files}".encode(), Path("user-data"))
    text = next(f.content for f in render_lab(lab(), user_data=user) if f.path == "cloud-config/core-01.yaml")
    assert text.isascii()
    assert [f["content"] for f in yaml.safe_load(text)["write_files"][1:]] == hostile


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=40) | st.booleans(), max_size=4))
@example({"A\n": ""})  # a key ending in a newline is no plain key (found by this test)
def test_dump_yaml_reads_back(doc: dict[str, Any]) -> None:
    text = dump_yaml({"section": doc, "items": [doc, "x"]} if doc else {"section": "x"})
    assert "$" not in text
    back = yaml.safe_load(text)
    assert back == ({"section": doc, "items": [doc, "x"]} if doc else {"section": "x"})


# ---------------------------------------------------------------- refusals


OWNED = [
    ("hostname: mine\n", "hostname is coreos-lab's"),
    ("coreos:\n  etcd:\n    name: x\n", "coreos.etcd is coreos-lab's"),
    ("coreos:\n  etcd2:\n    discovery: https://discovery.etcd.io/x\n", "coreos.etcd2 is coreos-lab's"),
    ("coreos:\n  fleet:\n    public_ip: $public_ipv4\n", "coreos.fleet is coreos-lab's"),
    ("coreos:\n  units:\n    - name: etcd-member.service\n      command: start\n", "etcd-member.service"),
    ("coreos:\n  units:\n    - name: etcd2.service\n      command: start\n", "etcd2.service"),
    ("coreos:\n  units:\n    - name: etcd.service\n      mask: true\n", "etcd.service"),
    ("coreos:\n  units:\n    - name: fleet.service\n      command: start\n", "fleet.service"),
    (
        "coreos:\n  units:\n    - name: docker.service\n      content: |\n        [Service]\n",
        "docker.service (content)",
    ),
    (
        "coreos:\n  units:\n    - name: docker.service\n      drop_ins:\n        - name: a.conf\n",
        "docker.service (drop_ins)",
    ),
    ("coreos:\n  units:\n    - name: docker.service\n      command: stop\n", "docker.service"),
    ("write_files:\n  - path: /etc/coreos-lab/metadata\n    content: x\n", "/etc/coreos-lab/metadata is coreos-lab's"),
    (
        "write_files:\n  - path: /etc/systemd/system/etcd-member.service.d/30-mine.conf\n",
        "coreos-lab configures etcd-member.service",
    ),
    ("write_files:\n  - path: /var/lib/flatcar-vagrant/vagrantfile-user-data\n", "hand-over"),
]
BROKEN = [
    ("write_files: [\n", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("write_files: /etc/x\n", "write_files: must be a list"),
    ("write_files:\n  - /etc/x\n", "write_files[0]: must be a mapping"),
    ("write_files:\n  - content: x\n", "needs a path"),
    ("write_files:\n  - path: etc/x\n", "must be an absolute path"),
    ("write_files:\n  - path: /x\n    permissions: rw-r--r--\n", "must be octal"),
    ("write_files:\n  - path: /x\n    content: [a]\n", "must be a string"),
    ('coreos:\n  units:\n    - name: a.service\n      enable: "yes"\n', "must be true or false"),
    ("coreos:\n  units:\n    - name: a.service\n      command: begin\n", "must be one of start"),
    ("coreos:\n  units:\n    - command: start\n", "needs a unit name"),
    ("coreos: [units]\n", "coreos: must be a mapping"),
    ("ssh_authorized_keys: [[a]]\n", "ssh_authorized_keys[0]: must be a string"),
    ("ssh-authorized-keys: [a]\n", "as 'ssh_authorized_keys'"),
    ("coreos:\n  units:\n    - name: a.service\n      drop-ins: []\n", "as 'drop_ins'"),
    ("runcmd: [reboot]\n", "unknown key 'runcmd'"),
    ("users:\n  - groups: [a]\n", "needs a name"),
]


@pytest.mark.parametrize(("body", "match"), OWNED + BROKEN)
def test_refusals_are_one_line_and_write_nothing(tmp_path: Path, body: str, match: str) -> None:
    write(tmp_path / "user-data", "#cloud-config\n" + body)
    before = tree(tmp_path)
    with pytest.raises(UsageError) as err:
        init_lab(tmp_path, lab())
    message = str(err.value)
    assert match in message
    assert "\n" not in message
    assert str(tmp_path / "user-data") in message, "names the file"
    assert tree(tmp_path) == before


def test_owned_sections_say_why(tmp_path: Path) -> None:
    write(tmp_path / "user-data", "#cloud-config\ncoreos:\n  etcd2:\n    name: x\n")
    with pytest.raises(UsageError, match="applies the file raw before coreos-lab's cloud-config"):
        init_lab(tmp_path, lab())


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"#!/bin/sh\necho hi\n", "is not a cloud-config"),
        (b'{"ignition": {"version": "3.3.0"}}', "is not a cloud-config"),
        (b"\xff\xfe#cloud-config\n", "not UTF-8"),
        (b" #cloud-config\n", "is not a cloud-config"),
    ],
)
def test_not_cloud_config_is_refused(tmp_path: Path, raw: bytes, match: str) -> None:
    write(tmp_path / "user-data", raw)
    with pytest.raises(UsageError, match=match):
        init_lab(tmp_path, lab())
    assert not (tmp_path / "cloud-config").exists()


def test_crlf_header_and_an_empty_config_are_fine(tmp_path: Path) -> None:
    write(tmp_path / "user-data", b"#cloud-config\r\n")
    assert init_lab(tmp_path, lab()).user_data is not None


def test_render_refuses_a_bad_user_data_and_keeps_the_lab(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    before = tree(tmp_path)
    write(tmp_path / "user-data", "#cloud-config\nhostname: x\n")
    with pytest.raises(UsageError, match="hostname"):
        render_existing(tmp_path)
    assert {k: v for k, v in tree(tmp_path).items() if k != "user-data"} == before


# ---------------------------------------------------------------- config.ign


def ign(extra: dict[str, Any] | None = None, version: object = "3.3.0") -> str:
    return json.dumps({"ignition": {"version": version}, **(extra or {})})


def test_config_ign_is_checked_recorded_and_left_alone(tmp_path: Path) -> None:
    text = (INPUTS / "config.ign").read_text()
    write(tmp_path / "config.ign", text)
    result = init_lab(tmp_path, lab())
    assert result.ignition is not None
    assert (result.ignition.version, result.ignition.size) == ("3.3.0", len(text))
    assert "guest property /Ignition/Config" in result.ignition.delivery
    assert (tmp_path / "config.ign").read_text() == text
    sha = hashlib.sha256(text.encode()).hexdigest()
    assert (
        f"# Lab root config.ign (Ignition applies it at first boot): sha256:{sha}"
        in cloud_config(tmp_path, "core-02")[0]
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{", "not valid JSON"),
        ("[]", "is a JSON object"),
        ("{}", "ignition.version must be a spec 3 version"),
        (ign(version="2.3.0"), "got '2.3.0'"),
        (ign(version="3.3"), "got '3.3'"),
        (ign(version=3), "got 3"),
        (ign({"systemd": {"units": [{"name": "etcd-member.service", "contents": "[Service]\n"}]}}), "etcd-member"),
        (ign({"systemd": {"units": [{"name": "etcd-member.service", "dropins": [{"name": "a.conf"}]}]}}), "dropins"),
        (ign({"systemd": {"units": [{"name": "docker.service", "contents": "x"}]}}), r"docker.service \(contents\)"),
        (ign({"systemd": {"units": "etcd"}}), "systemd.units must be a list"),
        (ign({"storage": {"files": [{"path": "/etc/coreos-lab/metadata"}]}}), "storage.files /etc/coreos-lab"),
    ],
)
def test_bad_config_ign_is_refused(tmp_path: Path, text: str, match: str) -> None:
    write(tmp_path / "config.ign", text)
    with pytest.raises(UsageError, match=match) as err:
        init_lab(tmp_path, lab(provider="libvirt"))
    assert "\n" not in str(err.value)
    assert str(tmp_path / "config.ign") in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.ign"]


def test_an_enabled_etcd_unit_in_ignition_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "config.ign", ign({"systemd": {"units": [{"name": "etcd-member.service", "enabled": True}]}}))
    assert init_lab(tmp_path, lab()).ignition is not None


def padded_ign(size: int) -> str:
    base = ign({"storage": {"files": [{"path": "/etc/pad", "contents": {"source": "data:,"}}]}})
    text = base.replace("data:,", "data:," + "x" * (size - len(base)))
    assert len(text) == size
    return text


def test_virtualbox_holds_1024_bytes_of_config_ign(tmp_path: Path) -> None:
    write(tmp_path / "config.ign", padded_ign(1024))
    assert init_lab(tmp_path, lab()).ignition is not None
    write(tmp_path / "b" / "config.ign", padded_ign(1025))
    with pytest.raises(UsageError) as err:
        init_lab(tmp_path / "b", lab())
    message = str(err.value)
    assert "is 1025 bytes: VirtualBox guest properties hold 1024 bytes" in message
    assert "ignition.config.merge" in message
    assert "user-data cloud-config" in message
    assert "\n" not in message


def test_libvirt_takes_a_big_config_ign_and_says_how_it_gets_there(tmp_path: Path) -> None:
    write(tmp_path / "config.ign", padded_ign(5000))
    result = init_lab(tmp_path, lab(provider="libvirt", box="coreos-lab/lab"))
    assert result.ignition is not None
    assert "Flatcar publishes no libvirt box" in result.ignition.delivery
    assert "fw_cfg" in result.ignition.delivery
    assert result.warnings == ()


def test_config_ign_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.ign").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        init_lab(tmp_path, lab())


# ---------------------------------------------------------------- the old user-data/ directory


def old_layout(lab_dir: Path, instances: int = 3) -> list[Path]:
    """A lab as coreos-lab rendered it before cloud-config/: user-data/<node>.yaml carrying the HEADER."""
    init_lab(lab_dir, lab(instances=instances, metadata={}))
    old = lab_dir / "user-data"
    old.mkdir()
    paths = []
    for path in sorted((lab_dir / "cloud-config").iterdir()):
        paths.append(write(old / path.name, path.read_text()))
        path.unlink()
    (lab_dir / "cloud-config").rmdir()
    return paths


def test_render_moves_an_old_layout_on(tmp_path: Path) -> None:
    old = old_layout(tmp_path)
    result = render_existing(tmp_path)
    assert not (tmp_path / "user-data").exists()
    assert [*old, tmp_path / "user-data"] == list(result.removed)
    assert sorted(p.name for p in (tmp_path / "cloud-config").iterdir()) == [
        "core-01.yaml",
        "core-02.yaml",
        "core-03.yaml",
    ]


def test_render_refuses_an_old_layout_holding_other_files(tmp_path: Path) -> None:
    old_layout(tmp_path)
    write(tmp_path / "user-data" / "notes.txt", "mine")
    write(tmp_path / "user-data" / "extra.yaml", "#cloud-config\nhostname: x\n")
    before = tree(tmp_path)
    with pytest.raises(UsageError) as err:
        render_existing(tmp_path)
    message = str(err.value)
    assert "extra.yaml, notes.txt" in message
    assert "Flatcar's box would upload the whole directory" in message
    assert "\n" not in message
    assert tree(tmp_path) == before, "nothing removed, nothing written"


def test_init_into_an_old_layout_needs_force_and_refuses_other_files(tmp_path: Path) -> None:
    old_layout(tmp_path)
    for name in ("coreos-lab.toml", "Vagrantfile", "config.rb"):
        (tmp_path / name).unlink()
    with pytest.raises(UsageError, match=r"already holds a lab \(user-data\)"):
        init_lab(tmp_path, lab())
    write(tmp_path / "user-data" / "mine.sh", "echo")
    with pytest.raises(UsageError, match=r"mine\.sh"):
        init_lab(tmp_path, lab(), force=True)
    (tmp_path / "user-data" / "mine.sh").unlink()
    result = init_lab(tmp_path, lab(), force=True)
    assert not (tmp_path / "user-data").exists()
    assert tmp_path / "user-data" in result.removed


def test_an_old_layout_directory_is_not_read_as_user_data(tmp_path: Path) -> None:
    old_layout(tmp_path, instances=1)
    assert pickup.read_user_data(tmp_path) is None
    assert render_existing(tmp_path).user_data is None


def test_stale_cloud_configs_of_removed_nodes_go_and_other_files_stay(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    mine = write(tmp_path / "cloud-config" / "notes.yaml", "mine\n")
    result = init_lab(tmp_path, lab(instances=1, metadata={}), force=True)
    assert [p.name for p in result.removed] == ["core-02.yaml", "core-03.yaml"]
    assert mine.exists()


def test_golden_inputs_stay_valid() -> None:
    user = pickup.UserData.from_bytes((INPUTS / "user-data").read_bytes(), Path("user-data"))
    parsed = user.parse("192.168.56.101")
    assert [u["name"] for u in parsed.units] == ["hello.service", "docker.service"]
    assert parsed.plain_units == frozenset({"docker.service"})
    assert len((INPUTS / "config.ign").read_bytes()) <= pickup.VBOX_GUESTPROP_MAX
    assert textwrap.dedent(SEED) == SEED
