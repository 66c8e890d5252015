"""A lab's own certificate authority: etcd server, peer and client certificates for ``init --tls``.

``init --tls`` creates a CA, one server and one peer certificate per node (SANs: node name, node IP,
``127.0.0.1``, ``localhost``) and one client certificate, all with ECDSA P-256 keys. They live in the lab
directory under ``tls/`` (directories 0700, every file 0600) and are rendered into each node's user-data;
``render`` reuses them and only issues certificates for nodes that have none yet (saying so), so a running
cluster never finds its CA replaced behind its back.

Layout of ``<lab>/tls``::

    ca.pem  ca-key.pem  client.pem  client-key.pem
    <node>/server.pem  <node>/server-key.pem  <node>/peer.pem  <node>/peer-key.pem

On the nodes, the host's tools (etcdctl, fleet) find the CA and the client certificate in ``/etc/coreos-lab/tls``
on both dialects. Where etcd itself reads its files depends on the dialect (:func:`node_files`,
:func:`etcd_tls_environment`): the ``coreos`` dialect runs etcd on the host and reads them from
``/etc/coreos-lab/tls``; Flatcar runs etcd in a container that only sees ``ETCD_SSL_DIR``, see
:data:`FLATCAR_ETCD_DIR`. The offline lab box takes the Flatcar dialect but runs Debian's etcd on the host; it
reads the same paths, because ETCD_SSL_DIR is mounted at its own path in the container.

The etcd wiring asks :func:`client_material` for the client's files (or :func:`client_kwargs` for the
``EtcdClient`` arguments) and :func:`scheme` for the URL scheme:

>>> client_material(Path("/nonexistent")) is None
True
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coreos_lab.config import LabConfig, NodeSpec
from coreos_lab.errors import ConfigError

TLS_DIR: Final = "tls"
NODE_TLS_DIR: Final = "/etc/coreos-lab/tls"
CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca-key.pem"
CLIENT_CERT: Final = "client.pem"
CLIENT_KEY: Final = "client-key.pem"
NODE_FILES: Final = ("server.pem", "server-key.pem", "peer.pem", "peer-key.pem")
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
CA_DAYS: Final = 3650
LEAF_DAYS: Final = 1825
# Backdating absorbs clock skew between the host that issues and the VMs that check.
_BACKDATE: Final = dt.timedelta(hours=1)
# etcd 3.4's gRPC gateway dials the member itself presenting the *server* certificate, so with
# --client-cert-auth the server certificate needs clientAuth too; peers are both ends of every connection.
_BOTH: Final = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
# etcdctl and fleet on the node use these (same files as the host's client certificate).
NODE_ETCDCTL_FLAGS: Final = (
    f"--cacert={NODE_TLS_DIR}/ca.pem --cert={NODE_TLS_DIR}/client.pem --key={NODE_TLS_DIR}/client-key.pem"
)

# Flatcar runs etcd-member.service as a Docker container through /usr/lib/flatcar/etcd-wrapper, and etcd reads
# every ETCD_*_FILE path *inside* that container. What we relied on (public sources):
# - flatcar/scripts, sdk_container/src/third_party/coreos-overlay/app-admin/etcd-wrapper/files/etcd-wrapper
#   (commit df6ccd4c, and the copy shipped on Flatcar 4459.2.0): `docker run ... -u $(id -u ${ETCD_USER}):$(id -g
#   ${ETCD_USER}) -v /run:/run -v /usr/share/ca-certificates:/usr/share/ca-certificates:ro
#   -v ${etcd_data_dir}:/var/lib/etcd:rw -v ${ETCD_SSL_DIR}:/etc/ssl/certs:ro --env-file <(env; ...)`: the host
#   directory ETCD_SSL_DIR appears read-only at /etc/ssl/certs, the whole unit environment (our drop-in's ETCD_*
#   variables included) is handed to etcd, and etcd runs as the etcd user (so its keys must be etcd's, 0600 is fine).
#   That script has no default for ETCD_SSL_DIR; Flatcar 4459.2.0's etcd-member.service sets
#   Environment="ETCD_SSL_DIR=/etc/ssl/certs", the older docker wrapper (flatcar-archive/coreos-overlay,
#   app-admin/etcd-wrapper/files/etcd-wrapper) defaulted to the same. We set it ourselves in the drop-in, so the
#   mount does not depend on which unit/wrapper version the box ships.
# - We keep ETCD_SSL_DIR=/etc/ssl/certs (rather than pointing it at /etc/coreos-lab/tls) because the mount
#   *replaces* the image's /etc/ssl/certs: pointing it elsewhere would hide the image's CA bundle and etcd could no
#   longer verify https://discovery.etcd.io (bootstrap = "discovery"). Our files go into a subdirectory:
#   Flatcar's update-ca-certificates (flatcar/scripts .../app-misc/ca-certificates/files/update-ca-certificates)
#   c_rehashes and bundles only the top level of /etc/ssl/certs, and clean-ca-certificates.service deletes only
#   broken symlinks there, so the lab CA does not become a system-wide trust anchor and nothing removes our files.
#   With ETCD_SSL_DIR=/etc/ssl/certs the host path and the container path of each file are the same string, but
#   the two are kept apart below (flatcar_container_path) because only the container path is what etcd reads.
FLATCAR_SSL_DIR: Final = "/etc/ssl/certs"
"""ETCD_SSL_DIR in the Flatcar drop-in: the host directory etcd-wrapper bind-mounts into etcd's container."""
FLATCAR_CONTAINER_SSL_DIR: Final = "/etc/ssl/certs"
"""Where etcd-wrapper mounts ETCD_SSL_DIR inside the container (fixed in the wrapper)."""
FLATCAR_ETCD_SUBDIR: Final = "coreos-lab"
FLATCAR_ETCD_DIR: Final = f"{FLATCAR_SSL_DIR}/{FLATCAR_ETCD_SUBDIR}"
"""Host directory of etcd's CA, server and peer files on a Flatcar node (inside ETCD_SSL_DIR)."""
DIALECTS: Final = ("flatcar", "coreos")


