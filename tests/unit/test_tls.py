"""`init --tls`: the lab CA and certificates, their files and modes, user-data, reuse by `render`."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from coreos_lab import config as config_mod
from coreos_lab import tls
from coreos_lab.cli import app
from coreos_lab.config import CONFIG_NAME, LabConfig
from coreos_lab.errors import ConfigError, UsageError
from coreos_lab.render import init_lab, render_existing, render_lab

from .test_render import parse_unit, unquote_env


def tls_lab(**kw: Any) -> LabConfig:
    base: dict[str, Any] = {"instances": 2, "tls": True, "cluster_token": "coreos-lab-tls"}
    base.update(kw)
    return config_mod.validate(LabConfig(**base))


def cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- the certificates


def test_certificates_chain_sans_and_usages() -> None:
    cfg = tls_lab()
    material = tls.generate(cfg)
    ca = cert(material.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.subject == ca.issuer
    client = cert(material.client_cert)
    client.verify_directly_issued_by(ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    for node in cfg.nodes:
        certs = material.node(node.name)
        for pem in (certs.server_cert, certs.peer_cert):
            leaf = cert(pem)
            leaf.verify_directly_issued_by(ca)
            assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert set(sans.get_values_for_type(x509.DNSName)) == {node.name, "localhost"}
            assert set(sans.get_values_for_type(x509.IPAddress)) == {
                ipaddress.ip_address(node.ip),
                ipaddress.ip_address("127.0.0.1"),
            }
            usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
            assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # every key is its own
    keys = [material.ca_key, material.client_key]
    keys += [k for n in material.nodes.values() for k in (n.server_key, n.peer_key)]
    assert len(set(keys)) == len(keys) == 2 + 2 * cfg.instances
    assert material.issued == ("ca", "core-01", "core-02")


def test_two_labs_do_not_share_a_ca() -> None:
    a, b = tls.generate(tls_lab()), tls.generate(tls_lab())
    assert a.ca_cert != b.ca_cert
    with pytest.raises(InvalidSignature):
        cert(b.client_cert).verify_directly_issued_by(cert(a.ca_cert))


def test_unknown_node_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no TLS certificates for node 'core-09'"):
        tls.generate(tls_lab()).node("core-09")


# ---------------------------------------------------------------- files on disk


def test_init_writes_keys_0600_in_a_0700_dir(tmp_path: Path) -> None:
    os.umask(0o022)
    result = init_lab(tmp_path / "lab", tls_lab())
    lab = tmp_path / "lab"
    base = lab / "tls"
    assert mode(base) == 0o700
    names = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert names == sorted(
        ["ca.pem", "ca-key.pem", "client.pem", "client-key.pem"]
        + [f"core-0{i}/{f}" for i in (1, 2) for f in tls.NODE_FILES]
    )
    for path in base.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    for node in ("core-01", "core-02"):
        assert mode(lab / "cloud-config" / f"{node}.yaml") == 0o600, "user-data holds private keys"
    assert mode(lab / CONFIG_NAME) == 0o600
    assert mode(lab / "Vagrantfile") == 0o644
    assert {p for p in result.written if "tls" in p.parts} == {p for p in base.rglob("*") if p.is_file()}
    assert not list(lab.rglob("*.tmp"))
    assert config_mod.load(lab).tls is True
    assert tls.client_material(lab) == (base / "client.pem", base / "client-key.pem", base / "ca.pem")


def test_client_material_needs_every_file(tmp_path: Path) -> None:
    assert tls.client_material(tmp_path) is None
    assert tls.client_kwargs(tmp_path) == {}
    init_lab(tmp_path, tls_lab())
    base = tmp_path / "tls"
    assert tls.client_kwargs(tmp_path) == {
        "cert": (str(base / "client.pem"), str(base / "client-key.pem")),
        "verify": str(base / "ca.pem"),
    }
    assert tls.scheme(config_mod.load(tmp_path)) == "https"
    (tmp_path / "tls" / "client-key.pem").unlink()
    assert tls.client_material(tmp_path) is None


def test_plain_lab_has_no_tls_anything(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab(tls=False))
    assert not (tmp_path / "tls").exists()
    assert tls.client_material(tmp_path) is None
    text = (tmp_path / "cloud-config" / "core-01.yaml").read_text()
    assert "https" not in text
    assert "PRIVATE KEY" not in text
    assert mode(tmp_path / "cloud-config" / "core-01.yaml") == 0o644


def test_interrupted_tls_init_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 9:  # after coreos-lab.toml, the rendered files and some of tls/ are in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("coreos_lab.render.os.replace", flaky_replace)
    with pytest.raises(KeyboardInterrupt):
        init_lab(tmp_path / "lab", tls_lab())
    assert calls["n"] == 9
    assert not (tmp_path / "lab").exists()


# ---------------------------------------------------------------- user-data


def _doc(files: tuple[Any, ...], node: str) -> dict[str, Any]:
    text = next(f.content for f in files if f.path == f"cloud-config/{node}.yaml")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def _dropin_env(doc: dict[str, Any]) -> dict[str, str]:
    (unit,) = [u for u in doc["coreos"]["units"] if u["name"] == "etcd-member.service"]
    (dropin,) = unit["drop_ins"]
    return dict(unquote_env(v) for k, v in parse_unit(dropin["content"])["Service"] if k == "Environment")


def test_flatcar_user_data_carries_certs_and_https_dropin() -> None:
    cfg = tls_lab(instances=3)
    assert cfg.os == "flatcar"
    material = tls.generate(cfg)
    files = render_lab(cfg, material)
    etcd_dir, host_dir = "/etc/ssl/certs/coreos-lab", "/etc/coreos-lab/tls"
    for node in cfg.nodes:
        doc = _doc(files, node.name)
        written = {f["path"]: f for f in doc["write_files"]}
        certs = material.node(node.name)
        # etcd's own files, inside ETCD_SSL_DIR, owned by the user etcd's container runs as
        expected = {
            f"{etcd_dir}/ca.pem": (material.ca_cert, "0644", "etcd:etcd"),
            f"{etcd_dir}/server.pem": (certs.server_cert, "0644", "etcd:etcd"),
            f"{etcd_dir}/server-key.pem": (certs.server_key, "0600", "etcd:etcd"),
            f"{etcd_dir}/peer.pem": (certs.peer_cert, "0644", "etcd:etcd"),
            f"{etcd_dir}/peer-key.pem": (certs.peer_key, "0600", "etcd:etcd"),
            # the host's etcdctl (sudo) keeps its files where NODE_ETCDCTL_FLAGS looks
            f"{host_dir}/ca.pem": (material.ca_cert, "0644", "root:root"),
            f"{host_dir}/client.pem": (material.client_cert, "0644", "root:root"),
            f"{host_dir}/client-key.pem": (material.client_key, "0600", "root:root"),
        }
        assert set(written) == {"/etc/coreos-lab/metadata"} | set(expected)
        for path, (content, perms, owner) in expected.items():
            assert written[path]["content"] == content
            assert written[path]["permissions"] == perms, path
            assert written[path]["owner"] == owner, path
        # every key is 0600, and no node carries another node's key or the CA key
        for entry in doc["write_files"]:
            if "PRIVATE KEY" in entry["content"]:
                assert entry["permissions"] == "0600", entry["path"]
        text = next(f.content for f in files if f.path == f"cloud-config/{node.name}.yaml")
        assert material.ca_key not in text
        assert all(material.node(o.name).server_key not in text for o in cfg.nodes if o.name != node.name)
        assert f"--cacert={host_dir}/ca.pem" in tls.NODE_ETCDCTL_FLAGS
        env = _dropin_env(doc)
        assert env["ETCD_LISTEN_CLIENT_URLS"] == f"https://{node.ip}:2379,https://127.0.0.1:2379"
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"https://{node.ip}:2379"
        assert env["ETCD_LISTEN_PEER_URLS"] == env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"https://{node.ip}:2380"
        assert env["ETCD_INITIAL_CLUSTER"] == ",".join(f"{n.name}=https://{n.ip}:2380" for n in cfg.nodes)
        # etcd-wrapper bind-mounts ETCD_SSL_DIR at /etc/ssl/certs in etcd's container: the paths etcd reads
        assert env["ETCD_SSL_DIR"] == "/etc/ssl/certs"
        assert env["ETCD_CERT_FILE"] == f"{etcd_dir}/server.pem"
        assert env["ETCD_KEY_FILE"] == f"{etcd_dir}/server-key.pem"
        assert env["ETCD_TRUSTED_CA_FILE"] == env["ETCD_PEER_TRUSTED_CA_FILE"] == f"{etcd_dir}/ca.pem"
        assert env["ETCD_PEER_CERT_FILE"] == f"{etcd_dir}/peer.pem"
        assert env["ETCD_PEER_KEY_FILE"] == f"{etcd_dir}/peer-key.pem"
        assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
        assert not any(v.startswith("http://") for v in env.values())


def wrapper_view(env: dict[str, str], write_files: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """What etcd sees in etcd-wrapper's container: container path -> write_files entry (host ETCD_SSL_DIR only)."""
    ssl_dir = env["ETCD_SSL_DIR"].rstrip("/") + "/"
    return {
        tls.FLATCAR_CONTAINER_SSL_DIR + "/" + e["path"][len(ssl_dir) :]: e
        for e in write_files
        if e["path"].startswith(ssl_dir)
    }


