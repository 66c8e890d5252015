"""The lab's source of truth: ``coreos-lab.toml`` <-> frozen dataclasses, with validation.

Every other file of a lab (Vagrantfile, config.rb, cloud-config/<node>.yaml or ignition/<node>.ign) is rendered
from a ``LabConfig`` by :mod:`coreos_lab.render`. Validation here is the first line of defence against values
that would break or inject into the rendered Ruby, YAML or systemd text; the templates' escaping filters are the
second.

>>> cfg = validate(LabConfig(instances=2))
>>> [(n.name, n.ip) for n in cfg.nodes]
[('core-01', '192.168.56.101'), ('core-02', '192.168.56.102')]
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
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
# How a node gets its configuration at first boot: coreos-cloudinit (the seed's recipe) or Ignition.
PROVISIONS: Final = ("cloud-config", "ignition")
MAX_INSTANCES: Final = 32
MIN_MEMORY: Final = 512
MAX_MEMORY: Final = 1024 * 1024
DISCOVERY_SERVICE: Final = "https://discovery.etcd.io"  # the public v2 discovery service (deprecated)
DISCOVERY_SERVICE_ENV: Final = "COREOS_LAB_DISCOVERY_SERVICE"
DEFAULT_NETWORK: Final = "192.168.56.0/24"
VBOX_ALLOWED: Final = ipaddress.ip_network("192.168.56.0/21")
# \Z, not $: "$" also matches before a final newline, which would let "core\n" pass.
NODE_NAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
PREFIX_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?\Z")
META_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
BOX_VERSION_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
# RFC 3986 characters only: a discovery URL lands in a systemd Environment= line inside YAML, where a quote,
# a backslash or a space would need a second layer of escaping that nobody should have to reason about.
URL_RE: Final = re.compile(r"^https?://[A-Za-z0-9._~-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*)?\Z")
# Characters that end a line for some YAML (1.1 counts NEL and U+2028/9) or Ruby reader, or that no value needs.
_FORBIDDEN_CHARS: Final = frozenset([chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"])


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node of the lab as rendered: name (= Vagrant machine name = hostname), private IP, metadata."""

    index: int
    name: str
    ip: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LabConfig:
    """A lab, as stored in ``coreos-lab.toml``. Defaults follow coreos-vagrant where it had one.

    ``box``/``box_url`` of None mean "the OS's default box for the channel"; ``box_version`` of None means
    the newest (coreos-vagrant's ``$image_version = "current"``).
    """

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
    provision: str = "cloud-config"
    # The user's own Ignition configs merged into every node's (provision "ignition"): paths relative to the lab
    # directory, or absolute. A list in the TOML, a tuple here.
    ignition_merge: tuple[str, ...] = ()
    # coreos-vagrant config.rb variables
    enable_serial_logging: bool = False
    share_home: bool = False
    vm_gui: bool = False
    vb_cpuexecutioncap: int = 100
    shared_folders: Mapping[str, str] = field(default_factory=dict)
    forwarded_ports: Mapping[str, int] = field(default_factory=dict)
    expose_docker_tcp: int | None = None
    # Derived, not a setting: ``<prefix>-01..``, node i at host address 100+i of the network. Computed once
    # here (every rendered file walks it); () while the fields that place the nodes are not valid yet.
    nodes: tuple[NodeSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.ignition_merge, list):  # as tomllib reads it: kept as a tuple so configs compare equal
            object.__setattr__(self, "ignition_merge", tuple(self.ignition_merge))
        object.__setattr__(self, "nodes", _place_nodes(self))

    def node(self, name: str) -> NodeSpec:
        """The node called ``name``; ConfigError if the lab has none."""
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise ConfigError(f"no node named {name!r} in this lab (nodes: {', '.join(n.name for n in self.nodes)})")

    def with_changes(self, **changes: Any) -> LabConfig:
        """A validated copy with some fields changed."""
        return validate(replace(self, **changes))


# The fields coreos-lab.toml holds (``nodes`` is derived from them).
SETTINGS: Final = frozenset(f.name for f in fields(LabConfig) if f.init)


def node_name(prefix: str, index: int) -> str:
    """coreos-vagrant's naming: ``"%s-%02d" % (prefix, index)``."""
    return f"{prefix}-{index:02d}"


def _place_nodes(cfg: LabConfig) -> tuple[NodeSpec, ...]:
    if not (_is_int(cfg.instances) and 1 <= cfg.instances <= MAX_INSTANCES and isinstance(cfg.name_prefix, str)):
        return ()
    try:
        base = int(ipaddress.ip_network(cfg.network, strict=False).network_address)
        ips = [str(ipaddress.ip_address(base + 100 + i)) for i in range(1, cfg.instances + 1)]
    except (TypeError, ValueError):
        return ()
    metadata = cfg.metadata if isinstance(cfg.metadata, Mapping) else {}
    specs = []
    for i, ip in enumerate(ips, start=1):
        name = node_name(cfg.name_prefix, i)
        meta = metadata.get(name)
        specs.append(NodeSpec(index=i, name=name, ip=ip, metadata=dict(meta) if isinstance(meta, Mapping) else {}))
    return tuple(specs)


