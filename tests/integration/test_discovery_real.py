"""Bootstrap modes against Debian's real etcd 3.4 on loopback.

- self-hosted: ``coreos-lab init --bootstrap self-hosted`` creates a token on a real etcd (v2 API), and three
  real etcd members started with the rendered user-data's drop-in environment join through it;
- static: three real etcd members started with the rendered ETCD_INITIAL_CLUSTER form one cluster;
- an etcd without the v2 API gives a one-line error and no files.

The lab's network is a random 127.x.y.0/24, so the rendered node IPs (127.x.y.101..) are loopback addresses.
The only change made to the rendered environment: the shared ``http://127.0.0.1:2379`` client listener (one
per VM in a real lab) becomes a free port per member, since here all members share one loopback.

The rendered ports 2379/2380 are fixed, and another test's etcd may hold them on 0.0.0.0; so where we may
(root, ``unshare``), each cluster scenario runs in a private network namespace of its own (only ``lo``),
via ``python -m tests.integration.test_discovery_real SCENARIO DIR``, which prints a JSON summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from coreos_lab.config import load as config_load
from coreos_lab.discovery import RetryPolicy, create_self_hosted
from coreos_lab.errors import DiscoveryError
from tests.conftest import require_binary
from tests.integration.etcd_rig import ETCD, EtcdCluster, EtcdMember, free_port
from tests.unit.test_render import parse_unit, unquote_env

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).parent / "coreos-lab"


def rendered_env(lab: Path, node: str) -> dict[str, str]:
    doc = yaml.safe_load((lab / "cloud-config" / f"{node}.yaml").read_text())
    unit = next(u for u in doc["coreos"]["units"] if u["name"] == "etcd-member.service")
    (dropin,) = unit["drop_ins"]
    pairs = [unquote_env(v) for k, v in parse_unit(dropin["content"])["Service"] if k == "Environment"]
    return dict(pairs)


class RenderedMember:
    """An etcd process configured only by a rendered drop-in's environment (plus its data dir)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.name = env["ETCD_NAME"]
        self.local_url = f"http://127.0.0.1:{free_port()}"
        listen = env["ETCD_LISTEN_CLIENT_URLS"].split(",")
        assert "http://127.0.0.1:2379" in listen
        env = dict(env)
        env["ETCD_LISTEN_CLIENT_URLS"] = ",".join(u for u in listen if u != "http://127.0.0.1:2379") + (
            f",{self.local_url}"
        )
        env["ETCD_DATA_DIR"] = str(workdir / f"{self.name}.etcd")
        env["ETCD_LOG_LEVEL"] = "warn"
        self.log = workdir / f"{self.name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [ETCD], env={**base, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def healthy(self) -> bool:
        try:
            resp = requests.get(self.local_url + "/health", timeout=1)
            return bool(resp.ok and resp.json().get("health") == "true")
        except (requests.RequestException, ValueError):
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@contextlib.contextmanager
def rendered_cluster(lab: Path, nodes: list[str], workdir: Path) -> Iterator[list[RenderedMember]]:
    members: list[RenderedMember] = []
    try:
        for node in nodes:
            members.append(RenderedMember(rendered_env(lab, node), workdir))
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not all(m.healthy() for m in members):
            if any(m.proc.poll() is not None for m in members):
                break
            time.sleep(0.3)
        if not all(m.healthy() for m in members):
            tails = {m.name: m.log.read_text(errors="replace")[-600:] for m in members}
            raise AssertionError(f"rendered etcd members did not become healthy: {tails}")
        yield members
    finally:
        for member in members:
            member.stop()


def loopback_network() -> str:
    # A random 127.x.y.0/24 so parallel runs (and anything on 127.0.0.1) do not collide on ports 2379/2380.
    return f"127.{random.randint(20, 250)}.{random.randint(1, 250)}.0/24"


def coreos_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREOS_LAB_")}
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def discovery_etcd() -> Iterator[EtcdMember]:
    require_binary("etcd")
    with EtcdCluster(1) as cluster:
        yield cluster.members[0]


def members_of(url: str) -> list[str]:
    data = requests.get(url + "/v2/members", timeout=5).json()
    return sorted(m["name"] for m in data["members"])


NODES = ["core-01", "core-02", "core-03"]


