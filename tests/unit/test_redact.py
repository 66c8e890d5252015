"""Secrets stay secret: discovery tokens masked in output, errors and --debug logs; secret files are 0600."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coreos_lab.cli import app
from coreos_lab.config import CONFIG_NAME, load
from coreos_lab.discovery import SERVICE_ENV
from coreos_lab.redact import MaskingFormatter, install_log_masking, mask_text, mask_token

from .test_discovery import TOKEN, FakeService, Reply, service  # noqa: F401 - fixture

SCRIPT = Path(sys.executable).parent / "coreos-lab"
UUID_TOKEN = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"https://discovery.etcd.io/{TOKEN}", "https://discovery.etcd.io/0123…"),
        (f"http://127.0.0.1:2379/v2/keys/discovery/{UUID_TOKEN}", "http://127.0.0.1:2379/v2/keys/discovery/fedc…"),
        ("http://10.0.0.1:2379/v2/keys/discovery/my-own-lab-token", "http://10.0.0.1:2379/v2/keys/discovery/my-o…"),
        ("https://discovery.etcd.io/", "https://discovery.etcd.io/"),
        ("https://discovery.etcd.io", "https://discovery.etcd.io"),
        (None, None),
    ],
)
def test_mask_token(url: str | None, masked: str | None) -> None:
    assert mask_token(url) == masked


def test_mask_text_leaves_other_hex_alone() -> None:
    member_id = "8e9e05c52164694d"
    sha1 = "fedcba98765432100123456789abcdef01234567"
    machine_id = "113f16a7b2d94a5fbd6c83d6b7c2f0aa"  # same shape as a token, but no secret
    text = (
        f"member {member_id} unit hash {sha1} machine {machine_id} key /_coreos.com/fleet/machines/{machine_id}/object"
        f" token https://discovery.etcd.io/{TOKEN}."
    )
    assert mask_text(text) == text.replace(TOKEN, "0123…")
    assert mask_text(f"'http://127.0.0.1:8080/{TOKEN}'") == "'http://127.0.0.1:8080/0123…'"


def test_mask_text_hides_private_keys() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA\n-----END EC PRIVATE KEY-----"
    pkcs8 = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"
    cut = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG"  # a truncated key is hidden too
    out = mask_text(f"a {pem} b {pkcs8} c {cut}")
    assert "MHcCAQEEIA" not in out
    assert "MIGHAgEAMBMG" not in out
    assert out == "a [ec private key hidden] b [private key hidden] c [private key hidden]"
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert mask_text(cert) == cert


def test_masking_formatter_covers_args_and_tracebacks() -> None:
    formatter = MaskingFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "PUT %s", (f"/v2/keys/discovery/{TOKEN}",), None)
    assert formatter.format(record) == "PUT /v2/keys/discovery/0123…"
    try:
        raise ValueError(f"bad url https://discovery.etcd.io/{TOKEN}")
    except ValueError:
        record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert "Traceback" in text
    assert TOKEN not in text
    assert "https://discovery.etcd.io/0123…" in text


def test_install_log_masking_is_idempotent() -> None:
    logger = logging.getLogger("coreos_lab.test_redact")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        install_log_masking(logger)
        first = handler.formatter
        install_log_masking(logger)
        assert handler.formatter is first
        assert isinstance(first, MaskingFormatter)
    finally:
        logger.removeHandler(handler)


def test_init_json_masks_the_token_and_the_toml_keeps_it(tmp_path: Path, service: FakeService) -> None:  # noqa: F811
    service.script(Reply(body=f"{service.url}/{TOKEN}"))
    old = os.umask(0)  # even a permissive umask must not widen the config file
    try:
        result = CliRunner().invoke(
            app, ["init", str(tmp_path), "--bootstrap", "discovery", "--json"], env={SERVICE_ENV: service.url}
        )
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert json.loads(result.stdout)["discovery_url"] == f"{service.url}/0123…"
    assert load(tmp_path).discovery_url == f"{service.url}/{TOKEN}"
    assert stat.S_IMODE((tmp_path / CONFIG_NAME).stat().st_mode) == 0o600
    text = CliRunner().invoke(app, ["render", "--lab", str(tmp_path)])
    assert text.exit_code == 0
    assert TOKEN not in text.stdout + text.stderr


def test_error_lines_mask_the_token(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["init", str(tmp_path)]).exit_code == 0
    toml_path = tmp_path / CONFIG_NAME
    bad = f'bootstrap = "discovery"\ndiscovery_url = "https://discovery.etcd.io/{TOKEN} x"\n'
    toml_path.write_text(toml_path.read_text().replace('bootstrap = "static"\n', bad))
    result = CliRunner().invoke(app, ["render", "--lab", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "discovery_url" in result.stderr
    assert TOKEN not in result.stderr
    assert "0123…" in result.stderr


def test_debug_log_masks_the_self_hosted_token(tmp_path: Path, service: FakeService) -> None:  # noqa: F811
    """The real console script with --debug: urllib3 logs the PUT of the token's key; the log shows it masked."""
    service.script(Reply(body='{"action":"set","node":{"key":"/x","value":"3"}}', content_type="application/json"))
    env = {k: v for k, v in os.environ.items() if k != "COREOS_LAB_DIR"}
    proc = subprocess.run(
        [
            str(SCRIPT),
            "--debug",
            "init",
            str(tmp_path / "lab"),
            "--bootstrap",
            "self-hosted",
            "--discovery-endpoint",
            service.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    url = load(tmp_path / "lab").discovery_url
    assert url is not None
    token = url.rsplit("/", 1)[1]
    ((method, path, _),) = service.requests
    assert method == "PUT"
    assert token in path
    assert "debug: urllib3" in proc.stderr, "the request line must be logged at debug level (else this proves nothing)"
    assert f"/v2/keys/discovery/{token[:4]}…/_config/size" in proc.stderr
    assert token not in proc.stderr + proc.stdout