def _clean_text(value: object) -> bool:
    """A non-empty string on one line, free of control characters and Unicode line separators."""
    return isinstance(value, str) and value != "" and not any(c in _FORBIDDEN_CHARS for c in value)


def validate(cfg: LabConfig, *, draft: bool = False, discovery_endpoint: str | None = None) -> LabConfig:
    """Check every field; raise ConfigError with one clear line on the first problem.

    ``draft=True`` accepts a discovery/self-hosted config whose discovery_url is not fetched yet (``init``
    checks the user's input before it talks to any network); a self-hosted draft then needs the
    ``discovery_endpoint`` its token will be created on.
    """
    _check_ints(cfg)
    for fname, value, choices in (
        ("channel", cfg.channel, CHANNELS),
        ("os", cfg.os, OS_CHOICES),
        ("provider", cfg.provider, PROVIDERS),
        ("bootstrap", cfg.bootstrap, BOOTSTRAPS),
        ("provision", cfg.provision, PROVISIONS),
    ):
        if value not in choices:
            raise ConfigError(f"{fname} must be one of {', '.join(choices)}, got {value!r}")
    if not isinstance(cfg.name_prefix, str) or not PREFIX_RE.match(cfg.name_prefix):
        raise ConfigError(f"name prefix must be lowercase letters, digits and '-' (max 42), got {cfg.name_prefix!r}")
    _check_network(cfg)
    _check_box(cfg)
    _check_bootstrap(cfg, draft=draft, endpoint=discovery_endpoint)
    _check_metadata(cfg)
    _check_provision(cfg)
    _check_vagrant_vars(cfg)
    return cfg


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(cfg: LabConfig) -> None:
    if not _is_int(cfg.instances) or not 1 <= cfg.instances <= MAX_INSTANCES:
        raise ConfigError(f"instances must be between 1 and {MAX_INSTANCES}, got {cfg.instances!r}")
    if not _is_int(cfg.memory) or not MIN_MEMORY <= cfg.memory <= MAX_MEMORY:
        raise ConfigError(f"memory must be at least {MIN_MEMORY} MB, got {cfg.memory!r}")
    if not _is_int(cfg.cpus) or not 1 <= cfg.cpus <= 64:
        raise ConfigError(f"cpus must be between 1 and 64, got {cfg.cpus!r}")
    if not _is_int(cfg.vb_cpuexecutioncap) or not 1 <= cfg.vb_cpuexecutioncap <= 100:
        raise ConfigError(f"vb_cpuexecutioncap must be 1..100, got {cfg.vb_cpuexecutioncap!r}")
    for fname in ("tls", "enable_serial_logging", "share_home", "vm_gui"):
        if not isinstance(getattr(cfg, fname), bool):
            raise ConfigError(f"{fname} must be true or false, got {getattr(cfg, fname)!r}")


def _check_network(cfg: LabConfig) -> None:
    if not isinstance(cfg.network, str):
        raise ConfigError(f"network must be an IPv4 CIDR like {DEFAULT_NETWORK}, got {cfg.network!r}")
    try:
        net = ipaddress.ip_network(cfg.network, strict=False)
    except ValueError as exc:
        raise ConfigError(f"network must be an IPv4 CIDR like {DEFAULT_NETWORK}, got {cfg.network!r}") from exc
    if net.version != 4:
        raise ConfigError(f"network must be IPv4, got {cfg.network!r}")
    if net.num_addresses < 100 + cfg.instances + 2:
        raise ConfigError(
            f"network {cfg.network} is too small for {cfg.instances} nodes "
            f"(node i gets host address 100+i; use a /24 or larger)"
        )


def _check_box(cfg: LabConfig) -> None:
    if cfg.box is not None and (not _clean_text(cfg.box) or " " in cfg.box):
        raise ConfigError(f"box must be a box name without spaces or control characters, got {cfg.box!r}")
    if cfg.box_url is not None and (not _clean_text(cfg.box_url) or " " in cfg.box_url):
        raise ConfigError(f"box_url must be a URL or path without spaces, got {cfg.box_url!r}")
    if cfg.box_version is not None and (
        not isinstance(cfg.box_version, str) or not BOX_VERSION_RE.match(cfg.box_version)
    ):
        raise ConfigError(f"box_version must be a version like 3975.2.0, got {cfg.box_version!r}")


