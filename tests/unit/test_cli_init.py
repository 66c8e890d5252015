"""`coreos-lab init` and `coreos-lab render` through typer's CliRunner and the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.config import CONFIG_NAME, load
from coreos_lab.discovery import SERVICE_ENV

from .test_discovery import TOKEN, FakeService, Reply, refused_url, service  # noqa: F401 - fixture

SCRIPT = Path(sys.executable).parent / "coreos-lab"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_init_default(tmp_path: Path) -> None:
    target = tmp_path / "mylab"
    code, out, err = run("init", str(target))
    assert code == 0, err
    assert files_under(target) == sorted(
        [
            CONFIG_NAME,
            "Vagrantfile",
            "config.rb",
            "cloud-config/core-01.yaml",
            "cloud-config/core-02.yaml",
            "cloud-config/core-03.yaml",
        ]
    )
    assert "bootstrap static" in out
    assert err == ""
    cfg = load(target)
    assert cfg.cluster_token.startswith("coreos-lab-")


def test_init_json_and_options(tmp_path: Path) -> None:
    target = tmp_path / "lab"
    code, out, err = run(
        "init",
        str(target),
        "--instances",
        "2",
        "--channel",
        "beta",
        "--provider",
        "libvirt",
        "--box",
        "coreos-lab/lab",
        "--memory",
        "2048",
        "--cpus",
        "2",
        "--name-prefix",
        "node",
        "--network",
        "10.9.0.0/24",
        "--metadata",
        "node-01=role=web",
        "--metadata",
        "node-01=zone=a=b",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["lab"] == str(target)
    assert [n["name"] for n in data["nodes"]] == ["node-01", "node-02"]
    assert data["nodes"][0] == {"name": "node-01", "ip": "10.9.0.101", "metadata": {"role": "web", "zone": "a=b"}}
    assert sorted(data["written"]) == sorted(str(target / f) for f in files_under(target))
    assert data["warnings"] == []
    config_rb = (target / "config.rb").read_text()
    for line in ("$num_instances = 2", '$update_channel = "beta"', "$vm_memory = 2048", '$lab_provider = "libvirt"'):
        assert line in config_rb


def test_init_refuses_then_force(tmp_path: Path) -> None:
    assert run("init", str(tmp_path))[0] == 0
    code, _, err = run("init", str(tmp_path), "--instances", "1")
    assert code == 2
    assert err.startswith("error: ")
    assert "--force" in err
    assert len(load(tmp_path).nodes) == 3
    code, out, err = run("init", str(tmp_path), "--instances", "1", "--force")
    assert code == 0, err
    assert "removed cloud-config/core-02.yaml" in out
    assert files_under(tmp_path / "cloud-config") == ["core-01.yaml"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--instances", "0"], "instances must be between 1 and 32"),
        (["--instances", "33"], "instances must be between 1 and 32"),
        (["--instances", "three"], "'three' is not a valid integer"),
        (["--channel", "edge"], "channel must be one of"),
        (["--os", "rhel"], "os must be one of"),
        (["--memory", "256"], "memory must be at least 512"),
        (["--network", "192.168.56.0/28"], "too small"),
        (["--metadata", "core-01"], "NODE=key=value"),
        (["--metadata", "core-07=role=web"], "not in this lab"),
        (["--metadata", "core-01=role=a\nb"], "metadata value"),
        (["--bootstrap", "static", "--discovery-url", f"https://discovery.etcd.io/{TOKEN}"], "takes no"),
        (["--bootstrap", "self-hosted"], "--discovery-endpoint"),
        (["--discovery-url", "not a url"], "plain http"),
        (["--no-such-flag"], "No such option"),
    ],
)
def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path, args: list[str], match: str) -> None:
    target = tmp_path / "lab"
    code, out, err = run("init", str(target), *args)
    assert code == 2, (out, err)
    assert match in err
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert not target.exists()


def test_unwritable_directory_exits_1(tmp_path: Path) -> None:
    blocker = tmp_path / "plainfile"
    blocker.write_text("")
    code, _, err = run("init", str(blocker / "lab"))
    assert code == 1
    assert err.startswith("error: cannot ")
    assert len(err.strip().splitlines()) == 1
    assert files_under(tmp_path) == ["plainfile"]


def test_discovery_failure_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "lab"
    code, _, err = run("init", str(target), "--bootstrap", "discovery", env={SERVICE_ENV: refused_url()})
    assert code == 1
    assert "Connection refused" in err
    assert "--bootstrap static" in err
    assert len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_discovery_token_from_env_service(tmp_path: Path, service: FakeService) -> None:  # noqa: F811
    service.script(Reply(body=f"{service.url}/{TOKEN}"))
    target = tmp_path / "lab"
    code, _, err = run("init", str(target), "--bootstrap", "discovery", env={SERVICE_ENV: service.url})
    assert code == 0, err
    assert load(target).discovery_url == f"{service.url}/{TOKEN}"
    # render never fetches again: the service would now answer garbage
    service.script(Reply(body="<html>"))
    code, _, err = run("render", "--lab", str(target))
    assert code == 0, err
    assert len(service.requests) == 1
    assert f"{service.url}/{TOKEN}" in (target / "cloud-config" / "core-02.yaml").read_text()


def test_discovery_url_is_reused_without_network(tmp_path: Path) -> None:
    url = f"https://discovery.etcd.io/{TOKEN}"
    code, _, err = run("init", str(tmp_path), "--discovery-url", url, env={SERVICE_ENV: refused_url()})
    assert code == 0, err
    cfg = load(tmp_path)
    assert cfg.bootstrap == "discovery"
    assert cfg.discovery_url == url


def test_coreos_warns(tmp_path: Path) -> None:
    code, _, err = run("init", str(tmp_path), "--os", "coreos")
    assert code == 0
    assert err.startswith("warning: CoreOS Container Linux reached end of life")


def test_hostile_metadata_is_escaped(tmp_path: Path) -> None:
    value = "x'\"$(reboot)`id`#{system(1)}\\"
    code, _, err = run("init", str(tmp_path), "--os", "coreos", "--metadata", f"core-02=note={value}")
    assert code == 0, err
    doc = yaml.safe_load((tmp_path / "cloud-config" / "core-02.yaml").read_text())
    assert doc["write_files"][0]["content"] == f"note={value}\n"
    assert doc["coreos"]["fleet"]["metadata"] == f"note={value}"
    assert load(tmp_path).metadata["core-02"]["note"] == value


def test_render_after_edit(tmp_path: Path) -> None:
    assert run("init", str(tmp_path))[0] == 0
    toml_path = tmp_path / CONFIG_NAME
    toml_path.write_text(toml_path.read_text().replace("instances = 3", "instances = 4"))
    code, out, err = run("render", "--lab", str(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert len(data["nodes"]) == 4
    assert str(tmp_path / "cloud-config" / "core-04.yaml") in data["written"]
    assert str(tmp_path / CONFIG_NAME) not in data["written"]
    assert "ETCD_NAME=core-04" in (tmp_path / "cloud-config" / "core-04.yaml").read_text()


def test_render_without_lab_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COREOS_LAB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run("render")
    assert code == 2
    assert "coreos-lab init" in err


def test_render_bad_toml_exits_2(tmp_path: Path) -> None:
    assert run("init", str(tmp_path))[0] == 0
    (tmp_path / CONFIG_NAME).write_text("memory = 100\n")
    code, _, err = run("render", "--lab", str(tmp_path))
    assert code == 2
    assert "memory must be at least 512" in err


# ---------------------------------------------------------------- the installed console script


def script(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"console script missing: {SCRIPT}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREOS_LAB_")}
    env.update(env_extra or {})
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_console_script_init_and_render(tmp_path: Path) -> None:
    proc = script("init", "mylab", "--instances", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Next: cd mylab && coreos-lab up" in proc.stdout
    proc = script("render", cwd=tmp_path / "mylab" / "cloud-config")
    assert proc.returncode == 0, proc.stderr
    assert "Rendered lab" in proc.stdout


def test_init_and_render_say_what_they_merged_and_left(tmp_path: Path) -> None:
    (tmp_path / "user-data").write_text(
        "#cloud-config\nwrite_files:\n  - path: /etc/a\ncoreos:\n  units:\n    - name: a.service\n"
        "      command: start\n    - name: b.service\n      command: start\n"
    )
    (tmp_path / "config.ign").write_text('{"ignition": {"version": "3.4.0"}}')
    code, out, err = run("init", str(tmp_path))
    assert code == 0, err
    lines = out.splitlines()
    assert "  merged user-data into 3 node configs: +2 units, +1 file" in lines
    ign = next(line for line in lines if line.startswith("  config.ign: "))
    assert ign.startswith("  config.ign: left for the box to hand to Ignition at first boot (spec 3.4.0, 34 bytes;")
    assert "/Ignition/Config" in ign
    assert lines[-1] == f"Next: cd {tmp_path} && coreos-lab up"
    code, out, err = run("render", "--lab", str(tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["user_data"]["nodes"] == 3
    assert (data["user_data"]["units"], data["user_data"]["files"]) == (2, 1)
    assert data["user_data"]["path"] == str(tmp_path / "user-data")
    assert data["config_ign"]["version"] == "3.4.0"
    assert data["config_ign"]["bytes"] == 34
    assert len(data["config_ign"]["sha256"]) == 64
    plain = tmp_path / "plain"
    assert run("init", str(plain))[0] == 0
    data = json.loads(run("render", "--lab", str(plain), "--json")[1])
    assert (data["user_data"], data["config_ign"]) == (None, None)


def test_render_reports_the_old_layout_it_removed(tmp_path: Path) -> None:
    assert run("init", str(tmp_path), "--instances", "1")[0] == 0
    old = tmp_path / "user-data"
    old.mkdir()
    (tmp_path / "cloud-config" / "core-01.yaml").rename(old / "core-01.yaml")
    code, out, err = run("render", "--lab", str(tmp_path))
    assert code == 0, err
    assert "  removed user-data/core-01.yaml (the old layout)" in out
    assert "  removed user-data/ (the old layout: Flatcar's box would upload it whole)" in out
    assert not old.exists()


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("user-data", "#cloud-config\ncoreos:\n  etcd2:\n    name: x\n", "coreos.etcd2 is coreos-lab's"),
        ("user-data", "#!/bin/sh\n", "is not a cloud-config"),
        ("config.ign", '{"ignition": {"version": "2.2.0"}}', "ignition.version"),
    ],
)
def test_bad_root_files_exit_2_with_one_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    code, _, err = run("init", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ")
    assert match in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_init_refuses_a_user_data_directory_that_is_not_ours_even_with_force(tmp_path: Path) -> None:
    (tmp_path / "user-data").mkdir()
    (tmp_path / "user-data" / "mine.yaml").write_text("#cloud-config\n")
    code, _, err = run("init", str(tmp_path), "--force")
    assert code == 2
    assert "holds files coreos-lab did not render (mine.yaml)" in err
    assert "Flatcar's box would upload the whole directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user-data"]


def test_console_script_exit_codes(tmp_path: Path) -> None:
    proc = script("init", "lab", "--instances", "0", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "error: instances must be between 1 and 32, got 0\n"
    proc = script("init", "lab", "--bootstrap", "discovery", cwd=tmp_path, env_extra={SERVICE_ENV: refused_url()})
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: discovery service http://127.0.0.1:")
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- --provision ignition, --ignition-merge, render --out

MERGE = '{"ignition": {"version": "3.3.0"}, "systemd": {"units": [{"name": "hello.service", "enabled": true}]}}'


def test_init_provision_ignition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "hello.ign").write_text(MERGE)
    (tmp_path / "users.ign").write_text('{"ignition": {"version": "3.0.0"}}')
    code, out, err = run(
        "init", "lab", "--provision", "ignition", "--provider", "libvirt", "--box", "coreos-lab/lab",
        "--ignition-merge", "lab/hello.ign", "--ignition-merge", "users.ign",
    )  # fmt: skip
    assert code == 0, err
    assert files_under(tmp_path / "lab") == sorted(
        [CONFIG_NAME, "Vagrantfile", "config.rb", "hello.ign"] + [f"ignition/core-0{i}.ign" for i in (1, 2, 3)]
    )
    cfg = load(tmp_path / "lab")
    assert cfg.provision == "ignition"
    assert cfg.ignition_merge == ("hello.ign", str(tmp_path / "users.ign")), "inside the lab: relative to it"
    lines = out.splitlines()
    assert lines[0].endswith("bootstrap static, provisioned by Ignition")
    assert "  merged hello.ign (spec 3.3.0) into every node's Ignition config" in out
    assert f"  merged {tmp_path / 'users.ign'} (spec 3.0.0) into every node's Ignition config" in out
    assert (
        "  each node gets its Ignition config through QEMU fw_cfg as opt/org.flatcar-linux/config and "
        "opt/com.coreos/config"
    ) in lines
    code, out, err = run("render", "--lab", "lab", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["provision"] == "ignition"
    assert [m["path"] for m in data["ignition_merge"]] == [
        str(tmp_path / "lab" / "hello.ign"),
        str(tmp_path / "users.ign"),
    ]
    assert data["config_ign"] is None
    assert not (tmp_path / "lab" / "cloud-config").exists()


def test_a_cloud_config_lab_says_nothing_of_ignition(tmp_path: Path) -> None:
    code, out, _ = run("init", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["provision"], data["ignition_merge"]) == ("cloud-config", [])
    code, out, _ = run("render", "--lab", str(tmp_path))
    assert "Ignition" not in out


@pytest.mark.parametrize(
    ("args", "files", "match"),
    [
        (["--ignition-merge", "x.ign"], {"x.ign": MERGE}, 'needs provision = "ignition" (--provision ignition)'),
        (["--provision", "ignition", "--ignition-merge", "x.ign"], {}, "cannot read the --ignition-merge file"),
        (["--provision", "ignition", "--ignition-merge", "x.ign"], {"x.ign": "{}"}, "ignition.version must be"),
        (["--provision", "ignition", "--tls"], {}, "ignition/core-01.ign would be"),
        (["--provision", "ignition", "--os", "coreos"], {}, "provision ignition needs os flatcar"),
        (["--provision", "cloudinit"], {}, "provision must be one of cloud-config, ignition"),
    ],
)
def test_ignition_usage_errors_exit_2_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], files: dict[str, str], match: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code, out, err = run("init", "lab", *args)
    assert code == 2, (out, err)
    assert err.startswith("error: ")
    assert match in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lab").exists()


def test_a_virtualbox_config_over_1_kib_names_the_alternatives(tmp_path: Path) -> None:
    code, _, err = run("init", str(tmp_path / "lab"), "--provision", "ignition", "--instances", "6")
    assert code == 2
    assert "VirtualBox hands Ignition its config as the guest property /Ignition/Config" in err
    assert "use --provider libvirt (QEMU fw_cfg has no such limit) or --provision cloud-config" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run("init", str(tmp_path / "lab"), "--provision", "ignition", "--instances", "3")
    assert code == 0, err


def test_render_out_writes_only_the_configs(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "lab"), "--instances", "2", "--tls")[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "lab").rglob("*") if p.is_file()}
    code, out, err = run(
        "render", "--lab", str(tmp_path / "lab"), "--provision", "ignition", "--out", str(tmp_path / "ign")
    )
    assert code == 0, err
    assert out.splitlines() == [
        f"Wrote 2 Ignition config(s) (spec 3.3.0) to {tmp_path / 'ign'}", "  wrote core-01.ign", "  wrote core-02.ign",
    ]  # fmt: skip
    assert files_under(tmp_path / "ign") == ["core-01.ign", "core-02.ign"]
    assert {p: p.read_bytes() for p in (tmp_path / "lab").rglob("*") if p.is_file()} == before
    code, out, err = run("render", "--lab", str(tmp_path / "lab"), "--out", str(tmp_path / "ign2"), "--json")
    assert code == 0, err
    assert json.loads(out)["written"] == [
        str(tmp_path / "ign2" / "core-01.ign"),
        str(tmp_path / "ign2" / "core-02.ign"),
    ]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--provision", "ignition"], "--provision goes with --out DIR"),
        (["--provision", "cloud-config", "--out", "ign"], "--out writes Ignition configs only"),
    ],
)
def test_render_provision_misuse_exits_2(tmp_path: Path, args: list[str], match: str) -> None:
    assert run("init", str(tmp_path / "lab"))[0] == 0
    code, _, err = run(
        "render", "--lab", str(tmp_path / "lab"), *[a if a != "ign" else str(tmp_path / "ign") for a in args]
    )
    assert code == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ign").exists()
