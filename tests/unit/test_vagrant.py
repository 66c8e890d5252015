"""vagrant.py against a scripted stand-in ``vagrant`` on PATH, plus the pure parsers of vagrant.py and cli/vm.py."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from coreos_lab import health, probe, vagrant
from coreos_lab.cli import vm as vm_cli
from coreos_lab.errors import VagrantError, VagrantLostSSH

FAKE = r"""#!/bin/sh
# A stand-in for vagrant: logs its argv, answers per subcommand, fails when told to.
echo "$*" >> "$FAKE_LOG"
case "$1" in
  status)
    echo '1700000000,core-01,provider-name,libvirt'
    echo '1700000000,core-01,state,running'
    echo '1700000000,core-02,provider-name,libvirt'
    echo '1700000000,core-02,state,shutoff'
    ;;
  ssh-config)
    shift
    stopped=$(cat ssh-config-fails-for 2>/dev/null)  # a machine it cannot answer for, in the lab directory
    if [ -n "$FAKE_SSH_CONFIG_FAIL" ] || { [ -n "$stopped" ] && echo " $* " | grep -q " $stopped "; }; then
      echo "The provider for this Vagrant-managed machine is reporting that it is not yet ready for SSH." >&2
      exit 1
    fi
    for n in "$@"; do printf 'Host %s\n  HostName 127.0.0.1\n  User core\n  Port 22\n\n' "$n"; done
    ;;
  ssh)
    echo "ssh: connect to host 192.168.121.5 port 22: Connection refused" >&2
    exit 255
    ;;
  box)
    echo "==> box: Successfully added box 'coreos-lab/lab' (v0) for 'libvirt'!"
    ;;
  up|halt|destroy|reload|provision)
    if [ -n "$FAKE_HANG" ]; then exec sleep 30; fi
    echo "Bringing machine 'core-01' up with 'libvirt' provider..."
    echo "==> core-01: Creating domain with the following settings..."
    echo "==> core-01: Waiting for machine to boot. This may take a few minutes..."
    echo "warning from vagrant" >&2
    if [ -n "$FAKE_LOST_SSH" ] && echo " $FAKE_LOST_SSH " | grep -q " $1 "; then
      # Vagrant 2.3.4's words when one machine of a parallel up lost SSH (as CI printed them)
      printf '%s\n' "An error occurred while executing multiple actions in parallel." \
        "Any errors that occurred are shown below." "" \
        "An error occurred while executing the action on the 'core-02'" \
        "machine. Please handle this error then try again:" "" \
        'While attempting to connect with SSH, a "no route to host" (EHOSTUNREACH)' \
        "error was received. Please verify your network settings are correct" "and try again." >&2
      exit 1
    fi
    if [ -n "$FAKE_FAIL" ]; then
      echo "The provider 'libvirt' could not be found, but was requested to" >&2
      echo "back the machine 'core-01'. Please use a provider that exists." >&2
      exit 1
    fi
    ;;
esac
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vagrant"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "vagrant.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_SSH_CONFIG_FAIL", raising=False)
    monkeypatch.delenv("FAKE_HANG", raising=False)
    monkeypatch.delenv("FAKE_LOST_SSH", raising=False)
    return log


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    d = tmp_path / "lab"
    d.mkdir()
    (d / "Vagrantfile").write_text("# rendered\n")
    return d


def make_machine(lab: Path, name: str, ident: str = "abc") -> None:
    p = lab / ".vagrant/machines" / name / "libvirt"
    p.mkdir(parents=True, exist_ok=True)
    (p / "id").write_text(ident)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_up_streams_lines_and_runs_in_parallel_on_libvirt(fake: Path, lab: Path) -> None:
    lines: list[str] = []
    vagrant.VagrantLab(lab, provider="libvirt").up(on_line=lines.append)
    assert calls(fake) == ["up --provider=libvirt --parallel"]
    assert "==> core-01: Waiting for machine to boot. This may take a few minutes..." in lines
    assert "warning from vagrant" in lines  # stderr is streamed too


