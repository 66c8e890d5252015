"""Labs provisioned by Ignition: golden files (the exact JSON), the same values as the cloud-config dialect, the
layout on disk, switching channels, ``render --out``; all-or-nothing on bad input."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
import yaml

from coreos_lab import config as config_mod
from coreos_lab import ignition, tls
from coreos_lab.config import CONFIG_NAME, LabConfig
from coreos_lab.errors import ConfigError, UsageError
from coreos_lab.render import (
    RenderedFile,
    init_lab,
    node_texts,
    render_existing,
    render_ignition_out,
    render_lab,
)

from .test_render import GOLDEN, UPDATE, check_golden, lab
from .test_render_tls import masked_material

# The user's own Ignition of the merge golden lab: a file and a unit of theirs.
MERGE_JSON = (
    '{"ignition": {"version": "3.2.0"}, "storage": {"files": [{"path": "/etc/motd.d/lab.conf", '
    '"contents": {"source": "data:,hello%20lab%0A"}}]}, "systemd": {"units": [{"name": "hello.service", '
    '"enabled": true, "contents": "[Unit]\\nDescription=hello\\n[Service]\\nType=oneshot\\n'
    'ExecStart=/usr/bin/echo hello\\n[Install]\\nWantedBy=multi-user.target\\n"}]}}\n'
)

# (golden folder, provider, bootstrap, extra LabConfig fields, with a merge file, TLS)
IGNITION_GOLDEN: list[tuple[str, str, str, dict[str, Any], bool, bool]] = [
    ("flatcar-libvirt-static-ignition", "libvirt", "static", {}, True, False),
    ("flatcar-libvirt-static-ignition-tls", "libvirt", "static", {}, False, True),
    # metadata on core-03 only: core-01's config with this token would be 1031 bytes, over VirtualBox's 1024
    ("flatcar-virtualbox-static-ignition", "virtualbox", "static", {"metadata": {"core-03": {"role": "db"}}},
     False, False),
]  # fmt: skip


def ign_lab(provider: str = "libvirt", bootstrap: str = "static", **kw: Any) -> LabConfig:
    return lab("flatcar", provider, bootstrap, provision="ignition", **kw)


def merge_file(text: str = MERGE_JSON, name: str = "mine.ign") -> ignition.MergeFile:
    return ignition.check_merge(text.encode(), Path(name))


def configs(files: tuple[RenderedFile, ...]) -> dict[str, dict[str, Any]]:
    out = {}
    for f in files:
        if f.path.startswith("ignition/"):
            assert f.content.endswith("}\n"), "one final newline"
            assert "\n" not in f.content[:-1], "compact JSON"
            assert f.content.isascii()
            out[f.path.removeprefix("ignition/").removesuffix(".ign")] = json.loads(f.content)
    return out


def decode(url: str) -> bytes:
    assert url.startswith("data:,"), url
    body = url.removeprefix("data:,")
    assert all(c.isalnum() or c in "-_.!~*'()%" for c in body), f"unescaped character in {url!r}"
    return unquote_to_bytes(body)


@pytest.mark.parametrize(("folder", "provider", "bootstrap", "extra", "merged", "with_tls"), IGNITION_GOLDEN)
def test_ignition_golden(
    folder: str, provider: str, bootstrap: str, extra: dict[str, Any], merged: bool, with_tls: bool
) -> None:
    cfg = ign_lab(provider, bootstrap, tls=with_tls, **extra)
    files = render_lab(cfg, masked_material(cfg) if with_tls else None, merges=[merge_file()] if merged else [])
    target = GOLDEN / folder
    if UPDATE:
        for f in files:
            (target / f.path).parent.mkdir(parents=True, exist_ok=True)
            (target / f.path).write_text(f.content, encoding="utf-8")
    check_golden(target, files)
    assert not any(f.path.startswith("cloud-config/") for f in files), "a node provisioned by Ignition gets none"
    plain = {f.path: f.content for f in render_lab(lab("flatcar", provider, bootstrap, tls=with_tls, **extra),
                                                   masked_material(cfg) if with_tls else None)}  # fmt: skip
    ours = {f.path: f.content for f in files}
    assert ours["config.rb"] == plain["config.rb"], "config.rb does not depend on the channel"
    assert ours["Vagrantfile"] != plain["Vagrantfile"]


@pytest.mark.parametrize("bootstrap", ["static", "discovery", "self-hosted"])
@pytest.mark.parametrize("with_tls", [False, True])
def test_a_node_says_the_same_under_both_channels(bootstrap: str, with_tls: bool) -> None:
    cloud = lab("flatcar", "libvirt", bootstrap, tls=with_tls)
    material = masked_material(cloud) if with_tls else None
    yaml_files = {f.path: f.content for f in render_lab(cloud, material)}
    ign = configs(render_lab(ign_lab("libvirt", bootstrap, tls=with_tls), material))
    assert sorted(ign) == [n.name for n in cloud.nodes]
    for node in cloud.nodes:
        doc = yaml.safe_load(yaml_files[f"cloud-config/{node.name}.yaml"])
        conf = ign[node.name]
        assert conf["ignition"] == {"version": "3.3.0"}
        units = {u["name"]: u for u in conf["systemd"]["units"]}
        assert set(units) == {u["name"] for u in doc["coreos"]["units"]} == {"etcd-member.service", "docker.service"}
        assert all(u["enabled"] is True for u in units.values())
        (cloud_dropin,) = next(u for u in doc["coreos"]["units"] if u["name"] == "etcd-member.service")["drop_ins"]
        assert units["etcd-member.service"]["dropins"] == [
            {"name": cloud_dropin["name"], "contents": cloud_dropin["content"]}
        ], "same name, same text"
        assert cloud_dropin["name"] == "20-cluster.conf"
        assert "dropins" not in units["docker.service"]
        files = conf["storage"]["files"]
        assert files[0] == {"path": "/etc/hostname", "overwrite": True, "contents": {"source": f"data:,{node.name}%0A"}}
        # every file of the cloud-config, with the same content, permissions and owner
        written = {f["path"]: f for f in doc["write_files"]}
        assert [f["path"] for f in files[1:]] == list(written)
        for entry in files[1:]:
            theirs = written[entry["path"]]
            assert decode(entry["contents"]["source"]).decode() == theirs["content"]
            assert entry.get("mode", 0o644) == int(theirs["permissions"], 8)
            owner = f"{entry['user']['name']}:{entry['group']['name']}" if "user" in entry else "root:root"
            assert owner == theirs.get("owner", "root:root")


def test_tls_files_have_their_modes_and_owners() -> None:
    cfg = ign_lab(tls=True)
    material = masked_material(cfg)
    conf = configs(render_lab(cfg, material))["core-02"]
    got = {f["path"]: (f["mode"], f["user"]["name"], f["group"]["name"]) for f in conf["storage"]["files"][2:]}
    assert got == {
        "/etc/ssl/certs/coreos-lab/ca.pem": (0o644, "etcd", "etcd"),
        "/etc/ssl/certs/coreos-lab/server.pem": (0o644, "etcd", "etcd"),
        "/etc/ssl/certs/coreos-lab/server-key.pem": (0o600, "etcd", "etcd"),
        "/etc/ssl/certs/coreos-lab/peer.pem": (0o644, "etcd", "etcd"),
        "/etc/ssl/certs/coreos-lab/peer-key.pem": (0o600, "etcd", "etcd"),
        "/etc/coreos-lab/tls/ca.pem": (0o644, "root", "root"),
        "/etc/coreos-lab/tls/client.pem": (0o644, "root", "root"),
        "/etc/coreos-lab/tls/client-key.pem": (0o600, "root", "root"),
    }
    key = next(f for f in conf["storage"]["files"] if f["path"].endswith("server-key.pem"))
    assert decode(key["contents"]["source"]).decode() == material.node("core-02").server_key
    dropin = conf["systemd"]["units"][0]["dropins"][0]["contents"]
    assert 'Environment="ETCD_PEER_CLIENT_CERT_AUTH=true"\n' in dropin
    assert "https://192.168.56.102:2380" in dropin


def test_merge_files_are_inline_data_urls_in_every_node() -> None:
    first, second = merge_file(), merge_file('{"ignition": {"version": "3.0.0"}}', "b.ign")
    for conf in configs(render_lab(ign_lab(), merges=[first, second])).values():
        merge = conf["ignition"]["config"]["merge"]
        assert [decode(m["source"]) for m in merge] == [MERGE_JSON.encode(), b'{"ignition": {"version": "3.0.0"}}']
        assert set(conf["ignition"]) == {"version", "config"}
    assert "config" not in configs(render_lab(ign_lab()))["core-01"]["ignition"]


def test_hostile_metadata_round_trips_through_the_data_url() -> None:
    value = 'it\'s "$(reboot)" `id` #{x} \\ ünï € % + ? # & /'
    conf = configs(render_lab(ign_lab(metadata={"core-02": {"note": value}})))["core-02"]
    assert decode(conf["storage"]["files"][1]["contents"]["source"]).decode() == f"note={value}\n"


def test_node_texts_are_the_cloud_config_template_s() -> None:
    cfg = lab("flatcar", "libvirt", "discovery", metadata={"core-01": {"b": "2", "a": "1"}})
    texts = node_texts(cfg)
    doc = yaml.safe_load(next(f.content for f in render_lab(cfg) if f.path == "cloud-config/core-01.yaml"))
    assert texts["core-01"].metadata == doc["write_files"][0]["content"] == "a=1\nb=2\n"
    assert texts["core-01"].dropin == doc["coreos"]["units"][0]["drop_ins"][0]["content"]
    assert texts["core-01"].dropin.startswith('[Service]\nEnvironment="ETCD_NAME=core-01"\n')


# ---------------------------------------------------------------- the Vagrantfile's delivery (Ruby: integration)


def test_vagrantfile_delivers_ignition_and_no_cloud_config() -> None:
    text = {f.path: f.content for f in render_lab(ign_lab())}["Vagrantfile"]
    assert 'IGNITION_FW_CFG_NAMES = ["opt/org.flatcar-linux/config", "opt/com.coreos/config"]' in text
    assert 'lv.qemuargs :value => "-fw_cfg"' in text
    assert '"guestproperty", "set", :id, "/Ignition/Config", File.read(ignition_config)' in text
    assert "provision" not in text.split("Vagrant.configure")[1], "no provisioner for a node provisioned by Ignition"
    assert "CLOUD_CONFIG" not in text
    cloud = {f.path: f.content for f in render_lab(lab("flatcar", "libvirt"))}["Vagrantfile"]
    assert "fw_cfg" not in cloud
    assert "guestproperty" not in cloud


# ---------------------------------------------------------------- the size rule (VirtualBox guest property)


def _padded(n: int) -> LabConfig:
    """A VirtualBox Ignition lab whose core-01 config is ``base + n`` bytes (metadata value of n+1 characters)."""
    return ign_lab("virtualbox", metadata={"core-01": {"k": "x" * (n + 1)}})


def _size_of_core_01(cfg: LabConfig) -> int:
    relaxed = cfg.with_changes(provider="libvirt")  # no size rule, same JSON
    return len(next(f.content for f in render_lab(relaxed) if f.path == "ignition/core-01.ign").encode())


def test_a_config_of_1024_bytes_goes_to_virtualbox_and_one_of_1025_does_not(tmp_path: Path) -> None:
    base = _size_of_core_01(_padded(0))
    at_limit = _padded(1024 - base)
    assert _size_of_core_01(at_limit) == 1024
    files = {f.path: f for f in render_lab(at_limit)}
    assert len(files["ignition/core-01.ign"].content.encode()) == 1024
    over = _padded(1025 - base)
    with pytest.raises(UsageError) as err:
        render_lab(over)
    message = str(err.value)
    assert message.startswith("ignition/core-01.ign would be 1025 bytes: VirtualBox hands Ignition")
    assert "--provider libvirt" in message
    assert "--provision cloud-config" in message
    assert "\n" not in message
    render_lab(over.with_changes(provider="libvirt"))  # fw_cfg has no such limit
    with pytest.raises(UsageError, match="would be 1025 bytes"):
        init_lab(tmp_path / "lab", over)
    assert not (tmp_path / "lab").exists(), "nothing written"


def test_the_default_three_node_lab_fits_virtualbox() -> None:
    # init's token is coreos-lab-<8 hex>; no metadata
    cfg = config_mod.validate(LabConfig(provision="ignition", cluster_token="coreos-lab-0123abcd"))
    sizes = [len(f.content.encode()) for f in render_lab(cfg) if f.path.startswith("ignition/")]
    assert len(sizes) == 3
    assert max(sizes) <= 1024


def test_a_tls_lab_is_too_big_for_virtualbox() -> None:
    cfg = ign_lab("virtualbox", tls=True)
    with pytest.raises(UsageError, match="VirtualBox hands Ignition"):
        render_lab(cfg, masked_material(cfg))


# ---------------------------------------------------------------- on disk


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_init_writes_ignition_configs_and_no_cloud_config(tmp_path: Path) -> None:
    result = init_lab(tmp_path, ign_lab())
    assert files_under(tmp_path) == sorted(
        [
            CONFIG_NAME,
            "Vagrantfile",
            "config.rb",
            "ignition/core-01.ign",
            "ignition/core-02.ign",
            "ignition/core-03.ign",
        ]
    )
    assert not (tmp_path / "config.ign").exists(), "Flatcar's box would hand a root config.ign to every node"
    assert stat.S_IMODE((tmp_path / "ignition" / "core-01.ign").stat().st_mode) == 0o644
    loaded = config_mod.load(tmp_path)
    assert (loaded.provision, loaded.ignition_merge) == ("ignition", ())
    assert loaded == result.config


def test_a_tls_lab_keeps_its_configs_private(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab(tls=True))
    for path in (tmp_path / "ignition").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == tls.FILE_MODE
        assert "PRIVATE KEY" in decode_all(path)


def decode_all(path: Path) -> str:
    conf = json.loads(path.read_text())
    return "".join(decode(f["contents"]["source"]).decode() for f in conf["storage"]["files"])


def test_a_private_merge_file_makes_the_configs_private(tmp_path: Path) -> None:
    mine = tmp_path / "mine.ign"
    mine.write_text(MERGE_JSON)
    mine.chmod(0o600)
    init_lab(tmp_path / "lab", ign_lab(ignition_merge=(str(mine),)))
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "lab" / "ignition").iterdir()} == {0o600}


def test_render_reads_the_merge_files_again(tmp_path: Path) -> None:
    (tmp_path / "mine.ign").write_text(MERGE_JSON)
    result = init_lab(tmp_path, ign_lab(ignition_merge=("mine.ign",)))  # relative to the lab
    assert [m.path for m in result.merges] == [tmp_path / "mine.ign"]
    changed = '{"ignition": {"version": "3.3.0"}, "passwd": {}}'
    (tmp_path / "mine.ign").write_text(changed)
    render_existing(tmp_path)
    conf = json.loads((tmp_path / "ignition" / "core-02.ign").read_text())
    assert decode(conf["ignition"]["config"]["merge"][0]["source"]) == changed.encode()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json", "not valid JSON"),
        ("[]", "a JSON object, got list"),
        ('{"ignition": {}}', "ignition.version must be one of 3.0.0, 3.1.0, 3.2.0, 3.3.0"),
        ('{"ignition": {"version": "3.4.0"}}', "got '3.4.0'"),
        ('{"ignition": {"version": "2.2.0"}}', "got '2.2.0'"),
        ('{"ignition": {"version": 3}}', "got 3"),
        ('{"ignition": "3.3.0"}', "got None"),
        (
            '{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/coreos-lab/metadata"}]}}',
            "is coreos-lab's",
        ),
        (
            '{"ignition": {"version": "3.3.0"}, "systemd": {"units": [{"name": "etcd-member.service", '
            '"dropins": [{"name": "x.conf", "contents": "[Service]\\n"}]}]}}',
            "coreos-lab configures etcd-member.service",
        ),
    ],
)
def test_a_bad_merge_file_is_one_line_and_nothing_is_written(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "mine.ign").write_text(text)
    target = tmp_path / "lab"
    with pytest.raises(UsageError, match=match) as err:
        init_lab(target, ign_lab(ignition_merge=(str(tmp_path / "mine.ign"),)))
    assert str(tmp_path / "mine.ign") in str(err.value)
    assert "\n" not in str(err.value)
    assert not target.exists()


def test_a_bad_merge_file_leaves_a_rendered_lab_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "mine.ign").write_text(MERGE_JSON)
    init_lab(tmp_path, ign_lab(ignition_merge=("mine.ign",)))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    (tmp_path / "mine.ign").write_bytes(b"\xff\xfe")
    with pytest.raises(UsageError, match="not UTF-8"):
        render_existing(tmp_path)
    (tmp_path / "mine.ign").unlink()
    with pytest.raises(UsageError, match="cannot read the --ignition-merge file"):
        render_existing(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == {
        p: b for p, b in before.items() if p.name != "mine.ign"
    }


def test_a_merge_file_inside_ignition_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ignition").mkdir()
    (tmp_path / "ignition" / "extra.ign").write_text(MERGE_JSON)
    with pytest.raises(UsageError, match="holds the configs coreos-lab renders"):
        init_lab(tmp_path, ign_lab(ignition_merge=("ignition/extra.ign",)))


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("config.ign", '{"ignition": {"version": "3.3.0"}}', "config.ign in an Ignition lab"),
        ("user-data", "#cloud-config\n", "user-data in an Ignition lab"),
    ],
)
def test_an_ignition_lab_takes_no_root_user_data_or_config_ign(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        init_lab(tmp_path, ign_lab())
    assert "--ignition-merge" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_switching_channels_removes_the_other_channel_s_files(tmp_path: Path) -> None:
    init_lab(tmp_path, lab("flatcar", "libvirt"))
    (tmp_path / "ignition").mkdir()
    (tmp_path / "ignition" / "mine.ign").write_text(MERGE_JSON)  # the user's, not ours: kept
    toml_path = tmp_path / CONFIG_NAME
    toml_path.write_text(toml_path.read_text().replace('provision = "cloud-config"', 'provision = "ignition"'))
    result = render_existing(tmp_path)
    assert sorted(p.name for p in result.removed) == ["core-01.yaml", "core-02.yaml", "core-03.yaml"]
    assert files_under(tmp_path / "ignition") == ["core-01.ign", "core-02.ign", "core-03.ign", "mine.ign"]
    toml_path.write_text(toml_path.read_text().replace('provision = "ignition"', 'provision = "cloud-config"'))
    result = render_existing(tmp_path)
    assert sorted(p.name for p in result.removed) == ["core-01.ign", "core-02.ign", "core-03.ign"]
    assert files_under(tmp_path / "ignition") == ["mine.ign"]
    assert files_under(tmp_path / "cloud-config") == ["core-01.yaml", "core-02.yaml", "core-03.yaml"]


def test_fewer_nodes_remove_their_configs(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab())
    result = init_lab(tmp_path, ign_lab(instances=2, metadata={}), force=True)
    assert [p.name for p in result.removed] == ["core-03.ign"]


def test_init_refuses_an_ignition_lab_without_force(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab())
    (tmp_path / CONFIG_NAME).unlink()
    (tmp_path / "Vagrantfile").unlink()
    (tmp_path / "config.rb").unlink()
    with pytest.raises(UsageError, match=r"already holds a lab \(ignition\)"):
        init_lab(tmp_path, ign_lab())


def test_a_failed_validation_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ignition-validate"
    fake.write_text(
        "#!/bin/sh\ncat >/dev/null\necho 'warning at $.x: meh'\necho 'error at $.storage: broken'\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(ignition, "validator", lambda: str(fake))
    with pytest.raises(ConfigError) as err:
        init_lab(tmp_path / "lab", ign_lab())
    assert str(err.value) == (
        "internal: ignition-validate refused the rendered ignition/core-01.ign: error at $.storage: broken"
    )
    assert not (tmp_path / "lab").exists()


# ---------------------------------------------------------------- render --out DIR


def snapshot(path: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("provision", ["cloud-config", "ignition"])
def test_out_writes_only_the_configs(tmp_path: Path, provision: str) -> None:
    lab_dir = tmp_path / "lab"
    init_lab(lab_dir, lab("flatcar", "virtualbox", provision=provision, metadata={}))
    before = snapshot(lab_dir)
    result = render_ignition_out(lab_dir, tmp_path / "ign")
    assert files_under(tmp_path / "ign") == ["core-01.ign", "core-02.ign", "core-03.ign"]
    assert [p.name for p in result.written] == ["core-01.ign", "core-02.ign", "core-03.ign"]
    assert snapshot(lab_dir) == before, "the lab's own files are untouched"
    lab_configs = {
        f.path: f.content for f in render_lab(lab("flatcar", "virtualbox", provision="ignition", metadata={}))
    }
    for name in ("core-01", "core-02", "core-03"):
        assert (tmp_path / "ign" / f"{name}.ign").read_text() == lab_configs[f"ignition/{name}.ign"]


def test_out_has_no_virtualbox_size_rule_and_needs_the_lab_s_certificates(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    init_lab(lab_dir, lab("flatcar", "virtualbox", tls=True))  # a cloud-config lab: its TLS configs are big
    render_ignition_out(lab_dir, tmp_path / "ign")
    assert all(p.stat().st_size > 1024 for p in (tmp_path / "ign").iterdir())
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ign").iterdir()} == {0o600}
    for f in (lab_dir / "tls" / "core-02").iterdir():
        f.unlink()
    (lab_dir / "tls" / "core-02").rmdir()
    with pytest.raises(UsageError, match="no certificates for core-02 yet"):
        render_ignition_out(lab_dir, tmp_path / "ign2")
    assert not (tmp_path / "ign2").exists()
    assert not (lab_dir / "tls" / "core-02").exists(), "--out issues nothing into the lab"


def test_out_refuses_the_coreos_dialect(tmp_path: Path) -> None:
    init_lab(tmp_path / "lab", lab("coreos"))
    with pytest.raises(ConfigError, match="rendered for os flatcar"):
        render_ignition_out(tmp_path / "lab", tmp_path / "ign")
    assert not (tmp_path / "ign").exists()
