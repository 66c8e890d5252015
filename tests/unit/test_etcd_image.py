"""etcd-member the Flatcar way on the lab box: the etcd image archive, etcd-wrapper, sdnotify-proxy and the units.

The image is built from a fake box tree (stand-in binaries, a fake dpkg status and passwd) and checked the way
``docker load`` reads it; etcd-wrapper runs for real under bash against a stand-in ``docker``, ``id`` and
``chown``; sdnotify-proxy runs for real with this interpreter against a receiver playing systemd's socket.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coreos_lab.box import etcd_image, recipe
from coreos_lab.box.registry import EPOCH
from coreos_lab.errors import BoxError
from coreos_lab.unitfile import UnitFile
from tests.conftest import require, require_root

FILES = recipe.files_dir()
UNITS = FILES / "usr/lib/systemd/system"
WRAPPER = FILES / "usr/lib/flatcar/etcd-wrapper"
PROXY = FILES / "usr/libexec/sdnotify-proxy"
ETCD_BYTES = b"stand-in for Debian's etcd\n" * 64
ETCDCTL_BYTES = b"stand-in for Debian's etcdctl\n" * 32
LOADER_BYTES = b"stand-in ld-linux-x86-64.so.2 from the box tree\n"
LIBC_BYTES = b"stand-in libc.so.6 from the box tree\n"
ETCD_UID, ETCD_GID = 4242, 4343
DPKG_STATUS = """\
Package: etcd-client
Status: install ok installed
Version: 3.4.23-4+b4
Description: etcd client
 a continuation line: Version: 9.9.9-1

Package: etcd-server
Status: install ok installed
Priority: optional
Version: 3.4.23-4+b4
Description: highly-available key value store
 Version: 0.0.1-1 (not a field)
"""
FLATCAR_ENVIRONMENT = [
    '"ETCD_IMAGE_URL=quay.io/coreos/etcd"',
    f'"ETCD_IMAGE_TAG={etcd_image.TAG}"',  # Flatcar 4459.2.0: v3.5.16
    '"ETCD_NAME=%m"',
    '"ETCD_USER=etcd"',
    '"ETCD_DATA_DIR=/var/lib/etcd"',
    '"ETCD_SSL_DIR=/etc/ssl/certs"',
]


# ---------------------------------------------------------------- a fake box tree


def make_tree(root: Path, *, etcdctl: bool = True, status: str = DPKG_STATUS) -> Path:
    """A merged-/usr Debian tree with what the etcd image is made from; its links point at absolute paths."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/etcd").write_bytes(ETCD_BYTES)
    if etcdctl:
        (root / "usr/bin/etcdctl").write_bytes(ETCDCTL_BYTES)
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "ld-linux-x86-64.so.2").write_bytes(LOADER_BYTES)
    (libdir / "libc.so.6").write_bytes(LIBC_BYTES)
    (root / "usr/lib64").mkdir()
    # Absolute, as in Debian: resolving it on the build host would pick the host's loader instead.
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "core:x:1000:1000::/home/core:/bin/bash\n"
        f"etcd:x:{ETCD_UID}:{ETCD_GID}:etcd user,,,:/var/lib/etcd:/usr/sbin/nologin\n"
    )
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    for unit in (etcd_image.UNIT, etcd_image.LOAD_UNIT):
        (root / unit).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FILES / unit, root / unit)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "rootfs")


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar.getmembers():
            fh = tar.extractfile(info) if info.isfile() else None
            out[info.name] = (info, fh.read() if fh else None)
    return out


def loaded(image: etcd_image.EtcdImage) -> tuple[list[dict[str, object]], dict[str, object], bytes]:
    """What ``docker load`` reads: manifest.json, the config it names and the (single) layer tar."""
    archive = members(image.archive.read_bytes())
    manifest = json.loads(archive["manifest.json"][1] or b"")
    config_bytes = archive[manifest[0]["Config"]][1] or b""
    layer = archive[manifest[0]["Layers"][0]][1] or b""
    return manifest, {"raw": config_bytes, **json.loads(config_bytes)}, layer