def flatcar_container_path(host_path: str) -> str:
    """The path at which etcd, in etcd-wrapper's container, sees ``host_path`` (a file inside ETCD_SSL_DIR).

    >>> flatcar_container_path("/etc/ssl/certs/coreos-lab/server.pem")
    '/etc/ssl/certs/coreos-lab/server.pem'
    """
    prefix = FLATCAR_SSL_DIR.rstrip("/") + "/"
    if not host_path.startswith(prefix):
        raise ConfigError(f"internal: {host_path} is outside ETCD_SSL_DIR {FLATCAR_SSL_DIR}: etcd cannot see it")
    return FLATCAR_CONTAINER_SSL_DIR.rstrip("/") + "/" + host_path[len(prefix) :]


def _check_dialect(os_name: str) -> None:
    if os_name not in DIALECTS:
        raise ConfigError(f"internal: unknown dialect {os_name!r} (want one of {', '.join(DIALECTS)})")


@dataclass(frozen=True, slots=True)
class NodeFile:
    """One file of a node's ``write_files``: path on the node, PEM text, octal permissions, ``user:group``."""

    path: str
    content: str
    permissions: str
    owner: str


@dataclass(frozen=True, slots=True)
class NodeCerts:
    """One node's PEM texts: server certificate and key (clients), peer certificate and key (members)."""

    name: str
    server_cert: str
    server_key: str
    peer_cert: str
    peer_key: str


