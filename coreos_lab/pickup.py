"""What Flatcar's Vagrant box picks up from a lab directory by itself, and the user's own files it picks up.

Flatcar's box ships a Vagrantfile of its own that Vagrant merges *before* the lab's, so its provisioners run
first, for every node, relative to the directory vagrant runs in (the lab directory):

- ``config.ign`` (a file) goes to Ignition at first boot: on VirtualBox as the guest property
  ``/Ignition/Config`` (at most :data:`VBOX_GUESTPROP_MAX` bytes, or ``vagrant up`` fails with
  VERR_TOO_MUCH_DATA); the lab box (libvirt) hands it to QEMU's fw_cfg as ``opt/org.flatcar-linux/config``.
- ``user-data`` (a file, or a directory, uploaded recursively) lands in ``<guest dir>/vagrantfile-user-data``,
  where a path unit applies it once with coreos-cloudinit.

So coreos-lab renders neither name (its per-node cloud-configs live in :data:`CLOUD_CONFIG_DIR`), treats a
root ``user-data`` file as the user's cloud-config for every node (merged into each rendered cloud-config by
:mod:`coreos_lab.render`, after these checks) and a root ``config.ign`` as the user's Ignition config (checked,
never rewritten). Each rendered cloud-config records the sha256 of both, so :func:`pickup_problems` can tell
what changed since the last render. A lab provisioned by Ignition (``provision = "ignition"``) hands each node
its own ``ignition/<node>.ign`` and no cloud-config, so there a root ``user-data`` or ``config.ign`` is refused
outright (:func:`ignition_lab_problems`). Nothing here imports the renderer (jinja2, cryptography): ``up`` and
``doctor`` use it; PyYAML loads only when a root ``user-data`` is parsed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from coreos_lab import config as config_mod
from coreos_lab.config import CONFIG_NAME, LabConfig
from coreos_lab.errors import UsageError

HEADER: Final = f"Generated from {CONFIG_NAME} by `coreos-lab render`: edit {CONFIG_NAME} and re-render, not this file."
CLOUD_CONFIG_DIR: Final = "cloud-config"  # cloud-config/<node>.yaml, rendered
IGNITION_DIR: Final = "ignition"  # ignition/<node>.ign, rendered for provision "ignition" (never a root config.ign)
LEGACY_USER_DATA_DIR: Final = "user-data"  # where coreos-lab rendered them before: the box uploads it whole
ROOT_USER_DATA: Final = "user-data"  # the user's cloud-config for every node (coreos-vagrant's file)
ROOT_IGNITION: Final = "config.ign"  # the user's Ignition config, left to the box
GUEST_USER_DATA_DIRS: Final = {"flatcar": "/var/lib/flatcar-vagrant", "coreos": "/var/lib/coreos-vagrant"}
VBOX_GUESTPROP_MAX: Final = 1024  # bytes VirtualBox keeps in one guest property
CLOUD_CONFIG_HEADER: Final = "#cloud-config"
IGNITION_VERSION_RE: Final = re.compile(r"^3\.[0-9]+\.[0-9]+$")

# What coreos-lab renders into every node's cloud-config, and so refuses from the user's files: the box applies
# the user's user-data raw before ours replaces it, so an etcd section there would start etcd wrongly first.
OWNED_KEYS: Final = {
    "hostname": "coreos-lab names every node after its Vagrant machine",
    "coreos.etcd": "coreos-lab renders each node's etcd settings",
    "coreos.etcd2": "coreos-lab renders each node's etcd settings",
    "coreos.fleet": "coreos-lab renders each node's fleet settings",
}
OWNED_UNITS: Final = ("etcd-member.service", "etcd2.service", "etcd.service", "fleet.service")
SHARED_UNITS: Final = ("docker.service",)  # coreos-lab enables and starts it: a plain enable/start may repeat that
# Paths the user's write_files / Ignition storage.files may not write (ours, or the box's hand-over directory).
# /etc/ssl/certs/coreos-lab/ is tls.FLATCAR_ETCD_DIR (etcd's certificates on Flatcar).
OWNED_PATH_PREFIXES: Final = (
    "/etc/coreos-lab/",
    "/etc/ssl/certs/coreos-lab/",
    *(f"{d}/" for d in GUEST_USER_DATA_DIRS.values()),
)
OWNED_PATHS: Final = ("/etc/hostname",)
UNIT_DIRS: Final = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")

TOP_KEYS: Final = ("hostname", "ssh_authorized_keys", "users", "write_files", "manage_etc_hosts", "coreos")
COREOS_KEYS: Final = ("etcd", "etcd2", "fleet", "flannel", "locksmith", "update", "oem", "units")
PASSTHROUGH_COREOS: Final = ("flannel", "locksmith", "update", "oem")  # copied as written: coreos-lab sets none
UNIT_KEYS: Final = ("name", "runtime", "enable", "content", "command", "mask", "drop_ins")
DROP_IN_KEYS: Final = ("name", "content")
FILE_KEYS: Final = ("path", "content", "encoding", "permissions", "owner")
USER_KEYS: Final = (
    "name",
    "passwd",
    "gecos",
    "homedir",
    "no_create_home",
    "primary_group",
    "groups",
    "no_user_group",
    "ssh_authorized_keys",
    "system",
    "shell",
)
USER_BOOLS: Final = ("no_create_home", "no_user_group", "system")
USER_LISTS: Final = ("groups", "ssh_authorized_keys")
UNIT_COMMANDS: Final = (
    "start",
    "stop",
    "restart",
    "reload",
    "try-restart",
    "reload-or-restart",
    "reload-or-try-restart",
)
ENCODINGS: Final = ("", "b64", "base64", "gz", "gzip", "gz+base64", "gzip+base64", "gz+b64", "gzip+b64")
PERMISSIONS_RE: Final = re.compile(r"^0*[0-7]{1,4}$")
# coreos-cloudinit replaces these in the raw text before it parses it; on Vagrant boxes they are empty.
IP_PLACEHOLDERS: Final = ("$private_ipv4", "$public_ipv4")
EMPTY_PLACEHOLDERS: Final = ("$private_ipv6", "$public_ipv6")

_RECORD_USER_DATA: Final = "# Lab root user-data merged into this file: "
_RECORD_IGNITION: Final = "# Lab root config.ign (Ignition applies it at first boot): "
_RECORD_RE: Final = re.compile(r"^(none|sha256:[0-9a-f]{64})$")


# ---------------------------------------------------------------- the user's cloud-config (root user-data)


@dataclass(frozen=True, slots=True)
class RawScalar:
    """A YAML scalar that is not a string (int, float, bool, null, timestamp), with the text it was written as.

    coreos-cloudinit's Go parser puts a scalar's *text* into string fields (``permissions: 0644`` stays
    ``"0644"``), so the text is what must survive a merge; ``value`` is what PyYAML read.
    """

    value: Any
    text: str


@dataclass(frozen=True, slots=True)
class UserData:
    """The lab root's ``user-data`` file as read: path (for messages), sha256 of the bytes, text, file mode."""

    path: Path
    sha256: str
    text: str
    mode: int = 0o644

    @classmethod
    def from_bytes(cls, raw: bytes, path: Path, mode: int = 0o644) -> UserData:
        """Check that ``raw`` is cloud-config text (UsageError otherwise); nothing is parsed yet."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}): coreos-lab merges a cloud-config") from exc
        first = text.split("\n", 1)[0].removesuffix("\r")
        if first != CLOUD_CONFIG_HEADER:
            raise UsageError(
                f"{path} is not a cloud-config: its first line must be {CLOUD_CONFIG_HEADER!r}, got {first[:40]!r}",
                hint="coreos-lab merges a cloud-config user-data into every node's; "
                "scripts and Ignition JSON (that goes in config.ign) are not merged",
            )
        return cls(path, hashlib.sha256(raw).hexdigest(), text, mode)

    def substituted(self, ip: str) -> str:
        """The text as coreos-cloudinit would read it on node ``ip``: ``$private_ipv4``/``$public_ipv4`` are the
        node's private IP (empty on Flatcar's Vagrant box, so spelled out), the ``_ipv6`` ones empty (as there)."""
        text = self.text
        for name in IP_PLACEHOLDERS:
            text = text.replace(name, ip)
        for name in EMPTY_PLACEHOLDERS:
            text = text.replace(name, "")
        return text

    def parse(self, ip: str) -> UserCloudConfig:
        """Parse and check the cloud-config for the node at ``ip``; UsageError (one line) on any problem."""
        return _check_cloud_config(_load_yaml(self.substituted(ip), self.path), str(self.path))


@dataclass(frozen=True, slots=True)
class UserCloudConfig:
    """The sections of a user's cloud-config that coreos-lab merges, checked and normalised.

    String fields hold strings (a non-string scalar's text), boolean fields bools; ``plain_units`` names
    units the user only enables/starts and coreos-lab may already (docker.service). ``extra_top`` /
    ``extra_coreos`` are sections coreos-lab renders nothing for, copied as written (values may be
    :class:`RawScalar`).
    """

    write_files: tuple[dict[str, Any], ...] = ()
    users: tuple[dict[str, Any], ...] = ()
    ssh_authorized_keys: tuple[str, ...] = ()
    units: tuple[dict[str, Any], ...] = ()
    plain_units: frozenset[str] = frozenset()
    extra_top: dict[str, Any] = field(default_factory=dict)
    extra_coreos: dict[str, Any] = field(default_factory=dict)


def read_user_data(lab_dir: Path) -> UserData | None:
    """The lab root's ``user-data`` file, or None. A directory there is :func:`legacy_user_data`'s business."""
    path = Path(lab_dir) / ROOT_USER_DATA
    if not path.exists() or path.is_dir():
        return None
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file: Flatcar's box would upload it as every node's user-data")
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return UserData.from_bytes(raw, path, mode)


def _load_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML is installed with coreos-lab
        raise UsageError(f"reading {path} needs PyYAML", hint="pip install pyyaml") from exc
    try:
        return yaml.load(text, Loader=_raw_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UsageError(f"{path}: not valid YAML: {exc.problem or exc.context}{where}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc


_LOADER: list[Any] = []


def _raw_loader() -> Any:
    """A SafeLoader whose non-string scalars come out as :class:`RawScalar` (value and text)."""
    if _LOADER:
        return _LOADER[0]
    import yaml

    class RawLoader(yaml.SafeLoader):
        pass

    def wrap(base: Callable[[Any, Any], Any]) -> Callable[[Any, Any], RawScalar]:
        def construct(loader: Any, node: Any) -> RawScalar:
            return RawScalar(base(loader, node), str(node.value))

        return construct

    for tag in ("int", "float", "bool", "null", "timestamp"):
        name = f"tag:yaml.org,2002:{tag}"
        RawLoader.add_constructor(name, wrap(yaml.SafeLoader.yaml_constructors[name]))
    _LOADER.append(RawLoader)
    return RawLoader


def _bad(source: str, where: str, problem: str) -> UsageError:
    return UsageError(f"{source}: {where}: {problem}")


def _unknown_key(source: str, where: str, key: object, allowed: Iterable[str]) -> UsageError:
    allowed = tuple(allowed)
    if isinstance(key, str) and key.replace("-", "_") in allowed:
        return _bad(source, where, f"write {key!r} as {key.replace('-', '_')!r} (coreos-lab reads underscored keys)")
    shown = key.text if isinstance(key, RawScalar) else key
    return _bad(source, where, f"unknown key {shown!r} (known: {', '.join(allowed)})")


def _mapping(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(source, where, f"must be a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _bad(source, where, f"key {key.text if isinstance(key, RawScalar) else key!r} must be a string")
    return value


def _or_empty(value: Any, empty: Any) -> Any:
    """``empty`` for a missing or null value (``coreos:`` with nothing under it), else the value."""
    if value is None or (isinstance(value, RawScalar) and value.value is None):
        return empty
    return value


def _list(value: Any, source: str, where: str) -> list[Any]:
    value = _or_empty(value, [])
    if not isinstance(value, list):
        raise _bad(source, where, f"must be a list, got {_kind(value)}")
    return value


def _string(value: Any, source: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, RawScalar):
        return "" if value.value is None else value.text
    raise _bad(source, where, f"must be a string, got {_kind(value)}")


def _bool(value: Any, source: str, where: str) -> bool:
    if isinstance(value, RawScalar) and isinstance(value.value, bool):
        return value.value
    raise _bad(source, where, f"must be true or false, got {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, RawScalar):
        return f"{type(value.value).__name__ if value.value is not None else 'null'} {value.text!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _plain(value: Any, source: str, where: str) -> Any:
    """A section copied as written: mappings with string keys, lists, strings and other scalars only."""
    if isinstance(value, str | RawScalar):
        return value
    if isinstance(value, list):
        return [_plain(v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _plain(v, source, f"{where}.{k}") for k, v in _mapping(value, source, where).items()}
    raise _bad(source, where, f"unsupported YAML value ({type(value).__name__})")


def owned_path(path: str) -> str | None:
    """Why coreos-lab (or the box's hand-over) owns the node path ``path``, or None when it is free to write."""
    norm = posixpath.normpath(path)
    if norm in OWNED_PATHS:
        return "coreos-lab sets each node's hostname"
    for prefix in OWNED_PATH_PREFIXES:
        if norm + "/" == prefix or norm.startswith(prefix):
            return f"{prefix} is coreos-lab's (or the box's hand-over directory)"
    for unit_dir in UNIT_DIRS:
        for unit in (*OWNED_UNITS, *SHARED_UNITS):
            if (
                norm == f"{unit_dir}/{unit}"
                or norm.startswith(f"{unit_dir}/{unit}.d/")
                or norm == f"{unit_dir}/{unit}.d"
            ):
                return f"coreos-lab configures {unit}"
    return None


def _check_cloud_config(data: Any, source: str) -> UserCloudConfig:
    if data is None or (isinstance(data, RawScalar) and data.value is None):
        return UserCloudConfig()
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a cloud-config must be a YAML mapping, got {_kind(data)}")
    top = _mapping(data, source, "the document")
    for key in top:
        if key in OWNED_KEYS:
            raise _owned(source, key, OWNED_KEYS[key])
        if key not in TOP_KEYS:
            raise _unknown_key(source, "top level", key, TOP_KEYS)
    coreos = _mapping(_or_empty(top.get("coreos"), {}), source, "coreos")
    for key in coreos:
        if f"coreos.{key}" in OWNED_KEYS:
            raise _owned(source, f"coreos.{key}", OWNED_KEYS[f"coreos.{key}"])
        if key not in COREOS_KEYS:
            raise _unknown_key(source, "coreos", key, COREOS_KEYS)
    files = tuple(
        _check_file(f, source, i) for i, f in enumerate(_list(top.get("write_files", []), source, "write_files"))
    )
    users = tuple(_check_user(u, source, i) for i, u in enumerate(_list(top.get("users", []), source, "users")))
    keys = tuple(
        _string(k, source, f"ssh_authorized_keys[{i}]")
        for i, k in enumerate(_list(top.get("ssh_authorized_keys", []), source, "ssh_authorized_keys"))
    )
    units: list[dict[str, Any]] = []
    plain: set[str] = set()
    for i, unit in enumerate(_list(coreos.get("units", []), source, "coreos.units")):
        checked, is_plain = _check_unit(unit, source, i)
        units.append(checked)
        if is_plain:
            plain.add(checked["name"])
    extra_top = {}
    if "manage_etc_hosts" in top:
        extra_top["manage_etc_hosts"] = _string(top["manage_etc_hosts"], source, "manage_etc_hosts")
    extra_coreos = {
        k: _plain(_mapping(_or_empty(coreos[k], {}), source, f"coreos.{k}"), source, f"coreos.{k}")
        for k in coreos
        if k in PASSTHROUGH_COREOS
    }
    return UserCloudConfig(files, users, keys, tuple(units), frozenset(plain), extra_top, extra_coreos)


def _owned(source: str, key: str, why: str) -> UsageError:
    return UsageError(
        f"{source}: {key} is coreos-lab's ({why}); remove it from {Path(source).name}",
        hint="Flatcar's box applies the file raw before coreos-lab's cloud-config: it would run with wrong settings",
    )


def _check_file(entry: Any, source: str, index: int) -> dict[str, Any]:
    where = f"write_files[{index}]"
    entry = _mapping(entry, source, where)
    for key in entry:
        if key not in FILE_KEYS:
            raise _unknown_key(source, where, key, FILE_KEYS)
    if "path" not in entry:
        raise _bad(source, where, "needs a path")
    out = {key: _string(value, source, f"{where}.{key}") for key, value in entry.items()}
    path = out["path"]
    if not path.startswith("/"):
        raise _bad(source, f"{where}.path", f"must be an absolute path, got {path!r}")
    why = owned_path(path)
    if why:
        raise _owned(source, f"{where}.path {path}", why)
    if "permissions" in out and not PERMISSIONS_RE.match(out["permissions"]):
        raise _bad(source, f"{where}.permissions", f"must be octal like 0644, got {out['permissions']!r}")
    if "encoding" in out and out["encoding"] not in ENCODINGS:
        raise _bad(source, f"{where}.encoding", f"must be one of {', '.join(e for e in ENCODINGS if e)}")
    return out


def _check_user(entry: Any, source: str, index: int) -> dict[str, Any]:
    where = f"users[{index}]"
    entry = _mapping(entry, source, where)
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key not in USER_KEYS:
            raise _unknown_key(source, where, key, USER_KEYS)
        if key in USER_BOOLS:
            out[key] = _bool(value, source, f"{where}.{key}")
        elif key in USER_LISTS:
            out[key] = [_string(v, source, f"{where}.{key}[{i}]") for i, v in enumerate(_list(value, source, key))]
        else:
            out[key] = _string(value, source, f"{where}.{key}")
    if not out.get("name"):
        raise _bad(source, where, "needs a name")
    return out


def _check_unit(entry: Any, source: str, index: int) -> tuple[dict[str, Any], bool]:
    where = f"coreos.units[{index}]"
    entry = _mapping(entry, source, where)
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key not in UNIT_KEYS:
            raise _unknown_key(source, where, key, UNIT_KEYS)
        if key in ("runtime", "enable", "mask"):
            out[key] = _bool(value, source, f"{where}.{key}")
        elif key == "drop_ins":
            out[key] = [
                _check_drop_in(d, source, f"{where}.drop_ins[{i}]") for i, d in enumerate(_list(value, source, key))
            ]
        else:
            out[key] = _string(value, source, f"{where}.{key}")
    name = out.get("name", "")
    if not name or "/" in name:
        raise _bad(source, where, f"needs a unit name, got {name!r}")
    where = f"{where} ({name})"
    if "command" in out and out["command"] not in UNIT_COMMANDS:
        raise _bad(source, f"{where}.command", f"must be one of {', '.join(UNIT_COMMANDS)}, got {out['command']!r}")
    if name in OWNED_UNITS:
        raise _owned(source, f"coreos.units {name}", "coreos-lab configures and starts etcd and fleet on every node")
    plain = False
    if name in SHARED_UNITS:
        extra = sorted(set(out) - {"name", "enable", "command"})
        if extra or out.get("enable", True) is not True or out.get("command", "start") != "start":
            raise _owned(
                source,
                f"coreos.units {name} ({', '.join(extra) or 'not enable: true / command: start'})",
                f"coreos-lab enables and starts {name} as the box ships it; only enable: true and command: start may "
                "repeat that",
            )
        plain = True
    return out, plain


def _check_drop_in(entry: Any, source: str, where: str) -> dict[str, str]:
    entry = _mapping(entry, source, where)
    for key in entry:
        if key not in DROP_IN_KEYS:
            raise _unknown_key(source, where, key, DROP_IN_KEYS)
    out = {key: _string(value, source, f"{where}.{key}") for key, value in entry.items()}
    if not out.get("name"):
        raise _bad(source, where, "needs a name")
    return out


# ---------------------------------------------------------------- the user's Ignition config (root config.ign)


@dataclass(frozen=True, slots=True)
class Ignition:
    """The lab root's ``config.ign`` as checked: path, sha256, size, spec version, the lab's provider."""

    path: Path
    sha256: str
    size: int
    version: str
    provider: str

    @property
    def delivery(self) -> str:
        """How the box hands it to Ignition on this provider (for the report)."""
        if self.provider == "virtualbox":
            return "Flatcar's box sets it as the VirtualBox guest property /Ignition/Config"
        return "Flatcar publishes no libvirt box; the lab box hands it to QEMU's fw_cfg as opt/org.flatcar-linux/config"


def read_ignition(lab_dir: Path, provider: str) -> Ignition | None:
    """The lab root's ``config.ign`` checked for ``provider``, or None when there is none; UsageError otherwise."""
    path = Path(lab_dir) / ROOT_IGNITION
    if not path.exists():
        return None
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file: Flatcar's box reads it as the nodes' Ignition config")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return check_ignition(raw, path, provider)


def check_ignition(raw: bytes, path: Path, provider: str) -> Ignition:
    """Check Ignition JSON: an object, ``ignition.version`` 3.x.y, small enough for VirtualBox, no etcd units."""
    source = str(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start}): an Ignition config is JSON") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{source}: an Ignition config is a JSON object, got {type(data).__name__}")
    ignition = data.get("ignition")
    version = ignition.get("version") if isinstance(ignition, dict) else None
    if not isinstance(version, str) or not IGNITION_VERSION_RE.match(version):
        raise UsageError(
            f'{source}: ignition.version must be a spec 3 version string like "3.3.0", got {version!r}',
            hint="Flatcar's Ignition reads spec 3 configs; translate older ones (e.g. with butane)",
        )
    if provider == "virtualbox" and len(raw) > VBOX_GUESTPROP_MAX:
        raise UsageError(
            f"{source} is {len(raw)} bytes: VirtualBox guest properties hold {VBOX_GUESTPROP_MAX} bytes, so "
            "Flatcar's box cannot hand it to Ignition (vagrant up fails with VERR_TOO_MUCH_DATA)",
            hint="keep a small config.ign whose ignition.config.merge points at a URL holding the rest, "
            "or put it in the user-data cloud-config",
        )
    check_ignition_claims(data, source)
    return Ignition(path, hashlib.sha256(raw).hexdigest(), len(raw), version, provider)


