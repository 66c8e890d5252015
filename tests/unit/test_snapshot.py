"""snapshot.py's bookkeeping and refusals, against a scripted stand-in ``virsh``/``qemu-img`` on PATH.

The stand-in keeps each domain's state and snapshots as files, logs every call, and fails where told to; the
real virsh on a real libvirt lab is the VM suite's (tests/vm/test_e2e.py, snapshot_flow).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coreos_lab import config as labconfig
from coreos_lab.cli import app
from coreos_lab.errors import UsageError, VagrantError
from coreos_lab.snapshot import SnapshotError, SnapshotLab, VagrantSnapshotLab, check_name
from coreos_lab.vagrant import VagrantLab
from tests.conftest import require_binary

FAKE_VIRSH = r"""#!/bin/sh
# virsh -q -c URI COMMAND ARGS: domains are directories under $FAKE_VIRT; state in DIR/state, snapshots DIR/snap.*
echo "$*" >> "$FAKE_VIRT/log"
shift 3
cmd=$1; shift
dom=; snap=
while [ $# -gt 0 ]; do
  case $1 in
    --domain) dom=$2; shift 2 ;;
    --name) if [ "$cmd" = snapshot-list ]; then shift; else snap=$2; shift 2; fi ;;
    --snapshotname) snap=$2; shift 2 ;;
    --description) shift 2 ;;
    --*) shift ;;
    *) [ -z "$dom" ] && dom=$1; shift ;;
  esac
done
d=$FAKE_VIRT/$dom
[ -d "$d" ] || { echo "error: failed to get domain '$dom'" >&2; exit 1; }
if [ -e "$d/fail-$cmd" ]; then echo "error: $cmd refused for $dom" >&2; exit 1; fi
case $cmd in
  domstate) cat "$d/state" ;;
  suspend) echo paused > "$d/state" ;;
  resume) echo running > "$d/state" ;;
  snapshot-create-as) cp "$d/data" "$d/snap.$snap" ;;
  snapshot-revert) cp "$d/snap.$snap" "$d/data"; echo paused > "$d/state" ;;
  snapshot-delete) rm "$d/snap.$snap" ;;
  snapshot-list) for f in "$d"/snap.*; do [ -e "$f" ] && echo "${f##*/snap.}"; done; true ;;
  domblklist) echo "file disk vda $d/disk.img" ;;
  *) echo "error: unknown command $cmd" >&2; exit 1 ;;
esac
"""
FAKE_QEMU_IMG = r"""#!/bin/sh
# qemu-img info -U --output=json PATH: 1 MiB of memory per snapshot file beside the image
dir=$(dirname "$4")
printf '{"actual-size": 10485760, "snapshots": ['
sep=
for f in "$dir"/snap.*; do
  [ -e "$f" ] || continue
  printf '%s{"name": "%s", "vm-state-size": 1048576}' "$sep" "${f##*/snap.}"; sep=,