# ---------------------------------------------------------------- the image archive


def test_archive_is_what_docker_load_reads(tree: Path) -> None:
    image = etcd_image.add_etcd_image(tree)
    assert image.reference == "quay.io/coreos/etcd:v3.4.23"
    assert image.tag == "v3.4.23" == etcd_image.TAG
    assert image.archive == tree / "usr/share/coreos-lab/images/etcd.tar"
    assert image.archive.stat().st_mode & 0o777 == 0o644
    manifest, config, layer = loaded(image)
    assert len(manifest) == 1
    entry = manifest[0]
    assert entry["RepoTags"] == ["quay.io/coreos/etcd:v3.4.23"]
    config_hex = hashlib.sha256(config["raw"]).hexdigest()  # type: ignore[arg-type]
    assert entry["Config"] == f"{config_hex}.json"
    assert image.image_id == f"sha256:{config_hex}"
    layer_hex = hashlib.sha256(layer).hexdigest()
    assert entry["Layers"] == [f"{layer_hex}/layer.tar"]
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]}
    inner = config["config"]
    assert isinstance(inner, dict)
    assert inner["Entrypoint"] == ["/usr/local/bin/etcd"]
    assert any(e.startswith("PATH=") and "/usr/local/bin" in e.split(":") for e in inner["Env"])
    archive = members(image.archive.read_bytes())
    assert json.loads(archive["repositories"][1] or b"") == {"quay.io/coreos/etcd": {"v3.4.23": layer_hex}}
    for name, (info, _data) in archive.items():
        assert not name.startswith("/")
        assert ".." not in name.split("/")
        assert (info.mtime, info.uid, info.gid) == (EPOCH, 0, 0)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:  # uncompressed, as the manifest's layer.tar says
        assert tar.fileobj is not None


def test_archive_is_reproducible(tmp_path: Path) -> None:
    first = etcd_image.add_etcd_image(make_tree(tmp_path / "a"))
    second_tree = make_tree(tmp_path / "b")
    os.utime(second_tree / "usr/bin/etcd", (1_700_000_000, 1_700_000_000))
    (second_tree / "usr/bin/etcd").chmod(0o700)
    second = etcd_image.add_etcd_image(second_tree)
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert first.image_id == second.image_id
    again = etcd_image.add_etcd_image(second_tree)  # overwrites its own archive
    assert again.archive.read_bytes() == first.archive.read_bytes()


def test_layer_holds_etcd_its_loader_libc_and_the_trees_etcd_user(tree: Path) -> None:
    _manifest, _config, layer = loaded(etcd_image.add_etcd_image(tree))
    files = members(layer)
    etcd, data = files["usr/local/bin/etcd"]
    assert etcd.isfile()
    assert etcd.mode == 0o755
    assert data == ETCD_BYTES
    assert files["usr/local/bin/etcdctl"][0].mode == 0o755
    assert files["usr/local/bin/etcdctl"][1] == ETCDCTL_BYTES
    # The loader at its PT_INTERP path and libc in ld.so's default path, both read from the tree, not the host.
    assert files["lib64/ld-linux-x86-64.so.2"][1] == LOADER_BYTES
    assert files["lib/x86_64-linux-gnu/libc.so.6"][1] == LIBC_BYTES
    assert not [n for n, (i, _d) in files.items() if i.issym() or i.islnk()]
    passwd = (files["etc/passwd"][1] or b"").decode()
    assert f"etcd:x:{ETCD_UID}:{ETCD_GID}:" in passwd
    assert passwd.startswith("root:x:0:0:")
    assert "core" not in passwd
    assert f"etcd:x:{ETCD_GID}:" in (files["etc/group"][1] or b"").decode()
    tmp = files["tmp"][0]
    assert tmp.isdir()
    assert tmp.mode == 0o1777
    certs = files["etc/ssl/certs"][0]
    assert certs.isdir()
    assert certs.mode == 0o755
    data_dir = files["var/lib/etcd"][0]
    assert data_dir.isdir()
    assert data_dir.mode == 0o700
    assert (data_dir.uid, data_dir.gid) == (ETCD_UID, ETCD_GID)
    for name, (info, _data) in files.items():
        assert info.mtime == EPOCH
        if name != "var/lib/etcd":
            assert (info.uid, info.gid) == (0, 0), name
        parent = name.rpartition("/")[0]
        assert not parent or files[parent][0].isdir(), f"{name} has no parent directory entry"
    assert list(files) == sorted(files)