def check_ignition_claims(data: Mapping[str, Any], source: str) -> None:
    """UsageError when an Ignition config defines a unit coreos-lab configures or writes a path it owns."""
    _check_ignition_units(data, source)
    _check_ignition_files(data, source)


def _check_ignition_units(data: Mapping[str, Any], source: str) -> None:
    systemd = data.get("systemd", {})
    if not isinstance(systemd, dict):
        raise UsageError(f"{source}: systemd must be an object")
    units = systemd.get("units", [])
    if not isinstance(units, list):
        raise UsageError(f"{source}: systemd.units must be a list")
    for i, unit in enumerate(units):
        if not isinstance(unit, dict) or not isinstance(unit.get("name"), str):
            raise UsageError(f"{source}: systemd.units[{i}] must be an object with a name")
        name = unit["name"]
        if name not in (*OWNED_UNITS, *SHARED_UNITS):
            continue
        defines = [k for k in ("contents", "dropins") if unit.get(k)] + (["mask"] if unit.get("mask") else [])
        if defines:
            raise UsageError(
                f"{source}: systemd.units {name} ({', '.join(defines)}) is coreos-lab's (coreos-lab configures "
                f"{name} on every node); remove it from {Path(source).name}",
                hint="Ignition applies it at first boot, before coreos-lab's cloud-config",
            )