def scenario_self_hosted(workdir: Path) -> dict[str, object]:
    """A discovery etcd, ``coreos-lab init --bootstrap self-hosted``, then 3 members from the rendered drop-ins."""
    with EtcdCluster(1) as disco:
        endpoint = disco.members[0].url
        proc = coreos_lab(
            "init", "lab", "--bootstrap", "self-hosted", "--discovery-endpoint", endpoint,
            "--network", loopback_network(), "--json", cwd=workdir,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        lab = workdir / "lab"
        # --json shows the token masked (it is a secret); the full URL lives only in coreos-lab.toml.
        assert json.loads(proc.stdout)["discovery_url"].endswith("…")
        url = config_load(lab).discovery_url
        assert url is not None
        with rendered_cluster(lab, NODES, workdir) as members:
            registered = requests.get(url, timeout=5).json()["node"]["nodes"]
            return {
                "endpoint": endpoint,
                "discovery_url": url,
                "toml": (lab / "coreos-lab.toml").read_text(),
                "rendered_discovery": rendered_env(lab, "core-02")["ETCD_DISCOVERY"],
                "members": members_of(members[0].local_url),
                "registered": len([n for n in registered if not n["key"].endswith("_config")]),
            }


def scenario_static(workdir: Path) -> dict[str, object]:
    """``coreos-lab init`` (static), then 3 members from the rendered drop-ins; write on one, read on another."""
    proc = coreos_lab("init", "lab", "--network", loopback_network(), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    with rendered_cluster(workdir / "lab", NODES, workdir) as members:
        put = requests.put(members[0].local_url + "/v2/keys/coreos-lab/probe", data={"value": "ok"}, timeout=5)
        got = requests.get(members[1].local_url + "/v2/keys/coreos-lab/probe?quorum=true", timeout=5)
        return {"members": members_of(members[2].local_url), "put": put.status_code, "got": got.json()["node"]["value"]}


SCENARIOS = {"self-hosted": scenario_self_hosted, "static": scenario_static}


def run_isolated(name: str, workdir: Path) -> dict[str, object]:
    """Run a scenario in a private network namespace when we can make one, else in this one."""
    require_binary("etcd")
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    if os.geteuid() != 0 or unshare is None or not Path(ip).exists():
        return SCENARIOS[name](workdir)
    repo = Path(__file__).resolve().parents[2]
    inner = f"{ip} link set lo up && exec {sys.executable} -m tests.integration.test_discovery_real {name} {workdir}"
    proc = subprocess.run(
        [unshare, "--net", "--", "sh", "-c", inner],
        cwd=repo, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"scenario {name} failed: {proc.stderr[-3000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_create_self_hosted_on_real_etcd(discovery_etcd: EtcdMember) -> None:
    url = create_self_hosted(discovery_etcd.url, 3)
    assert url.startswith(f"{discovery_etcd.url}/v2/keys/discovery/")
    size = requests.get(url + "/_config/size", timeout=5).json()["node"]["value"]
    assert size == "3"


def test_self_hosted_lab_boots_a_real_cluster(tmp_path: Path) -> None:
    result = run_isolated("self-hosted", tmp_path)
    url = str(result["discovery_url"])
    assert url.startswith(f"{result['endpoint']}/v2/keys/discovery/")
    assert f'discovery_url = "{url}"' in str(result["toml"])
    assert result["rendered_discovery"] == url
    assert result["members"] == NODES
    # the token lists the three members that joined through it
    assert result["registered"] == 3


def test_static_lab_boots_a_real_cluster(tmp_path: Path) -> None:
    result = run_isolated("static", tmp_path)
    assert result == {"members": NODES, "put": 201, "got": "ok"}


class NoV2Member(EtcdMember):
    def argv(self) -> list[str]:
        return [a for a in super().argv() if not a.startswith("--enable-v2")]


def test_etcd_without_v2_is_a_clear_error(tmp_path: Path) -> None:
    require_binary("etcd")
    member = NoV2Member("nov2", tmp_path)
    member.start()
    try:
        deadline = time.monotonic() + 20
        while not member.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert member.healthy(), member.log_tail()
        with pytest.raises(DiscoveryError, match="--enable-v2"):
            create_self_hosted(member.url, 3, policy=RetryPolicy(timeout=5, attempts=1))
        proc = coreos_lab("init", "lab", "--bootstrap", "self-hosted", "--discovery-endpoint", member.url, cwd=tmp_path)
        assert proc.returncode == 1
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "--enable-v2" in proc.stderr
        assert "--bootstrap static" in proc.stderr
        assert not (tmp_path / "lab").exists()
    finally:
        member.stop()


if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))))
