"""The lab's source of truth: ``coreos-lab.toml`` <-> frozen dataclasses, with validation.

Every other file of a lab (Vagrantfile, config.rb, user-data) is rendered from a ``LabConfig``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import tomli_w

from coreos_lab.errors import ConfigError
from coreos_lab.fsutil import atomic_write

CONFIG_NAME: Final = "coreos-lab.toml"
OS_CHOICES: Final = ("flatcar", "coreos")
CHANNELS: Final = ("stable", "beta", "alpha", "lts")
PROVIDERS: Final = ("virtualbox", "libvirt")
BOOTSTRAPS: Final = ("discovery", "static", "self-hosted")
MAX_INSTANCES: Final = 32
MIN_MEMORY: Final = 512
DEFAULT_NETWORK: Final = "192.168.56.0/24"
VBOX_ALLOWED: Final = ipaddress.ip_network("192.168.56.0/21")
NODE_NAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PREFIX_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
META_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the lab as rendered: name (= Vagrant machine name = hostname), private IP, metadata."""

    index: int
    name: str
    ip: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LabConfig:
    """A lab, as stored in ``coreos-lab.toml``. Defaults follow coreos-vagrant where it had one."""

    instances: int = 3
    channel: str = "stable"
    os: str = "flatcar"
    provider: str = "virtualbox"
    box: str | None = None
    box_url: str | None = None
    box_version: str | None = None
    memory: int = 1024
    cpus: int = 1
    name_prefix: str = "core"
    network: str = DEFAULT_NETWORK
    bootstrap: str = "static"
    discovery_url: str | None = None
    cluster_token: str = "coreos-lab"  # noqa: S105 - etcd initial-cluster-token, not a secret
    metadata: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    tls: bool = False
    # coreos-vagrant config.rb variables
    enable_serial_logging: bool = False
    share_home: bool = False
    vm_gui: bool = False
    vb_cpuexecutioncap: int = 100
    shared_folders: Mapping[str, str] = field(default_factory=dict)
    forwarded_ports: Mapping[str, int] = field(default_factory=dict)
    expose_docker_tcp: int | None = None

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        """The lab's nodes: ``<prefix>-01..``, node i at host address 100+i of the network."""
        net = ipaddress.ip_network(self.network, strict=False)
        base = int(net.network_address)
        return tuple(
            NodeSpec(
                index=i,
                name=node_name(self.name_prefix, i),
                ip=str(ipaddress.ip_address(base + 100 + i)),
                metadata=dict(self.metadata.get(node_name(self.name_prefix, i), {})),
            )
            for i in range(1, self.instances + 1)
        )

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise ConfigError(f"no node named {name!r} in this lab (nodes: {', '.join(n.name for n in self.nodes)})")

    def with_changes(self, **changes: Any) -> LabConfig:
        return validate(replace(self, **changes))


def node_name(prefix: str, index: int) -> str:
    """coreos-vagrant's naming: ``"%s-%02d" % (prefix, index)``."""
    return f"{prefix}-{index:02d}"


