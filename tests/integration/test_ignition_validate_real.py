"""Rendered Ignition configs against the real tools: Debian's `ignition-validate` (package `ignition`, 2.14) on
every config, for both providers, every bootstrap mode and --tls; the Vagrantfile of an Ignition lab through
`ruby` and `vagrant validate`.

A VirtualBox lab with --tls renders no lab (its configs are over the guest property's 1024 bytes, refused in
the unit tests); its configs are validated as `render --out` writes them, which is what the provider changes
nothing in. Missing `ignition-validate`, `ruby` or `vagrant` skips here and fails with COREOS_LAB_REQUIRE_ALL=1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from coreos_lab import ignition
from coreos_lab.config import LabConfig
from coreos_lab.errors import UsageError
from coreos_lab.render import init_lab, render_ignition_out
from tests.conftest import require_binary
from tests.integration.test_rendered_real import record_vagrantfile, ruby, vagrant
from tests.unit.test_render import lab
from tests.unit.test_render_ignition import MERGE_JSON

pytestmark = pytest.mark.integration

BOOTSTRAPS = ("static", "discovery", "self-hosted")
PROVIDERS = ("virtualbox", "libvirt")


def validate(data: bytes) -> subprocess.CompletedProcess[str]:
    """Debian's ignition-validate on ``data`` (stdin), as its own process: not through coreos_lab.ignition."""
    return subprocess.run(
        [require_binary("ignition-validate"), "-"],
        input=data.decode(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def assert_clean(path: Path) -> None:
    proc = validate(path.read_bytes())
    assert proc.returncode == 0, f"{path.name}: {proc.stdout}{proc.stderr}"
    assert proc.stdout + proc.stderr == "", f"{path.name}: warnings: {proc.stdout}{proc.stderr}"


def merge_sources(path: Path) -> list[bytes]:
    merge = json.loads(path.read_text())["ignition"].get("config", {}).get("merge", [])
    return [unquote_to_bytes(m["source"].removeprefix("data:,")) for m in merge]


@pytest.fixture(scope="module")
def merge_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("merge") / "hello.ign"
    path.write_text(MERGE_JSON)
    return path


def test_the_validator_is_installed_and_refuses_what_it_should() -> None:
    # the validations below can fail: spec 3.4.0 and a relative path are errors for Debian's 2.14
    assert validate(b'{"ignition": {"version": "3.3.0"}}').returncode == 0
    assert validate(b'{"ignition": {"version": "3.4.0"}}').returncode != 0
    bad = b'{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"etc/x","contents":{"source":"data:,%zz"}}]}}'
    proc = validate(bad)
    assert proc.returncode == 1
    assert "path not absolute" in proc.stdout + proc.stderr


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("bootstrap", BOOTSTRAPS)
@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "tls"])
def test_every_rendered_config_passes_ignition_validate(
    tmp_path: Path, merge_path: Path, provider: str, bootstrap: str, with_tls: bool
) -> None:
    require_binary("ignition-validate")
    lab_dir = tmp_path / "lab"
    cfg = lab("flatcar", provider, bootstrap, tls=with_tls, metadata={})
    if provider == "virtualbox" and with_tls:
        init_lab(lab_dir, cfg)  # a cloud-config lab: its certificates, then its Ignition configs for elsewhere
        render_ignition_out(lab_dir, tmp_path / "out")
        paths = sorted((tmp_path / "out").iterdir())
        with pytest.raises(UsageError, match="VirtualBox hands Ignition"):
            init_lab(tmp_path / "ign-lab", cfg.with_changes(provision="ignition"))
    else:
        merges = (str(merge_path),) if provider == "libvirt" else ()  # VirtualBox: no room for a merge file
        init_lab(lab_dir, cfg.with_changes(provision="ignition", ignition_merge=merges))
        paths = sorted((lab_dir / "ignition").iterdir())
        assert [merge_sources(p) for p in paths] == [[MERGE_JSON.encode()] if merges else []] * 3
    assert [p.name for p in paths] == ["core-01.ign", "core-02.ign", "core-03.ign"]
    for path in paths:
        assert_clean(path)
        for source in merge_sources(path):  # the merged config is validated on its own, as Ignition merges it
            assert validate(source).returncode == 0


def test_hostile_metadata_still_validates(tmp_path: Path) -> None:
    value = 'it\'s "$(reboot)" `id` #{x} \\ ünï € % + ? # & /'
    init_lab(tmp_path, lab("flatcar", "libvirt", provision="ignition", metadata={"core-02": {"note": value}}))
    assert_clean(tmp_path / "ignition" / "core-02.ign")


def test_a_bad_merge_file_is_refused_with_the_validator_s_first_error(tmp_path: Path) -> None:
    require_binary("ignition-validate")
    bad = tmp_path / "bad.ign"
    bad.write_text('{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "etc/motd"}]}}')
    with pytest.raises(UsageError) as err:
        init_lab(tmp_path / "lab", lab("flatcar", "libvirt", provision="ignition", ignition_merge=(str(bad),)))
    assert str(err.value).startswith(f"{bad}: ignition-validate refused it: error at $.storage.files.0.path")
    assert "path not absolute" in str(err.value)
    assert not (tmp_path / "lab").exists()
    assert ignition.validator() is not None


