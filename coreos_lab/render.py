"""Render a lab (Vagrantfile, config.rb, cloud-config/<node>.yaml) from its LabConfig, and write it all-or-nothing.

Rendering is pure (config in, text out); writing stages every file as a temp file beside its target, then
renames them into place, and on any error removes what this run created: a lab directory is never left
half-written.

Nothing rendered is called ``user-data`` or ``config.ign``: Flatcar's box hands those names in the lab root to
the nodes by itself (:mod:`coreos_lab.pickup`). A root ``user-data`` file is the user's cloud-config for every
node: checked, then merged into each node's rendered cloud-config (built as data, then dumped); a root
``config.ign`` is checked and left to the box. ``init``/``render`` also clear coreos-lab's files out of the old
``user-data/`` directory. An Ignition lab gets ``ignition/<node>.ign`` (:mod:`coreos_lab.ignition`) and neither.

Every value that lands in Ruby passes ``ruby_str`` (a double-quoted literal with ``#``, quotes, backslashes and
every non-printable character escaped, so ``#{...}`` cannot interpolate); every value that lands in YAML passes
``yaml_str`` (a JSON string, which is valid YAML); values inside systemd ``Environment="..."`` pass
``systemd_env``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Final

import jinja2

from coreos_lab import config as config_mod
from coreos_lab import discovery, nodeshell, pickup, tls
from coreos_lab import ignition as ignition_mod  # (``ignition`` names the lab root's config.ign below)
from coreos_lab.config import CONFIG_NAME, VBOX_ALLOWED, LabConfig, NodeSpec
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError
from coreos_lab.fsutil import deferred_interrupt
from coreos_lab.pickup import Ignition, RawScalar, UserCloudConfig, UserData

# Defined in coreos_lab.pickup (which `up` and `doctor` load without jinja2 or cryptography), named here too.
HEADER: Final = pickup.HEADER
CLOUD_CONFIG_DIR: Final = pickup.CLOUD_CONFIG_DIR  # cloud-config/<node>.yaml
GUEST_USER_DATA_DIRS: Final = pickup.GUEST_USER_DATA_DIRS
LAB_BOX: Final = "coreos-lab/lab"
RENDERED_TOP: Final = ("Vagrantfile", "config.rb")
CLIENT_PORT: Final = 2379
PEER_PORT: Final = 2380


@dataclass(frozen=True, slots=True)
class RenderedFile:
    """One file of a lab: path relative to the lab directory (POSIX), text, file mode."""

    path: str
    content: str
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class MergeSummary:
    """What merging the lab root's user-data added to each node's cloud-config (the same for every node)."""

    path: Path
    sha256: str
    nodes: int
    units: int = 0
    files: int = 0
    users: int = 0
    ssh_keys: int = 0
    sections: tuple[str, ...] = ()  # copied as written (coreos.update, manage_etc_hosts, ...)
    deduplicated: tuple[str, ...] = ()  # units coreos-lab already enables and starts (docker.service)

    def describe(self) -> str:
        """``+2 units, +1 file`` (or ``nothing added``), then what was copied and what was already there."""
        counts = [(self.units, "unit"), (self.files, "file"), (self.users, "user"), (self.ssh_keys, "ssh key")]
        parts = [f"+{n} {word}{'' if n == 1 else 's'}" for n, word in counts if n]
        parts += [f"+{name}" for name in self.sections]
        text = ", ".join(parts) or "nothing added"
        if self.deduplicated:
            text += f" ({', '.join(self.deduplicated)} already enabled and started by coreos-lab)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "nodes": self.nodes,
            "units": self.units,
            "files": self.files,
            "users": self.users,
            "ssh_authorized_keys": self.ssh_keys,
            "sections": list(self.sections),
            "deduplicated": list(self.deduplicated),
        }


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a render/init wrote: the config used, absolute paths written, stale files removed, warnings.

    ``removed`` includes coreos-lab's files of an old ``user-data/`` directory and the directory itself;
    ``user_data`` says what the lab root's user-data added, ``ignition`` describes its config.ign (both None
    when the lab root has none).
    """

    lab_dir: Path
    config: LabConfig
    written: tuple[Path, ...]
    removed: tuple[Path, ...]
    warnings: tuple[str, ...]
    user_data: MergeSummary | None = None
    ignition: Ignition | None = None
    merges: tuple[ignition_mod.MergeFile, ...] = ()  # the --ignition-merge files merged into every node's config


