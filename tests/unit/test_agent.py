"""The lab box's cloud-config agent, applied to a temporary root with a recording command runner."""

from __future__ import annotations

import base64
import gzip
import os
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from coreos_lab.box import agent
from coreos_lab.config import LabConfig
from coreos_lab.render import render_lab


class Recorder:
    """Stands in for running systemctl/hostname on the box; answers 'not found' for missing units."""

    def __init__(self, missing: Iterable[str] = (), failing: Iterable[str] = ()) -> None:
        self.calls: list[list[str]] = []
        self.missing = set(missing)
        self.failing = set(failing)

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        unit = argv[-1]
        if unit in self.missing and argv[0] == "systemctl":
            return 5, f"Failed to {argv[1]} unit: Unit {unit} not found."
        if unit in self.failing and argv[0] == "systemctl":
            return 1, f"Job for {unit} failed."
        return 0, ""

    def systemctl(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == "systemctl"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/bash\ncore:x:{os.getuid() + 0}:{os.getgid()}:Core:/home/core:/bin/bash\n"
        "etcd:x:4242:4243:etcd:/var/lib/etcd:/usr/sbin/nologin\n"
    )
    (tmp_path / "etc/group").write_text("root:x:0:\netcd:x:4243:\n")
    return tmp_path


def apply(root: Path, text: str, rec: Recorder | None = None, env: dict[str, str] | None = None) -> agent.Report:
    path = root / "user-data"
    path.write_text(textwrap.dedent(text))
    return agent.apply_file(path, root=root, run=rec or Recorder(), env=env or {})


FLATCAR = """\
    #cloud-config
    hostname: core-01.lab.example
    write_files:
      - path: /etc/coreos-lab/metadata
        permissions: 0600
        content: |
          role=web
    coreos:
      units:
        - name: etcd-member.service
          enable: true
          command: start
          drop_ins:
            - name: 20-cluster.conf
              content: |
                [Service]
                Environment="ETCD_NAME=core-01"
        - name: docker.service
          enable: true
          command: start
    """


def test_flatcar_user_data_applies_in_coreos_cloudinit_order(root: Path) -> None:
    rec = Recorder(missing={"docker.service"})
    report = apply(root, FLATCAR, rec)
    assert (root / "etc/hostname").read_text() == "core-01\n"  # cut at the first dot
    meta = root / "etc/coreos-lab/metadata"
    assert meta.read_text() == "role=web\n"
    assert meta.stat().st_mode & 0o777 == 0o600
    dropin = root / "etc/systemd/system/etcd-member.service.d/20-cluster.conf"
    assert 'Environment="ETCD_NAME=core-01"' in dropin.read_text()
    assert dropin.stat().st_mode & 0o777 == 0o644
    calls = rec.systemctl()
    # enable now, ONE daemon-reload after all units, then the commands in order
    assert ["systemctl", "enable", "--force", "etcd-member.service"] in calls
    reloads = [i for i, c in enumerate(calls) if c == ["systemctl", "daemon-reload"]]
    assert len(reloads) == 1
    reload_at = reloads[0]
    starts = [i for i, c in enumerate(calls) if "start" in c]
    assert starts
    assert all(i > reload_at for i in starts)
    assert calls[starts[0]][-2:] == ["start", "etcd-member.service"]
    assert calls[starts[1]][-2:] == ["start", "docker.service"]
    assert "--no-block" in calls[starts[0]]
    # docker is not in the box: a warning, not a failed run
    assert report.errors == []
    assert any("docker.service" in w for w in report.warnings)
    assert ["hostname", "core-01"] in rec.calls


def test_failing_existing_unit_is_an_error_but_later_commands_still_run(root: Path) -> None:
    rec = Recorder(failing={"etcd-member.service"})
    report = apply(root, FLATCAR, rec)
    assert any("etcd-member.service" in e for e in report.errors)
    assert any(c[-1] == "docker.service" and "start" in c for c in rec.systemctl())


