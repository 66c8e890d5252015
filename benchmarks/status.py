"""``coreos-lab status`` benchmark on real nodes: 3 nspawn containers (systemd, sshd, one etcd cluster).

Boots the deploy rig (``tests/nspawn/deploy_rig.py``, needs root and the cached rootfs), deploys a few units,
then prints medians of:

1. ``cluster_status`` in-process over open connections (the floor: probe, etcd health, unit states);
2. the same with fresh connections each time (SSH handshakes included);
3. the CLI: ``coreos-lab status`` through the warm mux, and with ``--no-persist``;
4. a sequential baseline: the same checks node after node (what parallel fan-out saves);
5. ``status`` with one node powered off (its SSH connect has to fail first).

Usage: sudo .venv/bin/python benchmarks/status.py [--iterations 7]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.cluster import Cluster
from coreos_lab.health import cluster_status
from coreos_lab.systemd import SystemdClient
from coreos_lab.unitfile import UnitFile
from coreos_lab.units import systemd_backend
from tests.nspawn.deploy_rig import DeployRig
from tests.nspawn.rig import prerequisites

UNITS = {
    "myapp.service": "[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello World; sleep 1; done'\n",
    "pair-a.service": "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=pair-*.service\n",
    "pair-b.service": "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=pair-*.service\n",
    "everywhere.service": "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n",
}


def median_time(fn: Callable[[], object], iterations: int) -> float:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sequential_status(cluster: Cluster) -> None:
    """The naive shape: each node in turn (probe, etcd status, unit states), no fan-out."""
    from coreos_lab.etcd import EtcdClient

    names = list(UNITS)
    for name in cluster.names:
        runner = cluster.runner(name)
        runner.run("cat /etc/machine-id; cat /etc/coreos-lab/metadata 2>/dev/null; hostname -I").check()
        session, base = cluster.http_base(name, 2379)
        EtcdClient(base, session=session).status()
        SystemdClient(runner).show_many(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=7)
    args = parser.parse_args()
    missing = prerequisites()
    if missing:
        raise SystemExit(f"benchmark needs: {', '.join(missing)}")
    iters = args.iterations
    rows: list[tuple[str, float]] = []
    runtime = Path(tempfile.mkdtemp(prefix="coreos-lab-bench-run-"))
    with DeployRig(3) as rig:
        rows.append(("rig boot (3 containers + etcd)", rig.boot_seconds))
        config = rig.ssh_config()
        inv = runtime / "inventory"
        inv.write_text(config)
        with Cluster.from_ssh_config(config) as cluster:
            units = [UnitFile.parse(text, name=name) for name, text in UNITS.items()]
            start = time.perf_counter()
            outcomes = systemd_backend.deploy(cluster, units, timeout=30)
            rows.append(("deploy 4 units in-process (1 global)", time.perf_counter() - start))
            assert all(o.ok for o in outcomes), [o.to_json() for o in outcomes]
            report = cluster_status(cluster)
            assert report.exit_code == 0, report.problems
            rows.append(("status in-process, open connections", median_time(lambda: cluster_status(cluster), iters)))
            rows.append(("sequential checks, open connections", median_time(lambda: sequential_status(cluster), iters)))

        def cold() -> None:
            with Cluster.from_ssh_config(config) as c:
                cluster_status(c)

        rows.append(("status in-process, fresh connections", median_time(cold, iters)))
        exe = str(Path(sys.executable).with_name("coreos-lab"))
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "COREOS_LAB_MUX_IDLE": "120"}
        env.pop("COREOS_LAB_NO_PERSIST", None)

        def cli(*extra: str) -> None:
            proc = subprocess.run([exe, "status", "--inventory", str(inv), *extra], capture_output=True, env=env)
            if proc.returncode not in (0, 1, 4, 5):
                raise SystemExit(f"status failed: {proc.returncode} {proc.stderr.decode()[-300:]}")

        try:
            cli()  # starts the mux
            rows.append(("CLI status, mux warm", median_time(cli, iters)))
            rows.append(("CLI status, --no-persist", median_time(lambda: cli("--no-persist"), iters)))
            rows.append(
                (
                    "CLI start-up alone (--version)",
                    median_time(lambda: subprocess.run([exe, "--version"], capture_output=True, check=True), iters),
                )
            )
            off = rig.power_off(rig.nodes[2])
            rows.append((f"power off {rig.nodes[2].name}", off))
            rows.append(("CLI status, one node down, --no-persist", median_time(lambda: cli("--no-persist"), 3)))
        finally:
            with contextlib.suppress(Exception):
                from coreos_lab.mux import MuxClient

                os.environ["XDG_RUNTIME_DIR"] = str(runtime)
                MuxClient(config, idle=120).shutdown()
            shutil.rmtree(runtime, ignore_errors=True)

    width = max(len(label) for label, _ in rows)
    print()
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds * 1000:9.1f} ms")
    by = dict(rows)
    floor = by["status in-process, open connections"]
    print(f"\nsequential / parallel (open connections):  {by['sequential checks, open connections'] / floor:5.2f}")
    ratio = by["CLI status, --no-persist"] / by["CLI status, mux warm"]
    print(f"CLI --no-persist / CLI mux warm:            {ratio:5.2f}")


if __name__ == "__main__":
    main()