@pytest.mark.parametrize("bootstrap", ["static", "discovery"])
def test_flatcar_every_etcd_file_is_visible_in_the_container(bootstrap: str) -> None:
    """Each ETCD_*_FILE names a file that user-data writes into ETCD_SSL_DIR, seen through the wrapper's mount."""
    url = "https://discovery.etcd.io/0123456789abcdef0123456789abcdef" if bootstrap == "discovery" else None
    cfg = tls_lab(bootstrap=bootstrap, discovery_url=url)
    material = tls.generate(cfg)
    for node in cfg.nodes:
        doc = _doc(render_lab(cfg, material), node.name)
        env = _dropin_env(doc)
        view = wrapper_view(env, doc["write_files"])
        file_vars = {k: v for k, v in env.items() if k.endswith("_FILE")}
        assert len(file_vars) == 6
        for key, path in file_vars.items():
            assert path in view, f"{key}={path} is not inside the container's mount of ETCD_SSL_DIR"
            assert view[path]["owner"] == "etcd:etcd"
            if key.endswith("KEY_FILE"):
                assert view[path]["permissions"] == "0600"
                assert "PRIVATE KEY" in view[path]["content"]
        assert view[env["ETCD_CERT_FILE"]]["content"] == material.node(node.name).server_cert
        assert view[env["ETCD_PEER_KEY_FILE"]]["content"] == material.node(node.name).peer_key
        # Only etcd's files go into the mounted directory: the client key stays out of etcd's reach.
        assert {PurePosixPath(p).name for p in view} == {
            "ca.pem",
            "server.pem",
            "server-key.pem",
            "peer.pem",
            "peer-key.pem",
        }