def test_layer_without_etcdctl(tmp_path: Path) -> None:
    _manifest, _config, layer = loaded(etcd_image.add_etcd_image(make_tree(tmp_path / "t", etcdctl=False)))
    names = set(members(layer))
    assert "usr/local/bin/etcd" in names
    assert "usr/local/bin/etcdctl" not in names


@pytest.mark.parametrize(
    ("version", "tag"),
    [
        ("3.4.23-4+b4", "v3.4.23"),
        ("3.5.16-1", "v3.5.16"),
        ("1:3.4.23-1", "v3.4.23"),
        ("3.4.23+dfsg-2", "v3.4.23"),
        ("3.5.0", "v3.5.0"),
    ],
)
def test_image_tag_of_debian_versions(version: str, tag: str) -> None:
    assert etcd_image.image_tag(version) == tag


@pytest.mark.parametrize("version", ["", "1:", "latest-1", "3.4-1"])
def test_image_tag_refuses_what_is_no_upstream_version(version: str) -> None:
    with pytest.raises(BoxError, match="image tag"):
        etcd_image.image_tag(version)


def test_package_version_reads_only_installed_stanzas() -> None:
    assert etcd_image.package_version(DPKG_STATUS) == "3.4.23-4+b4"
    assert etcd_image.package_version(DPKG_STATUS, "etcd-client") == "3.4.23-4+b4"
    removed = "Package: etcd-server\nStatus: deinstall ok config-files\nVersion: 3.4.23-4+b4\n"
    assert etcd_image.package_version(removed) is None
    assert etcd_image.package_version("") is None


def one_line(err: BoxError) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_missing_etcd_binary_is_a_box_error(tree: Path) -> None:
    (tree / "usr/bin/etcd").unlink()
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(tree)
    assert "/usr/bin/etcd" in one_line(info.value)
    assert not (tree / etcd_image.ARCHIVE).exists()


def test_missing_dpkg_entry_is_a_box_error(tmp_path: Path) -> None:
    status = DPKG_STATUS.split("\n\n")[0] + "\n"  # etcd-client only
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(make_tree(tmp_path / "t", status=status))
    assert "etcd-server" in one_line(info.value)


def test_missing_dpkg_status_missing_user_and_missing_libc_are_box_errors(tree: Path) -> None:
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(tree)
    assert "etcd user" in one_line(info.value)
    (tree / "usr/lib/x86_64-linux-gnu/libc.so.6").unlink()
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(tree)
    assert "libc.so.6" in one_line(info.value)
    (tree / "var/lib/dpkg/status").unlink()
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(tree)
    assert "dpkg status" in one_line(info.value)


def test_a_unit_naming_another_tag_fails_the_build(tree: Path) -> None:
    unit = tree / etcd_image.UNIT
    unit.write_text(unit.read_text().replace(f"ETCD_IMAGE_TAG={etcd_image.TAG}", "ETCD_IMAGE_TAG=v3.5.16"))
    with pytest.raises(BoxError) as info:
        etcd_image.add_etcd_image(tree)
    assert "quay.io/coreos/etcd:v3.5.16" in one_line(info.value)
    assert "ETCD_IMAGE_TAG=v3.4.23" in one_line(info.value)  # the hint says what to set


def test_tree_path_resolves_links_inside_the_tree(tree: Path) -> None:
    loader = etcd_image.tree_path(tree, "/lib64/ld-linux-x86-64.so.2")
    assert loader == tree / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    (tree / "escape").symlink_to("../../../../../../../../etc")
    assert etcd_image.tree_path(tree, "escape/passwd") == tree / "etc/passwd"
    assert etcd_image.tree_path(tree, "usr/bin/../../usr/bin/etcd") == tree / "usr/bin/etcd"
    (tree / "loop").symlink_to("loop")
    with pytest.raises(BoxError, match="symbolic links"):
        etcd_image.tree_path(tree, "loop/x")