def _check_ignition_files(data: Mapping[str, Any], source: str) -> None:
    storage = data.get("storage", {})
    if not isinstance(storage, dict):
        raise UsageError(f"{source}: storage must be an object")
    files = storage.get("files", [])
    if not isinstance(files, list):
        raise UsageError(f"{source}: storage.files must be a list")
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UsageError(f"{source}: storage.files[{i}] must be an object with a path")
        why = owned_path(entry["path"])
        if why:
            raise UsageError(f"{source}: storage.files {entry['path']} is coreos-lab's ({why}); remove it")


# ---------------------------------------------------------------- what each rendered cloud-config records


def record_lines(user_data: UserData | None, ignition: Ignition | None) -> tuple[str, str]:
    """The two comment lines of a rendered cloud-config naming the root files it was rendered with."""
    return (
        _RECORD_USER_DATA + (f"sha256:{user_data.sha256}" if user_data else "none"),
        _RECORD_IGNITION + (f"sha256:{ignition.sha256}" if ignition else "none"),
    )


def recorded_inputs(text: str) -> tuple[str, str] | None:
    """``(user-data record, config.ign record)`` of a rendered cloud-config (``"none"`` or ``"sha256:..."``),
    or None when the file carries no record (not rendered by this version of coreos-lab)."""
    found: dict[str, str] = {}
    for line in text.splitlines()[:12]:
        for prefix in (_RECORD_USER_DATA, _RECORD_IGNITION):
            if line.startswith(prefix) and _RECORD_RE.match(line[len(prefix) :]):
                found[prefix] = line[len(prefix) :]
    if len(found) != 2:
        return None
    return found[_RECORD_USER_DATA], found[_RECORD_IGNITION]