def _check_bootstrap(cfg: LabConfig, *, draft: bool, endpoint: str | None) -> None:
    if not isinstance(cfg.cluster_token, str) or not TOKEN_RE.match(cfg.cluster_token):
        raise ConfigError(f"cluster_token must match [A-Za-z0-9_.-]{{1,64}}, got {cfg.cluster_token!r}")
    if cfg.discovery_url is not None and (
        not isinstance(cfg.discovery_url, str) or not URL_RE.match(cfg.discovery_url)
    ):
        raise ConfigError(f"discovery_url must be a plain http(s) URL, got {cfg.discovery_url!r}")
    if cfg.bootstrap in ("discovery", "self-hosted") and cfg.discovery_url is None and not draft:
        raise ConfigError(
            f"bootstrap {cfg.bootstrap} needs a discovery_url",
            hint="run 'coreos-lab init --force' to fetch one, set discovery_url, or use bootstrap = \"static\"",
        )
    if cfg.bootstrap == "self-hosted" and cfg.discovery_url is None and draft and not endpoint:
        raise ConfigError("--bootstrap self-hosted needs --discovery-endpoint URL (an etcd serving the v2 API)")


def _check_metadata(cfg: LabConfig) -> None:
    if not isinstance(cfg.metadata, Mapping):
        raise ConfigError("metadata must be a table of node tables")
    names = {n.name for n in cfg.nodes}
    for node, meta in cfg.metadata.items():
        if node not in names:
            raise ConfigError(f"metadata names node {node!r}, which is not in this lab")
        if not isinstance(meta, Mapping):
            raise ConfigError(f'metadata for {node} must be a table of key = "value"')
        for key, value in meta.items():
            if not isinstance(key, str) or not META_KEY_RE.match(key):
                raise ConfigError(f"metadata key {key!r} of {node} must match [A-Za-z0-9_.-]+")
            # ',' separates pairs in fleet's metadata string; control characters have no business here.
            if not _clean_text(value) or "," in value:
                raise ConfigError(
                    f"metadata value for {node} {key} must be a non-empty line without ',' or control characters"
                )


def _check_provision(cfg: LabConfig) -> None:
    if cfg.provision == "ignition" and cfg.os != "flatcar":
        raise ConfigError(
            f"provision ignition needs os flatcar, got {cfg.os!r}",
            hint="Container Linux read Ignition spec 2 configs; coreos-lab renders spec 3 for Flatcar",
        )
    merges = cfg.ignition_merge
    if not isinstance(merges, tuple) or not all(_clean_text(m) for m in merges):
        raise ConfigError(f"ignition_merge must be a list of file paths, got {merges!r}")
    if merges and cfg.provision != "ignition":
        raise ConfigError(
            'ignition_merge (--ignition-merge) needs provision = "ignition" (--provision ignition): '
            "a cloud-config lab merges no Ignition"
        )
    twice = sorted({m for m in merges if merges.count(m) > 1})
    if twice:
        raise ConfigError(f"ignition_merge lists {twice[0]} twice")


def _check_vagrant_vars(cfg: LabConfig) -> None:
    if not isinstance(cfg.shared_folders, Mapping):
        raise ConfigError("shared_folders must be a table of host path = guest path")
    for host, guest in cfg.shared_folders.items():
        if not _clean_text(host) or not _clean_text(guest):
            raise ConfigError(f"shared_folders must map host path to guest path, got {host!r} = {guest!r}")
    if not isinstance(cfg.forwarded_ports, Mapping):
        raise ConfigError("forwarded_ports must be a table of guest port = host port")
    for guest_port, host_port in cfg.forwarded_ports.items():
        if not (str(guest_port).isdigit() and 1 <= int(guest_port) <= 65535 and _is_int(host_port)) or not (
            1 <= host_port <= 65535
        ):
            raise ConfigError(f"forwarded_ports must map guest port to host port, got {guest_port!r} = {host_port!r}")
    if cfg.expose_docker_tcp is not None and (
        not _is_int(cfg.expose_docker_tcp) or not 1 <= cfg.expose_docker_tcp <= 65535 - MAX_INSTANCES
    ):
        raise ConfigError(f"expose_docker_tcp must be a port, got {cfg.expose_docker_tcp!r}")


def to_dict(cfg: LabConfig) -> dict[str, Any]:
    """The config as plain data (None fields left out, since TOML has no null)."""
    return {k: v for k, v in asdict(cfg).items() if v is not None and k in SETTINGS}


def from_dict(data: Mapping[str, Any], *, source: str = CONFIG_NAME) -> LabConfig:
    """Build and validate a LabConfig from parsed TOML; errors name ``source``."""
    unknown = sorted(set(data) - SETTINGS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(unknown)}")
    try:
        cfg = LabConfig(**dict(data))
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    try:
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc


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


TOML_HEADER: Final = (
    "# coreos-lab lab configuration: the source of truth for this lab.\n"
    "# Edit it, then run 'coreos-lab render' to re-render Vagrantfile, config.rb and cloud-config/ (or ignition/).\n"
)


def dumps(cfg: LabConfig) -> str:
    """The text of ``coreos-lab.toml`` for ``cfg`` (header comment included)."""
    return TOML_HEADER + tomli_w.dumps(to_dict(cfg))


def save(lab_dir: Path, cfg: LabConfig) -> Path:
    """Write the config atomically, mode 0600 (it may hold a discovery token)."""
    path = Path(lab_dir) / CONFIG_NAME
    atomic_write(path, dumps(cfg), mode=0o600)
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
