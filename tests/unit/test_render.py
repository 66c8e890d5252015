"""Rendering: golden files, YAML/systemd shape of the cloud-configs, escaping, all-or-nothing writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from coreos_lab import config as config_mod
from coreos_lab import pickup
from coreos_lab.config import CONFIG_NAME, LabConfig
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError
from coreos_lab.render import (
    HEADER,
    RenderedFile,
    init_lab,
    lab_warnings,
    render_existing,
    render_lab,
    ruby_str,
    systemd_env,
    write_lab_files,
    yaml_str,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("COREOS_LAB_UPDATE_GOLDEN") == "1"
TOKEN_URL = "https://discovery.etcd.io/0123456789abcdef0123456789abcdef"
SELF_HOSTED_URL = "http://127.0.0.1:2379/v2/keys/discovery/fedcba9876543210fedcba9876543210"
HOSTILE = ['it\'s "quoted"', "$(reboot)", "`id`", "#{system('id')}", "back\\slash", "$private_ipv4", "ünï €"]


def lab(os_name: str = "flatcar", provider: str = "virtualbox", bootstrap: str = "static", **kw: Any) -> LabConfig:
    url = {"static": None, "discovery": TOKEN_URL, "self-hosted": SELF_HOSTED_URL}[bootstrap]
    base: dict[str, Any] = {
        "instances": 3,
        "os": os_name,
        "provider": provider,
        "bootstrap": bootstrap,
        "discovery_url": url,
        "cluster_token": "coreos-lab-golden",
        "metadata": {"core-01": {"role": "web", "zone": "a"}, "core-03": {"role": "db"}},
    }
    base.update(kw)
    return config_mod.validate(LabConfig(**base))


MATRIX = [
    (o, p, b)
    for o in ("flatcar", "coreos")
    for p in ("virtualbox", "libvirt")
    for b in ("static", "discovery", "self-hosted")
]


@pytest.mark.parametrize(("os_name", "provider", "bootstrap"), MATRIX)
def test_golden(os_name: str, provider: str, bootstrap: str) -> None:
    files = render_lab(lab(os_name, provider, bootstrap))
    folder = GOLDEN / f"{os_name}-{provider}-{bootstrap}"
    if UPDATE:
        for f in files:
            (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.path).write_text(f.content, encoding="utf-8")
    check_golden(folder, files)


def check_golden(folder: Path, files: tuple[RenderedFile, ...]) -> None:
    expected = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert sorted(f.path for f in files) == expected, "set of rendered files changed"
    for f in files:
        assert f.content == (folder / f.path).read_text(encoding="utf-8"), (
            f"{folder.name}/{f.path} differs from its golden file; rerun with COREOS_LAB_UPDATE_GOLDEN=1 if intended"
        )


INPUTS = GOLDEN / "inputs"


def golden_inputs(provider: str) -> tuple[pickup.UserData, pickup.Ignition]:
    """The user's own root files of the *-userfiles golden labs (tests/golden/inputs/)."""
    user = pickup.UserData.from_bytes((INPUTS / "user-data").read_bytes(), Path("user-data"))
    ign = pickup.check_ignition((INPUTS / "config.ign").read_bytes(), Path("config.ign"), provider)
    return user, ign


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_golden_with_the_users_own_user_data_and_config_ign(provider: str) -> None:
    user, ign = golden_inputs(provider)
    files = render_lab(lab("flatcar", provider, "static"), user_data=user, ignition=ign)
    folder = GOLDEN / f"flatcar-{provider}-static-userfiles"
    if UPDATE:
        for f in files:
            (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.path).write_text(f.content, encoding="utf-8")
    check_golden(folder, files)
    plain = {f.path: f.content for f in render_lab(lab("flatcar", provider, "static"))}
    assert {f.path: f.content for f in files if not f.path.startswith("cloud-config/")} == {
        k: v for k, v in plain.items() if not k.startswith("cloud-config/")
    }, "the user's files change only the cloud-configs"


