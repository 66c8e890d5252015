"""Issue 7 on a real VM: the seed's docker ``myapp.service``, byte for byte, deploys and runs on the lab box.

The lab is the one-node lab of the Ctrl-C test (an interrupted `up`, then `up` again: one boot serves both, to
keep the VM suite's time down). One node (statically bootstrapped: ``deploy`` needs a healthy etcd) in the rig:
box build --add -> init -> (Ctrl-C'd up) -> up ->
``coreos-lab deploy myapp.service`` -> list-units shows it active/running -> the journal shows ``Hello World`` ->
``docker pull busybox`` was served by the node's offline registry mirror (the image digest is the one the box
build wrote) -> undeploy stops it and removes the container -> destroy. Nodes have no internet: without the
mirror the unit's ``ExecStartPre=/usr/bin/docker pull busybox`` fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from coreos_lab import config as labconfig
from coreos_lab.box import recipe, registry
from tests.vm.conftest import Rig
from tests.vm.test_e2e import CLI, coreos_lab, destroy_and_check, files_of, init_lab, on_node, ssh_config, until

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3000)]

# The seed's unit, verbatim (issue 7): not a byte may change.
SEED_MYAPP = """[Unit]
Description=MyApp
After=docker.service
Requires=docker.service

[Service]
TimeoutStartSec=0
ExecStartPre=-/usr/bin/docker kill busybox1
ExecStartPre=-/usr/bin/docker rm busybox1
ExecStartPre=/usr/bin/docker pull busybox
ExecStart=/usr/bin/docker run --name busybox1 busybox /bin/sh -c "while true; do echo Hello World; sleep 1; done"
ExecStop=/usr/bin/docker stop busybox1
"""


def expected_busybox_digest() -> str:
    """The manifest digest the box build preloaded, recomputed from the cached rootfs's busybox-static."""
    busybox = recipe.cache_dir() / f"rootfs-{recipe.rootfs_key()}" / "bin" / "busybox"
    return registry.make_image(busybox).manifest_digest


def test_ctrl_c_during_up_then_up_again_then_the_seed_myapp(rig: Rig, lab_root: Path) -> None:
    """Ctrl-C while `coreos-lab up` boots a node: exit 130 with one line, Vagrant cleans up, the lab's files
    are untouched, and the next `up` brings the lab up healthy; then the seed's myapp.service runs there."""
    built = json.loads(coreos_lab(rig, "box", "build", "--add", "--json", cwd=lab_root, timeout=3600).stdout)
    print(f"box: {built['size_mb']} MB, {built['seconds']}s (cached={built['cached']})")
    digest = expected_busybox_digest()
    lab = lab_root / "myapp"
    init_lab(rig, lab, 1, "static")
    before = files_of(lab)
    try:
        # As a terminal does: SIGINT to the foreground process group (coreos-lab and whatever shares it).
        proc = subprocess.Popen(
            ["ip", "netns", "exec", rig.ns, *CLI, "up", "--verbose"],
            cwd=lab,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 600
        for line in proc.stdout:
            seen.append(line)
            # the domain exists and boots: the middle of `vagrant up`, where an interrupt hurts most
            if "Waiting for domain to get an IP address" in line or "Starting domain" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            raise AssertionError("up ended before the domain was started:\n" + "".join(seen))
        interrupted_at = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=300)
        out = "".join(seen) + rest
        print(f"up interrupted; exited {proc.returncode} after {time.monotonic() - interrupted_at:.0f}s")
        assert proc.returncode == 130, out
        assert "Traceback" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out
        assert "interrupted" in errors[0], out
        assert files_of(lab) == before  # no partial or changed file in the lab
        assert not [p for p in lab.rglob("*") if ".tmp" in p.name], list(lab.rglob("*"))

        start = time.monotonic()
        up = coreos_lab(rig, "up", "--wait-timeout", "1200", cwd=lab, timeout=2400)
        print(f"myapp lab: coreos-lab up (after the interrupted one) {time.monotonic() - start:.0f}s")
        assert "ready after" in up.stdout, up.stdout
        status = rig.run([*CLI, "status"], cwd=lab, timeout=600, check=False)
        assert status.returncode == 0, status.stdout + status.stderr
        cfg = labconfig.load(lab)
        ips = {n.name: n.ip for n in cfg.nodes}
        cfg_file = ssh_config(rig, lab)
        (only,) = ips
        # the box's own pieces: the engine and the offline mirror it is pointed at
        assert json.loads(on_node(rig, cfg_file, only, "cat /etc/docker/daemon.json"))["registry-mirrors"] == [
            "http://127.0.0.1:5000"
        ]
        docker_up = time.monotonic()
        until(
            lambda: on_node(rig, cfg_file, only, "systemctl is-active docker.service", check=False).strip() == "active",
            900,
        )
        print(f"docker.service active {time.monotonic() - docker_up:.0f}s after up returned")

        unit = lab / "myapp.service"
        unit.write_bytes(SEED_MYAPP.encode())
        deployed = time.monotonic()
        out = coreos_lab(rig, "deploy", "--timeout", "600", str(unit), cwd=lab, timeout=900).stdout
        match = re.search(r"Unit myapp\.service launched on (\S+) \((\S+)\)", out)
        assert match, out
        node, ip = match.groups()
        assert ips[node] == ip, out
        rows = json.loads(coreos_lab(rig, "list-units", "--json", cwd=lab, timeout=600).stdout)
        assert [(r["unit"], r["node"], r["active"], r["sub"]) for r in rows] == [
            ("myapp.service", node, "active", "running")
        ], rows
        print(f"myapp.service active/running {time.monotonic() - deployed:.0f}s after deploy started")
        # what the node installed is the seed's file, byte for byte
        assert on_node(rig, cfg_file, node, 'cat "$(systemctl show -P FragmentPath myapp.service)"') == SEED_MYAPP
        until(lambda: "Hello World" in coreos_lab(rig, "journal", "myapp.service", "-n", "20", cwd=lab).stdout, 300)
        print(f"Hello World in the journal {time.monotonic() - deployed:.0f}s after deploy started")
        # the pull was served by the box's mirror: the image is the one the box build wrote
        repo_digests = on_node(
            rig, cfg_file, node, "sudo docker image inspect busybox --format '{{json .RepoDigests}}'"
        ).strip()
        assert json.loads(repo_digests) == [f"busybox@{digest}"], repo_digests
        assert on_node(rig, cfg_file, node, "sudo docker ps --filter name=busybox1 --format '{{.Names}}'").split() == [
            "busybox1"
        ]

        coreos_lab(rig, "undeploy", "myapp.service", cwd=lab, timeout=900)
        assert json.loads(coreos_lab(rig, "list-units", "--json", cwd=lab, timeout=600).stdout) == []
        assert on_node(rig, cfg_file, node, "systemctl is-active myapp.service", check=False).strip() != "active"
        running = on_node(rig, cfg_file, node, "sudo docker ps --filter name=busybox1 --format '{{.Names}}'")
        assert running.split() == [], running
    finally:
        destroy_and_check(rig, lab)
