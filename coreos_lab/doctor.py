"""``coreos-lab doctor``: checks of the host a lab runs on, each with what to do about a failure."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coreos_lab.config import VBOX_ALLOWED, LabConfig
from coreos_lab.errors import CoreosLabError

MIN_VAGRANT: Final = (2, 2, 5)  # Flatcar's box metadata needs it
NODE_OVERHEAD_MB: Final = 512  # emulator + page cache per node, measured ~1.5 GB total per 1 GB node


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # a failed warning does not fail doctor

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "warn" if self.warning else "FAIL"


Exec = Callable[[Sequence[str]], tuple[int, str]]


def _exec(argv: Sequence[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: timed out"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_vagrant(run: Exec) -> Check:
    code, out = run(["vagrant", "--version"])
    if code == 127:
        return Check("vagrant", False, "vagrant is not installed", "apt-get install vagrant (or from HashiCorp)")
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if code != 0 or not match:
        return Check("vagrant", False, f"'vagrant --version' failed: {out[:120]}", "reinstall vagrant")
    version = tuple(int(x) for x in match.groups())
    if version < MIN_VAGRANT:
        return Check(
            "vagrant",
            False,
            f"vagrant {'.'.join(map(str, version))} is older than 2.2.5",
            "install a newer vagrant",
        )
    return Check("vagrant", True, f"vagrant {'.'.join(map(str, version))}")


def check_provider(provider: str, run: Exec) -> Check:
    if provider == "libvirt":
        code, out = run(["vagrant", "plugin", "list"])
        if code == 0 and "vagrant-libvirt" in out:
            line = next(line for line in out.splitlines() if "vagrant-libvirt" in line)
            return Check("provider", True, line.strip())
        return Check(
            "provider",
            False,
            "the vagrant-libvirt plugin is missing",
            "apt-get install vagrant-libvirt (or: vagrant plugin install vagrant-libvirt)",
        )
    if shutil.which("VBoxManage") is None:
        return Check(
            "provider",
            False,
            "VirtualBox (VBoxManage) is not installed",
            "install VirtualBox, or use --provider libvirt with the offline lab box",
        )
    code, out = run(["VBoxManage", "--version"])
    return Check("provider", code == 0, f"VirtualBox {out.splitlines()[0] if out else '?'}")


def check_vbox_network(cfg: LabConfig, networks_conf: Path = Path("/etc/vbox/networks.conf")) -> Check:
    if cfg.provider != "virtualbox":
        return Check("host-only network", True, f"{cfg.network} (not VirtualBox: no range limit)")
    net = ipaddress.ip_network(cfg.network, strict=False)
    if net.subnet_of(VBOX_ALLOWED):  # type: ignore[arg-type]
        return Check("host-only network", True, f"{cfg.network} is inside VirtualBox's default 192.168.56.0/21")
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    try:
        for line in networks_conf.read_text().splitlines():
            for token in line.replace("*", " ").split():
                try:
                    allowed.append(ipaddress.ip_network(token, strict=False))
                except ValueError:
                    continue
    except OSError:
        pass
    if any(net.version == a.version and net.subnet_of(a) for a in allowed):  # type: ignore[arg-type]
        return Check("host-only network", True, f"{cfg.network} allowed by {networks_conf}")
    return Check(
        "host-only network",
        False,
        f"{cfg.network} is outside VirtualBox >= 6.1.28's allowed 192.168.56.0/21",
        f"use --network 192.168.56.0/24, or add '* {cfg.network}' to {networks_conf}",
    )


def check_libvirt(provider: str, run: Exec) -> Check:
    if provider != "libvirt":
        return Check("libvirt", True, "not needed for VirtualBox", warning=True)
    uri = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
    code, out = run(["virsh", "-c", uri, "version"])
    if code == 0:
        return Check("libvirt", True, f"{uri} answers")
    last = out.strip().splitlines()[-1] if out.strip() else "no answer"
    return Check(
        "libvirt",
        False,
        f"libvirtd at {uri} does not answer: {last[:100]}",
        "start libvirtd (systemctl start libvirtd), or run 'sudo bash scripts/vm-rig start' for the private rig",
    )


def check_memory(cfg: LabConfig, meminfo: Path = Path("/proc/meminfo")) -> Check:
    need = cfg.instances * (cfg.memory + NODE_OVERHEAD_MB)
    try:
        text = meminfo.read_text()
        match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
        avail = int(match.group(1)) // 1024 if match else 0
    except OSError:
        return Check("memory", False, "cannot read /proc/meminfo", warning=True)
    detail = f"{avail} MB available, {cfg.instances} x ({cfg.memory}+{NODE_OVERHEAD_MB}) MB = {need} MB needed"
    if avail >= need:
        return Check("memory", True, detail)
    return Check("memory", False, detail, "use fewer --instances or less --memory")


def check_kvm(provider: str) -> Check:
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if usable:
        return Check("kvm", True, "/dev/kvm is accessible (hardware acceleration possible)", warning=True)
    return Check(
        "kvm",
        False,
        "/dev/kvm not usable: VMs run software-emulated (slow, ~90 s per node boot)",
        "enable virtualization in firmware or nested virtualization in the hypervisor",
        warning=True,
    )


def check_pickup(lab_dir: Path, cfg: LabConfig) -> list[Check]:
    """Warnings, one per file in ``lab_dir`` that Flatcar's box would pick up unexpectedly (``up`` refuses those)."""
    from coreos_lab.pickup import pickup_problems

    try:
        problems = pickup_problems(lab_dir, cfg)
    except CoreosLabError as exc:
        return [Check("lab files", False, str(exc), "coreos-lab render", warning=True)]
    if not problems:
        return [Check("lab files", True, "nothing unexpected for Flatcar's box to pick up", warning=True)]
    fix = "run 'coreos-lab render' (coreos-lab up refuses to boot until then)"
    return [Check("lab files", False, p, fix if i == 0 else "", warning=True) for i, p in enumerate(problems)]


def run_checks(cfg: LabConfig, run: Exec = _exec, lab_dir: Path | None = None) -> list[Check]:
    """All host checks for a lab like ``cfg``; cheap, read-only. With ``lab_dir``, also :func:`check_pickup`."""
    checks = [
        check_vagrant(run),
        check_provider(cfg.provider, run),
        check_vbox_network(cfg),
        check_libvirt(cfg.provider, run),
        check_memory(cfg),
        check_kvm(cfg.provider),
    ]
    if lab_dir is not None:
        checks += check_pickup(lab_dir, cfg)
    return checks