@dataclass(frozen=True, slots=True)
class LabTLS:
    """Everything ``init --tls`` creates, as PEM text. ``issued`` names what this run created (vs. reused)."""

    ca_cert: str
    ca_key: str
    client_cert: str
    client_key: str
    nodes: Mapping[str, NodeCerts]
    issued: tuple[str, ...] = ()

    def node(self, name: str) -> NodeCerts:
        """The certificates of node ``name``; ConfigError if there are none."""
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(f"no TLS certificates for node {name!r} in {TLS_DIR}/") from None

    def files(self, *, only_issued: bool = False) -> list[tuple[str, str]]:
        """``(path relative to the lab dir, PEM text)`` for every file (or only those issued by this run)."""
        out = [
            (f"{TLS_DIR}/{CA_CERT}", self.ca_cert),
            (f"{TLS_DIR}/{CA_KEY}", self.ca_key),
            (f"{TLS_DIR}/{CLIENT_CERT}", self.client_cert),
            (f"{TLS_DIR}/{CLIENT_KEY}", self.client_key),
        ]
        if only_issued and "ca" not in self.issued:
            out = []
        for name, certs in self.nodes.items():
            if only_issued and name not in self.issued:
                continue
            texts = (certs.server_cert, certs.server_key, certs.peer_cert, certs.peer_key)
            out += [(f"{TLS_DIR}/{name}/{fname}", text) for fname, text in zip(NODE_FILES, texts, strict=True)]
        return out

    def node_files(self, name: str, os_name: str) -> list[NodeFile]:
        """The TLS files written into node ``name``'s user-data for dialect ``os_name`` (keys 0600).

        ``coreos``: everything in ``/etc/coreos-lab/tls``, owned by etcd (etcd runs on the host as that user).
        ``flatcar``: etcd's CA, server and peer files in :data:`FLATCAR_ETCD_DIR` (inside ETCD_SSL_DIR, the only
        host directory etcd's container sees), owned by etcd (the container runs as its uid/gid); the CA and the
        client certificate for the host's etcdctl in ``/etc/coreos-lab/tls``, owned by root (no key is copied
        to a place whose reader does not need it).
        """
        _check_dialect(os_name)
        certs = self.node(name)
        etcd_owner = "etcd:etcd"
        if os_name == "coreos":
            return [
                NodeFile(f"{NODE_TLS_DIR}/ca.pem", self.ca_cert, "0644", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/server.pem", certs.server_cert, "0644", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/server-key.pem", certs.server_key, "0600", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/peer.pem", certs.peer_cert, "0644", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/peer-key.pem", certs.peer_key, "0600", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/client.pem", self.client_cert, "0644", etcd_owner),
                NodeFile(f"{NODE_TLS_DIR}/client-key.pem", self.client_key, "0600", etcd_owner),
            ]
        host_owner = "root:root"
        return [
            NodeFile(f"{FLATCAR_ETCD_DIR}/ca.pem", self.ca_cert, "0644", etcd_owner),
            NodeFile(f"{FLATCAR_ETCD_DIR}/server.pem", certs.server_cert, "0644", etcd_owner),
            NodeFile(f"{FLATCAR_ETCD_DIR}/server-key.pem", certs.server_key, "0600", etcd_owner),
            NodeFile(f"{FLATCAR_ETCD_DIR}/peer.pem", certs.peer_cert, "0644", etcd_owner),
            NodeFile(f"{FLATCAR_ETCD_DIR}/peer-key.pem", certs.peer_key, "0600", etcd_owner),
            NodeFile(f"{NODE_TLS_DIR}/ca.pem", self.ca_cert, "0644", host_owner),
            NodeFile(f"{NODE_TLS_DIR}/client.pem", self.client_cert, "0644", host_owner),
            NodeFile(f"{NODE_TLS_DIR}/client-key.pem", self.client_key, "0600", host_owner),
        ]


def etcd_tls_environment(os_name: str) -> list[tuple[str, str]]:
    """The ``ETCD_*`` TLS variables of a node's etcd configuration, as etcd must see them.

    ``coreos``: paths on the node (etcd runs on the host). ``flatcar``: ``ETCD_SSL_DIR`` (read by etcd-wrapper
    to bind-mount it) first, then the paths inside etcd's container.

    >>> dict(etcd_tls_environment("flatcar"))["ETCD_CERT_FILE"]
    '/etc/ssl/certs/coreos-lab/server.pem'
    """
    _check_dialect(os_name)

    def seen(fname: str) -> str:
        if os_name == "coreos":
            return f"{NODE_TLS_DIR}/{fname}"
        return flatcar_container_path(f"{FLATCAR_ETCD_DIR}/{fname}")

    prefix = [("ETCD_SSL_DIR", FLATCAR_SSL_DIR)] if os_name == "flatcar" else []
    return [
        *prefix,
        ("ETCD_CERT_FILE", seen("server.pem")),
        ("ETCD_KEY_FILE", seen("server-key.pem")),
        ("ETCD_TRUSTED_CA_FILE", seen("ca.pem")),
        ("ETCD_CLIENT_CERT_AUTH", "true"),
        ("ETCD_PEER_CERT_FILE", seen("peer.pem")),
        ("ETCD_PEER_KEY_FILE", seen("peer-key.pem")),
        ("ETCD_PEER_TRUSTED_CA_FILE", seen("ca.pem")),
        ("ETCD_PEER_CLIENT_CERT_AUTH", "true"),
    ]


def scheme(cfg: LabConfig) -> str:
    """``https`` for a TLS lab, else ``http`` (etcd client and peer URLs)."""
    return "https" if cfg.tls else "http"


# ---------------------------------------------------------------- issuing


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "coreos-lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> tuple[str, str]:
    key = _key()
    ca_public = ca_key.public_key()
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def node_sans(node: NodeSpec) -> list[x509.GeneralName]:
    """What a node's certificates must cover: its name, its IP, and loopback (etcdctl on the node)."""
    return [
        x509.DNSName(node.name),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address(node.ip)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]


def _issue_node(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, node: NodeSpec) -> NodeCerts:
    server_cert, server_key = _issue(ca_cert, ca_key, node.name, _BOTH, node_sans(node))
    peer_cert, peer_key = _issue(ca_cert, ca_key, node.name, _BOTH, node_sans(node))
    return NodeCerts(node.name, server_cert, server_key, peer_cert, peer_key)


def new_ca(label: str) -> tuple[str, str]:
    """A self-signed CA certificate and key (PEM), named after the lab's cluster token."""
    key = _key()
    name = _name(f"coreos-lab CA {label}")
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def generate(cfg: LabConfig, *, ca: tuple[str, str] | None = None) -> LabTLS:
    """A new CA (or the given ``(cert, key)`` PEMs), a client certificate and certificates for every node."""
    ca_cert_pem, ca_key_pem = ca or new_ca(cfg.cluster_token)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem, TLS_DIR)
    client_cert, client_key = _issue(ca_cert, ca_key, "coreos-lab-client", [ExtendedKeyUsageOID.CLIENT_AUTH])
    nodes = {node.name: _issue_node(ca_cert, ca_key, node) for node in cfg.nodes}
    issued = ("ca", *nodes) if ca is None else tuple(nodes)
    return LabTLS(ca_cert_pem, ca_key_pem, client_cert, client_key, nodes, issued)


