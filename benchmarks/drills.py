"""The four fault drills on a VM lab: detection time, recovery time and lost writes, next to the defaults.

Each drill runs through the CLI (`coreos-lab fault drill NAME --json --lab DIR`), one after another, and its
figures are printed beside what etcd and fleet document as their defaults: etcd's heartbeat interval 100 ms
and election timeout 1000 ms (a leader's loss is noticed after about one election timeout), fleet's
agent_ttl 30 s (a machine's units move after it). What each time measures:

  leader-loss         detection: the others agree on a leader in a newer term; recovery: a write sent after
                      the kill is acknowledged
  partition-minority  detection: the cut-off follower sees no leader; recovery: after the heal it reaches the
                      majority's raft index and reads the last key
  node-loss           detection: the engine gives the powered-off node up; recovery: each of its units is
                      active on another node (the benchmark deploys a unit of its own first and starts the
                      engine if none runs; the unit is removed at the end)
  slow-network        detection: a write slowed by 100 ms or more; recovery: a write as fast as before's p90
                      (also: write latency median/p90 before, during, after 200 ms on the leader's traffic)

Every drill heals what it broke and deletes its keys; a drill that loses an acknowledged write exits 1 and
the benchmark says so. Run on a lab that is up (node-loss powers one node off and on: minutes on VMs):

    scripts/vm-rig exec .venv/bin/python benchmarks/drills.py --lab ~/coreos-lab/lab [--drill NAME] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLI = [str(Path(sys.executable).with_name("coreos-lab"))]
DRILLS = ("leader-loss", "partition-minority", "node-loss", "slow-network")
ETCD_HEARTBEAT_MS, ETCD_ELECTION_MS, FLEET_AGENT_TTL_S = 100, 1000, 30
REFERENCE = {
    "leader-loss": f"etcd election timeout {ETCD_ELECTION_MS} ms (heartbeat {ETCD_HEARTBEAT_MS} ms)",
    "partition-minority": f"etcd election timeout {ETCD_ELECTION_MS} ms",
    "node-loss": f"fleet agent_ttl {FLEET_AGENT_TTL_S} s",
    "slow-network": "200 ms added to the leader's packets",
}
TIMEOUT = {"node-loss": 300}  # the drill's own --timeout; the power-on in its heal comes on top
UNIT = "bench-drill.service"
UNIT_TEXT = "[Service]\nExecStart=/bin/sleep infinity\n"


def cli(lab: Path, *args: str, timeout: float = 1800, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *args], cwd=lab, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode not in ok:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SystemExit(f"benchmark: coreos-lab {' '.join(args)} exited {proc.returncode}: {last[0]}")
    return proc


def drill(lab: Path, name: str) -> dict[str, Any]:
    limit = TIMEOUT.get(name, 120)
    started = time.monotonic()
    proc = cli(lab, "fault", "drill", name, "--json", "--timeout", str(limit), timeout=limit + 1500, ok=(0, 1))
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"benchmark: {name} printed no figures: {proc.stderr.strip()[-300:]}") from None
    data["wall_s"] = round(time.monotonic() - started, 1)
    print(f"{name}: done in {data['wall_s']} s", file=sys.stderr)
    return data


def wait_healthy(lab: Path, limit: float = 900) -> float:
    """Wait until `status` says the cluster is OK (a drill starts from a healthy cluster; node-loss's heal
    powers a node on, and its etcd rejoins minutes later on VMs); returns the seconds waited."""
    started = time.monotonic()
    while True:
        proc = subprocess.run([*CLI, "status"], cwd=lab, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            raise SystemExit(f"benchmark: the cluster was not healthy within {limit:g}s between drills")
        time.sleep(5)


def prepare_node_loss(lab: Path) -> None:
    """A unit of ours to move (a one-target unit: a global one cannot move) and an engine to move it."""
    (lab / UNIT).write_text(UNIT_TEXT)
    cli(lab, "deploy", str(lab / UNIT))
    cli(lab, "engine", "start")


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", type=Path, help="a booted VM lab (coreos-lab up); required")
    parser.add_argument("--drill", action="append", choices=DRILLS, help="only this drill (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.lab is None:
        raise SystemExit("benchmark: --lab DIR is required: the drills run on a booted VM lab (coreos-lab up)")
    lab = args.lab.resolve()
    if not (lab / "coreos-lab.toml").is_file():
        raise SystemExit(f"benchmark: {lab} is not a lab (no coreos-lab.toml); give a booted VM lab with --lab")
    chosen = args.drill or list(DRILLS)
    results = []
    if "node-loss" in chosen:
        prepare_node_loss(lab)
    try:
        for name in chosen:
            waited = wait_healthy(lab)
            if waited > 1:
                print(f"waited {waited:.0f} s for a healthy cluster before {name}", file=sys.stderr)
            try:
                results.append(drill(lab, name))
            except SystemExit as exc:  # one drill that printed no figures does not hide the others'
                print(exc, file=sys.stderr)
                results.append(
                    {
                        "drill": name,
                        "ok": False,
                        "detection_s": None,
                        "recovery_s": None,
                        "lost_writes": 0,
                        "problems": [str(exc)],
                        "figures": {},
                    }
                )
    finally:
        if "node-loss" in chosen:
            cli(lab, "undeploy", UNIT, ok=(0, 1))
    if args.json:
        print(json.dumps({"lab": str(lab), "drills": results}, indent=2))
        return 0 if all(r["ok"] for r in results) else 1
    print(f"VM lab {lab}: {len(results)} drill(s)")
    print(f"  {'drill':<20}{'detection':>11}{'recovery':>11}{'lost writes':>13}   reference")
    for r in results:
        name = r["drill"]
        print(
            f"  {name:<20}{fmt(r['detection_s']):>11}{fmt(r['recovery_s']):>11}{r['lost_writes']:>13}   "
            f"{REFERENCE[name]}"
        )
        if name == "slow-network" and r["figures"]:
            f = r["figures"]
            said = ", ".join(
                f"{when} {f[f'latency_{when}']['median_ms']}/{f[f'latency_{when}']['p90_ms']} ms"
                for when in ("before", "during", "after")
            )
            print(f"  {'':<20}write latency median/p90: {said}")
        for problem in r["problems"]:
            print(f"  {'':<20}problem: {problem}")
    lost = sum(r["lost_writes"] for r in results)
    print(f"  lost writes in all: {lost}; every drill ok: {'yes' if all(r['ok'] for r in results) else 'NO'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