# ---------------------------------------------------------------- escaping filters


def ruby_str(value: object) -> str:
    """A double-quoted Ruby string literal that evaluates to exactly ``value``.

    ``#`` is escaped so ``#{}``/``#$``/``#@`` never interpolate; anything outside printable ASCII is spelled
    ``\\u{hex}`` so no newline, NUL or Unicode line separator reaches the file.

    >>> print(ruby_str('a"b#{x}'))
    "a\\"b\\#{x}"
    """
    if not isinstance(value, str):
        raise ConfigError(f"internal: ruby_str wants a string, got {type(value).__name__}")
    out = ['"']
    for ch in value:
        if ch in '"\\#':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def ruby_str_or_nil(value: object) -> str:
    """``ruby_str`` for a string, ``nil`` for None."""
    return "nil" if value is None else ruby_str(value)


def ruby_bool(value: object) -> str:
    """Ruby's ``true``/``false`` (refusing anything that is not a bool)."""
    if not isinstance(value, bool):
        raise ConfigError(f"internal: ruby_bool wants a bool, got {value!r}")
    return "true" if value else "false"


def ruby_str_hash(value: Mapping[str, str]) -> str:
    """A Ruby hash literal of string => string."""
    if not value:
        return "{}"
    return "{" + ", ".join(f"{ruby_str(k)} => {ruby_str(v)}" for k, v in value.items()) + "}"


def ruby_int_hash(value: Mapping[str, int]) -> str:
    """A Ruby hash literal of integer => integer (forwarded ports; keys arrive as TOML strings)."""
    if not value:
        return "{}"
    return "{" + ", ".join(f"{int(k)} => {int(v)}" for k, v in value.items()) + "}"


def yaml_str(value: object) -> str:
    """A YAML double-quoted scalar: a JSON string (valid YAML), ASCII-only so it cannot break a line.

    ``$`` is spelled ``\\u0024`` because coreos-cloudinit replaces ``$private_ipv4`` and friends in the raw text
    before it parses the YAML; a value must come out exactly as given. A character beyond the BMP is spelled
    ``\\UXXXXXXXX`` (YAML reads no JSON surrogate pair as one character).

    >>> print(yaml_str('say "$HOME"'))
    "say \\"\\u0024HOME\\""
    """
    if not isinstance(value, str):
        raise ConfigError(f"internal: yaml_str wants a string, got {type(value).__name__}")
    text = json.dumps(value, ensure_ascii=False)  # escapes quotes, backslashes and control characters
    if any(ch > "~" for ch in text):  # DEL (which YAML refuses raw) and everything beyond ASCII
        text = "".join(
            ch if ch <= "~" else (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}") for ch in text
        )
    return text.replace("$", "\\u0024")


def systemd_env(value: object) -> str:
    """A value for inside ``Environment="..."`` of a unit file that also sits in a YAML block scalar.

    Only printable ASCII is accepted (a newline would end the YAML block or the unit line); ``\\`` and ``"`` are
    escaped for systemd's quoting and ``%`` doubled so systemd does not expand it as a specifier.
    """
    if not isinstance(value, str) or not all(" " <= ch <= "~" for ch in value):
        raise ConfigError(f"value {value!r} cannot go into a systemd Environment= line")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("coreos_lab", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - Ruby and YAML, not HTML: each value is escaped by its own filter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        ruby_str=ruby_str,
        ruby_str_or_nil=ruby_str_or_nil,
        ruby_bool=ruby_bool,
        ruby_str_hash=ruby_str_hash,
        ruby_int_hash=ruby_int_hash,
        yaml_str=yaml_str,
        systemd_env=systemd_env,
    )
    return env


# ---------------------------------------------------------------- what goes into the templates