# ---------------------------------------------------------------- the Vagrantfile of an Ignition lab


def ignition_lab(tmp_path: Path, provider: str, **kw: object) -> LabConfig:
    cfg = lab("flatcar", provider, "static", provision="ignition", box="coreos-lab/lab", metadata={}, **kw)
    return init_lab(tmp_path, cfg).config


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_ignition_lab_passes_ruby_and_vagrant_validate(tmp_path: Path, provider: str) -> None:
    home = tmp_path / "vagrant-home"
    lab_dir = tmp_path / "lab"
    ignition_lab(lab_dir, provider)
    proc = ruby("-c", "Vagrantfile", cwd=lab_dir)
    assert proc.returncode == 0, proc.stderr
    proc = vagrant(lab_dir, "validate", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


@pytest.mark.parametrize(
    ("provider", "line"), [("libvirt", "ignition_config.gsub("), ("virtualbox", "File.read(ignition_config)")]
)
def test_vagrant_validate_runs_the_delivery_code(tmp_path: Path, provider: str, line: str) -> None:
    # the validation above can fail, and it runs both delivery blocks: broken there, validate says so
    lab_dir = tmp_path / "lab"
    ignition_lab(lab_dir, provider)
    vf = lab_dir / "Vagrantfile"
    text = vf.read_text()
    broken = text.replace(line, line.replace("gsub", "no_such_method").replace("read", "no_such_method"))
    assert broken != text
    vf.write_text(broken)
    proc = vagrant(lab_dir, "validate", home=tmp_path / "vagrant-home")
    assert proc.returncode != 0
    assert "no_such_method" in proc.stdout + proc.stderr


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_node_gets_its_own_config_by_both_channels_and_no_provisioner(tmp_path: Path, provider: str) -> None:
    lab_dir = tmp_path / "odd,name"  # a comma in the path: QEMU's option syntax wants it doubled
    cfg = ignition_lab(lab_dir, provider)
    calls = record_vagrantfile(lab_dir)
    for node in cfg.nodes:
        pre = f"config.vm.define({node.name})"
        path = lab_dir / "ignition" / f"{node.name}.ign"
        qemu = [c[2]["value"] for c in calls if c[0] == f"{pre}.vm.provider(libvirt).qemuargs"]
        fw_cfg_file = str(path).replace(",", ",,")
        assert qemu == [
            "-fw_cfg", f"name=opt/org.flatcar-linux/config,file={fw_cfg_file}",
            "-fw_cfg", f"name=opt/com.coreos/config,file={fw_cfg_file}",
        ]  # fmt: skip
        customize = [c[1][0] for c in calls if c[0] == f"{pre}.vm.provider(virtualbox).customize"]
        assert ["guestproperty", "set", "id", "/Ignition/Config", path.read_text()] in customize
        assert not [c for c in calls if c[0] == f"{pre}.vm.provision"], (
            "a node provisioned by Ignition: no cloud-config"
        )


def test_a_node_without_its_config_gets_none(tmp_path: Path) -> None:
    ignition_lab(tmp_path, "libvirt", instances=2)
    (tmp_path / "ignition" / "core-02.ign").unlink()
    calls = record_vagrantfile(tmp_path)
    assert any(c[0] == "config.vm.define(core-01).vm.provider(libvirt).qemuargs" for c in calls)
    assert not any(c[0].startswith("config.vm.define(core-02)") and "qemuargs" in c[0] for c in calls)
    assert not any("guestproperty" in json.dumps(c) for c in calls if c[0].startswith("config.vm.define(core-02)"))


def test_the_lab_box_boots_its_ignition_initrd_for_each_node(tmp_path: Path) -> None:
    # The lab box's Vagrantfile names its Ignition initrd (CoreosLabBox::IGNITION_INITRD); a real Flatcar box
    # names none, and then the rendered Vagrantfile sets no initrd.
    lab_dir = tmp_path / "lab"
    cfg = ignition_lab(lab_dir, "libvirt")
    initrd = tmp_path / "box" / "initrd-ignition.img"
    initrd.parent.mkdir()
    initrd.write_bytes(b"")
    box_says = f"module CoreosLabBox; IGNITION_INITRD = {json.dumps(str(initrd))}; end\n"
    for prefix, expected in (("", None), (box_says, [str(initrd)])):
        calls = record_vagrantfile(lab_dir, recorder_prefix=prefix)
        for node in cfg.nodes:
            got = [c[1] for c in calls if c[0] == f"config.vm.define({node.name}).vm.provider(libvirt).initrd="]
            assert got == ([] if expected is None else [expected]), (prefix, node.name, got)
