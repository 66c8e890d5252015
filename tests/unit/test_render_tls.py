"""Golden files of Flatcar TLS labs.

Keys and certificates are random, so the golden files are rendered with placeholder PEM texts (one per file,
naming what it stands for: a masked secret). A second test renders with real material from ``tls.generate`` and
checks that, once each real PEM text is swapped for its placeholder, the output is the golden file byte for byte:
the real rendering has exactly the golden structure, and only the PEM texts differ.
"""

from __future__ import annotations

import pytest

from coreos_lab import tls
from coreos_lab.config import LabConfig
from coreos_lab.render import render_lab, yaml_str

from .test_render import GOLDEN, UPDATE, lab

# (provider, bootstrap) of the Flatcar TLS golden labs: both providers, both ways a member finds its peers.
TLS_GOLDEN = [("virtualbox", "static"), ("libvirt", "discovery")]


def _placeholder(what: str) -> str:
    return f"-----BEGIN MASKED-----\n{what}\n-----END MASKED-----\n"


def masked_material(cfg: LabConfig) -> tls.LabTLS:
    """LabTLS whose every PEM text is a fixed placeholder naming the file it stands for."""
    nodes = {
        n.name: tls.NodeCerts(
            n.name,
            _placeholder(f"{n.name} server certificate"),
            _placeholder(f"{n.name} server key"),
            _placeholder(f"{n.name} peer certificate"),
            _placeholder(f"{n.name} peer key"),
        )
        for n in cfg.nodes
    }
    return tls.LabTLS(
        _placeholder("lab CA certificate"),
        _placeholder("lab CA key"),
        _placeholder("client certificate"),
        _placeholder("client key"),
        nodes,
    )


def _pairs(real: tls.LabTLS, masked: tls.LabTLS) -> list[tuple[str, str]]:
    out = [
        (real.ca_cert, masked.ca_cert),
        (real.ca_key, masked.ca_key),
        (real.client_cert, masked.client_cert),
        (real.client_key, masked.client_key),
    ]
    for name, certs in real.nodes.items():
        other = masked.node(name)
        out += [
            (certs.server_cert, other.server_cert),
            (certs.server_key, other.server_key),
            (certs.peer_cert, other.peer_cert),
            (certs.peer_key, other.peer_key),
        ]
    return out


@pytest.mark.parametrize(("provider", "bootstrap"), TLS_GOLDEN)
def test_flatcar_tls_golden(provider: str, bootstrap: str) -> None:
    cfg = lab("flatcar", provider, bootstrap, tls=True)
    files = render_lab(cfg, masked_material(cfg))
    folder = GOLDEN / f"flatcar-{provider}-{bootstrap}-tls"
    if UPDATE:
        for f in files:
            (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / f.path).write_text(f.content, encoding="utf-8")
    expected = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert sorted(f.path for f in files) == expected, "set of rendered files changed"
    for f in files:
        assert f.content == (folder / f.path).read_text(encoding="utf-8"), (
            f"{folder.name}/{f.path} differs from its golden file; rerun with COREOS_LAB_UPDATE_GOLDEN=1 if intended"
        )
        # user-data carries private keys: 0600 in the lab directory, like the keys under tls/
        assert f.mode == (0o600 if f.path.startswith("cloud-config/") else 0o644), f.path


@pytest.mark.parametrize(("provider", "bootstrap"), TLS_GOLDEN)
def test_flatcar_tls_real_material_has_the_golden_structure(provider: str, bootstrap: str) -> None:
    cfg = lab("flatcar", provider, bootstrap, tls=True)
    real = tls.generate(cfg)
    folder = GOLDEN / f"flatcar-{provider}-{bootstrap}-tls"
    for f in render_lab(cfg, real):
        text = f.content
        for secret, placeholder in _pairs(real, masked_material(cfg)):
            text = text.replace(yaml_str(secret), yaml_str(placeholder))
        assert "PRIVATE KEY" not in text, f"{f.path}: a key was not masked (rendered outside its write_files entry?)"
        assert "BEGIN CERTIFICATE" not in text, f"{f.path}: a certificate was not masked"
        assert text == (folder / f.path).read_text(encoding="utf-8"), f.path