done
printf ']}\n'
"""


@pytest.fixture
def virt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("virsh", FAKE_VIRSH), ("qemu-img", FAKE_QEMU_IMG)):
        exe = bindir / name
        exe.write_text(text)
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    root = tmp_path / "virt"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_VIRT", str(root))
    return root


@pytest.fixture
def lab(tmp_path: Path, virt: Path) -> Path:
    d = tmp_path / "lab"
    d.mkdir()
    labconfig.save(d, labconfig.LabConfig(instances=3, provider="libvirt"))
    for i in (1, 2, 3):
        add_node(d, virt, f"core-0{i}", f"uuid-{i}")
    return d


def add_node(lab: Path, virt: Path, name: str, uuid: str) -> None:
    ident = lab / ".vagrant/machines" / name / "libvirt" / "id"
    ident.parent.mkdir(parents=True, exist_ok=True)
    ident.write_text(uuid)
    dom = virt / uuid
    dom.mkdir()
    (dom / "state").write_text("running\n")
    (dom / "data").write_text("v1")


def log(virt: Path) -> list[str]:
    return [line.split(" ", 3)[3] for line in (virt / "log").read_text().splitlines()]


def data(virt: Path) -> dict[str, str]:
    return {p.name: (p / "data").read_text() for p in sorted(virt.iterdir()) if p.is_dir()}


def test_save_pauses_all_snapshots_all_then_resumes_all(lab: Path, virt: Path) -> None:
    snap, pause = SnapshotLab(lab).save("clean")
    assert snap.domains == {"core-01": "uuid-1", "core-02": "uuid-2", "core-03": "uuid-3"}
    assert pause >= 0
    calls = log(virt)
    kinds = [c.split()[0] for c in calls]
    # every suspend before the first snapshot, every snapshot before the first resume
    last_suspend = max(i for i, k in enumerate(kinds) if k == "suspend")
    first_create = kinds.index("snapshot-create-as")
    last_create = max(i for i, k in enumerate(kinds) if k == "snapshot-create-as")
    first_resume = kinds.index("resume")
    assert kinds.count("suspend") == kinds.count("snapshot-create-as") == kinds.count("resume") == 3
    assert last_suspend < first_create <= last_create < first_resume
    assert any("--name coreos-lab-clean" in c for c in calls)
    assert {(virt / f"uuid-{i}" / "state").read_text().strip() for i in (1, 2, 3)} == {"running"}
    record = json.loads((lab / ".coreos-lab/snapshots.json").read_text())
    assert [s["name"] for s in record["snapshots"]] == ["clean"]
    assert (lab / ".coreos-lab/snapshots.json").stat().st_mode & 0o777 == 0o600


def test_restore_brings_every_node_back_and_resumes_them(lab: Path, virt: Path) -> None:
    snaps = SnapshotLab(lab)
    snaps.save("clean")
    for i in (1, 2, 3):
        (virt / f"uuid-{i}" / "data").write_text("v2")
    snaps.restore("clean")
    assert data(virt) == {"uuid-1": "v1", "uuid-2": "v1", "uuid-3": "v1"}
    kinds = [c.split()[0] for c in log(virt)]
    tail = kinds[kinds.index("snapshot-revert") :]
    assert tail.count("snapshot-revert") == 3
    assert max(i for i, k in enumerate(tail) if k == "snapshot-revert") < tail.index("resume")
    assert {(virt / f"uuid-{i}" / "state").read_text().strip() for i in (1, 2, 3)} == {"running"}


def test_a_snapshot_needs_every_node_running(lab: Path, virt: Path) -> None:
    (virt / "uuid-2" / "state").write_text("shut off\n")
    with pytest.raises(SnapshotError, match=r"every node must run for a snapshot \(core-02: shut off\)"):
        SnapshotLab(lab).save("clean")
    assert "snapshot-create-as" not in " ".join(log(virt))
    assert not (lab / ".coreos-lab/snapshots.json").exists()


def test_no_half_snapshot_when_one_node_fails(lab: Path, virt: Path) -> None:
    (virt / "uuid-3" / "fail-snapshot-create-as").touch()
    with pytest.raises(SnapshotError, match=r"snapshot clean not taken: core-03: virsh snapshot-create-as failed"):
        SnapshotLab(lab).save("clean")
    assert not list(virt.glob("*/snap.*")), "the nodes' snapshots that were made are dropped again"
    assert {(virt / f"uuid-{i}" / "state").read_text().strip() for i in (1, 2, 3)} == {"running"}
    assert not (lab / ".coreos-lab/snapshots.json").exists()


def test_a_lab_that_changed_shape_is_refused_before_anything_is_touched(lab: Path, virt: Path) -> None:
    snaps = SnapshotLab(lab)
    snaps.save("clean")
    add_node(lab, virt, "core-04", "uuid-4")
    before = len(log(virt))
    with pytest.raises(SnapshotError, match=r"taken of other machines \(nodes added since: core-04\)"):
        snaps.restore("clean")
    assert len(log(virt)) == before


def test_names_duplicates_and_unknown_snapshots(lab: Path) -> None:
    snaps = SnapshotLab(lab)
    with pytest.raises(UsageError):
        check_name("-x")
    with pytest.raises(UsageError):
        check_name("a" * 64)
    snaps.save("clean")
    with pytest.raises(SnapshotError, match="exists already"):
        snaps.save("clean")
    with pytest.raises(SnapshotError, match=r"no snapshot named 'other' in this lab \(snapshots: clean\)") as err:
        snaps.restore("other")
    assert err.value.exit_code == 2


def test_delete_and_remove_all(lab: Path, virt: Path) -> None:
    snaps = SnapshotLab(lab)
    snaps.save("a")
    snaps.save("b")
    assert snaps.delete("a") == 3
    assert [s.name for s in snaps.snapshots()] == ["b"]
    assert sorted(p.name for p in virt.glob("uuid-1/snap.*")) == ["snap.coreos-lab-b"]
    assert snaps.remove_all() == ["b"]
    assert not list(virt.glob("*/snap.*"))
    assert not (lab / ".coreos-lab/snapshots.json").exists()


def test_a_damaged_record_is_one_line(lab: Path) -> None:
    (lab / ".coreos-lab").mkdir(exist_ok=True)
    (lab / ".coreos-lab/snapshots.json").write_text("{nope")
    with pytest.raises(SnapshotError, match="is damaged"):
        SnapshotLab(lab).snapshots()


def test_cli_save_list_delete(lab: Path, virt: Path) -> None:
    runner = CliRunner()
    saved = runner.invoke(app, ["snapshot", "save", "clean", "--lab", str(lab)])
    assert saved.exit_code == 0, saved.output
    assert saved.stdout.startswith("saved snapshot clean of 3 nodes in ")
    listed = runner.invoke(app, ["snapshot", "list", "--lab", str(lab), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["nodes"], r["memory_bytes"], r["restorable"]) for r in rows] == [
        ("clean", ["core-01", "core-02", "core-03"], 3 * 1048576, True)
    ]
    table = runner.invoke(app, ["snapshot", "list", "--lab", str(lab)])
    assert "3.0 MiB" in table.stdout
    gone = runner.invoke(app, ["snapshot", "delete", "clean", "--lab", str(lab)])
    assert gone.stdout.strip() == "deleted snapshot clean (3 node(s))"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["snapshot", "save", "../x"], "bad snapshot name '../x'"),
        (["snapshot", "restore", "nothing"], "no snapshot named 'nothing'"),
        (["snapshot", "delete", "nothing"], "no snapshot named 'nothing'"),
    ],
)
def test_cli_bad_input_is_one_line(lab: Path, args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, [*args, "--lab", str(lab)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.output


FAKE_VAGRANT = r"""#!/bin/sh
echo "$*" >> "$FAKE_VIRT/vagrant.log"
if [ "$1 $2" = "snapshot restore" ] && [ -e "$FAKE_VIRT/fail-restore" ]; then
  echo "The snapshot 'coreos-lab-x' does not exist for core-02." >&2; exit 1