def etcd_environment(cfg: LabConfig, node: NodeSpec) -> list[tuple[str, str]]:
    """The ``ETCD_*`` variables of ``node``'s etcd-member drop-in, in order."""
    http = tls.scheme(cfg)
    env = [
        ("ETCD_NAME", node.name),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", f"{http}://{node.ip}:{PEER_PORT}"),
        ("ETCD_LISTEN_PEER_URLS", f"{http}://{node.ip}:{PEER_PORT}"),
        ("ETCD_LISTEN_CLIENT_URLS", f"{http}://{node.ip}:{CLIENT_PORT},{http}://127.0.0.1:{CLIENT_PORT}"),
        ("ETCD_ADVERTISE_CLIENT_URLS", f"{http}://{node.ip}:{CLIENT_PORT}"),
    ]
    if cfg.bootstrap == "static":
        env += [
            ("ETCD_INITIAL_CLUSTER", initial_cluster(cfg)),
            ("ETCD_INITIAL_CLUSTER_STATE", "new"),
            ("ETCD_INITIAL_CLUSTER_TOKEN", cfg.cluster_token),
        ]
    else:
        env.append(("ETCD_DISCOVERY", _discovery_url(cfg)))
    # fleet speaks only the v2 API, and v2 discovery needs it too.
    env.append(("ETCD_ENABLE_V2", "true"))
    if cfg.tls:
        env += tls.etcd_tls_environment(cfg.os)
    return env


def etcd2_settings(cfg: LabConfig, node: NodeSpec) -> list[tuple[str, str]]:
    """The legacy ``coreos.etcd2`` section of ``node`` (underscore keys, which classic cloudinit also reads)."""
    http = tls.scheme(cfg)
    conf = [
        ("name", node.name),
        ("advertise_client_urls", f"{http}://{node.ip}:{CLIENT_PORT}"),
        ("initial_advertise_peer_urls", f"{http}://{node.ip}:{PEER_PORT}"),
        ("listen_client_urls", f"{http}://{node.ip}:{CLIENT_PORT},{http}://127.0.0.1:{CLIENT_PORT}"),
        ("listen_peer_urls", f"{http}://{node.ip}:{PEER_PORT}"),
    ]
    if cfg.bootstrap == "static":
        conf += [
            ("initial_cluster", initial_cluster(cfg)),
            ("initial_cluster_state", "new"),
            ("initial_cluster_token", cfg.cluster_token),
        ]
    else:
        conf.append(("discovery", _discovery_url(cfg)))
    if cfg.tls:
        # classic cloudinit turns each key into ETCD_<KEY>, the same variables the Flatcar drop-in sets.
        conf += [(key.removeprefix("ETCD_").lower(), value) for key, value in tls.etcd_tls_environment(cfg.os)]
    return conf


def initial_cluster(cfg: LabConfig) -> str:
    """``name=http://ip:2380,...`` (``https`` for a TLS lab) for every node of the lab."""
    return ",".join(f"{n.name}={tls.scheme(cfg)}://{n.ip}:{PEER_PORT}" for n in cfg.nodes)


def _discovery_url(cfg: LabConfig) -> str:
    if cfg.discovery_url is None:
        raise ConfigError(f"bootstrap {cfg.bootstrap} needs a discovery_url in {CONFIG_NAME}")
    return cfg.discovery_url


def node_texts(cfg: LabConfig) -> dict[str, ignition_mod.NodeTexts]:
    """Per node, what its Ignition config says as its cloud-config does: the text of etcd-member's drop-in (as the
    cloud-config template writes it) and of the metadata file."""
    out = {}
    for n in cfg.nodes:
        lines = (f'Environment="{systemd_env(k)}={systemd_env(v)}"\n' for k, v in etcd_environment(cfg, n))
        out[n.name] = ignition_mod.NodeTexts("[Service]\n" + "".join(lines), metadata_text(n))
    return out


def metadata_text(node: NodeSpec) -> str:
    """``/etc/coreos-lab/metadata``: one ``key=value`` line per metadata item, sorted by key."""
    return "".join(f"{k}={v}\n" for k, v in sorted(node.metadata.items()))