def test_up_named_nodes_serial_on_virtualbox(fake: Path, lab: Path) -> None:
    vm = vagrant.VagrantLab(lab, provider="virtualbox")
    assert not vm.parallel_capable
    vm.up(["core-02", "core-03"], provision=False)
    assert calls(fake) == ["up core-02 core-03 --provider=virtualbox --no-parallel --no-provision"]


def test_failure_names_missing_provider_plugin(fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(VagrantError) as info:
        vagrant.VagrantLab(lab, provider="libvirt").up()
    assert "no 'libvirt' provider" in str(info.value)
    assert "apt-get install vagrant-libvirt" in str(info.value)


def test_ssh_raises_with_stderr_instead_of_swallowing(fake: Path, lab: Path) -> None:
    with pytest.raises(VagrantError, match="Connection refused"):
        vagrant.VagrantLab(lab).ssh("core-01", "true")


def test_box_add_streams_its_lines(fake: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    vagrant.box_add("coreos-lab/lab", tmp_path / "lab.box", force=True, on_line=lines.append)
    assert calls(fake) == [f"box add --name coreos-lab/lab --force {tmp_path / 'lab.box'}"]
    assert lines == ["==> box: Successfully added box 'coreos-lab/lab' (v0) for 'libvirt'!"]


def test_a_vagrant_that_hangs_is_killed_at_its_timeout(fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG", "1")
    started = time.monotonic()
    with pytest.raises(VagrantError, match=r"^vagrant provision did not finish within 0\.5s$"):
        vagrant.VagrantLab(lab, timeout=0.5).provision()
    assert time.monotonic() - started < 10


def test_missing_vagrant_binary(tmp_path: Path, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VagrantError, match="vagrant is not installed") as info:
        vagrant.VagrantLab(lab).status()
    assert "apt-get install vagrant" in str(info.value)


def test_no_vagrantfile(tmp_path: Path) -> None:
    with pytest.raises(VagrantError, match="no Vagrantfile"):
        vagrant.VagrantLab(tmp_path)


def test_status_parses_machine_states(fake: Path, lab: Path) -> None:
    states = vagrant.VagrantLab(lab, provider="libvirt").status()
    assert [(m.name, m.state, m.provider, m.running) for m in states] == [
        ("core-01", "running", "libvirt", True),
        ("core-02", "poweroff", "libvirt", False),  # python-vagrant normalises libvirt states
    ]


def test_ssh_config_is_one_process_cached_and_invalidated(fake: Path, lab: Path) -> None:
    for name in ("core-01", "core-02", "core-03"):
        make_machine(lab, name)
    text = vagrant.ssh_config_text(lab)
    assert [line for line in text.splitlines() if line.startswith("Host ")] == [
        "Host core-01",
        "Host core-02",
        "Host core-03",
    ]
    assert calls(fake) == ["ssh-config core-01 core-02 core-03"]
    assert vagrant.ssh_config_text(lab) == text
    assert len(calls(fake)) == 1  # served from <lab>/.coreos-lab/ssh-config.json
    cache = lab / ".coreos-lab/ssh-config.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert vagrant.ssh_config_text(lab, ["core-02"]).startswith("Host core-02\n")  # another request: asked once
    assert vagrant.ssh_config_text(lab, ["core-02"]).startswith("Host core-02\n")
    assert calls(fake)[1:] == ["ssh-config core-02"]
    assert vagrant.ssh_config_text(lab) == text  # both requests kept
    make_machine(lab, "core-02", "recreated")  # a machine id changed: ask Vagrant again
    vagrant.ssh_config_text(lab)
    assert len(calls(fake)) == 3
    vagrant.VagrantLab(lab, provider="libvirt").halt(["core-01"])  # lifecycle commands drop the cache
    assert not cache.exists()
    vagrant.ssh_config_text(lab)
    assert calls(fake)[-1] == "ssh-config core-01 core-02 core-03"


@pytest.mark.parametrize("action", ["up", "halt", "destroy", "reload"])
def test_every_lifecycle_command_drops_the_cache_even_when_it_fails(
    fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    make_machine(lab, "core-01")
    vagrant.ssh_config_text(lab)
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(VagrantError):
        getattr(vagrant.VagrantLab(lab, provider="libvirt"), action)()
    assert not (lab / ".coreos-lab/ssh-config.json").exists()


def test_invalidate_also_removes_the_caches_of_earlier_versions(lab: Path) -> None:
    state = lab / ".coreos-lab"
    state.mkdir()
    for name in ("ssh-config.json", "ssh-config", "ssh-config.key", "ssh_config"):
        (state / name).write_text("x")
    vagrant.invalidate(lab)
    assert sorted(p.name for p in state.iterdir()) == ["ssh_config"]  # `coreos-lab ssh`'s file for ssh -F stays
    vagrant.invalidate(lab / "never-existed")  # harmless


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"machine_ids": "other", "configs": {"*": "Host x\\n"}}', '{"configs": 3}']
)
def test_a_stale_or_garbled_cache_is_asked_again(fake: Path, lab: Path, content: str) -> None:
    make_machine(lab, "core-01")
    (lab / ".coreos-lab").mkdir()
    (lab / ".coreos-lab/ssh-config.json").write_text(content)
    assert vagrant.ssh_config_text(lab).startswith("Host core-01\n")
    assert calls(fake) == ["ssh-config core-01"]


def test_machine_ids_fingerprint_changes_with_ids(tmp_path: Path) -> None:
    empty = vagrant.machine_ids_fingerprint(tmp_path)
    make_machine(tmp_path, "a", "1")
    one = vagrant.machine_ids_fingerprint(tmp_path)
    make_machine(tmp_path, "b", "2")
    assert len({empty, one, vagrant.machine_ids_fingerprint(tmp_path)}) == 3
    assert vagrant.machine_ids_fingerprint(tmp_path) == vagrant.machine_ids_fingerprint(tmp_path)


def test_ssh_config_falls_back_to_running_machines(fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_machine(lab, "core-01")
    make_machine(lab, "core-02")
    monkeypatch.setenv("FAKE_SSH_CONFIG_FAIL", "1")
    with pytest.raises(VagrantError, match="not yet ready for SSH"):
        vagrant.ssh_config_text(lab)
    assert calls(fake)[:2] == ["ssh-config core-01 core-02", "status --machine-readable"]
    assert calls(fake)[-1] == "ssh-config core-01"  # only the running one is asked for the second time


def test_the_running_machines_config_is_cached_while_one_is_stopped(fake: Path, lab: Path) -> None:
    make_machine(lab, "core-01")
    make_machine(lab, "core-02")
    (lab / "ssh-config-fails-for").write_text("core-02")  # the stand-in fails while core-02 (shutoff) is asked
    text = vagrant.ssh_config_text(lab)
    assert text.startswith("Host core-01\n")
    assert "core-02" not in text
    assert calls(fake) == ["ssh-config core-01 core-02", "status --machine-readable", "ssh-config core-01"]
    assert vagrant.ssh_config_text(lab) == text
    assert len(calls(fake)) == 3  # not three Vagrant processes on every command


def test_ssh_config_without_machines(fake: Path, lab: Path) -> None:
    with pytest.raises(VagrantError, match="has been created"):
        vagrant.ssh_config_text(lab)
    assert calls(fake) == []


def test_explain_failure_keeps_the_last_lines_without_ruby_backtrace() -> None:
    err = vagrant.explain_failure(
        "up",
        1,
        "An error occurred.\nCall to virDomainCreateWithFlags failed: no space\n"
        "\tfrom /usr/lib/ruby/x.rb:7:in `create'\n",
    )
    assert str(err) == (
        "vagrant up failed (exit 1): An error occurred. | Call to virDomainCreateWithFlags failed: no space"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("==> core-01: Starting domain.", ("core-01", "Starting domain.")),
        ("    core-02: SSH address: 192.168.121.5:22", ("core-02", "SSH address: 192.168.121.5:22")),
        ("\x1b[1m==> core-03: Booting VM...\x1b[0m", ("core-03", "Booting VM...")),
        ("==> other-01: Starting domain.", None),
        ("Bringing machine 'core-01' up with 'libvirt' provider...", None),
    ],
)
def test_parse_progress(line: str, expected: tuple[str, str] | None) -> None:
    assert vagrant.parse_progress(line, ["core-01", "core-02", "core-03"]) == expected


def test_phases() -> None:
    assert vm_cli.phase_of("Creating domain with the following settings...") == "creating VM"
    assert vm_cli.phase_of("Machine booted and ready!") == "booted"
    assert vm_cli.phase_of(" -- Memory:            1024M") is None


SEP = "@@coreos-lab@@\n"
PROBE = SEP.join(
    [
        "0123abcd\n",
        "role=web\n",
        "core-01\n",
        "192.168.121.10 192.168.56.101 ",
        "",
        "active\n",
        "ok\n",
        "1, started, core-01, http://192.168.56.101:2380, http://192.168.56.101:2379, false\n"
        "2, started, core-02, http://192.168.56.102:2380, http://192.168.56.102:2379, false\n"
        "3, unstarted, , http://192.168.56.103:2380, , false\n",
    ]
)


def test_parse_probe_and_readiness() -> None:
    h = probe.parse_probe("core-01", PROBE)
    assert h.addresses == ("192.168.121.10", "192.168.56.101")
    assert h.etcd is not None
    assert h.etcd.members[2] == ("", "unstarted")
    assert h.etcd.started_members == 2
    assert not health.ready({"core-01": h}, 3)
    assert health.ready({"core-01": h}, 2)
    down = probe.NodeFacts("core-02", False, error="timed out")
    assert not health.ready({"core-01": h, "core-02": down}, 2)
    assert health.ready({"core-01": h}, 3, etcd=False)
    unhealthy = probe.parse_probe("core-01", PROBE.replace("ok\n", "bad\n"))
    assert not health.ready({"core-01": unhealthy}, 2)
    # Without the etcd part (deploy's probe) a node is reachable but says nothing of etcd: never "ready".
    plain = probe.parse_probe("core-01", SEP.join(PROBE.split(SEP)[:5]))
    assert plain.etcd is None
    assert not health.ready({"core-01": plain}, 1)
    assert health.ready({"core-01": plain}, 1, etcd=False)


def test_probe_command_quotes_nothing_from_outside() -> None:
    cmd = probe.probe_command(True, etcd_unit="etcd-member.service")
    assert "systemctl is-active etcd-member.service" in cmd
    assert cmd.endswith("true")
    assert os.linesep not in cmd
    # Without the etcd part it starts no systemctl/etcdctl, and without addresses no `ip` either.
    assert "etcdctl" not in probe.probe_command(True)
    assert "systemctl" not in probe.probe_command(True)
    assert "ip -4" not in probe.probe_command(False)


def test_explain_failure_takes_the_message_out_of_a_ruby_crash() -> None:
    err = vagrant.explain_failure(
        "destroy",
        1,
        "/usr/lib/ruby/vendor_ruby/fog/libvirt/requests/compute/vm_action.rb:7:in `create': "
        "Call to virDomainCreateWithFlags failed: Permission denied (Libvirt::Error)\n"
        "\tfrom /usr/share/rubygems-integration/all/gems/vagrant-2.3.4/lib/vagrant/environment.rb:631:in `lock'\n"
        "/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/lib/vagrant/machine.rb:203:in `call'\n",
    )
    assert str(err) == (
        "vagrant destroy failed (exit 1): Call to virDomainCreateWithFlags failed: Permission denied (Libvirt::Error)"
    )


def test_cli_up_no_wait_shows_progress_on_stderr(fake: Path, lab: Path) -> None:
    from typer.testing import CliRunner

    from coreos_lab import config as labconfig
    from coreos_lab.cli import app

    labconfig.save(lab, labconfig.LabConfig(instances=2, provider="virtualbox"))
    result = CliRunner().invoke(app, ["up", "--lab", str(lab), "--no-wait"])
    assert result.exit_code == 0, result.output
    assert calls(fake) == ["up --provider=virtualbox --no-parallel"]
    assert "virtualbox boots nodes one at a time" in result.stderr
    assert "core-01: creating VM" in result.stderr
    assert "core-01: waiting for SSH" in result.stderr
    assert result.stdout.startswith("vagrant up finished")


def test_cli_up_unknown_node_is_a_usage_error(fake: Path, lab: Path) -> None:
    from typer.testing import CliRunner

    from coreos_lab import config as labconfig
    from coreos_lab.cli import app

    labconfig.save(lab, labconfig.LabConfig(instances=2, provider="libvirt"))
    result = CliRunner().invoke(app, ["up", "core-09", "--lab", str(lab)])
    assert result.exit_code == 2
    assert "no node named 'core-09'" in result.stderr
    assert calls(fake) == []


LOST_SSH = (
    "An error occurred while executing multiple actions in parallel.\nAny errors that occurred are shown below.\n\n"
    "An error occurred while executing the action on the 'core-02'\nmachine. Please handle this error then try again:\n"
    '\nWhile attempting to connect with SSH, a "no route to host" (EHOSTUNREACH)\n'
    "error was received. Please verify your network settings are correct\nand try again.\n"
)


def test_explain_failure_names_the_machine_that_lost_ssh() -> None:
    err = vagrant.explain_failure("up", 1, LOST_SSH)
    assert isinstance(err, VagrantLostSSH)
    assert err.machines == ("core-02",)
    assert err.reason == "no route to host"
    assert str(err).startswith("vagrant up failed (exit 1) on core-02: ")
    other = vagrant.explain_failure("up", 1, LOST_SSH.replace("EHOSTUNREACH", "").replace("no route to host", "x"))
    assert not isinstance(other, VagrantLostSSH)
    assert str(other).startswith("vagrant up failed (exit 1) on core-02: ")
    banner = vagrant.explain_failure("up", 1, "Timeout during server version negotiating\n")
    assert isinstance(banner, VagrantLostSSH)
    assert (banner.machines, banner.reason) == ((), "sshd's banner timed out")


def _cli_up(lab: Path, *args: str):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from coreos_lab import config as labconfig
    from coreos_lab.cli import app

    labconfig.save(lab, labconfig.LabConfig(instances=3, provider="libvirt"))
    return CliRunner().invoke(app, ["up", "--lab", str(lab), "--no-wait", *args])


def test_cli_up_boots_a_machine_that_lost_ssh_again_once(
    fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LOST_SSH", "up")
    result = _cli_up(lab)
    assert result.exit_code == 0, result.output
    assert calls(fake) == ["up --provider=libvirt --parallel", "reload core-02 --provision"]
    assert "core-02: lost SSH (no route to host), booting again once" in result.stderr
    assert result.stdout.startswith("vagrant up finished")


def test_cli_up_gives_up_when_the_second_boot_loses_ssh_too(
    fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LOST_SSH", "up reload")
    result = _cli_up(lab)
    assert result.exit_code == 1
    assert calls(fake) == ["up --provider=libvirt --parallel", "reload core-02 --provision"]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.stderr
    assert "vagrant reload failed (exit 1) on core-02" in error[0]
    assert "Traceback" not in result.output


def test_cli_up_does_not_retry_a_machine_it_did_not_boot(
    fake: Path, lab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LOST_SSH", "up")
    result = _cli_up(lab, "core-01")
    assert result.exit_code == 1
    assert calls(fake) == ["up core-01 --provider=libvirt --parallel"]
    assert "on core-02" in result.stderr


def test_cli_up_profile_says_where_the_time_went(fake: Path, lab: Path) -> None:
    result = _cli_up(lab, "--profile")
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("profile core-01: ")]
    assert len(line) == 1, result.stdout
    assert "creating VM " in line[0]
    assert "waiting for SSH " in line[0]
    assert line[0].endswith("s")