fi
"""


@pytest.fixture
def vbox(tmp_path: Path, virt: Path) -> Path:
    exe = tmp_path / "bin" / "vagrant"
    exe.write_text(FAKE_VAGRANT)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    d = tmp_path / "vb"
    d.mkdir()
    labconfig.save(d, labconfig.LabConfig(instances=2, provider="virtualbox"))
    (d / "Vagrantfile").write_text("# rendered\n")
    for i in (1, 2):
        ident = d / ".vagrant/machines" / f"core-0{i}" / "virtualbox" / "id"
        ident.parent.mkdir(parents=True)
        ident.write_text(f"vbox-{i}")
    return d


def test_virtualbox_goes_through_vagrants_own_snapshot_commands(vbox: Path, virt: Path) -> None:
    runner = CliRunner()
    saved = runner.invoke(app, ["snapshot", "save", "clean", "--lab", str(vbox)])
    assert saved.exit_code == 0, saved.output
    # suspended together (VirtualBox saves each one's state), snapshotted while suspended, resumed
    assert (virt / "vagrant.log").read_text().splitlines() == [
        "suspend",
        "snapshot save coreos-lab-clean",
        "resume",
    ]
    listed = json.loads(runner.invoke(app, ["snapshot", "list", "--json", "--lab", str(vbox)]).stdout)
    assert [(r["name"], r["nodes"], r["memory_bytes"]) for r in listed] == [("clean", ["core-01", "core-02"], 0)]
    snaps = VagrantSnapshotLab(vbox, VagrantLab(vbox, provider="virtualbox"))
    assert snaps.restore("clean") >= 0
    assert (virt / "vagrant.log").read_text().splitlines()[-1] == "snapshot restore coreos-lab-clean --no-provision"
    (virt / "fail-restore").touch()
    with pytest.raises(VagrantError, match="does not exist for core-02"):
        snaps.restore("clean")
    gone = runner.invoke(app, ["snapshot", "delete", "clean", "--lab", str(vbox)])
    assert gone.exit_code == 0, gone.output
    assert (virt / "vagrant.log").read_text().splitlines()[-1] == "snapshot delete coreos-lab-clean"


def test_this_vagrant_has_the_commands_the_virtualbox_path_runs() -> None:
    """What this machine allows of VirtualBox (it has none): the real Vagrant knows each command and its form."""
    import subprocess

    real = require_binary("vagrant")
    for sub in ("save", "restore", "delete"):
        out = subprocess.run([real, "snapshot", sub, "--help"], capture_output=True, text=True, timeout=120)
        assert f"vagrant snapshot {sub} [options] [vm-name] <name>" in out.stdout, out.stdout
    restore = subprocess.run([real, "snapshot", "restore", "--help"], capture_output=True, text=True, timeout=120)
    assert "--[no-]provision" in restore.stdout
    for cmd in ("suspend", "resume"):
        out = subprocess.run([real, cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert out.stdout.startswith(f"Usage: vagrant {cmd} "), out.stdout