def lab_warnings(cfg: LabConfig) -> list[str]:
    """Things that render fine but will probably not boot as the user expects."""
    out = []
    if cfg.os == "coreos":
        out.append(
            "CoreOS Container Linux reached end of life in 2020 and its Vagrant boxes are no longer published; "
            "--os coreos only works with a box you already have (use --box)"
        )
    if cfg.os == "flatcar" and cfg.provider == "libvirt" and cfg.box is None:
        out.append(f"Flatcar publishes no libvirt Vagrant box; build the offline one and pass --box {LAB_BOX}")
    if cfg.provider == "virtualbox":
        allowed = ipaddress.IPv4Network(str(VBOX_ALLOWED))
        if not ipaddress.IPv4Network(cfg.network, strict=False).subnet_of(allowed):
            out.append(
                f"VirtualBox >= 6.1.28 only allows host-only networks in {VBOX_ALLOWED} unless "
                f"/etc/vbox/networks.conf allows {cfg.network}"
            )
    return out


# ---------------------------------------------------------------- rendering


def render_lab(
    cfg: LabConfig,
    tls_material: tls.LabTLS | None = None,
    *,
    user_data: UserData | None = None,
    ignition: Ignition | None = None,
    merges: Sequence[ignition_mod.MergeFile] = (),
) -> tuple[RenderedFile, ...]:
    """Every rendered file of the lab except coreos-lab.toml, in memory.

    A TLS lab (``cfg.tls``) needs its certificates (:func:`coreos_lab.tls.generate` or :func:`~coreos_lab.tls.load`);
    its cloud-configs then hold private keys and are written 0600. The files under ``tls/`` are not included.
    ``user_data`` (the lab root's, :func:`coreos_lab.pickup.read_user_data`) is merged into every node's
    cloud-config; ``ignition`` (:func:`coreos_lab.pickup.read_ignition`) is only recorded. An Ignition lab renders
    ``ignition/<node>.ign`` with ``merges`` in each instead."""
    config_mod.validate(cfg)
    return render_lab_merged(cfg, tls_material, user_data=user_data, ignition=ignition, merges=merges)[0]


def render_lab_merged(
    cfg: LabConfig,
    tls_material: tls.LabTLS | None = None,
    *,
    user_data: UserData | None = None,
    ignition: Ignition | None = None,
    merges: Sequence[ignition_mod.MergeFile] = (),
) -> tuple[tuple[RenderedFile, ...], MergeSummary | None]:
    """:func:`render_lab` of a validated ``cfg`` (``init_lab`` and ``load`` have checked it), plus what merging
    ``user_data`` added (None without one)."""
    if cfg.tls and tls_material is None:
        raise ConfigError("internal: a TLS lab renders only with its certificates (tls.generate or tls.load)")
    env = _environment()
    common = {"cfg": cfg, "header": HEADER, "user_data_dir": GUEST_USER_DATA_DIRS[cfg.os], "ign": ignition_mod}
    files = [
        RenderedFile(
            "Vagrantfile",
            env.get_template("Vagrantfile.j2").render(os=cfg.os, provider=cfg.provider, network=cfg.network, **common),
        ),
        RenderedFile("config.rb", env.get_template("config.rb.j2").render(**common)),
    ]
    if cfg.provision == "ignition":
        configs = ignition_mod.render_configs(cfg, node_texts(cfg), tls_material, merges)
        return (*files, *(RenderedFile(*c) for c in configs)), None
    template = env.get_template("cloud-config.j2")
    records = pickup.record_lines(user_data, ignition)
    mode = 0o644
    if cfg.tls or (user_data is not None and not user_data.mode & 0o077):
        mode = tls.FILE_MODE  # private keys (TLS), or the user keeps their user-data private
    summary: MergeSummary | None = None
    for node in cfg.nodes:
        fleet_metadata = ",".join(f"{k}={v}" for k, v in sorted(node.metadata.items()))
        text = template.render(
            cfg=cfg,
            node=node,
            header=HEADER,
            guest_dir=GUEST_USER_DATA_DIRS[cfg.os],
            records=records,
            merged=user_data is not None,
            metadata_path=nodeshell.METADATA_PATH,
            metadata_text=metadata_text(node),
            fleet_metadata=fleet_metadata,
            etcd_env=etcd_environment(cfg, node) if cfg.os == "flatcar" else [],
            etcd2_conf=etcd2_settings(cfg, node) if cfg.os == "coreos" else [],
            tls_files=tls_material.node_files(node.name, cfg.os) if cfg.tls and tls_material else [],
            tls_dir=tls.NODE_TLS_DIR,
        )
        if user_data is not None:
            text, summary = merge_cloud_config(text, user_data.parse(node.ip), user_data, len(cfg.nodes))
        files.append(RenderedFile(f"{CLOUD_CONFIG_DIR}/{node.name}.yaml", text, mode))
    return tuple(files), summary