# ---------------------------------------------------------------- reading back (render)


def _load_ca(cert_pem: str, key_pem: str, where: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"{where}: the lab CA is not a PEM certificate and key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{where}: the lab CA key is not an ECDSA key")
    if cert.public_key() != key.public_key():
        raise ConfigError(f"{where}: {CA_CERT} and {CA_KEY} do not belong together")
    return cert, key


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def _check_node_cert(pem: str, key_pem: str, path: Path, ca_cert: x509.Certificate, node: NodeSpec) -> None:
    """The certificate must be ours, current, still name the node's name and IP, and go with its key."""
    hint = f"remove {path.parent} and run 'coreos-lab render' to issue new certificates for {node.name}"
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"{path} is not a certificate issued by this lab's CA", hint=hint) from exc
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise ConfigError(f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}", hint=hint)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    if node.name not in names or node.ip not in ips:
        raise ConfigError(f"{path} does not cover {node.name} at {node.ip} (the lab changed?)", hint=hint)
    key_path = path.with_name(path.stem + "-key.pem")
    try:
        key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key", hint=hint) from exc
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} does not belong to {path.name}", hint=hint)


def load(lab_dir: Path, cfg: LabConfig) -> LabTLS:
    """The lab's TLS material for ``render``: reuse what exists, issue only what is missing.

    - no ``tls/`` files at all (``tls = true`` was just set by hand): a new CA and everything (``issued``
      says so, and the caller reports it);
    - a CA exists: every node certificate present is checked (issued by this CA, not expired, naming the
      node's name and IP) and reused; a node without certificates (the lab grew) gets new ones;
    - anything half there (a CA certificate without its key, a node with some of its files) is an error:
      nothing is replaced silently.
    """
    base = Path(lab_dir) / TLS_DIR
    ca_cert_pem, ca_key_pem = _read(base / CA_CERT), _read(base / CA_KEY)
    client_cert, client_key = _read(base / CLIENT_CERT), _read(base / CLIENT_KEY)
    node_texts = {node.name: [_read(base / node.name / f) for f in NODE_FILES] for node in cfg.nodes}
    present = [t for t in (ca_cert_pem, ca_key_pem, client_cert, client_key) if t is not None]
    present += [t for texts in node_texts.values() for t in texts if t is not None]
    if not present:
        return generate(cfg)
    hint = f"restore {base} from a backup, or remove it and re-render to create a new lab CA"
    if ca_cert_pem is None or ca_key_pem is None or client_cert is None or client_key is None:
        missing = [
            n
            for n, t in (
                (CA_CERT, ca_cert_pem),
                (CA_KEY, ca_key_pem),
                (CLIENT_CERT, client_cert),
                (CLIENT_KEY, client_key),
            )
            if t is None
        ]
        raise ConfigError(f"{base} is incomplete: {', '.join(missing)} missing", hint=hint)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem, str(base))
    nodes: dict[str, NodeCerts] = {}
    issued: list[str] = []
    for node in cfg.nodes:
        texts = node_texts[node.name]
        if all(t is None for t in texts):
            nodes[node.name] = _issue_node(ca_cert, ca_key, node)
            issued.append(node.name)
            continue
        if any(t is None for t in texts):
            missing = [f for f, t in zip(NODE_FILES, texts, strict=True) if t is None]
            raise ConfigError(
                f"{base / node.name} is incomplete: {', '.join(missing)} missing",
                hint=f"remove {base / node.name} and re-render to issue new certificates for {node.name}",
            )
        server_cert, server_key, peer_cert, peer_key = (t or "" for t in texts)
        _check_node_cert(server_cert, server_key, base / node.name / "server.pem", ca_cert, node)
        _check_node_cert(peer_cert, peer_key, base / node.name / "peer.pem", ca_cert, node)
        nodes[node.name] = NodeCerts(node.name, server_cert, server_key, peer_cert, peer_key)
    return LabTLS(ca_cert_pem, ca_key_pem, client_cert, client_key, nodes, tuple(issued))


