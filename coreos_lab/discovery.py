"""How a new etcd cluster finds its members: a public discovery token, a self-hosted one, or a static list.

The token is fetched once, at ``init``, and stored in coreos-lab.toml: coreos-vagrant fetched a new one on
every ``vagrant up``, which split running clusters. ``render`` never fetches.

Every request has a timeout and a bounded number of attempts with exponential backoff (urllib3's ``Retry``:
:func:`coreos_lab.http.retries`); answers are checked (a public-service answer must be a URL ending in a 32-hex
token) before anything is written.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from coreos_lab.config import DISCOVERY_SERVICE, DISCOVERY_SERVICE_ENV, URL_RE, LabConfig
from coreos_lab.errors import ConfigError, DiscoveryError
from coreos_lab.http import ConnectError, RequestException, Response, Session, Timeout, is_timeout, retries, session

DEFAULT_SERVICE: Final = DISCOVERY_SERVICE
SERVICE_ENV: Final = DISCOVERY_SERVICE_ENV
TIMEOUT_ENV: Final = "COREOS_LAB_DISCOVERY_TIMEOUT"
OFFLINE_HINT: Final = "use --bootstrap static to bootstrap without network"
TOKEN_URL_RE: Final = re.compile(r"^https?://\S+/[0-9a-f]{32}$")
_MAX_ANSWER: Final = 2048


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-request timeout (seconds), total attempts, and the first backoff (doubled after each failure)."""

    timeout: float = 10.0
    attempts: int = 3
    backoff: float = 0.5

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with the timeout taken from $COREOS_LAB_DISCOVERY_TIMEOUT when set."""
        raw = os.environ.get(TIMEOUT_ENV)
        if not raw:
            return cls()
        try:
            timeout = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from exc
        if not 0 < timeout <= 300:
            raise ConfigError(f"{TIMEOUT_ENV} must be between 0 and 300 seconds, got {raw!r}")
        return cls(timeout=timeout)


def _short_reason(exc: RequestException) -> str:
    """requests' messages run to several hundred characters; keep the errno part when there is one."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0).strip()
    if isinstance(exc, Timeout):
        return "timed out"
    return type(exc).__name__


def _session(policy: RetryPolicy) -> Session:
    # trust_env stays on: a public discovery service may have to be reached through the user's proxy.
    return session(trust_env=True, retry=retries(policy.attempts, policy.backoff))


def _send(what: str, send: Callable[[], Response], policy: RetryPolicy) -> Response:
    """``send`` (retried by urllib3 as ``policy`` says); a last failure or 5xx answer is a DiscoveryError."""
    given_up = f"{what} failed after {policy.attempts} attempts"
    try:
        resp = send()
    except RequestException as exc:
        if is_timeout(exc):
            raise DiscoveryError(f"{given_up}: no answer within {policy.timeout:g}s", hint=OFFLINE_HINT) from exc
        if isinstance(exc, ConnectError):
            raise DiscoveryError(f"{given_up}: {_short_reason(exc)}", hint=OFFLINE_HINT) from exc
        raise DiscoveryError(f"{what} failed: {_short_reason(exc)}", hint=OFFLINE_HINT) from exc
    if resp.status_code >= 500:
        raise DiscoveryError(f"{given_up}: HTTP {resp.status_code}", hint=OFFLINE_HINT)
    return resp


def _preview(text: str) -> str:
    one_line = " ".join(text.split())
    return repr(one_line[:60] + ("..." if len(one_line) > 60 else ""))