def test_flatcar_paths_also_work_with_etcd_on_the_host() -> None:
    """The lab box renders the Flatcar dialect but runs Debian's etcd on the host (User=etcd, no container).

    With ETCD_SSL_DIR mounted at its own path, each in-container path is also the host path of a written file,
    so the same user-data serves both.
    """
    cfg = tls_lab(box="coreos-lab/lab", provider="libvirt")
    doc = _doc(render_lab(cfg, tls.generate(cfg)), "core-01")
    written = {f["path"]: f for f in doc["write_files"]}
    env = _dropin_env(doc)
    for key in ("ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE", "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE"):
        assert env[key] in written, key
        assert written[env[key]]["owner"] == "etcd:etcd"


def test_flatcar_etcd_dir_is_a_subdirectory_of_the_system_cert_dir() -> None:
    """Not the top level: Flatcar's update-ca-certificates bundles /etc/ssl/certs/*.pem into the system trust."""
    assert PurePosixPath(tls.FLATCAR_ETCD_DIR).parent == PurePosixPath(tls.FLATCAR_SSL_DIR)
    assert tls.flatcar_container_path(f"{tls.FLATCAR_ETCD_DIR}/ca.pem") == "/etc/ssl/certs/coreos-lab/ca.pem"
    with pytest.raises(ConfigError, match="outside ETCD_SSL_DIR"):
        tls.flatcar_container_path("/etc/coreos-lab/tls/server.pem")
    with pytest.raises(ConfigError, match="unknown dialect"):
        tls.etcd_tls_environment("debian")