# ---------------------------------------------------------------- merging the lab's own user-data


def merge_cloud_config(
    ours_text: str, theirs: UserCloudConfig, source: UserData, nodes: int
) -> tuple[str, MergeSummary]:
    """One node's rendered cloud-config with the user's sections merged in, dumped from data.

    Ours first, theirs after: ``write_files``, ``users``, ``ssh_authorized_keys``, ``coreos.units`` (a plain
    enable/start of a unit coreos-lab already enables and starts is dropped); sections coreos-lab renders
    nothing for are copied. The leading comment lines of ``ours_text`` (``#cloud-config``, :data:`HEADER`, the
    records) are kept. The result must read back as the document built, and no ``$`` may reach it
    (coreos-cloudinit would substitute it).
    """
    import yaml  # the user-data was parsed with it already

    ours = yaml.safe_load(ours_text)
    header = []
    for line in ours_text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    our_files = list(ours.get("write_files") or [])
    taken = {posixpath.normpath(f["path"]) for f in our_files}
    for i, entry in enumerate(theirs.write_files):
        if posixpath.normpath(entry["path"]) in taken:
            raise UsageError(
                f"{source.path}: write_files[{i}].path {entry['path']} is coreos-lab's (it writes that file on every "
                f"node); remove it from {source.path.name}"
            )
    our_coreos = dict(ours.get("coreos") or {})
    our_units = list(our_coreos.pop("units", []) or [])
    our_names = {u["name"] for u in our_units}
    added = [u for u in theirs.units if not (u["name"] in theirs.plain_units and u["name"] in our_names)]
    dropped = sorted({u["name"] for u in theirs.units} - {u["name"] for u in added})
    doc: dict[str, Any] = {"hostname": ours["hostname"]}
    if theirs.ssh_authorized_keys:
        doc["ssh_authorized_keys"] = list(theirs.ssh_authorized_keys)
    if theirs.users:
        doc["users"] = [dict(u) for u in theirs.users]
    doc["write_files"] = our_files + [dict(f) for f in theirs.write_files]
    doc.update(theirs.extra_top)
    coreos: dict[str, Any] = {**our_coreos, **theirs.extra_coreos}
    coreos["units"] = our_units + [dict(u) for u in added]
    doc["coreos"] = coreos
    body = dump_yaml(doc)
    if "$" in body:
        raise ConfigError("internal: a '$' reached the merged cloud-config (coreos-cloudinit would substitute it)")
    if yaml.safe_load(body) != _resolved(doc):
        raise ConfigError("internal: the merged cloud-config does not read back as the document built")
    summary = MergeSummary(
        path=source.path,
        sha256=source.sha256,
        nodes=nodes,
        units=len(added),
        files=len(theirs.write_files),
        users=len(theirs.users),
        ssh_keys=len(theirs.ssh_authorized_keys),
        sections=(*theirs.extra_top, *(f"coreos.{k}" for k in theirs.extra_coreos)),
        deduplicated=tuple(dropped),
    )
    return "\n".join(header) + "\n\n" + body, summary


_PLAIN_KEY: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# Plain words YAML 1.1 reads as something else than a string (a key spelled so is quoted).
_YAML11_WORDS: Final = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """Block-style YAML of ``doc`` in the templates' style: a blank line between top-level sections.

    Strings pass :func:`yaml_str` (a JSON string, ``$`` escaped), except multi-line printable-ASCII text without
    ``$``, written as a ``|`` block like the templates' unit contents; :class:`~coreos_lab.pickup.RawScalar` values
    keep the text they were written as (coreos-cloudinit reads that text into string fields).
    """
    lines: list[str] = []
    for key, value in doc.items():
        if lines:
            lines.append("")
        _emit_pair(key, value, 0, lines)
    return "\n".join(lines) + "\n"


