"""Driving a running VM lab: the manual `vagrant ssh -c` loop vs `coreos-lab exec` / `status`, side by side.

Issue 4's targets on the 3-VM lab: `exec` and `status` >= 10x faster than the manual loop
`vagrant ssh NODE -c 'systemctl status etcd-member'` over the nodes, and repeated calls within 2x of the
open-connection floor (the same command over already-open connections, all nodes in parallel).

Each round runs every contender once, in turn (interleaved, so a neighbour's CPU burst hits all of them),
and the medians over the rounds are compared:

  manual      `vagrant ssh NODE -c 'systemctl status etcd-member'` for each node, one after another
  ssh loop    plain `ssh -F <vagrant ssh-config> NODE systemctl status etcd-member`, one after another
  floor       the same command over connections opened before the clock starts, nodes in parallel
  exec        `coreos-lab exec -- systemctl status etcd-member` (the mux warm: a call made before the rounds)
  status      `coreos-lab status` (mux warm)
  start-up    `coreos-lab --version` (the CLI's own start-up, for reference)

Run inside the rig's namespace, on a lab that is up:

    scripts/vm-rig exec .venv/bin/python benchmarks/vm_drive.py --lab ~/coreos-lab/lab [--rounds 5] [--json]
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.cluster import Cluster
from coreos_lab.runner import CommandResult

UNIT = "etcd-member.service"


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: list[str], cwd: Path, env: dict[str, str], ok_codes: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode not in ok_codes:
        raise SystemExit(f"benchmark: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", type=Path, required=True, help="a lab directory whose VMs are up")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median reported); 3..15")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lab = args.lab.resolve()
    rounds = max(3, min(args.rounds, 15))
    exe = str(Path(sys.executable).with_name("coreos-lab"))
    env = {**os.environ, "COREOS_LAB_MUX_IDLE": "300"}
    env.pop("COREOS_LAB_NO_PERSIST", None)

    cfg_text = subprocess.run(
        ["vagrant", "ssh-config"], cwd=lab, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    nodes = [line.split()[1] for line in cfg_text.splitlines() if line.startswith("Host ")]
    if not nodes:
        raise SystemExit("benchmark: vagrant ssh-config lists no running node")
    with tempfile.NamedTemporaryFile("w", prefix="cl-vm-bench-", suffix=".ssh_config", delete=False) as fh:
        fh.write(cfg_text)
        cfg_path = fh.name
    open_cluster = Cluster.from_ssh_config(cfg_text, persist=False)
    command = f"systemctl status {UNIT}"
    try:

        def check(out: dict[str, object]) -> None:
            bad = [n for n, r in out.items() if not (isinstance(r, CommandResult) and r.ok)]
            if bad:
                raise SystemExit(f"benchmark: {command!r} failed on {bad}")

        check(dict(open_cluster.run_all(command)))  # connections open before any clock starts
        run([exe, "exec", "--", "true"], lab, env)  # starts the mux and its connections
        run([exe, "status"], lab, env)

        def manual() -> None:
            for n in nodes:
                run(["vagrant", "ssh", n, "-c", command], lab, env)

        def ssh_loop() -> None:
            for n in nodes:
                run(["ssh", "-F", cfg_path, "-o", "LogLevel=ERROR", n, command], lab, env)

        contenders: dict[str, Callable[[], None]] = {
            "manual": manual,
            "ssh loop": ssh_loop,
            "floor": lambda: check(dict(open_cluster.run_all(command))),
            "exec": lambda: run([exe, "exec", "--", *command.split()], lab, env),
            "status": lambda: run([exe, "status"], lab, env),
            "start-up": lambda: run([exe, "--version"], lab, env),
        }
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(rounds):
            for name, fn in contenders.items():
                samples[name].append(timed(fn))
    finally:
        open_cluster.close()
        os.unlink(cfg_path)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        "manual / exec (target >= 10)": med["manual"] / med["exec"],
        "manual / status (target >= 10)": med["manual"] / med["status"],
        "exec / floor (target <= 2)": med["exec"] / med["floor"],
        "status / floor (target <= 2)": med["status"] / med["floor"],
        "ssh loop / exec": med["ssh loop"] / med["exec"],
    }
    if args.json:
        print(json.dumps({"nodes": nodes, "rounds": rounds, "seconds": samples, "median": med, "ratios": ratios}))
        return 0
    print(f"{len(nodes)} nodes ({', '.join(nodes)}), {rounds} rounds, command: {command}")
    width = max(map(len, med))
    for name, seconds in med.items():
        spread = " ".join(f"{s:.2f}" for s in samples[name])
        print(f"  {name.ljust(width)}  {seconds:7.3f} s   ({spread})")
    for label, value in ratios.items():
        print(f"{label:32s} {value:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