def test_flatcar_user_data_keys_are_underscored_and_plain_lab_unchanged() -> None:
    cfg = tls_lab()
    doc = _doc(render_lab(cfg, tls.generate(cfg)), "core-01")
    keys: list[str] = []
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys += list(item)
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    assert keys
    assert all("-" not in k for k in keys), "Flatcar's cloudinit ignores hyphenated keys"
    plain = render_lab(tls_lab(tls=False))
    text = next(f.content for f in plain if f.path == "cloud-config/core-01.yaml")
    assert "ETCD_SSL_DIR" not in text
    assert "/etc/ssl/certs" not in text


def test_coreos_dialect_tls() -> None:
    cfg = tls_lab(os="coreos")
    material = tls.generate(cfg)
    doc = _doc(render_lab(cfg, material), "core-02")
    # etcd runs on the host here (and on the Debian lab box): everything in /etc/coreos-lab/tls, owned by etcd
    written = {f["path"]: f for f in doc["write_files"] if f["path"] != "/etc/coreos-lab/metadata"}
    names = ["ca.pem", "server.pem", "server-key.pem", "peer.pem", "peer-key.pem", "client.pem", "client-key.pem"]
    assert list(written) == [f"/etc/coreos-lab/tls/{n}" for n in names]
    assert all(f["owner"] == "etcd:etcd" for f in written.values())
    assert [f["permissions"] for f in written.values()] == ["0644", "0644", "0600", "0644", "0600", "0644", "0600"]
    assert "ETCD_SSL_DIR" not in json.dumps(doc)
    assert "/etc/ssl/certs" not in json.dumps(doc)
    etcd2, fleet = doc["coreos"]["etcd2"], doc["coreos"]["fleet"]
    assert etcd2["listen_client_urls"] == "https://192.168.56.102:2379,https://127.0.0.1:2379"
    assert etcd2["cert_file"] == "/etc/coreos-lab/tls/server.pem"
    assert etcd2["peer_client_cert_auth"] == "true"
    assert fleet["etcd_servers"] == "https://127.0.0.1:2379"
    assert fleet["etcd_certfile"] == "/etc/coreos-lab/tls/client.pem"
    assert fleet["etcd_keyfile"] == "/etc/coreos-lab/tls/client-key.pem"
    assert fleet["etcd_cafile"] == "/etc/coreos-lab/tls/ca.pem"


def test_render_lab_refuses_tls_without_material() -> None:
    with pytest.raises(ConfigError, match="certificates"):
        render_lab(tls_lab())


# ---------------------------------------------------------------- render reuses, never regenerates silently


def test_render_reuses_every_certificate(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab())
    before = tree(tmp_path / "tls")
    user_data = (tmp_path / "cloud-config" / "core-01.yaml").read_bytes()
    result = render_existing(tmp_path)
    assert tree(tmp_path / "tls") == before
    assert not [p for p in result.written if "tls" in p.parts]
    assert (tmp_path / "cloud-config" / "core-01.yaml").read_bytes() == user_data
    assert not any("issued" in w for w in result.warnings)


def test_render_issues_only_for_new_nodes_and_says_so(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab())
    before = tree(tmp_path / "tls")
    toml_path = tmp_path / CONFIG_NAME
    toml_path.write_text(toml_path.read_text().replace("instances = 2", "instances = 3"))
    result = render_existing(tmp_path)
    after = tree(tmp_path / "tls")
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == sorted(f"core-03/{f}" for f in tls.NODE_FILES)
    assert any("certificates for core-03" in w for w in result.warnings)
    new = cert(after["core-03/server.pem"].decode())
    new.verify_directly_issued_by(cert(after["ca.pem"].decode()))
    assert mode(tmp_path / "tls" / "core-03") == 0o700


