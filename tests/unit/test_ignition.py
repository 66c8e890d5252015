"""coreos_lab.ignition on its own: data URLs, merge-file checks, the validator's plumbing (a stand-in script
here; Debian's real one in tests/integration/test_ignition_validate_real.py), configs rendered earlier, and what
``up`` refuses in an Ignition lab (coreos_lab.pickup)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from coreos_lab import ignition, pickup
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError
from coreos_lab.render import init_lab

from .test_render import HOSTILE
from .test_render_ignition import MERGE_JSON, ign_lab

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()%")


@pytest.mark.parametrize("value", [*HOSTILE, "", "line\nbreak\r\n", "\x00\xff", "100% ?#&=+/ ;,:@"])
def test_data_url_round_trips_and_uses_only_unreserved_characters(value: str) -> None:
    url = ignition.data_url(value)
    assert url.startswith("data:,")
    body = url.removeprefix("data:,")
    assert set(body) <= SAFE, f"{value!r} -> {url!r}"
    assert unquote_to_bytes(body) == value.encode()
    assert ignition.data_url(value.encode()) == url


def test_data_url_escapes_as_ignition_s_encoder_does() -> None:
    # dataurl.Escape: RFC 2396 unreserved kept, everything else %XX in upper case
    assert ignition.data_url("a b/c=d\n(x)!*'~_.-") == "data:,a%20b%2Fc%3Dd%0A(x)!*'~_.-"


def test_delivery_names_each_channel() -> None:
    assert ignition.delivery("virtualbox") == "the VirtualBox guest property /Ignition/Config"
    assert ignition.delivery("libvirt") == "QEMU fw_cfg as opt/org.flatcar-linux/config and opt/com.coreos/config"
    assert ignition.config_path("core-01") == "ignition/core-01.ign"


def test_dumps_is_compact_ascii_with_one_newline() -> None:
    assert ignition.dumps({"a": ["é", 1], "b": {}}) == '{"a":["\\u00e9",1],"b":{}}\n'


def test_node_config_refuses_the_coreos_dialect() -> None:
    cfg = ign_lab().with_changes(provision="cloud-config", os="coreos")
    with pytest.raises(ConfigError, match="rendered for os flatcar"):
        ignition.node_config(cfg, cfg.nodes[0], ignition.NodeTexts("[Service]\n", ""))


# ---------------------------------------------------------------- merge files


def test_check_merge_accepts_spec_3_0_to_3_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ignition, "validator", lambda: None)
    for version in ignition.MERGE_VERSIONS:
        raw = json.dumps({"ignition": {"version": version}}).encode()
        merge = ignition.check_merge(raw, Path("m.ign"), 0o640)
        assert (merge.version, merge.raw, merge.mode) == (version, raw, 0o640)
        assert len(merge.sha256) == 64


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\xff", "m.ign: not UTF-8 text"),
        (b"{", "m.ign: not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)"),
        (b'"x"', "m.ign: an Ignition config is a JSON object, got str"),
        (b"{}", "m.ign: ignition.version must be one of 3.0.0, 3.1.0, 3.2.0, 3.3.0 (what both Flatcar's"),
        (b'{"ignition": {"version": "3.5.0"}}', "got '3.5.0'"),
        (b'{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/hostname"}]}}', "/etc/hostname"),
        (b'{"ignition": {"version": "3.3.0"}, "systemd": {"units": [{"name": "docker.service", "mask": true}]}}',
         "docker.service (mask) is coreos-lab's"),
    ],
)  # fmt: skip
def test_check_merge_refuses_with_one_line(raw: bytes, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ignition, "validator", lambda: None)
    with pytest.raises(UsageError) as err:
        ignition.check_merge(raw, Path("m.ign"))
    assert match in str(err.value)
    assert "\n" not in str(err.value)
    assert "before coreos-lab's cloud-config" not in str(err.value), "no hint about a root config.ign"


def fake_validator(tmp_path: Path, script: str) -> str:
    path = tmp_path / "ignition-validate"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_without_the_validator_only_the_structure_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # a relative path passes the structural checks; only ignition-validate knows it is wrong
    raw = b'{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "etc/x"}]}}'
    monkeypatch.setattr(ignition, "validator", lambda: None)
    assert ignition.check_merge(raw, Path("m.ign")).version == "3.3.0"


def test_the_validator_gets_the_bytes_and_its_first_error_is_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = tmp_path / "seen"
    script = f'[ "$1" = "-" ] || exit 9\ncat > {seen}\necho "warning at $.a: x"\necho "error at $.b: first"\n'
    script += 'echo "error at $.c: second"\nexit 1\n'
    monkeypatch.setattr(ignition, "validator", lambda: fake_validator(tmp_path, script))
    raw = b'{"ignition": {"version": "3.1.0"}}'
    with pytest.raises(UsageError) as err:
        ignition.check_merge(raw, Path("m.ign"))
    assert str(err.value) == "m.ign: ignition-validate refused it: error at $.b: first"
    assert seen.read_bytes() == raw
    with pytest.raises(ConfigError) as failed:
        ignition.validate_text("{}", "ignition/x.ign", rendered=True)
    assert str(failed.value) == "internal: ignition-validate refused the rendered ignition/x.ign: error at $.b: first"


def test_warnings_alone_pass_and_a_broken_validator_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ignition, "validator", lambda: fake_validator(tmp_path, 'cat >/dev/null\necho "warning"\n'))
    ignition.validate_text("{}", "x", rendered=False)
    monkeypatch.setattr(ignition, "validator", lambda: str(tmp_path / "missing"))
    with pytest.raises(CoreosLabError, match="cannot run"):
        ignition.validate_text("{}", "x", rendered=False)
    monkeypatch.setattr(ignition, "validator", lambda: fake_validator(tmp_path, "cat >/dev/null\nexit 3\n"))
    with pytest.raises(UsageError, match="refused it: no output"):
        ignition.validate_text("{}", "x", rendered=False)


def test_read_merges_resolves_relative_paths_from_the_lab(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "a.ign").write_text(MERGE_JSON)
    (tmp_path / "b.ign").write_text('{"ignition": {"version": "3.0.0"}}')
    cfg = ign_lab(ignition_merge=("a.ign", str(tmp_path / "b.ign")))
    merges = ignition.read_merges(tmp_path / "lab", cfg)
    assert [(m.path, m.version) for m in merges] == [
        (tmp_path / "lab" / "a.ign", "3.2.0"),
        (tmp_path / "b.ign", "3.0.0"),
    ]
    (tmp_path / "b.ign").unlink()
    with pytest.raises(UsageError, match=f"cannot read the --ignition-merge file {tmp_path / 'b.ign'}: No such file"):
        ignition.read_merges(tmp_path / "lab", cfg)


# ---------------------------------------------------------------- configs rendered earlier


def test_only_configs_coreos_lab_rendered_count_as_ours(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab())
    ours = tmp_path / "ignition" / "core-01.ign"
    assert ignition.is_ours(ours)
    mine = tmp_path / "ignition" / "mine.ign"
    mine.write_text(MERGE_JSON)
    assert not ignition.is_ours(mine)
    (tmp_path / "ignition" / "broken.ign").write_text("{")
    (tmp_path / "ignition" / "list.ign").write_text("[]")
    (tmp_path / "ignition" / "link.ign").symlink_to(ours)
    assert ignition.stale_configs(tmp_path, ["ignition/core-02.ign", "ignition/core-03.ign"]) == [ours]
    assert ignition.stale_configs(tmp_path / "nowhere", []) == []


# ---------------------------------------------------------------- what `up` refuses in an Ignition lab


def test_pickup_problems_of_an_ignition_lab(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab())
    assert pickup.pickup_problems(tmp_path) == []
    (tmp_path / "config.ign").write_text('{"ignition": {"version": "3.3.0"}}')
    (tmp_path / "user-data").write_text("#cloud-config\n")
    (tmp_path / "ignition" / "core-02.ign").unlink()
    problems = pickup.pickup_problems(tmp_path)
    assert [p.split(":")[0] for p in problems] == ["config.ign in an Ignition lab", "user-data in an Ignition lab",
                                                   "ignition/core-02.ign is missing"]  # fmt: skip
    assert "core-02 would boot with no configuration" in problems[2]


def test_pickup_problems_an_oversized_virtualbox_config(tmp_path: Path) -> None:
    init_lab(tmp_path, ign_lab("virtualbox", metadata={}))
    assert pickup.pickup_problems(tmp_path) == []
    big = tmp_path / "ignition" / "core-03.ign"
    big.write_text(big.read_text()[:-2] + " " * 100 + "}\n")
    (problem,) = pickup.pickup_problems(tmp_path)
    assert problem.startswith(f"ignition/core-03.ign is {big.stat().st_size} bytes: VirtualBox guest properties hold")
    cfg = ign_lab("libvirt", metadata={})
    assert pickup.pickup_problems(tmp_path, cfg) == [], "fw_cfg has no such limit"


def test_a_user_data_directory_is_the_old_layout_s_problem(tmp_path: Path) -> None:
    (tmp_path / "user-data").mkdir()
    assert pickup.ignition_lab_problems(tmp_path) == []