def validate(cfg: LabConfig) -> LabConfig:
    """Check every field; raise ConfigError with one clear line on the first problem."""
    if not isinstance(cfg.instances, int) or not 1 <= cfg.instances <= MAX_INSTANCES:
        raise ConfigError(f"instances must be between 1 and {MAX_INSTANCES}, got {cfg.instances!r}")
    for fname, value, choices in (
        ("channel", cfg.channel, CHANNELS),
        ("os", cfg.os, OS_CHOICES),
        ("provider", cfg.provider, PROVIDERS),
        ("bootstrap", cfg.bootstrap, BOOTSTRAPS),
    ):
        if value not in choices:
            raise ConfigError(f"{fname} must be one of {', '.join(choices)}, got {value!r}")
    if not isinstance(cfg.memory, int) or cfg.memory < MIN_MEMORY:
        raise ConfigError(f"memory must be at least {MIN_MEMORY} MB, got {cfg.memory!r}")
    if not isinstance(cfg.cpus, int) or not 1 <= cfg.cpus <= 64:
        raise ConfigError(f"cpus must be between 1 and 64, got {cfg.cpus!r}")
    if not isinstance(cfg.name_prefix, str) or not PREFIX_RE.match(cfg.name_prefix):
        raise ConfigError(f"name prefix must be lowercase letters, digits and '-' (max 42), got {cfg.name_prefix!r}")
    try:
        net = ipaddress.ip_network(cfg.network, strict=False)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"network must be an IPv4 CIDR like {DEFAULT_NETWORK}, got {cfg.network!r}") from exc
    if net.version != 4:
        raise ConfigError(f"network must be IPv4, got {cfg.network!r}")
    if net.num_addresses < 100 + cfg.instances + 2:
        raise ConfigError(
            f"network {cfg.network} is too small for {cfg.instances} nodes "
            f"(node i gets host address 100+i; use a /24 or larger)"
        )
    if not 1 <= cfg.vb_cpuexecutioncap <= 100:
        raise ConfigError(f"vb_cpuexecutioncap must be 1..100, got {cfg.vb_cpuexecutioncap!r}")
    if cfg.bootstrap == "discovery" and cfg.discovery_url is not None and not _is_url(cfg.discovery_url):
        raise ConfigError(f"discovery_url must be an http(s) URL, got {cfg.discovery_url!r}")
    names = {node_name(cfg.name_prefix, i) for i in range(1, cfg.instances + 1)}
    for node, meta in cfg.metadata.items():
        if node not in names:
            raise ConfigError(f"metadata names node {node!r}, which is not in this lab")
        for key, value in meta.items():
            if not META_KEY_RE.match(key):
                raise ConfigError(f"metadata key {key!r} of {node} must match [A-Za-z0-9_.-]+")
            if not isinstance(value, str) or any(c in value for c in "\n\r\0,"):
                raise ConfigError(f"metadata value for {node} {key} must be one line without ','")
    for guest, host in cfg.forwarded_ports.items():
        if not str(guest).isdigit() or not isinstance(host, int) or not 1 <= host <= 65535:
            raise ConfigError(f"forwarded_ports must map guest port to host port, got {guest!r} = {host!r}")
    if cfg.expose_docker_tcp is not None and not 1 <= cfg.expose_docker_tcp <= 65535:
        raise ConfigError(f"expose_docker_tcp must be a port, got {cfg.expose_docker_tcp!r}")
    return cfg


def _is_url(value: str) -> bool:
    return bool(re.match(r"^https?://[^\s/]+(/\S*)?$", value))


def to_dict(cfg: LabConfig) -> dict[str, Any]:
    data = asdict(cfg)
    return {k: v for k, v in data.items() if v is not None}


def from_dict(data: Mapping[str, Any], *, source: str = CONFIG_NAME) -> LabConfig:
    known = set(LabConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(unknown)}")
    try:
        cfg = LabConfig(**dict(data))
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    for key in ("metadata", "shared_folders", "forwarded_ports"):
        if not isinstance(getattr(cfg, key), Mapping):
            raise ConfigError(f"{source}: {key} must be a table")
    try:
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from exc


def load(lab_dir: Path) -> LabConfig:
    """Load and validate ``<lab_dir>/coreos-lab.toml``."""
    path = Path(lab_dir) / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found", hint="run 'coreos-lab init' first, or pass --lab DIR") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return from_dict(data, source=str(path))


def save(lab_dir: Path, cfg: LabConfig) -> Path:
    """Write the config atomically, mode 0600 (it may hold a discovery token)."""
    path = Path(lab_dir) / CONFIG_NAME
    header = (
        "# coreos-lab lab configuration: the source of truth for this lab.\n"
        "# Edit it, then run 'coreos-lab render' to re-render Vagrantfile, config.rb and user-data.\n"
    )
    atomic_write(path, header + tomli_w.dumps(to_dict(cfg)), mode=0o600)
    return path


def find_lab_dir(start: Path | None = None) -> Path:
    """The lab directory: $COREOS_LAB_DIR, else the nearest parent of ``start`` holding coreos-lab.toml."""
    env = os.environ.get("COREOS_LAB_DIR")
    if env:
        return Path(env)
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} here or in any parent of {here}", hint="run 'coreos-lab init' or pass --lab DIR"
    )