def _emit_pair(key: str, value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    name = key if _PLAIN_KEY.match(key) and key.lower() not in _YAML11_WORDS else yaml_str(key)
    if isinstance(value, dict) and value:
        lines.append(f"{pad}{name}:")
        for sub_key, sub_value in value.items():
            _emit_pair(sub_key, sub_value, indent + 2, lines)
    elif isinstance(value, list) and value:
        lines.append(f"{pad}{name}:")
        _emit_items(value, indent + 2, lines)
    elif isinstance(value, str) and _block_ok(value):
        lines.append(f"{pad}{name}: |")
        lines.extend(f"{pad}  {line}" if line else "" for line in value[:-1].split("\n"))
    else:
        lines.append(f"{pad}{name}: {_scalar(value)}")


def _emit_items(items: Sequence[Any], indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            sub: list[str] = []
            for key, value in item.items():
                _emit_pair(key, value, indent + 2, sub)
            sub[0] = f"{pad}- {sub[0][indent + 2 :]}"
            lines.extend(sub)
        elif isinstance(item, list) and item:
            lines.append(f"{pad}-")
            _emit_items(item, indent + 2, lines)
        else:
            lines.append(f"{pad}- {_scalar(item)}")


def _block_ok(text: str) -> bool:
    """Whether ``text`` reads back exactly from a ``|`` block: lines of printable ASCII, one final newline."""
    if "$" in text or not text.endswith("\n") or text.endswith("\n\n") or text[:1] in ("", " ", "\n"):
        return False
    return all(" " <= ch <= "~" or ch == "\n" for ch in text)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, RawScalar):
        return value.text or "null"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    if isinstance(value, int | float):
        return str(value)
    return yaml_str(value)


def _resolved(value: Any) -> Any:
    """``value`` as a YAML reader returns it (RawScalars -> their values)."""
    if isinstance(value, RawScalar):
        return value.value
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v) for v in value]
    return value


def render_toml(cfg: LabConfig) -> RenderedFile:
    """coreos-lab.toml itself, mode 0600 (it may hold a discovery token)."""
    return RenderedFile(CONFIG_NAME, config_mod.dumps(cfg), 0o600)


# ---------------------------------------------------------------- writing, all or nothing


