"""SSH layer benchmark: fan-out, connection reuse, and the CLI with and without the persistent mux.

Starts N throwaway sshd endpoints on 127.0.0.1 (Debian's /usr/sbin/sshd, needs root) and prints, measured
side by side in one run:

1. fan-out: ``Cluster.run_all`` over open connections to 30 vs 1 endpoints (target ratio <= 3), and the
   same from cold (handshakes included); plus where the CPU goes (this process vs the sshd endpoints and the
   shells they start), since on loopback all 30 "nodes" run on the client's own cores;
2. one command per fresh connection vs commands over one reused connection;
3. ``coreos-lab exec`` on 3 nodes: mux warm vs ``--no-persist`` vs the open-connection floor (in-process,
   connections already open) vs a plain ``ssh`` loop, plus the CLI's own start-up time.

By default the endpoints log in a throwaway system user whose shell is /bin/sh (created with useradd and
removed at the end): root's login shell on a developer machine may source a heavy ~/.bashrc on every SSH
command (pyenv, rustup: ~70 ms of CPU per command here), which would measure that file, not coreos-lab.
``--login-user current`` measures with the current user anyway.

Usage: sudo .venv/bin/python benchmarks/ssh_fanout.py [--endpoints 30] [--iterations 7]
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
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.cluster import Cluster
from coreos_lab.runner import CommandResult
from coreos_lab.ssh import SSHRunner
from coreos_lab.sshconfig import parse_ssh_config
from tests.integration.sshd import KeyPair, Sshd, start_many

BENCH_USER = "coreoslab-bench"


def median_time(fn: Callable[[], object], iterations: int) -> float:
    """Median wall time of ``fn`` (the machine is shared: the median shrugs off a neighbour's burst)."""
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if os.environ.get("BENCH_VERBOSE"):
        print("  " + " ".join(f"{t * 1000:.1f}" for t in times), file=sys.stderr)
    return statistics.median(times)


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system, including reaped children) of ``roots`` and all their live descendants.

    For the sshd endpoints: the listener, each connection's privilege-separated pair, and (via the
    children times they reaped) every shell a command started. Linux /proc only.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    todo = list(roots)
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # exited meanwhile: its time moved to its parent's cutime
    return total / ticks


def cpu_per_call(fn: Callable[[], object], roots: list[int], calls: int) -> tuple[float, float]:
    """(this process' CPU, the endpoints' CPU) per call of ``fn``, averaged over ``calls`` calls."""
    node0, client0 = tree_cpu_seconds(roots), time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - client0) / calls, (tree_cpu_seconds(roots) - node0) / calls


def check_all_ok(out: dict[str, object]) -> None:
    bad = {k: v for k, v in out.items() if not (isinstance(v, CommandResult) and v.ok)}
    if bad:
        raise SystemExit(f"benchmark: nodes failed: {bad}")


@contextlib.contextmanager
def login_user(mode: str) -> Iterator[str | None]:
    """Yield the login name for the endpoints (None = current user); a throwaway user is removed after."""
    if mode == "current":
        yield None
        return
    if mode != "throwaway":
        yield mode
        return
    subprocess.run(["userdel", BENCH_USER], capture_output=True, check=False)  # leftover of a killed run
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", "-p", "*", BENCH_USER],
        check=True,
        capture_output=True,
    )
    try:
        yield BENCH_USER
    finally:
        subprocess.run(["userdel", BENCH_USER], capture_output=True, check=False)


def config_for(servers: list[Sshd], keys: KeyPair, prefix: str = "node") -> str:
    return "".join(s.ssh_config_block(f"{prefix}-{i + 1:02d}", keys) for i, s in enumerate(servers))


