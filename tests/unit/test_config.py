"""coreos-lab.toml: validation, round trip, discovery of the lab directory."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from coreos_lab import config as config_mod
from coreos_lab.config import CONFIG_NAME, LabConfig, find_lab_dir, load, save, validate
from coreos_lab.errors import ConfigError


def test_defaults_follow_coreos_vagrant() -> None:
    cfg = validate(LabConfig())
    assert [(n.index, n.name, n.ip) for n in cfg.nodes] == [
        (1, "core-01", "192.168.56.101"),
        (2, "core-02", "192.168.56.102"),
        (3, "core-03", "192.168.56.103"),
    ]
    assert cfg.bootstrap == "static"
    assert cfg.os == "flatcar"


def test_nodes_follow_prefix_and_network() -> None:
    cfg = validate(LabConfig(instances=32, name_prefix="web", network="10.1.0.0/16"))
    assert cfg.nodes[-1].name == "web-32"
    assert cfg.nodes[-1].ip == "10.1.0.132"
    assert validate(LabConfig(network="172.17.8.77/24")).nodes[0].ip == "172.17.8.101"
    assert cfg.node("web-02").ip == "10.1.0.102"
    with pytest.raises(ConfigError, match="no node named"):
        cfg.node("core-01")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"instances": 0}, "instances must be between 1 and 32"),
        ({"instances": 33}, "instances must be between 1 and 32"),
        ({"instances": True}, "instances"),
        ({"channel": "edge"}, "channel must be one of"),
        ({"os": "rhel"}, "os must be one of"),
        ({"provider": "vmware"}, "provider must be one of"),
        ({"bootstrap": "magic"}, "bootstrap must be one of"),
        ({"memory": 511}, "memory must be at least 512"),
        ({"cpus": 0}, "cpus"),
        ({"name_prefix": "Core"}, "name prefix"),
        ({"name_prefix": 'a"b'}, "name prefix"),
        ({"network": "192.168.56.0/26"}, "too small for 3 nodes"),
        ({"network": "fd00::/64"}, "IPv4"),
        ({"network": "banana"}, "IPv4 CIDR"),
        ({"box": "a\nb"}, "box must be"),
        ({"box_url": "http://x/ y"}, "box_url"),
        ({"box_version": "1.0; rm"}, "box_version"),
        ({"cluster_token": "a b"}, "cluster_token"),
        ({"bootstrap": "discovery"}, "needs a discovery_url"),
        ({"bootstrap": "discovery", "discovery_url": 'https://x/"y'}, "plain http"),
        ({"bootstrap": "discovery", "discovery_url": "https://x/a b"}, "plain http"),
        ({"metadata": {"core-09": {"role": "web"}}}, "not in this lab"),
        ({"metadata": {"core-01": {"bad key": "v"}}}, "metadata key"),
        ({"metadata": {"core-01": {"role": "a\nb"}}}, "metadata value"),
        ({"metadata": {"core-01": {"role": "a,b"}}}, "metadata value"),
        ({"metadata": {"core-01": "role=web"}}, "must be a table"),
        ({"forwarded_ports": {"http": 80}}, "forwarded_ports"),
        ({"forwarded_ports": {"80": 70000}}, "forwarded_ports"),
        ({"shared_folders": {"/a": "b\nc"}}, "shared_folders"),
        ({"expose_docker_tcp": 0}, "expose_docker_tcp"),
        ({"vm_gui": "yes"}, "vm_gui must be true or false"),
        ({"vb_cpuexecutioncap": 0}, "vb_cpuexecutioncap"),
        # a final newline is no exception ("$" in a pattern would let each of these through)
        ({"name_prefix": "core\n"}, "name prefix"),
        ({"box_version": "1.2\n"}, "box_version"),
        ({"cluster_token": "tok\n"}, "cluster_token"),
        ({"bootstrap": "discovery", "discovery_url": "https://x/y\n"}, "plain http"),
        ({"metadata": {"core-01": {"role\n": "web"}}}, "metadata key"),
    ],
)
def test_invalid(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        validate(LabConfig(**changes))
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_draft_allows_a_missing_discovery_url() -> None:
    validate(LabConfig(bootstrap="discovery"), draft=True)
    validate(LabConfig(bootstrap="self-hosted"), draft=True, discovery_endpoint="http://127.0.0.1:2379")
    with pytest.raises(ConfigError, match="needs a discovery_url"):
        validate(LabConfig(bootstrap="self-hosted"))


def test_a_self_hosted_draft_needs_its_endpoint() -> None:
    with pytest.raises(ConfigError, match="self-hosted needs --discovery-endpoint") as err:
        validate(LabConfig(bootstrap="self-hosted"), draft=True)
    assert err.value.exit_code == 2
    url = "http://127.0.0.1:2379/v2/keys/discovery/abc"
    validate(LabConfig(bootstrap="self-hosted", discovery_url=url), draft=True)  # a given URL needs no endpoint


def test_nodes_are_computed_once_and_follow_changes() -> None:
    cfg = validate(LabConfig(instances=2))
    assert cfg.nodes is cfg.nodes
    grown = cfg.with_changes(instances=3, metadata={"core-03": {"role": "db"}})
    assert [n.name for n in grown.nodes] == ["core-01", "core-02", "core-03"]
    assert grown.nodes[2].metadata == {"role": "db"}
    assert len(cfg.nodes) == 2
    assert "nodes" not in repr(cfg)


@pytest.mark.parametrize(
    "changes", [{"instances": 10**9}, {"instances": "3"}, {"network": "nonsense"}, {"metadata": {"core-01": "x"}}]
)
def test_an_invalid_config_has_no_nodes_until_validate_says_why(changes: dict[str, Any]) -> None:
    cfg = LabConfig(**changes)  # constructing never raises (and never builds a billion nodes)
    if "metadata" in changes:
        assert cfg.nodes[0].metadata == {}
    else:
        assert cfg.nodes == ()
    with pytest.raises(ConfigError):
        validate(cfg)


def test_nodes_is_no_setting() -> None:
    cfg = validate(LabConfig())
    assert "nodes" not in config_mod.to_dict(cfg)
    assert "nodes" not in config_mod.dumps(cfg)
    with pytest.raises(ConfigError, match="unknown setting"):
        config_mod.from_dict({"nodes": []})


def test_hostile_but_escapable_metadata_is_accepted() -> None:
    value = 'it\'s "$(reboot)" `id` #{x} \\ ünï'
    cfg = validate(LabConfig(metadata={"core-02": {"note": value}}))
    assert cfg.nodes[1].metadata == {"note": value}


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = validate(
        LabConfig(
            instances=2,
            bootstrap="discovery",
            discovery_url="https://discovery.etcd.io/0123456789abcdef0123456789abcdef",
            metadata={"core-01": {"role": "web", "q": 'a"b'}},
            shared_folders={"/src": "/home/core/src"},
            forwarded_ports={"8080": 18080},
            expose_docker_tcp=2375,
            box="coreos-lab/lab",
        )
    )
    path = save(tmp_path, cfg)
    assert path == tmp_path / CONFIG_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# coreos-lab lab configuration")
    assert load(tmp_path) == cfg


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("instances = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("instances = 3\ncolour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("instances = 'three'\n")
    with pytest.raises(ConfigError, match=f"{CONFIG_NAME}: instances"):
        load(tmp_path)


def test_find_lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREOS_LAB_DIR", raising=False)
    save(tmp_path, LabConfig())
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_lab_dir(deep) == tmp_path.resolve()
    monkeypatch.setenv("COREOS_LAB_DIR", "/elsewhere")
    assert find_lab_dir(deep) == Path("/elsewhere")


def test_find_lab_dir_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREOS_LAB_DIR", raising=False)
    with pytest.raises(ConfigError, match="coreos-lab init"):
        find_lab_dir(tmp_path)


def test_with_changes_validates() -> None:
    cfg = LabConfig()
    assert cfg.with_changes(instances=5).instances == 5
    with pytest.raises(ConfigError):
        cfg.with_changes(instances=50)


def test_dumps_has_no_nulls() -> None:
    text = config_mod.dumps(LabConfig())
    assert "\nbox" not in text
    assert "discovery_url" not in text


# ---------------------------------------------------------------- provision and ignition_merge


def test_provision_defaults_to_the_seed_s_cloud_config() -> None:
    cfg = validate(LabConfig())
    assert (cfg.provision, cfg.ignition_merge) == ("cloud-config", ())
    assert 'provision = "cloud-config"' in config_mod.dumps(cfg)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"provision": "butane"}, "provision must be one of cloud-config, ignition, got 'butane'"),
        ({"provision": "ignition", "os": "coreos"}, "provision ignition needs os flatcar"),
        ({"ignition_merge": ("a.ign",)}, 'ignition_merge \\(--ignition-merge\\) needs provision = "ignition"'),
        ({"provision": "ignition", "ignition_merge": "a.ign"}, "ignition_merge must be a list of file paths"),
        ({"provision": "ignition", "ignition_merge": ("a\nb.ign",)}, "ignition_merge must be a list"),
        ({"provision": "ignition", "ignition_merge": ("",)}, "ignition_merge must be a list"),
        ({"provision": "ignition", "ignition_merge": (3,)}, "ignition_merge must be a list"),
        ({"provision": "ignition", "ignition_merge": ("a.ign", "b.ign", "a.ign")}, "lists a.ign twice"),
    ],
)
def test_invalid_provision(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        validate(LabConfig(**changes))
    assert "\n" not in str(err.value)


def test_provision_and_merges_round_trip(tmp_path: Path) -> None:
    cfg = validate(LabConfig(provision="ignition", ignition_merge=("extra.ign", "/srv/users.ign")))
    save(tmp_path, cfg)
    text = (tmp_path / CONFIG_NAME).read_text()
    assert 'provision = "ignition"' in text
    assert 'ignition_merge = [\n    "extra.ign",\n    "/srv/users.ign",\n]' in text
    loaded = load(tmp_path)
    assert loaded == cfg
    assert loaded.ignition_merge == ("extra.ign", "/srv/users.ign")  # a tuple, as TOML's list is kept


def test_a_toml_list_of_merges_becomes_a_tuple() -> None:
    cfg = config_mod.from_dict({"provision": "ignition", "ignition_merge": ["a.ign"]})
    assert cfg.ignition_merge == ("a.ign",)
    with pytest.raises(ConfigError, match=f"{CONFIG_NAME}: ignition_merge must be a list of file paths"):
        config_mod.from_dict({"provision": "ignition", "ignition_merge": [{"path": "a.ign"}]})
