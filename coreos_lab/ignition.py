"""Ignition configs for a lab's nodes (``provision = "ignition"``): one spec 3.3.0 config per node, built as data.

Spec 3.3.0 is the newest both Flatcar's Ignition and Debian's ``ignition`` 2.14 accept (Butane's ``flatcar``
variant 1.0.0). A node's config carries what its cloud-config would, from the same lab model:

- ``/etc/hostname`` (overwritten: the lab box's root has one) and the placement metadata file
  (:data:`coreos_lab.nodeshell.METADATA_PATH`), both 0644 (Ignition's default for a new file,
  left implicit: on VirtualBox every byte counts);
- ``etcd-member.service`` enabled, with the drop-in ``20-cluster.conf``, and ``docker.service`` enabled;
- with TLS, the node's files where the cloud-config puts them, with the same modes and owners;
- each of the user's ``--ignition-merge`` files in ``ignition.config.merge``, inline.

The texts both dialects share (the drop-in, the metadata file) come from :mod:`coreos_lab.render` as
:class:`NodeTexts`, so a node says the same under either channel.

Every file's contents is an RFC 2397 data URL, percent-encoded the way Ignition's own encoder does it (every
byte except ``A-Za-z0-9-_.!~*'()`` as ``%XX``). The JSON is compact: VirtualBox hands a config over as a guest
property of at most :data:`~coreos_lab.pickup.VBOX_GUESTPROP_MAX` bytes, and a bigger one is refused here with
the alternatives. A lab writes ``ignition/<node>.ign`` (never ``config.ign`` in the lab root: Flatcar's box
hands that name to every node by itself); ``render --out DIR`` writes ``DIR/<node>.ign``.

Checks: merge files must be JSON objects of spec 3.0.0 to 3.3.0 that leave coreos-lab's units and paths alone.
When ``ignition-validate`` (Debian's ``ignition`` package) is on PATH it also checks every merge file and every
rendered config before anything is written; without it only these structural checks run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from coreos_lab import nodeshell, pickup, tls
from coreos_lab.config import LabConfig, NodeSpec
from coreos_lab.errors import ConfigError, CoreosLabError, UsageError

SPEC_VERSION: Final = "3.3.0"
MERGE_VERSIONS: Final = ("3.0.0", "3.1.0", "3.2.0", "3.3.0")
IGNITION_DIR: Final = pickup.IGNITION_DIR
SUFFIX: Final = ".ign"
# Flatcar's Ignition reads both fw_cfg names; upstream's ``qemu`` platform (Debian's 2.14) reads the second.
FW_CFG_NAMES: Final = ("opt/org.flatcar-linux/config", "opt/com.coreos/config")
GUEST_PROPERTY: Final = "/Ignition/Config"
VBOX_MAX: Final = pickup.VBOX_GUESTPROP_MAX
ETCD_UNIT: Final = "etcd-member.service"
ETCD_DROP_IN: Final = "20-cluster.conf"  # the cloud-config's name too: the twin behaves the same under both
DOCKER_UNIT: Final = "docker.service"
HOSTNAME_PATH: Final = "/etc/hostname"
VALIDATOR: Final = "ignition-validate"
VALIDATE_TIMEOUT: Final = 60
_DATA_URL_SAFE: Final = "-_.!~*'()"  # with letters and digits: RFC 2396's unreserved characters


@dataclass(frozen=True, slots=True)
class NodeTexts:
    """What a node's cloud-config says too: etcd-member's drop-in ``20-cluster.conf``, the metadata file."""

    dropin: str
    metadata: str


@dataclass(frozen=True, slots=True)
class MergeFile:
    """One of the user's ``--ignition-merge`` files as read and checked: where, its bytes, spec version, mode."""

    path: Path
    raw: bytes
    version: str
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def data_url(content: str | bytes) -> str:
    """An RFC 2397 data URL of ``content`` (UTF-8 for text), percent-encoded.

    >>> data_url("role=web\\n")
    'data:,role%3Dweb%0A'
    """
    raw = content.encode("utf-8") if isinstance(content, str) else content
    return "data:," + quote(raw, safe=_DATA_URL_SAFE)


def delivery(provider: str) -> str:
    """How the rendered Vagrantfile hands a node its config on ``provider`` (for reports)."""
    if provider == "virtualbox":
        return f"the VirtualBox guest property {GUEST_PROPERTY}"
    return f"QEMU fw_cfg as {' and '.join(FW_CFG_NAMES)}"