def new_token(
    size: int,
    service: str = DEFAULT_SERVICE,
    *,
    policy: RetryPolicy | None = None,
) -> str:
    """Ask a discovery service (``GET {service}/new?size=N``) for a new token URL and check the answer.

    Returns the token URL, e.g. ``https://discovery.etcd.io/<32 hex digits>``.
    """
    policy = policy or RetryPolicy()
    service = _check_base_url(service, "discovery service")
    what = f"discovery service {service}"
    with _session(policy) as web:
        resp = _send(
            what,
            lambda: web.get(
                f"{service}/new", params={"size": str(size)}, timeout=policy.timeout, allow_redirects=False
            ),
            policy,
        )
    if resp.status_code != 200:
        raise DiscoveryError(f"{what} answered HTTP {resp.status_code}: {_preview(resp.text)}", hint=OFFLINE_HINT)
    body = resp.text.strip()
    if not body:
        raise DiscoveryError(f"{what} answered an empty body instead of a token URL", hint=OFFLINE_HINT)
    if len(body) > _MAX_ANSWER or not TOKEN_URL_RE.match(body) or not URL_RE.match(body):
        raise DiscoveryError(f"{what} answered {_preview(body)}, not a URL ending in a 32-hex token", hint=OFFLINE_HINT)
    return body


def create_self_hosted(
    endpoint: str,
    size: int,
    *,
    token: str | None = None,
    policy: RetryPolicy | None = None,
) -> str:
    """Create a discovery token on an etcd with the v2 API; return its discovery URL.

    Sets ``{endpoint}/v2/keys/discovery/<token>/_config/size`` to ``size`` and returns
    ``{endpoint}/v2/keys/discovery/<token>``, which etcd's ``--discovery`` accepts.
    """
    policy = policy or RetryPolicy()
    endpoint = _check_base_url(endpoint, "discovery endpoint")
    token = token or uuid.uuid4().hex
    url = f"{endpoint}/v2/keys/discovery/{token}"
    what = f"etcd at {endpoint}"
    with _session(policy) as web:
        resp = _send(
            what, lambda: web.put(f"{url}/_config/size", data={"value": str(size)}, timeout=policy.timeout), policy
        )
    if resp.status_code == 404:
        raise DiscoveryError(
            f"{what} does not serve the v2 keys API (HTTP 404); start it with --enable-v2", hint=OFFLINE_HINT
        )
    if resp.status_code not in (200, 201):
        raise DiscoveryError(f"{what} answered HTTP {resp.status_code}: {_preview(resp.text)}", hint=OFFLINE_HINT)
    try:
        node = resp.json()["node"]
        value = node["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DiscoveryError(
            f"{what} answered {_preview(resp.text)}, not an etcd v2 keys answer", hint=OFFLINE_HINT
        ) from exc
    if value != str(size):
        raise DiscoveryError(f"{what} stored size {value!r}, expected {size}", hint=OFFLINE_HINT)
    return url


def _check_base_url(url: str, what: str) -> str:
    url = url.rstrip("/")
    if not URL_RE.match(url):
        raise ConfigError(f"{what} must be a plain http(s) URL, got {url!r}")
    return url


def resolve(
    cfg: LabConfig,
    *,
    service: str | None = None,
    endpoint: str | None = None,
    policy: RetryPolicy | None = None,
) -> LabConfig:
    """Return ``cfg`` with its discovery_url filled in for its bootstrap mode (network only when needed).

    - static: no discovery URL (a given one is dropped: etcd would ignore it beside an initial cluster);
    - discovery: keep a given URL (``--discovery-url``), else fetch a new token from ``service``
      (default: $COREOS_LAB_DISCOVERY_SERVICE, else the public service);
    - self-hosted: keep a given URL, else create a token on the etcd at ``endpoint``.
    """
    # ``cfg`` is validated (as a draft) by the caller, and the URL a service hands back is checked where it is
    # fetched: nothing here needs validating again.
    if cfg.bootstrap == "static":
        return replace(cfg, discovery_url=None)
    if cfg.discovery_url is not None:
        return cfg
    if cfg.bootstrap == "discovery":
        url = new_token(cfg.instances, service or os.environ.get(SERVICE_ENV) or DEFAULT_SERVICE, policy=policy)
    else:
        # A self-hosted draft names its endpoint: config.validate's rule (without one, the URL check refuses "").
        url = create_self_hosted(endpoint or "", cfg.instances, policy=policy)
    return replace(cfg, discovery_url=url)
