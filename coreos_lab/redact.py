"""Keeping secrets out of output and logs: discovery tokens shortened, private keys never shown.

A discovery token lets anyone who knows it join (or break) the cluster's bootstrap, so coreos-lab prints only
its first characters; the full URL stays in coreos-lab.toml (mode 0600).

>>> mask_token("https://discovery.etcd.io/0123456789abcdef0123456789abcdef")
'https://discovery.etcd.io/0123…'
>>> mask_text("GET /v2/keys/discovery/fedcba9876543210fedcba9876543210/_config/size")
'GET /v2/keys/discovery/fedc…/_config/size'
"""

from __future__ import annotations

import logging
import re
from typing import Final

SHOWN: Final = 4
ELLIPSIS: Final = "…"
# Discovery tokens (public service and self-hosted uuid4().hex) are 32 hex digits, and they travel in URLs:
# right after the host (``https://discovery.etcd.io/<token>``, any discovery service) or after ``/discovery/``
# (a self-hosted token's etcd key). Machine ids have the same shape but are no secret (fleetctl prints them),
# so a bare 32-hex word, or one deeper in a path (``/_coreos.com/fleet/machines/<id>``), is left alone.
_TOKEN_RE: Final = re.compile(
    r"(?P<before>://[^/\s'\"]+/|/discovery/)"
    rf"(?P<shown>[0-9A-Fa-f]{{{SHOWN}}})[0-9A-Fa-f]{{{32 - SHOWN}}}(?![0-9A-Fa-f])"
)
_PEM_KEY_RE: Final = re.compile(r"-----BEGIN ((?:[A-Z]+ )?PRIVATE KEY)-----.*?(?:-----END \1-----|\Z)", re.DOTALL)


def mask_token(url: str | None) -> str | None:
    """A discovery URL with its token cut to the first characters; other URLs get their last path segment cut.

    Keeps enough to tell two labs apart, not enough to use. None stays None.
    """
    if url is None:
        return None
    masked = mask_text(url)
    if masked != url:
        return masked
    # A self-hosted token chosen by the user need not be hex: cut the last path segment instead.
    head, sep, last = url.rstrip("/").rpartition("/")
    if sep and "://" in head and len(last) > SHOWN and "/" in head.split("://", 1)[1]:
        return f"{head}/{last[:SHOWN]}{ELLIPSIS}"
    return url


def mask_text(text: str) -> str:
    """``text`` with every discovery token in a URL shortened and every PEM private key block replaced."""
    text = _PEM_KEY_RE.sub(lambda m: f"[{m.group(1).lower()} hidden]", text)
    return _TOKEN_RE.sub(lambda m: m.group("before") + m.group("shown") + ELLIPSIS, text)


class MaskingFormatter(logging.Formatter):
    """Wraps a formatter so nothing it emits (messages, arguments, tracebacks) carries a token or a key."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(self.inner.format(record))


def install_log_masking(logger: logging.Logger | None = None) -> None:
    """Wrap the formatter of every handler of ``logger`` (default: the root logger) in a MaskingFormatter.

    Handlers of the root logger see third-party records too (urllib3 logs request lines with the token in
    the path at debug level), which is why this goes on the handlers, not on coreos-lab's own logger.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not isinstance(handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter))
