"""Render a lab (Vagrantfile, config.rb, user-data/<node>.yaml) from its LabConfig, and write it all-or-nothing.

Rendering is pure (config in, text out); writing stages every file as a temp file beside its target, then
renames them into place, and on any error removes what this run created: a lab directory is never left
half-written.

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
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Final

import jinja2

from coreos_lab import config as config_mod
from coreos_lab import discovery, tls
from coreos_lab.config import CONFIG_NAME, VBOX_ALLOWED, LabConfig, NodeSpec
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError
from coreos_lab.fsutil import deferred_interrupt

HEADER: Final = f"Generated from {CONFIG_NAME} by `coreos-lab render`: edit {CONFIG_NAME} and re-render, not this file."
USER_DATA_DIR: Final = "user-data"
GUEST_USER_DATA_DIRS: Final = {"flatcar": "/var/lib/flatcar-vagrant", "coreos": "/var/lib/coreos-vagrant"}
METADATA_PATH: Final = "/etc/coreos-lab/metadata"
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
class WriteResult:
    """What a render/init wrote: the config used, absolute paths written, stale files removed, warnings."""

    lab_dir: Path
    config: LabConfig
    written: tuple[Path, ...]
    removed: tuple[Path, ...]
    warnings: tuple[str, ...]


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
    """A YAML double-quoted scalar: JSON strings are valid YAML, and ASCII-only output cannot break a line.

    ``$`` is spelled ``\\u0024`` because coreos-cloudinit replaces ``$private_ipv4`` and friends in the raw text
    before it parses the YAML; a value must come out exactly as given.

    >>> print(yaml_str('say "$HOME"'))
    "say \\"\\u0024HOME\\""
    """
    if not isinstance(value, str):
        raise ConfigError(f"internal: yaml_str wants a string, got {type(value).__name__}")
    return json.dumps(value, ensure_ascii=True).replace("$", "\\u0024")


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


def render_lab(cfg: LabConfig, tls_material: tls.LabTLS | None = None) -> tuple[RenderedFile, ...]:
    """Every rendered file of the lab except coreos-lab.toml, in memory.

    A TLS lab (``cfg.tls``) needs its certificates (:func:`coreos_lab.tls.generate` or :func:`~coreos_lab.tls.load`);
    its user-data then holds private keys and is written 0600. The files under ``tls/`` are not included.
    """
    config_mod.validate(cfg)
    if cfg.tls and tls_material is None:
        raise ConfigError("internal: a TLS lab renders only with its certificates (tls.generate or tls.load)")
    env = _environment()
    common = {"cfg": cfg, "header": HEADER, "user_data_dir": GUEST_USER_DATA_DIRS[cfg.os]}
    files = [
        RenderedFile(
            "Vagrantfile",
            env.get_template("Vagrantfile.j2").render(os=cfg.os, provider=cfg.provider, network=cfg.network, **common),
        ),
        RenderedFile("config.rb", env.get_template("config.rb.j2").render(**common)),
    ]
    user_data = env.get_template("user-data.j2")
    for node in cfg.nodes:
        fleet_metadata = ",".join(f"{k}={v}" for k, v in sorted(node.metadata.items()))
        text = user_data.render(
            cfg=cfg,
            node=node,
            header=HEADER,
            guest_dir=GUEST_USER_DATA_DIRS[cfg.os],
            metadata_text=metadata_text(node),
            fleet_metadata=fleet_metadata,
            etcd_env=etcd_environment(cfg, node) if cfg.os == "flatcar" else [],
            etcd2_conf=etcd2_settings(cfg, node) if cfg.os == "coreos" else [],
            tls_files=tls_material.node_files(node.name, cfg.os) if cfg.tls and tls_material else [],
            tls_dir=tls.NODE_TLS_DIR,
        )
        mode = tls.FILE_MODE if cfg.tls else 0o644  # user-data of a TLS lab carries private keys
        files.append(RenderedFile(f"{USER_DATA_DIR}/{node.name}.yaml", text, mode))
    return tuple(files)


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


def _stale_user_data(lab_dir: Path, keep: Iterable[str]) -> list[Path]:
    """user-data/*.yaml files we rendered earlier for nodes the lab no longer has."""
    directory = lab_dir / USER_DATA_DIR
    if not directory.is_dir():
        return []
    wanted = {PurePosixPath(p).name for p in keep}
    stale = []
    for path in sorted(directory.glob("*.yaml")):
        if path.name in wanted:
            continue
        try:
            with path.open(encoding="utf-8", errors="replace") as fh:
                head = fh.read(4096)
        except OSError:
            continue
        if HEADER in head:  # only ever remove files that say we made them
            stale.append(path)
    return stale


def _check_user_data_dir(lab_dir: Path) -> None:
    path = lab_dir / USER_DATA_DIR
    if path.exists() and not path.is_dir():
        raise UsageError(
            f"{path} is a file (a coreos-vagrant lab?); coreos-lab keeps one user-data per node in the "
            f"directory {USER_DATA_DIR}/: move the file away first"
        )


def existing_lab_files(lab_dir: Path) -> list[Path]:
    """Files of a lab already present in ``lab_dir`` (what ``init`` refuses to overwrite without --force)."""
    candidates = [lab_dir / CONFIG_NAME, *(lab_dir / name for name in RENDERED_TOP), lab_dir / USER_DATA_DIR]
    candidates.append(lab_dir / tls.TLS_DIR)  # a lab CA is never replaced without --force
    return [p for p in candidates if p.exists()]


def _write(lab_dir: Path, cfg: LabConfig, files: Sequence[RenderedFile]) -> WriteResult:
    """Write the lab with Ctrl-C held back (:func:`~coreos_lab.fsutil.deferred_interrupt`): all or nothing."""
    with deferred_interrupt() as interrupted:
        written = write_lab_files(lab_dir, files, interrupted)
        removed = []
        for path in _stale_user_data(lab_dir, [f.path for f in files if f.path.startswith(f"{USER_DATA_DIR}/")]):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
        tls.tighten(lab_dir)
    return WriteResult(lab_dir, cfg, written, tuple(removed), tuple(lab_warnings(cfg)))


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
    would be refused anyway.
    """
    lab_dir = Path(lab_dir).absolute()
    config_mod.validate(draft, draft=True)
    if lab_dir.exists() and not lab_dir.is_dir():
        raise UsageError(f"{lab_dir} exists and is not a directory")
    _check_user_data_dir(lab_dir)
    present = existing_lab_files(lab_dir)
    if present and not force:
        raise UsageError(
            f"{lab_dir} already holds a lab ({', '.join(p.name for p in present)})",
            hint="use --force to overwrite it, or 'coreos-lab render' to re-render it",
        )
    if draft.bootstrap == "self-hosted" and draft.discovery_url is None and not discovery_endpoint:
        raise UsageError("--bootstrap self-hosted needs --discovery-endpoint URL (an etcd serving the v2 API)")
    cfg = discovery.resolve(draft, service=discovery_service, endpoint=discovery_endpoint, policy=policy)
    material = tls.generate(cfg) if cfg.tls else None
    files = (render_toml(cfg), *render_lab(cfg, material), *_tls_files(material))
    return _write(lab_dir, cfg, files)


def render_existing(lab_dir: Path) -> WriteResult:
    """Re-render a lab from its coreos-lab.toml (which is left untouched; no network, no new token)."""
    lab_dir = Path(lab_dir).absolute()
    cfg = config_mod.load(lab_dir)
    _check_user_data_dir(lab_dir)
    material = tls.load(lab_dir, cfg) if cfg.tls else None
    files = (*render_lab(cfg, material), *_tls_files(material, only_issued=True))
    result = _write(lab_dir, cfg, files)
    if material is not None and material.issued:
        what = ["a new lab CA" if "ca" in material.issued else ""]
        what += [f"certificates for {n}" for n in material.issued if n != "ca"]
        note = f"issued {', '.join(w for w in what if w)} in {tls.TLS_DIR}/ (nodes booted earlier need a re-provision)"
        result = replace(result, warnings=(*result.warnings, note))
    return result


def _tls_files(material: tls.LabTLS | None, *, only_issued: bool = False) -> list[RenderedFile]:
    if material is None:
        return []
    return [RenderedFile(path, text, tls.FILE_MODE) for path, text in material.files(only_issued=only_issued)]