def cli(inv: Path, *args: str, env: dict[str, str]) -> None:
    exe = Path(sys.executable).with_name("coreos-lab")
    proc = subprocess.run(
        [str(exe), "exec", "--inventory", str(inv), *args, "--", "true"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: coreos-lab exec failed: {proc.stderr.strip()}")


def stop_mux(config_text: str, runtime: Path) -> None:
    """Ask the benchmark's mux to exit and wait (bounded) until its process is gone."""
    from coreos_lab.mux import MuxClient

    os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    client = MuxClient(config_text, idle=120)
    if not client.socket_path.exists():  # already gone (ping would start a new one)
        return
    try:
        pid = int(client.ping()["pid"])
        client.shutdown()
    except Exception as exc:  # the benchmark's numbers are still worth printing
        print(f"benchmark: could not stop the mux: {exc}", file=sys.stderr)
        return
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=7, help="per measurement (median reported); max 30")
    parser.add_argument("--login-user", default="throwaway", help="throwaway (default), current, or a user name")
    args = parser.parse_args()
    n = max(2, min(args.endpoints, 64))
    iters = max(3, min(args.iterations, 30))
    if os.geteuid() != 0:
        print("benchmark: needs root (sshd switches to the login user)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    base.chmod(0o755)  # the login user reads authorized_keys under here
    runtime = Path(tempfile.mkdtemp(prefix="cl-bench-rt-"))
    servers: list[Sshd] = []
    rows: list[tuple[str, float]] = []
    try:
        with login_user(args.login_user) as user:
            keys = KeyPair.create(base / "keys")
            t0 = time.perf_counter()
            servers = start_many(keys, n, base, user=user)
            print(f"started {n} sshd endpoints in {time.perf_counter() - t0:.2f}s (login user: {servers[0].user})")

            # 1. fan-out
            text_all = config_for(servers, keys)
            many = Cluster.from_ssh_config(text_all)
            one = Cluster.from_ssh_config(config_for(servers[:1], keys))
            cold_n = time.perf_counter()
            check_all_ok(dict(many.run_all("true")))
            cold_n = time.perf_counter() - cold_n
            cold_1 = time.perf_counter()
            check_all_ok(dict(one.run_all("true")))
            cold_1 = time.perf_counter() - cold_1
            warm_n = median_time(lambda: check_all_ok(dict(many.run_all("true"))), iters)
            warm_1 = median_time(lambda: check_all_ok(dict(one.run_all("true"))), iters)
            # A command with node-side latency, as real node commands have (systemctl, etcdctl): 100 ms.
            work_n = median_time(lambda: check_all_ok(dict(many.run_all("sleep 0.1"))), max(3, iters // 2))
            work_1 = median_time(lambda: check_all_ok(dict(one.run_all("sleep 0.1"))), max(3, iters // 2))
            # Where the time goes: on loopback the 30 "nodes" share this machine's cores with the client, so
            # their per-command work (sshd's session fork, the shell) is serialized here; real nodes each
            # spend it on their own CPU.
            roots_n = [srv.pid for srv in servers]
            client_n, node_n = cpu_per_call(lambda: check_all_ok(dict(many.run_all("true"))), roots_n, 4 * iters)
            client_1, node_1 = cpu_per_call(lambda: check_all_ok(dict(one.run_all("true"))), roots_n[:1], 4 * iters)
            many.close()
            one.close()
            rows += [
                (f"fan-out {n} endpoints, open connections", warm_n),
                ("fan-out 1 endpoint, open connection", warm_1),
                (f"fan-out {n} endpoints, 'sleep 0.1', open connections", work_n),
                ("fan-out 1 endpoint, 'sleep 0.1', open connection", work_1),
                (f"fan-out {n} endpoints, cold (handshakes)", cold_n),
                ("fan-out 1 endpoint, cold", cold_1),
            ]

            # 2. fresh connection per command vs reuse
            target = parse_ssh_config(config_for(servers[:1], keys))["node-01"]

            def fresh() -> None:
                with SSHRunner(target) as r:
                    r.run("true").check()

            reused_runner = SSHRunner(target)
            reused_runner.run("true")
            fresh_t = median_time(fresh, iters)
            reused_t = median_time(lambda: reused_runner.run("true").check(), iters)
            reused_runner.close()
            rows += [("1 command, fresh connection", fresh_t), ("1 command, reused connection", reused_t)]

            # 3. the CLI on 3 nodes
            inv = base / "inventory"
            text3 = config_for(servers[:3], keys, "core")
            inv.write_text(text3)
            env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "COREOS_LAB_MUX_IDLE": "120"}
            env.pop("COREOS_LAB_NO_PERSIST", None)
            three = Cluster.from_ssh_config(text3)
            check_all_ok(dict(three.run_all("true")))
            floor = median_time(lambda: check_all_ok(dict(three.run_all("true"))), iters)
            three.close()
            cli(inv, env=env)  # starts the mux and opens its connections
            warm = median_time(lambda: cli(inv, env=env), iters)
            no_persist = median_time(lambda: cli(inv, "--no-persist", env=env), iters)
            exe = str(Path(sys.executable).with_name("coreos-lab"))
            startup = median_time(lambda: subprocess.run([exe, "--version"], capture_output=True, check=True), iters)
            ssh_bin = shutil.which("ssh")
            ssh_loop = None
            if ssh_bin:

                def loop() -> None:
                    for name in ("core-01", "core-02", "core-03"):
                        subprocess.run([ssh_bin, "-F", str(inv), name, "true"], capture_output=True, check=True)

                ssh_loop = median_time(loop, max(3, iters // 2))
            rows += [
                ("CLI exec 3 nodes, mux warm", warm),
                ("CLI exec 3 nodes, --no-persist", no_persist),
                ("open-connection floor, 3 nodes (in-process)", floor),
                ("CLI start-up alone (coreos-lab --version)", startup),
            ]
            if ssh_loop is not None:
                rows.append(("plain ssh to 3 nodes one after another", ssh_loop))
            stop_mux(inv.read_text(), runtime)
            # Stop the servers (and their sessions running as the login user) before userdel.
            for s in servers:
                s.stop()
            servers = []
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)

    width = max(len(label) for label, _ in rows)
    print()
    for label, seconds in rows:
        print(f"{label.ljust(width)}  {seconds * 1000:9.1f} ms")
    print()
    print(f"fan-out ratio time({n})/time(1), open connections:  {warm_n / warm_1:6.2f}   (target <= 3)")
    print(f"  same, 100 ms of node-side work per command:      {work_n / work_1:6.2f}   (target <= 3)")
    cores = len(os.sched_getaffinity(0))
    bound_n = (client_n + node_n) / cores
    print(f"fan-out ratio time({n})/time(1), cold:              {cold_n / cold_1:6.2f}")
    print(f"CPU per fan-out of 'true': client | endpoints (sshd + shells), {cores} cores shared by both:")
    print(f"  {n:2d} endpoints: {client_n * 1000:6.1f} ms | {node_n * 1000:6.1f} ms")
    print(f"   1 endpoint:  {client_1 * 1000:6.1f} ms | {node_1 * 1000:6.1f} ms")
    print(f"  CPU-bound minimum for {n} endpoints here: {bound_n * 1000:.1f} ms: ratio >= {bound_n / warm_1:.1f}")
    print(f"  with the endpoints' CPU on their own machines (client CPU only): ratio >= {client_n / warm_1:.1f}")
    print(f"fresh connection / reused connection per command:  {fresh_t / reused_t:6.2f}")
    print(f"CLI mux warm / open-connection floor:               {warm / floor:6.2f}   (target <= 2 on the VM rig)")
    print(f"CLI mux warm minus start-up / floor:                {max(warm - startup, 0.0) / floor:6.2f}")
    print(f"CLI --no-persist / mux warm:                        {no_persist / warm:6.2f}")
    if ssh_loop is not None:
        print(f"plain ssh loop / CLI mux warm:                      {ssh_loop / warm:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