def test_elf_needs() -> None:
    assert etcd_image.elf_needs(ETCD_BYTES) is None
    static = b"\x7fELF\x02\x01\x01" + b"\0" * 0x19 + (64).to_bytes(8, "little") + b"\0" * 0x10 + b"\0\0\0\0"
    assert etcd_image.elf_needs(static.ljust(64, b"\0")) == (None, ())  # no program headers
    true = Path("/bin/true")
    require(true.is_file(), "no /bin/true")
    interp, needed = etcd_image.elf_needs(true.read_bytes()) or (None, ())
    assert interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in needed


def test_image_made_from_this_hosts_debian_etcd_runs_in_a_chroot(tmp_path: Path) -> None:
    """The layer alone runs Debian's dynamically linked etcd, as the etcd user (what docker run -u does)."""
    require_root()
    require(Path("/usr/bin/etcd").is_file() and Path("/var/lib/dpkg/status").is_file(), "etcd-server not installed")
    layer, tag = etcd_image.etcd_layer(Path("/"))
    ids = etcd_image.user_ids(Path("/etc/passwd").read_text(), "etcd")
    assert ids is not None
    names = set(members(layer))
    assert {"lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"} <= names
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        tar.extractall(root, filter="fully_trusted")  # noqa: S202 - our own layer
    proc = subprocess.run(
        ["chroot", f"--userspec={ids[0]}:{ids[1]}", str(root), "/usr/local/bin/etcd", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"etcd Version: {tag[1:]}" in proc.stdout


def test_hide_host_etcd_moves_the_binary(tree: Path) -> None:
    etcd_image.add_etcd_image(tree)
    moved = etcd_image.hide_host_etcd(tree)
    assert moved == tree / "usr/lib/coreos-lab/bin/etcd"
    assert moved.read_bytes() == ETCD_BYTES
    assert not (tree / "usr/bin/etcd").exists()
    assert (tree / "usr/bin/etcdctl").exists()  # Flatcar keeps etcdctl on the host
    assert etcd_image.hide_host_etcd(tree) == moved  # again: nothing to do
    moved.unlink()
    with pytest.raises(BoxError) as info:
        etcd_image.hide_host_etcd(tree)
    one_line(info.value)


# ---------------------------------------------------------------- the shipped files


def test_etcd_member_unit_is_flatcars() -> None:
    text = (UNITS / "etcd-member.service").read_text()
    unit = UnitFile.parse(text, name="etcd-member.service")
    unit.check_loadable()
    assert unit.section_names() == ["Unit", "Service", "Install"]
    assert unit.get("Unit", "Description") == "etcd (System Application Container)"
    assert unit.get_all("Unit", "Wants") == ["network-online.target network.target"]
    assert unit.get_all("Unit", "After") == ["network-online.target"]
    assert unit.get_all("Unit", "Conflicts") == ["etcd.service", "etcd2.service"]
    assert unit.get_all("Service", "Environment") == FLATCAR_ENVIRONMENT
    service = {o.name: o.value for o in unit.options if o.section == "Service" and o.name != "Environment"}
    assert service == {
        "Type": "notify",
        "NotifyAccess": "all",
        "Restart": "always",
        "RestartSec": "10s",
        "TimeoutStartSec": "0",
        "LimitNOFILE": "40000",
        "ExecStart": "/usr/lib/flatcar/etcd-wrapper $ETCD_OPTS",
        "ExecStop": "/usr/bin/docker stop etcd-member",
        "ExecStopPost": "/usr/bin/docker rm etcd-member",
    }
    assert unit.get_all("Install", "WantedBy") == ["multi-user.target"]
    comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert "Flatcar ships v3.5.16" in comment  # the leading comment says what differs
    env = etcd_image.unit_environment(text)
    assert f"{env['ETCD_IMAGE_URL']}:{env['ETCD_IMAGE_TAG']}" == f"{etcd_image.IMAGE_URL}:{etcd_image.TAG}"
    assert etcd_image.image_tag("3.4.23-4+b4") == etcd_image.TAG  # Debian 12's etcd-server


def test_image_loader_unit_and_drop_in() -> None:
    loader = UnitFile.parse((UNITS / "coreos-lab-etcd-image.service").read_text(), name="coreos-lab-etcd-image.service")
    loader.check_loadable()
    assert loader.get_all("Unit", "Requires") == ["docker.service"]
    assert loader.get_all("Unit", "After") == ["docker.service"]
    assert loader.get("Service", "Type") == "oneshot"
    assert loader.get("Service", "RemainAfterExit") == "yes"
    start = loader.get("Service", "ExecStart") or ""
    assert f"docker image inspect {etcd_image.IMAGE_URL}:{etcd_image.TAG}" in start
    assert f"docker load -i /{etcd_image.ARCHIVE}" in start
    drop_in_text = (UNITS / "etcd-member.service.d/10-coreos-lab-image.conf").read_text()
    drop_in = UnitFile.parse(drop_in_text)
    assert drop_in.get_all("Unit", "Wants") == ["coreos-lab-etcd-image.service"]
    assert drop_in.get_all("Unit", "After") == ["coreos-lab-etcd-image.service"]
    assert "addition to Flatcar" in drop_in_text


def test_tmpfiles_etcd2_and_nice_free_drop_ins() -> None:
    tmpfiles = (FILES / "usr/lib/tmpfiles.d/etcd-wrapper.conf").read_text().splitlines()
    assert [line for line in tmpfiles if not line.startswith("#")] == ["d /var/lib/etcd 0700 etcd etcd - -"]
    etcd2 = UnitFile.parse((UNITS / "etcd2.service").read_text(), name="etcd2.service")
    assert etcd2.get("Service", "ExecStart") == "/" + etcd_image.HIDDEN_ETCD
    assert etcd2.get("Unit", "Conflicts") == "etcd.service etcd-member.service"
    for name in ("containerd.service.d/10-coreos-lab.conf", "docker.service.d/10-coreos-lab.conf"):
        drop_in = UnitFile.parse((UNITS / name).read_text())
        assert drop_in.get("Service", "Nice") is None, name
        assert drop_in.get("Service", "CPUWeight") == "20", name


def test_executables_are_scripts_with_the_boxs_interpreters() -> None:
    assert set(etcd_image.EXECUTABLES) == {"usr/lib/flatcar/etcd-wrapper", "usr/libexec/sdnotify-proxy"}
    assert WRAPPER.read_text().splitlines()[0] == "#!/bin/bash"
    assert PROXY.read_text().splitlines()[0] == "#!/usr/lib/coreos-lab/bin/python3"
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True, timeout=30)
    compile(PROXY.read_text(), str(PROXY), "exec")


# ---------------------------------------------------------------- etcd-wrapper, run for real

STANDIN_DOCKER = """\
#!{python}
import json, os, socket, stat, sys
argv = sys.argv[1:]
record = {{"argv": argv}}
rc = 1 if argv[:1] in (["stop"], ["rm"]) else 0  # no such container: the wrapper must carry on
if argv[:1] == ["run"]:
    env_file = argv[argv.index("--env-file") + 1]
    with open(env_file) as fh:
        record["env_file"] = fh.read()
    notify = [l.split("=", 1)[1] for l in record["env_file"].splitlines() if l.startswith("NOTIFY_SOCKET=")][-1]
    record["socket_mode"] = stat.S_IMODE(os.stat(notify).st_mode)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # etcd in the container, ready
        s.sendto(b"READY=1", notify)
    rc = int(os.environ.get("STANDIN_RUN_RC", "0"))
with open({log!r}, "a") as fh:
    fh.write(json.dumps(record) + "\\n")
sys.exit(rc)
"""
STANDIN_ID = """\
#!/bin/bash
# id -u|-g USER, answered from the fake box tree's passwd
line=$(awk -F: -v u="$2" '$1 == u' {passwd})
[ -n "$line" ] || {{ echo "id: '$2': no such user" >&2; exit 1; }}
case $1 in -u) cut -d: -f3 <<<"$line" ;; -g) cut -d: -f4 <<<"$line" ;; *) exit 2 ;; esac
"""
STANDIN_CHOWN = """\
#!/bin/bash
echo "$*" >> {log}
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="cl-etcd-", dir="/tmp") as name:
        yield Path(name)


def receiver(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    return sock


@dataclass
class WrapperRun:
    rc: int
    stderr: str
    calls: list[dict[str, Any]]
    run_argv: list[str]
    env: dict[str, str]  # the --env-file, last assignment winning as in docker
    env_lines: list[str]
    chown: str
    notified: bytes
    socket_mode: int
    data_dir: Path
    ssl_dir: Path
    notify_socket: Path


def run_wrapper(work: Path, args: list[str], *, extra_env: dict[str, str] | None = None, run_rc: int = 0) -> WrapperRun:
    tree = make_tree(work / "tree")
    bindir = work / "bin"
    bindir.mkdir()
    docker_log, chown_log = work / "docker.log", work / "chown.log"
    scripts = {
        "docker": STANDIN_DOCKER.format(python=sys.executable, log=str(docker_log)),
        "id": STANDIN_ID.format(passwd=tree / "etc/passwd"),
        "chown": STANDIN_CHOWN.format(log=chown_log),
        # the real proxy, with this interpreter instead of the box's private one
        "sdnotify-proxy": PROXY.read_text().replace("#!/usr/lib/coreos-lab/bin/python3", f"#!{sys.executable}", 1),
    }
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    notify_socket = work / "etcd-notify"
    original = WRAPPER.read_text()
    wrapper = original
    for line, value in (
        ("docker=/usr/bin/docker", bindir / "docker"),
        ("sdnotify_proxy=/usr/libexec/sdnotify-proxy", bindir / "sdnotify-proxy"),
        ("notify_socket=/run/etcd-notify", notify_socket),
    ):
        assert f"\n{line}\n" in original
        wrapper = wrapper.replace(f"\n{line}\n", f"\n{line.split('=')[0]}={value}\n")
    (work / "etcd-wrapper").write_text(wrapper)
    data_dir, ssl_dir = work / "data" / "etcd", work / "ssl"
    ssl_dir.mkdir()
    env = etcd_image.unit_environment((UNITS / "etcd-member.service").read_text())
    env = {k: v.replace("%m", "0123456789abcdef0123456789abcdef") for k, v in env.items()}
    env.update(ETCD_DATA_DIR=str(data_dir), ETCD_SSL_DIR=str(ssl_dir), PATH=f"{bindir}:/usr/bin:/bin")
    env.update(NOTIFY_SOCKET=str(work / "systemd-notify"), STANDIN_RUN_RC=str(run_rc), **(extra_env or {}))
    with receiver(str(work / "systemd-notify")) as systemd:
        proc = subprocess.run(
            ["bash", str(work / "etcd-wrapper"), *args], env=env, capture_output=True, text=True, timeout=60
        )
        systemd.settimeout(0)
        try:
            notified = systemd.recv(4096)
        except BlockingIOError:
            notified = b""
    calls: list[dict[str, Any]] = (
        [json.loads(line) for line in docker_log.read_text().splitlines()] if docker_log.exists() else []
    )
    runs = [c for c in calls if c["argv"][:1] == ["run"]]
    run: dict[str, Any] = runs[-1] if runs else {"argv": [], "env_file": "", "socket_mode": -1}
    env_lines = str(run["env_file"]).splitlines()
    return WrapperRun(
        rc=proc.returncode,
        stderr=proc.stderr,
        calls=calls,
        run_argv=list(run["argv"]),
        env=dict(line.split("=", 1) for line in env_lines if "=" in line),
        env_lines=env_lines,
        chown=chown_log.read_text() if chown_log.exists() else "",
        notified=notified,
        socket_mode=int(run["socket_mode"]),
        data_dir=data_dir,
        ssl_dir=ssl_dir,
        notify_socket=notify_socket,
    )


def test_wrapper_runs_etcd_member_as_flatcar_does(short_dir: Path) -> None:
    run = run_wrapper(short_dir, ["--debug"])
    assert run.rc == 0, run.stderr
    assert [c["argv"] for c in run.calls[:2]] == [["stop", "etcd-member"], ["rm", "-f", "etcd-member"]]
    argv = run.run_argv
    pairs = list(itertools.pairwise(argv))
    assert argv[:3] == ["run", "--name", "etcd-member"]
    assert "--network=host" in argv
    assert "--ipc=host" in argv
    assert ("-u", f"{ETCD_UID}:{ETCD_GID}") in pairs  # the etcd user of the fake tree
    mounts = {b for a, b in pairs if a == "-v"}
    assert mounts == {
        "/run:/run",
        "/usr/share/ca-certificates:/usr/share/ca-certificates:ro",
        f"{run.data_dir}:/var/lib/etcd:rw",
        f"{run.ssl_dir}:/etc/ssl/certs:ro",
    }
    entry = argv.index("--entrypoint")
    assert argv[entry + 1 :] == ["/usr/local/bin/etcd", "quay.io/coreos/etcd:v3.4.23", "--debug"]
    # The unit's environment, with the data dir as the container sees it.
    assert run.env["ETCD_DATA_DIR"] == "/var/lib/etcd"
    assert run.env["ETCD_NAME"] == "0123456789abcdef0123456789abcdef"
    assert run.env["ETCD_SSL_DIR"] == str(run.ssl_dir)
    assert run.env["ETCD_IMAGE_TAG"] == "v3.4.23"
    assert run.env["ETCD_USER"] == "etcd"
    assert run.env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert run.env_lines[-1] == f"NOTIFY_SOCKET={run.notify_socket}"
    assert "etcd_data_dir" not in run.env  # the wrapper's own variables stay home
    assert "docker" not in run.env
    # The host data dir is made, owned by etcd and private; the notify socket is open to the etcd user.
    assert run.data_dir.is_dir()
    assert run.data_dir.stat().st_mode & 0o777 == 0o700
    assert run.chown.strip() == f"-R etcd:etcd {run.data_dir}"
    assert run.socket_mode == 0o777
    assert run.notified == b"READY=1"  # etcd's READY reached "systemd" through sdnotify-proxy
    assert not run.notify_socket.exists()


@pytest.mark.parametrize("args", [["--name=node9"], ["--name", "node9"], ["-name=node9"], ["--debug", "-name", "x"]])
def test_wrapper_unsets_etcd_name_when_a_name_flag_is_passed(short_dir: Path, args: list[str]) -> None:
    run = run_wrapper(short_dir, args)
    assert run.rc == 0, run.stderr
    assert "ETCD_NAME" not in run.env
    assert run.run_argv[-len(args) :] == args


def test_wrapper_image_override_and_exit_status(short_dir: Path) -> None:
    run = run_wrapper(short_dir, [], extra_env={"ETCD_IMAGE": "localhost/etcd:test"}, run_rc=3)
    assert run.rc == 3  # docker run's status is the wrapper's
    assert run.run_argv[-1] == "localhost/etcd:test"
    assert run.run_argv[-2] == "/usr/local/bin/etcd"


def test_wrapper_stops_on_an_unknown_etcd_user(short_dir: Path) -> None:
    run = run_wrapper(short_dir, [], extra_env={"ETCD_USER": "nobody-here"})
    assert run.rc != 0
    assert "no such user" in run.stderr
    assert not [c for c in run.calls if c["argv"][:1] == ["run"]]


# ---------------------------------------------------------------- sdnotify-proxy, run for real

SENDER = """\
import os, socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    for message in sys.argv[2:]:
        s.sendto(message.encode(), sys.argv[1])
"""
SLEEPER = """\
import signal, socket, sys, time
def bye(signum, _frame):
    open(sys.argv[2], "w").write(str(signum))
    sys.exit(40 + signum)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(b"READY=1", sys.argv[1])
time.sleep(60)
"""


def proxy(sock: Path, *cmd: str, notify: str | None, umask: int = -1) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    return subprocess.run(
        [sys.executable, str(PROXY), str(sock), *cmd],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
    )


def test_proxy_forwards_datagrams_to_notify_socket(short_dir: Path) -> None:
    sock = short_dir / "proxy.sock"
    sock.write_text("stale")  # a leftover from a killed proxy is replaced
    with receiver(str(short_dir / "notify")) as systemd:
        proc = proxy(
            sock,
            sys.executable,
            "-c",
            SENDER,
            str(sock),
            "STATUS=starting",
            "READY=1",
            notify=str(short_dir / "notify"),
        )
        assert proc.returncode == 0, proc.stderr
        assert systemd.recv(4096) == b"STATUS=starting"
        assert systemd.recv(4096) == b"READY=1"
    assert not sock.exists()


def test_proxy_forwards_to_an_abstract_notify_socket(short_dir: Path) -> None:
    name = f"coreos-lab-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver("\0" + name) as systemd:
        proc = proxy(
            short_dir / "p.sock", sys.executable, "-c", SENDER, str(short_dir / "p.sock"), "READY=1", notify="@" + name
        )
        assert proc.returncode == 0, proc.stderr
        assert systemd.recv(4096) == b"READY=1"


def test_proxy_socket_mode_follows_the_umask(short_dir: Path) -> None:
    sock = short_dir / "p.sock"
    show = "import os, stat, sys; print(oct(stat.S_IMODE(os.stat(sys.argv[1]).st_mode)))"
    proc = proxy(sock, sys.executable, "-c", show, str(sock), notify=None, umask=0)
    assert proc.stdout.strip() == "0o777"
    proc = proxy(sock, sys.executable, "-c", show, str(sock), notify=None, umask=0o077)
    assert proc.stdout.strip() == "0o700"


@pytest.mark.parametrize(("script", "status"), [("exit 7", 7), ("exit 0", 0), ("kill -KILL $$", 128 + 9)])
def test_proxy_exits_with_the_commands_status(short_dir: Path, script: str, status: int) -> None:
    proc = proxy(short_dir / "p.sock", "sh", "-c", script, notify=None)
    assert proc.returncode == status
    assert not (short_dir / "p.sock").exists()


def test_proxy_without_a_command_to_run(short_dir: Path) -> None:
    assert proxy(short_dir / "p.sock", notify=None).returncode == 2
    proc = proxy(short_dir / "p.sock", str(short_dir / "no-such-program"), notify=None)
    assert proc.returncode == 127
    assert "cannot run" in proc.stderr
    assert not (short_dir / "p.sock").exists()


def test_proxy_passes_inherited_descriptors_on(short_dir: Path) -> None:
    """etcd-wrapper gives docker its --env-file as /dev/fd/N, through the proxy."""
    script = '"$0" "$1" "$2" cat <(echo from-the-wrapper)'
    proc = subprocess.run(
        ["bash", "-c", script, sys.executable, str(PROXY), str(short_dir / "p.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from-the-wrapper\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_proxy_passes_sigterm_and_sigint_to_the_command(short_dir: Path, signum: signal.Signals) -> None:
    sock, mark = short_dir / "p.sock", short_dir / "signalled"
    env = dict(os.environ, NOTIFY_SOCKET=str(short_dir / "notify"))
    with receiver(str(short_dir / "notify")) as systemd:
        child = subprocess.Popen(
            [sys.executable, str(PROXY), str(sock), sys.executable, "-c", SLEEPER, str(sock), str(mark)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            assert systemd.recv(4096) == b"READY=1"  # the command runs and the proxy relays
            child.send_signal(signum)
            assert child.wait(timeout=30) == 40 + signum
        finally:
            child.kill()
            child.wait()
    assert mark.read_text() == str(int(signum))
    assert not sock.exists()
