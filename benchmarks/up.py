"""`coreos-lab up` vs raw `vagrant up` of the same rendered lab, 1 node and 3 nodes, on real VMs in the rig.

For each size a lab is rendered once (`coreos-lab init`, static bootstrap, the offline coreos-lab/lab box),
then, each from a destroyed lab:

  raw        `vagrant up` (parallel, as Vagrant does by default on libvirt), then the same readiness check
             coreos-lab does, by hand: one `ssh -F <vagrant ssh-config>` probe per node per round until
             etcd-member is active, healthy, with N started members
  coreos-lab `coreos-lab up` (progress, parallel up, bounded wait until healthy)

and prints wall times and coreos-lab's overhead as a share of its wall time (target: <= 10%).

`--compare-box BOX` measures the lab box itself instead: the same lab rendered twice, once on `coreos-lab/lab`
and once on BOX (for instance the box of an earlier recipe, added under another name), each booted from
destroyed by `coreos-lab up` in alternating rounds (`--rounds`, default 2), and prints the medians and the
ratio. This is how the cost of running etcd-member in a container (issue 11, target <= +15% for 3 nodes) is
measured against the box that ran etcd natively:

    vagrant box add --name coreos-lab/lab-before /path/to/the/older/coreos-lab-0.1.0.box
    scripts/vm-rig exec .venv/bin/python benchmarks/up.py --sizes 3 --compare-box coreos-lab/lab-before

`--compare-provision` does the same for one box and two channels: the lab rendered with `--provision ignition`
and with `--provision cloud-config`, alternating rounds, medians and the ratio Ignition / cloud-config.

Needs root and the rig; run it inside the rig's namespace:

    scripts/vm-rig start
    scripts/vm-rig exec .venv/bin/python benchmarks/up.py [--sizes 1,3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.health import ready
from coreos_lab.probe import parse_probe, probe_command

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
    cmd = probe_command(True, etcd_unit="etcd-member.service")
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
        if all(health.values()) and ready({k: v for k, v in health.items() if v}, expected):
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


def up_json(lab: Path) -> dict[str, float]:
    """`coreos-lab up --json` from a destroyed lab: wall time, and coreos-lab's own vagrant/ready split."""
    start = time.monotonic()
    out = run([CLI, "up", "--wait-timeout", "1200", "--json"], lab).stdout
    wall = time.monotonic() - start
    report = json.loads(out)
    if not report.get("ready"):
        raise SystemExit(f"{lab.name}: not ready: {out[-1000:]}")
    return {"wall_s": wall, "vagrant_s": float(report["vagrant_seconds"]), "ready_s": float(report["total_seconds"])}


def compare_boxes(
    size: int, base: Path, other: str, rounds: int
) -> tuple[dict[str, float], dict[str, float], dict[str, object]]:
    """coreos-lab/lab vs ``other``, same lab, alternating rounds; medians and the ratio twin/other."""
    variants = {"twin": ["--box", "coreos-lab/lab"], "other": ["--box", other]}
    return compare(size, base, variants, rounds, ("coreos-lab/lab", other))


def compare(
    size: int, base: Path, variants: dict[str, list[str]], rounds: int, names: tuple[str, str]
) -> tuple[dict[str, float], dict[str, float], dict[str, object]]:
    """Two renderings of the same lab (``variants``: key -> extra `init` arguments), each booted from destroyed
    by `coreos-lab up` in alternating rounds; medians and the ratio first/second."""
    boxes = variants
    labs = {}
    for key, extra in variants.items():
        lab = base / f"cmp{size}-{key}"
        argv = [CLI, "init", str(lab), "--instances", str(size), "--provider", "libvirt", "--box", "coreos-lab/lab"]
        run([*argv, *extra], base)
        labs[key] = lab
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in boxes}
    try:
        for i in range(rounds):
            order = list(boxes) if i % 2 == 0 else list(reversed(boxes))
            for key in order:
                samples[key].append(up_json(labs[key]))
                subprocess.run([CLI, "destroy"], cwd=labs[key], capture_output=True, timeout=600, check=False)
                print(f"round {i + 1} {key}: {json.dumps(samples[key][-1])}", file=sys.stderr, flush=True)
    finally:
        for lab in labs.values():
            subprocess.run([CLI, "destroy"], cwd=lab, capture_output=True, timeout=600, check=False)
    med = {key: {m: statistics.median(s[m] for s in samples[key]) for m in ("wall_s", "vagrant_s", "ready_s")}
           for key in boxes}  # fmt: skip
    first, second = list(variants)
    ratio = round(med[first]["ready_s"] / med[second]["ready_s"], 3)
    report = {"nodes": size, "rounds": rounds, first: names[0], second: names[1],
              f"{first}_median": med[first], f"{second}_median": med[second], "ratio_ready": ratio,
              "samples": samples}  # fmt: skip
    return med[first], med[second], report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3", help="comma-separated node counts (default 1,3)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first boot (box upload)")
    parser.add_argument("--compare-box", metavar="BOX", help="compare coreos-lab/lab against this box instead")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant when comparing")
    parser.add_argument(
        "--compare-provision",
        action="store_true",
        help="time-to-healthy of the same lab provisioned by Ignition vs by cloud-config (issue 13)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/up.py needs root and the rig (see its docstring)")
    results = []
    with tempfile.TemporaryDirectory(prefix="coreos-lab-bench-") as tmp:
        if not args.no_warmup:
            # The first `vagrant up` after the box was added uploads it into the libvirt pool (~30 s):
            # do that once, untimed, so neither side of the comparison pays for it.
            for i, box in enumerate(["coreos-lab/lab", *([args.compare_box] if args.compare_box else [])]):
                warm = Path(tmp) / f"warmup{i}"
                run([CLI, "init", str(warm), "--instances", "1", "--provider", "libvirt", "--box", box], Path(tmp))
                try:
                    run(["vagrant", "up", "--provider=libvirt"], warm)
                finally:
                    subprocess.run(
                        ["vagrant", "destroy", "--force"], cwd=warm, capture_output=True, timeout=600, check=False
                    )
        if args.compare_provision:
            variants = {"ignition": ["--provision", "ignition"], "cloudconfig": ["--provision", "cloud-config"]}
            for size in (int(s) for s in args.sizes.split(",")):
                ig, cc, result = compare(size, Path(tmp), variants, args.rounds, ("ignition", "cloud-config"))
                print(json.dumps(result) if args.json else (
                    f"{size} node(s), {args.rounds} rounds each, medians: Ignition ready after {ig['ready_s']:.0f}s "
                    f"(vagrant {ig['vagrant_s']:.0f}s), cloud-config ready after {cc['ready_s']:.0f}s "
                    f"(vagrant {cc['vagrant_s']:.0f}s): ratio {ig['ready_s'] / cc['ready_s']:.3f}"
                ), flush=True)  # fmt: skip
            return 0
        if args.compare_box:
            for size in (int(s) for s in args.sizes.split(",")):
                tw, ot, result = compare_boxes(size, Path(tmp), args.compare_box, args.rounds)
                print(json.dumps(result) if args.json else (
                    f"{size} node(s), {args.rounds} rounds each, medians: coreos-lab/lab ready after "
                    f"{tw['ready_s']:.0f}s (vagrant {tw['vagrant_s']:.0f}s), {args.compare_box} ready after "
                    f"{ot['ready_s']:.0f}s (vagrant {ot['vagrant_s']:.0f}s): ratio {tw['ready_s'] / ot['ready_s']:.3f}"
                ), flush=True)  # fmt: skip
            return 0
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