def _walk_keys(node: Any) -> list[str]:
    keys: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            keys.append(k)
            keys.extend(_walk_keys(v))
    elif isinstance(node, list):
        for item in node:
            keys.extend(_walk_keys(item))
    return keys


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A strict systemd unit reader: sections, Key=Value lines, comments; anything else is an error."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            assert current, f"line {n}: empty section name"
            assert "]" not in current, f"line {n}: bad section {line!r}"
            sections.setdefault(current, [])
            continue
        assert current is not None, f"line {n}: assignment outside a section"
        key, sep, value = stripped.partition("=")
        assert sep, f"line {n}: not Key=Value: {line!r}"
        assert key.strip().replace("-", "").isalnum(), f"line {n}: bad key in {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unquote_env(value: str) -> tuple[str, str]:
    """systemd's Environment="K=V" with \\" and \\\\ escapes (and %% for %) -> (K, V)."""
    assert value.startswith('"'), value
    assert value.endswith('"'), value
    out, i, body = [], 0, value[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            out.append(body[i + 1])
            i += 2
            continue
        assert ch != '"', f"unescaped quote in {value!r}"
        if ch == "%":
            assert body[i + 1] == "%", f"unescaped specifier in {value!r}"
            i += 1
        out.append(ch)
        i += 1
    key, _, val = "".join(out).partition("=")
    return key, val


def user_data(files: tuple[RenderedFile, ...], node: str) -> dict[str, Any]:
    text = next(f.content for f in files if f.path == f"cloud-config/{node}.yaml")
    assert text.startswith("#cloud-config\n")
    assert HEADER in text.splitlines()[1]
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("bootstrap", ["static", "discovery", "self-hosted"])
def test_flatcar_user_data_per_node(bootstrap: str) -> None:
    cfg = lab(bootstrap=bootstrap)
    files = render_lab(cfg)
    for node in cfg.nodes:
        doc = user_data(files, node.name)
        assert doc["hostname"] == node.name
        assert set(doc) == {"hostname", "write_files", "coreos"}
        assert set(doc["coreos"]) == {"units"}, "Flatcar dialect must not use coreos.etcd2/fleet"
        assert all("-" not in k for k in _walk_keys(doc)), "Flatcar ignores hyphenated keys"
        units = {u["name"]: u for u in doc["coreos"]["units"]}
        assert set(units) == {"etcd-member.service", "docker.service"}
        for unit in units.values():
            assert unit["enable"] is True
            assert unit["command"] == "start"
        (dropin,) = units["etcd-member.service"]["drop_ins"]
        assert dropin["name"] == "20-cluster.conf"
        parsed = parse_unit(dropin["content"])
        assert list(parsed) == ["Service"]
        env = dict(unquote_env(v) for k, v in parsed["Service"] if k == "Environment")
        assert env["ETCD_NAME"] == node.name
        assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{node.ip}:2380"
        assert env["ETCD_LISTEN_PEER_URLS"] == f"http://{node.ip}:2380"
        assert env["ETCD_LISTEN_CLIENT_URLS"] == f"http://{node.ip}:2379,http://127.0.0.1:2379"
        assert env["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{node.ip}:2379"
        assert env["ETCD_ENABLE_V2"] == "true"
        if bootstrap == "static":
            assert "ETCD_DISCOVERY" not in env
            assert env["ETCD_INITIAL_CLUSTER"] == ",".join(f"{n.name}=http://{n.ip}:2380" for n in cfg.nodes)
            assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
            assert env["ETCD_INITIAL_CLUSTER_TOKEN"] == "coreos-lab-golden"
        else:
            assert env["ETCD_DISCOVERY"] == cfg.discovery_url
            assert "ETCD_INITIAL_CLUSTER" not in env
        (meta_file,) = doc["write_files"]
        assert meta_file["path"] == "/etc/coreos-lab/metadata"
        assert meta_file["permissions"] == "0644"
        assert meta_file["content"] == "".join(f"{k}={v}\n" for k, v in sorted(node.metadata.items()))


def test_coreos_dialect_sections() -> None:
    cfg = lab("coreos", bootstrap="discovery")
    files = render_lab(cfg)
    doc = user_data(files, "core-01")
    etcd2, fleet = doc["coreos"]["etcd2"], doc["coreos"]["fleet"]
    assert etcd2["name"] == "core-01"
    assert etcd2["discovery"] == TOKEN_URL
    assert etcd2["advertise_client_urls"] == "http://192.168.56.101:2379"
    assert etcd2["listen_client_urls"] == "http://192.168.56.101:2379,http://127.0.0.1:2379"
    assert fleet == {
        "public_ip": "192.168.56.101",
        "etcd_servers": "http://127.0.0.1:2379",
        "metadata": "role=web,zone=a",
    }
    assert [u["name"] for u in doc["coreos"]["units"]] == ["etcd2.service", "fleet.service"]
    assert "metadata" not in user_data(files, "core-02")["coreos"]["fleet"]
    static = user_data(render_lab(lab("coreos")), "core-02")["coreos"]["etcd2"]
    assert static["initial_cluster_state"] == "new"
    assert static["initial_cluster"].count("=http://") == 3


def test_vagrant_files_name_the_right_guest_dir_and_box() -> None:
    for os_name, guest_dir in (("flatcar", "/var/lib/flatcar-vagrant"), ("coreos", "/var/lib/coreos-vagrant")):
        files = {f.path: f.content for f in render_lab(lab(os_name))}
        assert f"$lab_os = {json.dumps(os_name)}" in files["config.rb"]
        assert f'"{guest_dir}"' in files["Vagrantfile"]
        assert files["Vagrantfile"].splitlines()[3].endswith(HEADER)
        assert files["config.rb"].splitlines()[0] == f"# {HEADER}"
    cfg_rb = {f.path: f.content for f in render_lab(lab(box="coreos-lab/lab", box_version="1.2.3"))}["config.rb"]
    assert '$box = "coreos-lab/lab"' in cfg_rb
    assert "$box_url = nil" in cfg_rb
    assert '$image_version = "1.2.3"' in cfg_rb


def test_hostile_metadata_round_trips_through_yaml() -> None:
    meta = {f"k{i}": v for i, v in enumerate(HOSTILE)}
    for os_name in ("flatcar", "coreos"):
        files = render_lab(lab(os_name, metadata={"core-02": meta}))
        text = next(f.content for f in files if f.path == "cloud-config/core-02.yaml")
        # coreos-cloudinit substitutes $private_ipv4 in the raw text: no '$' may reach the file.
        assert "$" not in text
        assert text.isascii()
        doc = yaml.safe_load(text)
        expected = "".join(f"{k}={v}\n" for k, v in sorted(meta.items()))
        assert doc["write_files"][0]["content"] == expected
        if os_name == "coreos":
            assert doc["coreos"]["fleet"]["metadata"] == ",".join(f"{k}={v}" for k, v in sorted(meta.items()))


@pytest.mark.parametrize("value", ["a\nb", "a,b", "a\u2028b", "a\x85b", "tab\there", "", "nul\x00"])
def test_unsafe_metadata_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError, match="metadata value"):
        lab(metadata={"core-01": {"role": value}})


def test_ruby_str_escapes() -> None:
    assert ruby_str("plain") == '"plain"'
    out = ruby_str('#{x}"\\\n€')
    assert out == '"\\#{x}\\"\\\\\\u{a}\\u{20ac}"'
    assert "\n" not in out
    with pytest.raises(ConfigError):
        ruby_str(3)


def test_yaml_str_is_json_and_yaml() -> None:
    for value in HOSTILE:
        encoded = yaml_str(value)
        assert yaml.safe_load(encoded) == value
        assert json.loads(encoded) == value
        assert "$" not in encoded


def test_systemd_env_escapes_and_refuses() -> None:
    assert systemd_env('a"b\\c%d') == 'a\\"b\\\\c%%d'
    for bad in ("new\nline", "é"):
        with pytest.raises(ConfigError):
            systemd_env(bad)


def test_shared_folder_paths_are_ruby_escaped() -> None:
    cfg = lab(shared_folders={'/h"#{`id`}': "/g\\x"}, forwarded_ports={"8080": 18080}, expose_docker_tcp=2375)
    cfg_rb = {f.path: f.content for f in render_lab(cfg)}["config.rb"]
    assert '$shared_folders = {"/h\\"\\#{`id`}" => "/g\\\\x"}' in cfg_rb
    assert "$forwarded_ports = {8080 => 18080}" in cfg_rb
    assert "$expose_docker_tcp = 2375" in cfg_rb


def test_warnings() -> None:
    assert lab_warnings(lab()) == []
    assert any("end of life" in w for w in lab_warnings(lab("coreos")))
    assert any("--box coreos-lab/lab" in w for w in lab_warnings(lab(provider="libvirt")))
    assert lab_warnings(lab(provider="libvirt", box="coreos-lab/lab")) == []
    assert any("networks.conf" in w for w in lab_warnings(lab(network="10.20.0.0/24")))


# ---------------------------------------------------------------- writing


def test_init_writes_the_layout(tmp_path: Path) -> None:
    target = tmp_path / "a" / "mylab"
    result = init_lab(target, lab())
    names = sorted(str(p.relative_to(target)) for p in result.written)
    assert names == sorted(
        [
            CONFIG_NAME,
            "Vagrantfile",
            "config.rb",
            "cloud-config/core-01.yaml",
            "cloud-config/core-02.yaml",
            "cloud-config/core-03.yaml",
        ]
    )
    assert stat.S_IMODE((target / CONFIG_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "Vagrantfile").stat().st_mode) == 0o644
    assert config_mod.load(target) == result.config
    assert not list(target.rglob("*.tmp"))


def test_init_refuses_existing_lab_without_force(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="--force"):
        init_lab(tmp_path, lab(instances=2, metadata={}))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    result = init_lab(tmp_path, lab(instances=2, metadata={}), force=True)
    assert [p.name for p in result.removed] == ["core-03.yaml"]
    assert sorted(p.name for p in (tmp_path / "cloud-config").iterdir()) == ["core-01.yaml", "core-02.yaml"]


def test_prune_keeps_files_we_did_not_write(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    mine = tmp_path / "cloud-config" / "extra.yaml"
    mine.write_text("#cloud-config\nhostname: mine\n")
    render_existing(tmp_path)
    assert mine.exists()


def test_coreos_vagrant_user_data_file_is_merged_not_refused(tmp_path: Path) -> None:
    (tmp_path / "user-data").write_text("#cloud-config\n")
    result = init_lab(tmp_path, lab())
    assert result.user_data is not None
    assert result.user_data.describe() == "nothing added"
    assert (tmp_path / "user-data").read_text() == "#cloud-config\n", "the user's file is never rewritten"
    assert tmp_path / "user-data" not in result.written


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "new" / "lab"
    target.mkdir(parents=True)
    # A directory where the Vagrantfile goes makes the rename fail after coreos-lab.toml is in place.
    (target / "Vagrantfile").mkdir()
    with pytest.raises(CoreosLabError, match="cannot write"):
        write_lab_files(target, (RenderedFile(CONFIG_NAME, "x = 1\n", 0o600), *render_lab(lab())))
    assert sorted(p.name for p in target.iterdir()) == ["Vagrantfile"]
    assert not (target / "cloud-config").exists()


def test_failed_write_removes_directories_it_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CoreosLabError, match="not a directory"):
        write_lab_files(blocker / "lab", render_lab(lab()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_render_existing_keeps_toml_and_token(tmp_path: Path) -> None:
    init_lab(tmp_path, lab(bootstrap="discovery"))
    toml_path = tmp_path / CONFIG_NAME
    edited = toml_path.read_text().replace("memory = 1024", "memory = 2048") + "\n# my note\n"
    toml_path.write_text(edited)
    result = render_existing(tmp_path)
    assert toml_path.read_text() == edited
    assert result.config.discovery_url == TOKEN_URL
    assert "$vm_memory = 2048" in (tmp_path / "config.rb").read_text()
    assert TOKEN_URL in (tmp_path / "cloud-config" / "core-01.yaml").read_text()


def test_render_existing_rejects_bad_toml(tmp_path: Path) -> None:
    init_lab(tmp_path, lab())
    before = (tmp_path / "Vagrantfile").read_bytes()
    toml_path = tmp_path / CONFIG_NAME
    toml_path.write_text(toml_path.read_text().replace("instances = 3", "instances = 40"))
    with pytest.raises(ConfigError, match="instances must be between 1 and 32"):
        render_existing(tmp_path)
    assert (tmp_path / "Vagrantfile").read_bytes() == before


def test_interrupted_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import coreos_lab.render as render_mod

    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(render_mod.os, "replace", flaky_replace)
    target = tmp_path / "lab"
    with pytest.raises(KeyboardInterrupt):
        init_lab(target, lab())
    assert calls["n"] == 3
    assert not target.exists()