def _lab_path(lab_dir: Path, rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ConfigError(f"internal: refusing to write outside the lab: {rel!r}")
    return lab_dir.joinpath(*parts)


def _make_dirs(path: Path, created: list[Path], private_root: Path | None = None) -> None:
    """mkdir -p, remembering each directory this run created (to remove them again on failure).

    Directories at or below ``private_root`` are created 0700 (they hold private keys).
    """
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CoreosLabError(f"cannot create {path}: {probe} is not a directory")
    for directory in reversed(missing):
        private = private_root is not None and (directory == private_root or private_root in directory.parents)
        directory.mkdir(mode=tls.DIR_MODE if private else 0o777)
        created.append(directory)
        if private:
            os.chmod(directory, tls.DIR_MODE)  # mkdir's mode is filtered by the umask; be exact


def _stage(target: Path, item: RenderedFile) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), item.mode)
            fh.write(item.content.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_lab_files(
    lab_dir: Path, files: Sequence[RenderedFile], interrupted: Callable[[], bool] = lambda: False
) -> tuple[Path, ...]:
    """Write ``files`` under ``lab_dir``: stage all, then rename all; on error undo this run's creations.

    ``interrupted`` (from :func:`coreos_lab.fsutil.deferred_interrupt`) is asked while staging: a Ctrl-C
    then undoes everything. The renames are not interrupted: they finish, and the caller's block raises.
    """
    created_dirs: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    existed: dict[Path, bool] = {}
    try:
        targets = [_lab_path(lab_dir, f.path) for f in files]
        existed = {t: t.exists() for t in targets}
        for target, item in zip(targets, files, strict=True):
            if interrupted():
                raise KeyboardInterrupt
            _make_dirs(target.parent, created_dirs, lab_dir / tls.TLS_DIR)
            staged.append((_stage(target, item), target))
        if interrupted():
            raise KeyboardInterrupt
        for tmp, target in staged:
            os.replace(tmp, target)
            placed.append(target)
    except BaseException as exc:  # any failure, Ctrl-C included, undoes this run's creations
        for tmp, target in staged:
            if target not in placed:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        for target in placed:
            if not existed.get(target, True):
                with contextlib.suppress(OSError):
                    target.unlink()
        for directory in reversed(created_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(exc, OSError):
            where = exc.filename or lab_dir
            raise CoreosLabError(f"cannot write {where}: {exc.strerror or exc}") from exc
        raise
    return tuple(placed)


def _stale_cloud_configs(lab_dir: Path, keep: Iterable[str]) -> list[Path]:
    """cloud-config/*.yaml files we rendered earlier for nodes the lab no longer has."""
    directory = lab_dir / CLOUD_CONFIG_DIR
    if not directory.is_dir():
        return []
    wanted = {PurePosixPath(p).name for p in keep}
    # only ever remove files that say we made them
    return [p for p in sorted(directory.glob("*.yaml")) if p.name not in wanted and pickup.is_ours(p)]


def existing_lab_files(lab_dir: Path) -> list[Path]:
    """Files of a lab already present in ``lab_dir`` (what ``init`` refuses to overwrite without --force).

    The lab root's own ``user-data`` file and ``config.ign`` are the user's input, not part of a lab; an old
    ``user-data/`` directory is, and so is ``ignition/``.
    """
    candidates = [lab_dir / CONFIG_NAME, *(lab_dir / name for name in RENDERED_TOP), lab_dir / CLOUD_CONFIG_DIR]
    candidates.append(lab_dir / ignition_mod.IGNITION_DIR)
    if (lab_dir / pickup.LEGACY_USER_DATA_DIR).is_dir():
        candidates.append(lab_dir / pickup.LEGACY_USER_DATA_DIR)
    candidates.append(lab_dir / tls.TLS_DIR)  # a lab CA is never replaced without --force
    return [p for p in candidates if p.exists()]


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The user's files, checked before anything is written: user-data, config.ign, old user-data/, merge files."""

    user_data: UserData | None
    ignition: Ignition | None
    legacy: tuple[Path, ...]  # coreos-lab's files in an old user-data/ directory, to remove after the write
    legacy_dir: bool  # there is such a directory (to remove once empty)
    merges: tuple[ignition_mod.MergeFile, ...] = ()

    @classmethod
    def read(cls, lab_dir: Path, cfg: LabConfig) -> _Inputs:
        legacy = tuple(pickup.check_legacy_user_data(lab_dir))  # UsageError when it holds anything else
        legacy_dir = pickup.legacy_user_data(lab_dir) is not None
        if cfg.provision == "ignition":  # no root user-data or config.ign: only the merge files
            return cls(None, None, legacy, legacy_dir, ignition_mod.read_lab_inputs(lab_dir, cfg))
        user_data = pickup.read_user_data(lab_dir)
        if user_data is not None:
            for node in cfg.nodes:
                user_data.parse(node.ip)  # every refusal now, before a token is fetched or a file written
        return cls(user_data, pickup.read_ignition(lab_dir, cfg.provider), legacy, legacy_dir)

    def render(
        self, cfg: LabConfig, material: tls.LabTLS | None
    ) -> tuple[tuple[RenderedFile, ...], MergeSummary | None]:
        return render_lab_merged(cfg, material, user_data=self.user_data, ignition=self.ignition, merges=self.merges)


def _write(
    lab_dir: Path, cfg: LabConfig, files: Sequence[RenderedFile], inputs: _Inputs, summary: MergeSummary | None
) -> WriteResult:
    """Write the lab with Ctrl-C held back (:func:`~coreos_lab.fsutil.deferred_interrupt`): all or nothing.

    Afterwards (the lab is complete by then) stale cloud-configs and Ignition configs, and coreos-lab's files of an
    old ``user-data/`` directory are removed, and the directory when that empties it.
    """
    warnings = list(lab_warnings(cfg))
    with deferred_interrupt() as interrupted:
        written = write_lab_files(lab_dir, files, interrupted)
        removed = []
        keep = [f.path for f in files if f.path.startswith(f"{CLOUD_CONFIG_DIR}/")]
        stale_ign = ignition_mod.stale_configs(lab_dir, [f.path for f in files])
        for path in (*_stale_cloud_configs(lab_dir, keep), *stale_ign, *inputs.legacy):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                warnings.append(f"could not remove {path}: {exc.strerror or exc}")
        legacy_dir = lab_dir / pickup.LEGACY_USER_DATA_DIR
        if inputs.legacy_dir and legacy_dir.is_dir() and not legacy_dir.is_symlink():
            try:
                legacy_dir.rmdir()
                removed.append(legacy_dir)
            except OSError as exc:
                warnings.append(f"could not remove {legacy_dir}/: {exc.strerror or exc} (Flatcar's box uploads it)")
        tls.tighten(lab_dir)
    return WriteResult(lab_dir, cfg, written, tuple(removed), tuple(warnings), summary, inputs.ignition, inputs.merges)


def init_lab(
    lab_dir: Path,
    draft: LabConfig,
    *,
    force: bool = False,
    discovery_service: str | None = None,
    discovery_endpoint: str | None = None,
    policy: discovery.RetryPolicy | None = None,
) -> WriteResult:
    """Create a lab: check the input, get a discovery URL if the bootstrap needs one, render, write.

    Nothing touches the disk until every file has rendered; nothing talks to the network when the directory
    would be refused anyway (an old ``user-data/`` holding files coreos-lab did not render is refused even
    with ``force``; the lab root's user-data and config.ign are checked first).
    """
    lab_dir = Path(lab_dir).absolute()
    config_mod.validate(draft, draft=True, discovery_endpoint=discovery_endpoint)
    if lab_dir.exists() and not lab_dir.is_dir():
        raise UsageError(f"{lab_dir} exists and is not a directory")
    inputs = _Inputs.read(lab_dir, draft)
    present = existing_lab_files(lab_dir)
    if present and not force:
        raise UsageError(
            f"{lab_dir} already holds a lab ({', '.join(p.name for p in present)})",
            hint="use --force to overwrite it, or 'coreos-lab render' to re-render it",
        )
    cfg = discovery.resolve(draft, service=discovery_service, endpoint=discovery_endpoint, policy=policy)
    material = tls.generate(cfg) if cfg.tls else None
    rendered, summary = inputs.render(cfg, material)
    files = (render_toml(cfg), *rendered, *_tls_files(material))
    return _write(lab_dir, cfg, files, inputs, summary)


def render_existing(lab_dir: Path) -> WriteResult:
    """Re-render a lab from its coreos-lab.toml (which is left untouched; no network, no new token).

    Merges the lab root's user-data again, checks its config.ign, and moves an old layout on: coreos-lab's files
    in ``user-data/`` are removed (and the directory once empty); anything else there is refused.
    """
    lab_dir = Path(lab_dir).absolute()
    cfg = config_mod.load(lab_dir)
    inputs = _Inputs.read(lab_dir, cfg)
    material = tls.load(lab_dir, cfg) if cfg.tls else None
    rendered, summary = inputs.render(cfg, material)
    files = (*rendered, *_tls_files(material, only_issued=True))
    result = _write(lab_dir, cfg, files, inputs, summary)
    if material is not None and material.issued:
        what = ["a new lab CA" if "ca" in material.issued else ""]
        what += [f"certificates for {n}" for n in material.issued if n != "ca"]
        note = f"issued {', '.join(w for w in what if w)} in {tls.TLS_DIR}/ (nodes booted earlier need a re-provision)"
        result = replace(result, warnings=(*result.warnings, note))
    return result


def render_ignition_out(lab_dir: Path, out_dir: Path) -> WriteResult:
    """Write every node's Ignition config as ``out_dir/<node>.ign`` (for Terraform or a cloud: no VirtualBox size
    rule), all or nothing; the lab's own files are left as they are (a TLS lab needs all its certificates)."""
    lab_dir, out_dir = Path(lab_dir).absolute(), Path(out_dir).absolute()
    cfg = config_mod.load(lab_dir)
    material = tls.load(lab_dir, cfg) if cfg.tls else None
    merges = ignition_mod.read_merges(lab_dir, cfg)
    configs = ignition_mod.render_configs(cfg, node_texts(cfg), material, merges, in_lab=False)
    files = [RenderedFile(*c) for c in configs]
    with deferred_interrupt() as interrupted:
        written = write_lab_files(out_dir, files, interrupted)
    return WriteResult(out_dir, cfg, written, (), (), merges=merges)


def _tls_files(material: tls.LabTLS | None, *, only_issued: bool = False) -> list[RenderedFile]:
    if material is None:
        return []
    return [RenderedFile(path, text, tls.FILE_MODE) for path, text in material.files(only_issued=only_issued)]