def tighten(lab_dir: Path) -> None:
    """Make ``tls/`` and its subdirectories 0700 (directories a user created by hand may be wider)."""
    base = Path(lab_dir) / TLS_DIR
    if not base.is_dir():
        return
    for directory in (base, *(p for p in base.iterdir() if p.is_dir() and not p.is_symlink())):
        os.chmod(directory, DIR_MODE)


def client_material(lab_dir: Path) -> tuple[Path, Path, Path] | None:
    """``(client cert, client key, CA cert)`` paths of a TLS lab, or None when the lab has no TLS files.

    For :class:`coreos_lab.etcd.EtcdClient`: ``EtcdClient(url, cert=(cert, key), verify=str(ca))``.
    """
    base = Path(lab_dir) / TLS_DIR
    paths = (base / CLIENT_CERT, base / CLIENT_KEY, base / CA_CERT)
    return paths if all(p.is_file() for p in paths) else None


def client_kwargs(lab_dir: Path) -> dict[str, Any]:
    """Keyword arguments for :class:`coreos_lab.etcd.EtcdClient` of this lab: ``cert``/``verify`` or nothing.

    >>> client_kwargs(Path("/nonexistent"))
    {}
    """
    material = client_material(lab_dir)
    if material is None:
        return {}
    cert, key, ca = material
    return {"cert": (str(cert), str(key)), "verify": str(ca)}