def config_path(node: str) -> str:
    """Where a lab keeps ``node``'s config, relative to the lab directory."""
    return f"{IGNITION_DIR}/{node}{SUFFIX}"


# ---------------------------------------------------------------- building


def node_config(
    cfg: LabConfig,
    node: NodeSpec,
    texts: NodeTexts,
    *,
    tls_files: Sequence[tls.NodeFile] = (),
    merges: Sequence[MergeFile] = (),
) -> dict[str, Any]:
    """``node``'s Ignition config as data."""
    if cfg.os != "flatcar":
        raise ConfigError(f"Ignition configs are rendered for os flatcar, not {cfg.os!r}")
    header: dict[str, Any] = {"version": SPEC_VERSION}
    if merges:
        header["config"] = {"merge": [{"source": data_url(m.raw)} for m in merges]}
    files: list[dict[str, Any]] = [
        {"path": HOSTNAME_PATH, "overwrite": True, "contents": {"source": data_url(node.name + "\n")}},
        {"path": nodeshell.METADATA_PATH, "contents": {"source": data_url(texts.metadata)}},
    ]
    for item in tls_files:
        user, _, group = item.owner.partition(":")
        files.append(
            {
                "path": item.path,
                "mode": int(item.permissions, 8),
                "user": {"name": user},
                "group": {"name": group or user},
                "contents": {"source": data_url(item.content)},
            }
        )
    units = [
        {"name": ETCD_UNIT, "enabled": True, "dropins": [{"name": ETCD_DROP_IN, "contents": texts.dropin}]},
        {"name": DOCKER_UNIT, "enabled": True},
    ]
    return {"ignition": header, "storage": {"files": files}, "systemd": {"units": units}}


def dumps(config: Mapping[str, Any]) -> str:
    """The config as written: compact JSON, ASCII only, one final newline."""
    return json.dumps(config, separators=(",", ":")) + "\n"


def render_configs(
    cfg: LabConfig,
    texts: Mapping[str, NodeTexts],
    tls_material: tls.LabTLS | None = None,
    merges: Sequence[MergeFile] = (),
    *,
    in_lab: bool = True,
) -> list[tuple[str, str, int]]:
    """``(path, text, mode)`` of every node's config, checked; nothing is written here.

    ``in_lab``: paths ``ignition/<node>.ign``, and on VirtualBox a config over :data:`VBOX_MAX` bytes is refused
    (UsageError naming the alternatives); otherwise ``<node>.ign`` with no size rule (for Terraform or a cloud),
    from certificates the lab has (none issued for the occasion).
    Files holding private keys (TLS), or a merge file only its owner may read, are 0600.
    """
    if cfg.tls and tls_material is None:
        raise ConfigError("internal: a TLS lab renders only with its certificates (tls.generate or tls.load)")
    if not in_lab and tls_material is not None and tls_material.issued:  # --out writes nothing into the lab
        missing = ", ".join("the lab CA" if n == "ca" else n for n in tls_material.issued)
        raise UsageError(f"{tls.TLS_DIR}/ has no certificates for {missing} yet: run 'coreos-lab render' first")
    private = cfg.tls or any(not m.mode & 0o077 for m in merges)
    mode = tls.FILE_MODE if private else 0o644
    out = []
    for node in cfg.nodes:
        files = tls_material.node_files(node.name, cfg.os) if cfg.tls and tls_material else []
        text = dumps(node_config(cfg, node, texts[node.name], tls_files=files, merges=merges))
        path = config_path(node.name) if in_lab else f"{node.name}{SUFFIX}"
        size = len(text.encode("utf-8"))
        if in_lab and cfg.provider == "virtualbox" and size > VBOX_MAX:
            raise UsageError(
                f"{path} would be {size} bytes: VirtualBox hands Ignition its config as the guest property "
                f"{GUEST_PROPERTY}, which holds at most {VBOX_MAX} bytes; use --provider libvirt (QEMU fw_cfg has no "
                "such limit) or --provision cloud-config, or make the config smaller (fewer nodes, metadata, merge "
                "files; no --tls)"
            )
        validate_text(text, path, rendered=True)
        out.append((path, text, mode))
    return out


# ---------------------------------------------------------------- the user's own Ignition (--ignition-merge)


