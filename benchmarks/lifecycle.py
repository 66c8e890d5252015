"""The lab's lifecycle on VMs, side by side in one run: `up` from nothing, `snapshot save`, `snapshot restore`,
`halt` + `up` (a resume), printed as seconds and as ratios to the `up` that built the lab.

Goals (issue 15): a restore at least 10x faster than that `up`; `halt` + `up` at least 2x faster than it.
Each step is the CLI as a user runs it, timed from outside; between the steps the benchmark writes a key and
deploys a unit, and checks after each step that the cluster is what it should be (a restore that is fast but
wrong is no result): after the restore the key written after the save is gone, after the resume the unit runs.

Needs root and the rig; the lab is made in a temporary directory and destroyed at the end:

    scripts/vm-rig start
    scripts/vm-rig exec .venv/bin/python benchmarks/lifecycle.py [--instances 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLI = [str(Path(sys.executable).with_name("coreos-lab"))]
UNIT_TEXT = "[Service]\nExecStart=/bin/sleep infinity\n"


def cli(lab: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], cwd=lab, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SystemExit(f"benchmark: coreos-lab {' '.join(args)} exited {proc.returncode}: {last[0]}")
    return proc


def timed(lab: Path, *args: str) -> float:
    started = time.monotonic()
    cli(lab, *args)
    took = time.monotonic() - started
    print(f"  coreos-lab {' '.join(args)}: {took:.1f} s", file=sys.stderr)
    return took


def value(lab: Path, key: str) -> str | None:
    rows = json.loads(cli(lab, "etcd", "get", key, "--json").stdout)
    return rows[0]["value"] if rows else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="coreos-lab-lifecycle-", dir="/var/tmp"))
    lab = root / "life"
    init = ["init", str(lab), "--instances", str(args.instances), "--provider", "libvirt", "--box", "coreos-lab/lab"]
    cli(root, *init, "--bootstrap", "static")
    times: dict[str, float] = {}
    try:
        times["up"] = timed(lab, "up", "--wait-timeout", "1800")
        cli(lab, "etcd", "put", "/bench/life", "saved")
        times["snapshot save"] = timed(lab, "snapshot", "save", "bench")
        cli(lab, "etcd", "put", "/bench/life", "after-save")
        times["snapshot restore"] = timed(lab, "snapshot", "restore", "bench")
        if value(lab, "/bench/life") != "saved":
            raise SystemExit("benchmark: after the restore the key is not the saved value: the restore is wrong")
        (lab / "life.service").write_text(UNIT_TEXT)
        cli(lab, "deploy", str(lab / "life.service"))
        halt = timed(lab, "halt")
        resume = timed(lab, "up", "--wait-timeout", "1800")
        times["halt + up"] = halt + resume
        rows = json.loads(cli(lab, "list-units", "--json").stdout)
        if [(r["unit"], r["active"]) for r in rows] != [("life.service", "active")]:
            raise SystemExit(f"benchmark: after halt + up the unit does not run: {rows}")
    finally:
        subprocess.run([*CLI, "destroy"], cwd=lab, capture_output=True, text=True, timeout=1200, check=False)
    result: dict[str, Any] = {
        "instances": args.instances,
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "up_over": {k: round(times["up"] / v, 1) for k, v in times.items() if k != "up"},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.instances}-node VM lab, one run:")
        for name, took in times.items():
            ratio = "" if name == "up" else f"   up / this = {times['up'] / took:.1f}"
            print(f"  {name:<18}{took:>8.1f} s{ratio}")
        print("  goals: up / restore >= 10, up / (halt + up) >= 2")
    ok = times["up"] / times["snapshot restore"] >= 10 and times["up"] / times["halt + up"] >= 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