def test_rendered_lab_user_data_is_applied_without_warnings_except_docker(root: Path) -> None:
    cfg = LabConfig(instances=3, provider="libvirt", box="coreos-lab/lab", bootstrap="static")
    files = {f.path: f.content for f in render_lab(cfg)}
    rec = Recorder(missing={"docker.service"})
    report = apply(root, files["cloud-config/core-02.yaml"], rec)
    assert report.errors == []
    assert [w for w in report.warnings if "docker" not in w] == []
    dropin = (root / "etc/systemd/system/etcd-member.service.d/20-cluster.conf").read_text()
    node = cfg.nodes[1]
    assert "ETCD_NAME=core-02" in dropin
    assert f"http://{node.ip}:2379" in dropin
    assert "ETCD_ENABLE_V2=true" in dropin
    assert (root / "etc/hostname").read_text() == "core-02\n"


def test_write_files_encodings_owner_and_parents(root: Path) -> None:
    payload = b"binary\x00data\n"
    gz_b64 = base64.b64encode(gzip.compress(payload)).decode()
    text = f"""\
    #cloud-config
    write_files:
      - path: /opt/a/b/plain.b64
        encoding: b64
        content: {base64.b64encode(b"hello").decode()}
      - path: /opt/gz.bin
        encoding: gzip+base64
        permissions: '0755'
        owner: etcd:etcd
        content: {gz_b64}
      - path: /opt/default
        content: x
    """
    report = apply(root, text)
    assert report.errors == []
    assert (root / "opt/a/b/plain.b64").read_bytes() == b"hello"
    assert (root / "opt/a/b").stat().st_mode & 0o777 == 0o755
    gz = root / "opt/gz.bin"
    assert gz.read_bytes() == payload
    assert gz.stat().st_mode & 0o777 == 0o755
    if os.geteuid() == 0:
        assert (gz.stat().st_uid, gz.stat().st_gid) == (4242, 4243)
    assert (root / "opt/default").stat().st_mode & 0o777 == 0o644
    assert not list((root / "opt").rglob(".*"))  # no temp files left behind


def test_bad_encoding_is_an_error_and_other_files_are_still_written(root: Path) -> None:
    report = apply(
        root,
        """\
        #cloud-config
        write_files:
          - path: /opt/bad
            encoding: base64
            content: "not base64!!"
          - path: /opt/good
            content: ok
        """,
    )
    assert any("/opt/bad" in e for e in report.errors)
    assert not (root / "opt/bad").exists()
    assert (root / "opt/good").read_text() == "ok"


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("0644", 0o644), ("'0600'", 0o600), ("644", 0o644), ("0o750", 0o750), ("'0755'", 0o755), ("", 0o644)],
)
def test_permissions_are_octal_as_written(root: Path, raw: str, mode: int) -> None:
    perm = f"    permissions: {raw}\n" if raw else ""
    apply(root, f"#cloud-config\nwrite_files:\n  - path: /f\n{perm}    content: x\n".replace("\n    ", "\n    "))
    assert (root / "f").stat().st_mode & 0o777 == mode


def test_permissions_rejects_non_octal() -> None:
    with pytest.raises(ValueError, match="octal"):
        agent.parse_permissions("0899")


def test_placeholders_are_substituted_before_parsing(root: Path) -> None:
    (root / "etc/environment").write_text("COREOS_PRIVATE_IPV4=192.168.56.101\n")
    apply(
        root,
        """\
        #cloud-config
        write_files:
          - path: /ip
            content: "$private_ipv4/$public_ipv4"
        """,
    )
    assert (root / "ip").read_text() == "192.168.56.101/"


def test_legacy_etcd2_and_fleet_become_runtime_dropins_without_start(root: Path) -> None:
    rec = Recorder(missing={"fleet.service"})
    report = apply(
        root,
        """\
        #cloud-config
        coreos:
          etcd2:
            name: core-01
            advertise_client_urls: http://192.168.56.101:2379
            initial-cluster-state: new
            empty: ""
          fleet:
            public_ip: 192.168.56.101
            metadata: role=web
          units:
            - name: etcd2.service
              command: start
            - name: fleet.service
              command: start
        """,
        rec,
    )
    etcd2 = (root / "run/systemd/system/etcd2.service.d/20-cloudinit.conf").read_text().splitlines()
    assert etcd2[0] == "[Service]"
    assert 'Environment="ETCD_NAME=core-01"' in etcd2
    assert 'Environment="ETCD_ADVERTISE_CLIENT_URLS=http://192.168.56.101:2379"' in etcd2
    assert 'Environment="ETCD_INITIAL_CLUSTER_STATE=new"' in etcd2
    assert not any("EMPTY" in line for line in etcd2)
    fleet = (root / "run/systemd/system/fleet.service.d/20-cloudinit.conf").read_text()
    assert 'Environment="FLEET_PUBLIC_IP=192.168.56.101"' in fleet
    assert not any(c[1] == "enable" for c in rec.systemctl())
    assert report.errors == []
    assert any("deprecated" in w for w in report.warnings)