def read_lab_inputs(lab_dir: Path, cfg: LabConfig) -> tuple[MergeFile, ...]:
    """An Ignition lab's inputs: UsageError if the lab root has a user-data file or config.ign
    (:func:`coreos_lab.pickup.ignition_lab_problems`), else :func:`read_merges`."""
    for problem in pickup.ignition_lab_problems(lab_dir):
        raise UsageError(problem)
    return read_merges(lab_dir, cfg)


def read_merges(lab_dir: Path, cfg: LabConfig) -> tuple[MergeFile, ...]:
    """Read and check every ``ignition_merge`` file of ``cfg`` (relative paths from ``lab_dir``)."""
    lab_dir = Path(lab_dir)
    rendered = (lab_dir / IGNITION_DIR).absolute()
    out = []
    for name in cfg.ignition_merge:
        path = Path(name) if Path(name).is_absolute() else lab_dir / name
        if rendered in path.absolute().parents:
            raise UsageError(
                f"{path}: {IGNITION_DIR}/ holds the configs coreos-lab renders; keep --ignition-merge files elsewhere"
            )
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode & 0o777
        except OSError as exc:
            raise UsageError(f"cannot read the --ignition-merge file {path}: {exc.strerror or exc}") from exc
        out.append(check_merge(raw, path, mode))
    return tuple(out)


def check_merge(raw: bytes, path: Path, mode: int = 0o644) -> MergeFile:
    """Check one merge file's bytes: JSON, an object, ``ignition.version`` 3.0.0..3.3.0, no claim on coreos-lab's
    units or paths, and ``ignition-validate`` when it is on PATH. UsageError (one line naming ``path``) otherwise."""
    source = str(path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start}): an Ignition config is JSON") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{source}: an Ignition config is a JSON object, got {type(data).__name__}")
    header = data.get("ignition")
    version = header.get("version") if isinstance(header, dict) else None
    if version not in MERGE_VERSIONS:
        raise UsageError(
            f"{source}: ignition.version must be one of {', '.join(MERGE_VERSIONS)} (what both Flatcar's and "
            f"Debian's Ignition read), got {version!r}"
        )
    try:
        pickup.check_ignition_claims(data, source)
    except UsageError as exc:
        raise UsageError(exc.message) from exc  # its hint speaks of a root config.ign
    validate_text(raw, source, rendered=False)
    return MergeFile(path, raw, str(version), mode)


# ---------------------------------------------------------------- Debian's validator


def validator() -> str | None:
    """The path of ``ignition-validate``, or None when it is not on PATH."""
    return shutil.which(VALIDATOR)


def validate_text(text: str | bytes, source: str, *, rendered: bool) -> None:
    """Run ``ignition-validate`` on ``text`` when it is on PATH (a no-op otherwise): ConfigError (a rendered
    config) or UsageError (the user's file) with its first error line. Warnings pass."""
    binary = validator()
    if binary is None:
        return
    payload = text.encode("utf-8") if isinstance(text, str) else text
    try:
        proc = subprocess.run([binary, "-"], input=payload, capture_output=True, timeout=VALIDATE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CoreosLabError(f"cannot run {binary}: {exc}") from exc
    if proc.returncode == 0:
        return
    lines = [line.strip() for line in proc.stdout.decode(errors="replace").splitlines() if line.strip()]
    lines += [line.strip() for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("error")), lines[0] if lines else "no output")
    if rendered:
        raise ConfigError(f"internal: {VALIDATOR} refused the rendered {source}: {first}")
    raise UsageError(f"{source}: {VALIDATOR} refused it: {first}")


# ---------------------------------------------------------------- configs rendered earlier


def is_ours(path: Path) -> bool:
    """A config coreos-lab rendered: it writes the placement metadata file, which no merge file may write."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    files = data.get("storage", {}).get("files", []) if isinstance(data, dict) else []
    if not isinstance(files, list):
        return False
    return any(isinstance(f, dict) and f.get("path") == nodeshell.METADATA_PATH for f in files)


def stale_configs(lab_dir: Path, keep: Sequence[str]) -> list[Path]:
    """``ignition/*.ign`` configs coreos-lab rendered earlier that this render did not (``keep``: lab paths)."""
    directory = Path(lab_dir) / IGNITION_DIR
    if not directory.is_dir():
        return []
    wanted = {Path(p).name for p in keep}
    return [p for p in sorted(directory.glob(f"*{SUFFIX}")) if p.name not in wanted and is_ours(p)]
