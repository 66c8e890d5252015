"""`coreos-lab up` vs raw `vagrant up` of the same rendered lab, 1 node and 3 nodes, on real VMs in the rig.

For each size a lab is rendered once (`coreos-lab init`, static bootstrap, the offline coreos-lab/lab box),
then, each from a destroyed lab:

  raw        `vagrant up` (parallel, as Vagrant does by default on libvirt), then the same readiness check
             coreos-lab does, by hand: one `ssh -F <vagrant ssh-config>` probe per node per round until
             etcd-member is active, healthy, with N started members
  coreos-lab `coreos-lab up` (progress, parallel up, bounded wait until healthy)

and prints wall times and coreos-lab's overhead as a share of its wall time (target: <= 10%).
Needs root and the rig; run it inside the rig's namespace:

    scripts/vm-rig start
    scripts/vm-rig exec .venv/bin/python benchmarks/up.py [--sizes 1,3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.cli.vm import cluster_ready, parse_probe, probe_command

CLI = str(Path(sys.executable).with_name("coreos-lab"))
TIMEOUT = 1800.0


def run(argv: list[str], cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def timed(argv: list[str], cwd: Path) -> float:
    start = time.monotonic()
    run(argv, cwd)
    return time.monotonic() - start


def raw_wait_ready(lab: Path, nodes: list[str], expected: int, timeout: float = 1200.0) -> float:
    """The manual readiness check: vagrant ssh-config once, then ssh probes until the cluster is healthy."""
    start = time.monotonic()
    cfg = lab / "bench-ssh-config"
    cfg.write_text(run(["vagrant", "ssh-config", *nodes], lab).stdout)
    cmd = probe_command("etcd-member.service")
    while time.monotonic() - start < timeout:
        procs = {
            n: subprocess.Popen(
                ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", n, cmd],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for n in nodes
        }
        health = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=60)
            health[name] = parse_probe(name, out) if proc.returncode == 0 else None
        if all(health.values()) and cluster_ready({k: v for k, v in health.items() if v}, expected):
            return time.monotonic() - start
        time.sleep(5)
    raise SystemExit(f"raw: cluster not healthy within {timeout:g}s")


def bench(size: int, base: Path) -> dict[str, float]:
    lab = base / f"bench{size}"
    run([CLI, "init", str(lab), "--instances", str(size), "--provider", "libvirt", "--box", "coreos-lab/lab"], base)
    nodes = [f"core-{i:02d}" for i in range(1, size + 1)]
    try:
        vagrant_up = timed(["vagrant", "up", "--provider=libvirt"], lab)
        raw_ready = raw_wait_ready(lab, nodes, size)
        destroy = timed(["vagrant", "destroy", "--force"], lab)
        coreos_up = timed([CLI, "up", "--wait-timeout", "1200"], lab)
    finally:
        subprocess.run([CLI, "destroy"], cwd=lab, capture_output=True, timeout=600, check=False)
    raw_total = vagrant_up + raw_ready
    return {
        "nodes": size,
        "vagrant_up_s": round(vagrant_up, 1),
        "raw_ready_after_up_s": round(raw_ready, 1),
        "raw_total_s": round(raw_total, 1),
        "coreos_lab_up_s": round(coreos_up, 1),
        "destroy_s": round(destroy, 1),
        "overhead_share": round((coreos_up - raw_total) / coreos_up, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3", help="comma-separated node counts (default 1,3)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first boot (box upload)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/up.py needs root and the rig (see its docstring)")
    results = []
    with tempfile.TemporaryDirectory(prefix="coreos-lab-bench-") as tmp:
        if not args.no_warmup:
            # The first `vagrant up` after the box was added uploads it into the libvirt pool (~30 s):
            # do that once, untimed, so neither side of the comparison pays for it.
            warm = Path(tmp) / "warmup"
            run(
                [CLI, "init", str(warm), "--instances", "1", "--provider", "libvirt", "--box", "coreos-lab/lab"],
                Path(tmp),
            )
            try:
                run(["vagrant", "up", "--provider=libvirt"], warm)
            finally:
                subprocess.run(
                    ["vagrant", "destroy", "--force"], cwd=warm, capture_output=True, timeout=600, check=False
                )
        for size in (int(s) for s in args.sizes.split(",")):
            results.append(bench(size, Path(tmp)))
            if not args.json:
                print(json.dumps(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(
                f"{r['nodes']} node(s): raw vagrant up {r['vagrant_up_s']}s + ready {r['raw_ready_after_up_s']}s"
                f" = {r['raw_total_s']}s; coreos-lab up {r['coreos_lab_up_s']}s; "
                f"overhead {r['overhead_share'] * 100:.1f}% of wall time (target <= 10%)"
            )
        if len(results) >= 2:
            one, many = results[0], results[-1]
            scale = many["coreos_lab_up_s"] / one["coreos_lab_up_s"]
            print(
                f"{many['nodes']} vs {one['nodes']} nodes: coreos-lab up x{scale:.2f}"
                f", raw x{many['raw_total_s'] / one['raw_total_s']:.2f} (parallel boot: well under x{many['nodes']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