def test_mask_runtime_network_units_and_unknown_keys(root: Path) -> None:
    masked = root / "run/systemd/system/old.service"
    masked.parent.mkdir(parents=True)
    masked.symlink_to("/dev/null")
    rec = Recorder()
    report = apply(
        root,
        """\
        #cloud-config
        bogus: 1
        coreos:
          strange: {}
          units:
            - name: locksmithd.service
              mask: true
            - name: old.service
              runtime: true
            - name: 10-lab.network
              content: "[Match]\\nName=eth1\\n"
            - name: hello.service
              runtime: true
              enable: true
              content: "[Service]\\nExecStart=/bin/true\\n"
              drop-ins: []
            - command: start
        """,
        rec,
    )
    assert os.readlink(root / "etc/systemd/system/locksmithd.service") == "/dev/null"
    assert not masked.is_symlink()  # runtime without mask unmasks
    assert (root / "etc/systemd/network/10-lab.network").read_text().startswith("[Match]")
    assert (root / "run/systemd/system/hello.service").exists()
    assert ["systemctl", "enable", "--force", "--runtime", "hello.service"] in rec.calls
    assert ["systemctl", "restart", "systemd-networkd.service"] in rec.calls
    joined = " ".join(report.warnings)
    assert "'bogus'" in joined
    assert "coreos.strange" in joined
    assert "drop_ins" in joined  # the hyphenated key is named with the right spelling
    assert report.errors == []


def test_nothing_written_means_no_daemon_reload(root: Path) -> None:
    rec = Recorder()
    apply(root, "#cloud-config\ncoreos:\n  units:\n    - name: etcd-member.service\n      command: restart\n", rec)
    assert ["systemctl", "daemon-reload"] not in rec.calls
    assert rec.systemctl()[-1][-2:] == ["restart", "etcd-member.service"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("#!/bin/sh\necho hi\n", "cloud-config"),
        ("#cloud-config\nfoo: [\n", "not valid YAML"),
        ("#cloud-config\n- a\n", "mapping"),
    ],
)
def test_unusable_user_data_raises(text: str, message: str) -> None:
    with pytest.raises(agent.AgentError, match=message):
        agent.parse(text)


def test_main_exit_codes(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = root / "good"
    good.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    content: y\n")
    assert agent.main(["--from-file", str(good), "--root", str(root)]) == 0
    assert (root / "x").read_text() == "y"
    bad = root / "bad"
    bad.write_text("not cloud config\n")
    assert agent.main(["--from-file", str(bad), "--root", str(root)]) == 1
    assert "does not start with" in capsys.readouterr().err
    assert agent.main(["--from-file", str(root / "missing"), "--root", str(root)]) == 1


def test_users_and_core_ssh_keys(root: Path) -> None:
    rec = Recorder()
    report = apply(
        root,
        """\
        #cloud-config
        ssh_authorized_keys:
          - ssh-ed25519 AAAAkey1 me@laptop
        users:
          - name: alice
            groups: [sudo, docker]
            shell: /bin/bash
          - name: core
            passwd: $6$hash
          - gecos: nameless
        """,
        rec,
    )
    keys = (root / "home/core/.ssh/authorized_keys").read_text().splitlines()
    assert keys == ["ssh-ed25519 AAAAkey1 me@laptop"]
    assert (root / "home/core/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    assert ["useradd", "--create-home", "--groups", "sudo,docker", "--shell", "/bin/bash", "alice"] in rec.calls
    assert ["usermod", "--password", "$6$hash", "core"] in rec.calls  # existing user: only the password
    assert any("without a name" in w for w in report.warnings)
    apply(root, "#cloud-config\nssh_authorized_keys: ['ssh-ed25519 AAAAkey1 me@laptop', 'ssh-rsa AAAAkey2']\n", rec)
    keys = (root / "home/core/.ssh/authorized_keys").read_text().splitlines()
    assert keys == ["ssh-ed25519 AAAAkey1 me@laptop", "ssh-rsa AAAAkey2"]  # merged, no duplicates
