"""etcd put+get: coreos-lab's HTTP client vs one `etcdctl` process per operation, measured side by side.

All on loopback: a real etcd 3.4 member and a real sshd (Debian's), both started here and stopped by PID.
Paths measured (one "op" = one put + one get of the same key):

  http-direct    EtcdClient on one kept-alive HTTP connection to etcd
  http-tunnel    EtcdClient through an SSH port forward (coreos_lab.ssh.SSHRunner.forward), as nodes are reached
  etcdctl        `etcdctl put` + `etcdctl get` as local subprocesses (the floor of any per-op process path)
  ssh+etcdctl    `ssh node etcdctl put` + `ssh node etcdctl get`: a new ssh connection per command, the manual way

Prints ops/s per path and the ratios the issue asks for (target: http-tunnel >= 50x ssh+etcdctl).
Bounded: --ops for the HTTP paths (default 200), fewer for the process paths; every call has a timeout.

    .venv/bin/python benchmarks/etcd_ops.py [--ops 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreos_lab.etcd import EtcdClient
from tests.integration.etcd_rig import EtcdCluster


def measure(name: str, ops: int, one: Callable[[int], None]) -> dict[str, float | str | int]:
    one(-1)  # warm-up (connections, caches) outside the timing
    start = time.perf_counter()
    for i in range(ops):
        one(i)
    elapsed = time.perf_counter() - start
    return {"path": name, "ops": ops, "seconds": round(elapsed, 4), "ops_per_s": round(ops / elapsed, 1)}


def http_op(client: EtcdClient, prefix: str) -> Callable[[int], None]:
    def one(i: int) -> None:
        key = f"{prefix}/{i}"
        client.put(key, f"value-{i}")
        kv = client.get(key)
        if kv is None or kv.value != f"value-{i}".encode():
            raise SystemExit(f"http: read back {kv!r} for {key}")

    return one


def etcdctl_op(wrap: list[str], endpoint: str, prefix: str) -> Callable[[int], None]:
    env = {**os.environ, "ETCDCTL_API": "3"}

    def run(args: list[str]) -> str:
        # ssh joins its arguments into one remote shell line; every piece here is a plain word
        argv = [*wrap, "env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={endpoint}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def one(i: int) -> None:
        key = f"{prefix}/{i}"
        run(["put", key, f"value-{i}"])
        out = run(["get", "--print-value-only", key])
        if out.strip() != f"value-{i}":
            raise SystemExit(f"etcdctl: read back {out!r} for {key}")

    return one


def nspawn_paths(ops: int, process_ops: int) -> list[dict[str, float | str | int]]:
    """The same comparison against a booted container: the tunnel ends at the node's own 127.0.0.1:2379."""
    from coreos_lab.ssh import SSHRunner
    from tests.nspawn.rig import NspawnRig, prerequisites

    missing = prerequisites()
    if missing:
        raise SystemExit(f"--nspawn needs: {', '.join(missing)}")
    results = []
    with NspawnRig(n=1) as rig:
        node = rig.nodes[0]
        with SSHRunner(rig.ssh_target(node)) as runner:
            host, port = runner.forward("127.0.0.1", 2379)
            with EtcdClient(f"http://{host}:{port}") as tunneled:
                results.append(measure("node:http-tunnel", ops, http_op(tunneled, "/bench/node-tunnel")))

            def over_runner(i: int) -> None:
                # etcdctl per op, but on the already-open SSH connection (what `coreos-lab exec` would do)
                key = f"/bench/node-runner/{i}"
                base = ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints=http://127.0.0.1:2379"]
                runner.run([*base, "put", key, f"value-{i}"], timeout=30).check()
                out = runner.run([*base, "get", "--print-value-only", key], timeout=30).check().stdout
                if out.strip() != f"value-{i}":
                    raise SystemExit(f"runner: read back {out!r} for {key}")

            results.append(measure("node:runner+etcdctl", process_ops, over_runner))
        ssh = [
            "ssh", "-p", str(node.ssh_port), "-i", str(rig.key_path), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={rig.known_hosts_path}",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR", f"{rig.user}@127.0.0.1",
        ]  # fmt: skip
        results.append(
            measure("node:ssh+etcdctl", process_ops, etcdctl_op(ssh, "http://127.0.0.1:2379", "/bench/node-ssh"))
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="operations for the HTTP paths (default 200)")
    parser.add_argument("--process-ops", type=int, default=20, help="operations for the per-process paths")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--nspawn",
        action="store_true",
        help="also measure against a real node: an nspawn container (root; tests/nspawn/rig.py) running sshd + etcd",
    )
    args = parser.parse_args()
    if not 1 <= args.ops <= 5000 or not 1 <= args.process_ops <= 500:
        parser.error("--ops must be 1..5000 and --process-ops 1..500")
    for binary in ("etcd", "etcdctl"):
        if shutil.which(binary) is None:
            parser.error(f"{binary} is not installed (Debian: etcd-server, etcd-client)")

    results: list[dict[str, float | str | int]] = []
    with EtcdCluster(1) as cluster:
        member = cluster.members[0]
        endpoint = member.url
        with EtcdClient(endpoint) as direct:
            results.append(measure("http-direct", args.ops, http_op(direct, "/bench/direct")))
        results.append(measure("etcdctl", args.process_ops, etcdctl_op([], endpoint, "/bench/etcdctl")))

        have_sshd = os.path.exists("/usr/sbin/sshd") and shutil.which("ssh") is not None
        if have_sshd:
            from coreos_lab.ssh import SSHRunner
            from coreos_lab.sshconfig import SSHTarget
            from tests.integration.sshd import KeyPair, Sshd

            with tempfile.TemporaryDirectory(prefix="bench-etcd-") as tmp:
                keys = KeyPair.create(Path(tmp) / "keys")
                server = Sshd.start(keys, Path(tmp))
                try:
                    target = SSHTarget(
                        "bench",
                        "127.0.0.1",
                        server.port,
                        server.user,
                        identity_files=(str(keys.private),),
                        user_known_hosts_file="/dev/null",
                        strict_host_key_checking="no",
                    )
                    with SSHRunner(target) as runner:
                        host, port = runner.forward("127.0.0.1", member.client_port)
                        with EtcdClient(f"http://{host}:{port}") as tunneled:
                            results.append(measure("http-tunnel", args.ops, http_op(tunneled, "/bench/tunnel")))
                    ssh = [
                        "ssh", "-p", str(server.port), "-i", str(keys.private), "-o", "IdentitiesOnly=yes",
                        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR",
                        f"{server.user}@127.0.0.1",
                    ]  # fmt: skip
                    results.append(measure("ssh+etcdctl", args.process_ops, etcdctl_op(ssh, endpoint, "/bench/ssh")))
                finally:
                    server.stop()

    if args.nspawn:
        results += nspawn_paths(args.ops, args.process_ops)

    by_path = {str(r["path"]): float(r["ops_per_s"]) for r in results}
    ratios = {}
    pairs = [(f, s) for f in ("http-tunnel", "http-direct") for s in ("ssh+etcdctl", "etcdctl")]
    pairs += [("node:http-tunnel", "node:ssh+etcdctl"), ("node:http-tunnel", "node:runner+etcdctl")]
    for fast, slow in pairs:
        if fast in by_path and slow in by_path:
            ratios[f"{fast} / {slow}"] = round(by_path[fast] / by_path[slow], 1)
    if args.json:
        print(json.dumps({"results": results, "ratios": ratios}, indent=2))
    else:
        print(f"{'PATH':<22}{'OPS':>6}{'SECONDS':>10}{'OPS/S':>10}   (op = put + get)")
        for r in results:
            print(f"{r['path']!s:<22}{r['ops']!s:>6}{r['seconds']!s:>10}{r['ops_per_s']!s:>10}")
        for name, ratio in ratios.items():
            print(f"ratio {name}: {ratio}x")
        for name in ("http-tunnel / ssh+etcdctl", "node:http-tunnel / node:ssh+etcdctl"):
            wanted = ratios.get(name)
            if wanted is not None:
                print(f"target {name} >= 50x: {'met' if wanted >= 50 else 'NOT met'} ({wanted}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