# ---------------------------------------------------------------- the old layout (user-data/ directory)


def is_ours(path: Path) -> bool:
    """A regular file whose head carries :data:`HEADER` (coreos-lab rendered it; only such files are removed)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return HEADER in fh.read(4096)
    except OSError:
        return False


def legacy_user_data(lab_dir: Path) -> tuple[list[Path], list[Path]] | None:
    """``(coreos-lab's files, other entries)`` of a ``user-data/`` directory in the lab root, None when absent."""
    path = Path(lab_dir) / LEGACY_USER_DATA_DIR
    if not path.is_dir():
        return None
    if path.is_symlink():
        return [], [path]
    ours: list[Path] = []
    other: list[Path] = []
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return [], [path]
    for entry in entries:
        (ours if is_ours(entry) else other).append(entry)
    return ours, other


def check_legacy_user_data(lab_dir: Path) -> list[Path]:
    """coreos-lab's files in an old ``user-data/`` directory (to remove); UsageError when it holds anything else."""
    found = legacy_user_data(lab_dir)
    if found is None:
        return []
    ours, other = found
    if other:
        base = Path(lab_dir) / LEGACY_USER_DATA_DIR
        names = ", ".join(str(p.relative_to(base)) if p != base else p.name for p in other[:5])
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        raise UsageError(
            f"{base}/ holds files coreos-lab did not render ({names}{more}): Flatcar's box would upload the whole "
            "directory as every node's user-data and the nodes would skip their cloud-config",
            hint=f"move them away; coreos-lab renders {CLOUD_CONFIG_DIR}/<node>.yaml now, and a user-data FILE in "
            "the lab is merged into every node's",
        )
    return ours


# ---------------------------------------------------------------- what the box would pick up unexpectedly


def ignition_lab_problems(lab_dir: Path) -> list[str]:
    """The lab root's files Flatcar's box would hand the nodes of an Ignition lab besides their own configs.

    A root ``config.ign`` would reach Ignition a second time (on libvirt a duplicate fw_cfg name, which QEMU
    refuses; on VirtualBox it would replace the node's guest property); a root ``user-data`` would be uploaded
    and applied as cloud-config, and a node provisioned by Ignition gets none. (A ``user-data`` directory is the
    old layout's, reported by :func:`pickup_problems` and cleared by a render.)
    """
    lab_dir = Path(lab_dir)
    problems = []
    if (lab_dir / ROOT_IGNITION).exists() or (lab_dir / ROOT_IGNITION).is_symlink():
        problems.append(
            f"{ROOT_IGNITION} in an Ignition lab: Flatcar's box would hand it to Ignition beside each node's own "
            f"{IGNITION_DIR}/<node>.ign; move it elsewhere and pass it with --ignition-merge FILE"
        )
    user_data = lab_dir / ROOT_USER_DATA
    if (user_data.exists() or user_data.is_symlink()) and not user_data.is_dir():
        problems.append(
            f"{ROOT_USER_DATA} in an Ignition lab: Flatcar's box would apply it as every node's cloud-config, and a "
            "node provisioned by Ignition gets none; move it away (its files and units go in an --ignition-merge FILE)"
        )
    return problems


def _ignition_config_problems(lab_dir: Path, cfg: LabConfig) -> list[str]:
    problems = ignition_lab_problems(lab_dir)
    for node in cfg.nodes:
        path = Path(lab_dir) / IGNITION_DIR / f"{node.name}.ign"
        if not path.is_file():
            problems.append(f"{IGNITION_DIR}/{node.name}.ign is missing: {node.name} would boot with no configuration")
        elif cfg.provider == "virtualbox" and path.stat().st_size > VBOX_GUESTPROP_MAX:
            problems.append(
                f"{IGNITION_DIR}/{node.name}.ign is {path.stat().st_size} bytes: VirtualBox guest properties hold "
                f"{VBOX_GUESTPROP_MAX} bytes (vagrant up would fail with VERR_TOO_MUCH_DATA)"
            )
    return problems


def pickup_problems(lab_dir: Path, cfg: LabConfig | None = None) -> list[str]:
    """Everything Flatcar's box would pick up from ``lab_dir`` that the last ``coreos-lab render`` did not see.

    One line each: a ``user-data`` directory (uploaded whole), a ``user-data`` or ``config.ign`` added, changed
    or removed since the last render (the sha256 each rendered cloud-config records; a missing or older
    cloud-config records nothing), one that is not a regular file, a config.ign too big for VirtualBox. Reads
    the lab directory, nothing else; an empty list means ``up`` may boot. ``cfg`` defaults to the lab's
    coreos-lab.toml. In an Ignition lab: a root user-data file or config.ign at all, a node's
    ``ignition/<node>.ign`` missing or too big for VirtualBox.
    """
    lab_dir = Path(lab_dir)
    if cfg is None:
        cfg = config_mod.load(lab_dir)
    problems: list[str] = []
    legacy = legacy_user_data(lab_dir)
    if legacy is not None:
        _ours, other = legacy
        extra = f" (and {len(other)} file(s) coreos-lab did not render: move them away)" if other else ""
        problems.append(
            f"{LEGACY_USER_DATA_DIR}/ is a directory (coreos-lab's old layout): Flatcar's box would upload it whole "
            f"and the nodes would skip their cloud-config{extra}"
        )
    if cfg.provision == "ignition":
        return problems + _ignition_config_problems(lab_dir, cfg)
    user_state, user_problem = _file_state(lab_dir / ROOT_USER_DATA, allow_dir=True)
    ign_state, ign_problem = _file_state(lab_dir / ROOT_IGNITION, allow_dir=False)
    problems += [p for p in (user_problem, ign_problem) if p]
    ign_path = lab_dir / ROOT_IGNITION
    if cfg.provider == "virtualbox" and ign_path.is_file():
        size = ign_path.stat().st_size
        if size > VBOX_GUESTPROP_MAX:
            problems.append(
                f"{ROOT_IGNITION} is {size} bytes: VirtualBox guest properties hold {VBOX_GUESTPROP_MAX} bytes "
                "(vagrant up would fail with VERR_TOO_MUCH_DATA)"
            )
    unrecorded: list[str] = []  # cloud-configs missing, or rendered before coreos-lab recorded its inputs
    stale: dict[str, list[str]] = {}
    for node in cfg.nodes:
        try:
            text = (lab_dir / CLOUD_CONFIG_DIR / f"{node.name}.yaml").read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        recorded = recorded_inputs(text)
        if recorded is None:
            unrecorded.append(f"{CLOUD_CONFIG_DIR}/{node.name}.yaml")
            continue
        for name, now, then in ((ROOT_USER_DATA, user_state, recorded[0]), (ROOT_IGNITION, ign_state, recorded[1])):
            if now is not None and now != then and not (name == ROOT_IGNITION and now == "none"):
                # (a config.ign removed since: nothing for the box to pick up, nothing rendered from it)
                stale.setdefault(_change(name, then, now), []).append(node.name)
    present = [name for name, now in ((ROOT_USER_DATA, user_state), (ROOT_IGNITION, ign_state)) if now != "none"]
    if unrecorded and present:
        # Without a record nothing says a render checked (and merged) them; without root files there is nothing
        # for the box to pick up, and a lab that was never rendered is Vagrant's complaint, not ours.
        problems.append(
            f"{' and '.join(present)} in the lab, but {', '.join(unrecorded)} "
            f"{'is' if len(unrecorded) == 1 else 'are'} missing or rendered by an older coreos-lab: "
            "Flatcar's box would hand the nodes what no render checked"
        )
    for what, nodes in stale.items():
        problems.append(f"{what} (recorded in {len(nodes)} of {len(cfg.nodes)} node cloud-configs)")
    return problems


def _file_state(path: Path, *, allow_dir: bool) -> tuple[str | None, str | None]:
    """(``"none"``/``"sha256:..."``/None when not comparable, problem line or None) of a root file."""
    if not path.exists():
        return "none", None
    if path.is_dir():
        if allow_dir:
            return None, None  # the user-data directory is reported on its own
        return None, f"{path.name} is a directory: Flatcar's box would fail to read it as the nodes' Ignition config"
    if not path.is_file():
        return None, f"{path.name} is not a regular file: Flatcar's box would hand it to the nodes"
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(), None
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc.strerror or exc}"


def _change(name: str, then: str, now: str) -> str:
    if then == "none":
        return f"{name} was added since the last render: Flatcar's box would hand it to the nodes unchecked"
    if now == "none":
        return f"{name} was removed since the last render: the nodes' cloud-configs still carry what it held"
    return (
        f"{name} changed since the last render: Flatcar's box would hand the nodes a version coreos-lab did not check"
    )