def test_render_with_tls_switched_on_by_hand_creates_a_ca_and_says_so(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab(tls=False))
    toml_path = tmp_path / CONFIG_NAME
    toml_path.write_text(toml_path.read_text().replace("tls = false", "tls = true"))
    result = render_existing(tmp_path)
    assert any("new lab CA" in w for w in result.warnings)
    assert tls.client_material(tmp_path) is not None
    assert mode(tmp_path / "tls") == 0o700


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda lab: (lab / "tls" / "ca-key.pem").unlink(), "incomplete: ca-key.pem missing"),
        (lambda lab: (lab / "tls" / "core-01" / "peer-key.pem").unlink(), "core-01 is incomplete"),
        (lambda lab: (lab / "tls" / "ca.pem").write_text("garbage"), "not a PEM"),
        (
            lambda lab: (lab / "tls" / "core-02" / "server.pem").write_text(
                tls.generate(tls_lab()).node("core-02").server_cert
            ),
            "not a certificate issued by this lab's CA",
        ),
        (lambda lab: (lab / "tls" / "core-01" / "server-key.pem").write_text("junk"), "server-key.pem is not"),
        (
            lambda lab: (lab / "tls" / "core-02" / "peer-key.pem").write_bytes(
                (lab / "tls" / "core-01" / "peer-key.pem").read_bytes()
            ),
            "peer-key.pem does not belong to peer.pem",
        ),
        (
            lambda lab: (lab / CONFIG_NAME).write_text(
                (lab / CONFIG_NAME).read_text().replace("192.168.56.0/24", "192.168.57.0/24")
            ),
            "does not cover core-01 at 192.168.57.101",
        ),
    ],
)
def test_render_refuses_damaged_or_stale_material(tmp_path: Path, damage: Any, match: str) -> None:
    init_lab(tmp_path, tls_lab())
    damage(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=match):
        render_existing(tmp_path)
    assert tree(tmp_path) == before, "a refused render must not touch the lab"


def test_init_never_replaces_a_lab_ca_without_force(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab())
    for name in (CONFIG_NAME, "Vagrantfile", "config.rb"):
        (tmp_path / name).unlink()
    shutil.rmtree(tmp_path / "cloud-config")
    before = tree(tmp_path / "tls")
    with pytest.raises(UsageError, match=r"already holds a lab \(tls\)"):
        init_lab(tmp_path, tls_lab())
    assert tree(tmp_path / "tls") == before
    result = init_lab(tmp_path, tls_lab(), force=True)  # --force: a new CA, reported file by file
    assert tree(tmp_path / "tls")["ca.pem"] != before["ca.pem"]
    assert tmp_path / "tls" / "ca-key.pem" in result.written


def test_tighten_fixes_a_wide_tls_dir(tmp_path: Path) -> None:
    init_lab(tmp_path, tls_lab())
    os.chmod(tmp_path / "tls", 0o755)  # noqa: S103 - the point of the test
    os.chmod(tmp_path / "tls" / "core-01", 0o755)  # noqa: S103
    render_existing(tmp_path)
    assert mode(tmp_path / "tls") == mode(tmp_path / "tls" / "core-01") == 0o700


# ---------------------------------------------------------------- CLI: never printed


def test_cli_init_tls_prints_no_key(tmp_path: Path) -> None:
    for extra in ([], ["--json"]):
        target = tmp_path / f"lab{len(extra)}"
        result = CliRunner().invoke(app, ["--debug", "init", str(target), "--tls", "--instances", "2", *extra])
        assert result.exit_code == 0, result.stderr
        out = result.stdout + result.stderr
        assert "PRIVATE KEY" not in out
        assert "BEGIN" not in out
        assert "tls/ca-key.pem" in out
        pems = sorted((target / "tls").rglob("*.pem"))
        assert len(pems) == 4 + 2 * len(tls.NODE_FILES)  # CA, client and each node's files, keys included
        for pem in pems:
            body = pem.read_text().splitlines()[1]
            assert body not in out
    assert "etcd TLS on" in CliRunner().invoke(app, ["render", "--lab", str(tmp_path / "lab0")]).stdout


def test_tls_keys_are_ec_p256(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    init_lab(tmp_path, tls_lab(instances=1))
    paths = sorted((tmp_path / "tls").rglob("*-key.pem"))
    assert [str(p.relative_to(tmp_path / "tls")) for p in paths] == [
        "ca-key.pem",
        "client-key.pem",
        "core-01/peer-key.pem",
        "core-01/server-key.pem",
    ]
    for path in paths:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp256r1"
