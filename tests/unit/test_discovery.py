"""Discovery against a real HTTP server on 127.0.0.1 (http.server in a thread): good, slow, 500, garbage, refused."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coreos_lab import discovery
from coreos_lab.config import LabConfig
from coreos_lab.discovery import RetryPolicy, create_self_hosted, new_token, resolve
from coreos_lab.errors import ConfigError, DiscoveryError
from coreos_lab.render import init_lab

TOKEN = "0123456789abcdef0123456789abcdef"
FAST = RetryPolicy(timeout=0.5, attempts=3, backoff=0.01)


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    delay: float = 0.0
    content_type: str = "text/plain"


@dataclass
class FakeService:
    """A scripted HTTP server: each request takes the next Reply (the last one repeats)."""

    url: str
    replies: deque[Reply] = field(default_factory=deque)
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def script(self, *replies: Reply) -> None:
        self.replies.clear()
        self.replies.extend(replies)

    def next_reply(self) -> Reply:
        return self.replies.popleft() if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def service() -> Iterator[FakeService]:
    state: FakeService

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            state.requests.append((self.command, self.path, body))
            reply = state.next_reply()
            if reply.delay:
                time.sleep(reply.delay)
            payload = reply.body.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        do_GET = _answer
        do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = FakeService(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_good_token(service: FakeService) -> None:
    service.script(Reply(body=f"{service.url}/{TOKEN}"))
    assert new_token(3, service.url, policy=FAST) == f"{service.url}/{TOKEN}"
    assert service.requests == [("GET", "/new?size=3", "")]


def test_trailing_newline_is_tolerated(service: FakeService) -> None:
    service.script(Reply(body=f"https://discovery.example/{TOKEN}\n"))
    assert new_token(1, service.url + "/", policy=FAST) == f"https://discovery.example/{TOKEN}"


def test_500_is_retried_then_succeeds(service: FakeService) -> None:
    service.script(Reply(500, "boom"), Reply(503, "busy"), Reply(body=f"{service.url}/{TOKEN}"))
    assert new_token(3, service.url, policy=FAST).endswith(TOKEN)
    assert len(service.requests) == 3


def test_persistent_500_gives_up_after_attempts(service: FakeService) -> None:
    service.script(Reply(500, "boom"))
    with pytest.raises(DiscoveryError, match=r"after 3 attempts: HTTP 500") as err:
        new_token(3, service.url, policy=FAST)
    assert len(service.requests) == 3
    assert "--bootstrap static" in str(err.value)


def test_400_is_not_retried(service: FakeService) -> None:
    service.script(Reply(400, "invalid size"))
    with pytest.raises(DiscoveryError, match="HTTP 400"):
        new_token(3, service.url, policy=FAST)
    assert len(service.requests) == 1


def test_slow_answer_times_out(service: FakeService) -> None:
    service.script(Reply(body=f"{service.url}/{TOKEN}", delay=1.0))
    started = time.monotonic()
    with pytest.raises(DiscoveryError, match=r"no answer within 0.2s"):
        new_token(3, service.url, policy=RetryPolicy(timeout=0.2, attempts=2, backoff=0.01))
    assert time.monotonic() - started < 2.0
    assert len(service.requests) == 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("<!DOCTYPE html><html><body>Service Unavailable</body></html>", "not a URL ending in a 32-hex token"),
        ("", "empty body"),
        ("   \n", "empty body"),
        ("https://discovery.etcd.io/notatoken", "32-hex"),
        (f"https://discovery.etcd.io/{TOKEN.upper()}", "32-hex"),
        (f'https://disc"overy.etcd.io/{TOKEN}', "32-hex"),
        (f"https://discovery.etcd.io/{TOKEN}\nEvil: yes", "32-hex"),
    ],
)
def test_garbage_answers(service: FakeService, body: str, match: str) -> None:
    service.script(Reply(body=body, content_type="text/html"))
    with pytest.raises(DiscoveryError, match=match) as err:
        new_token(3, service.url, policy=FAST)
    assert "\n" not in str(err.value)
    assert len(service.requests) == 1


def test_refused_port() -> None:
    with pytest.raises(DiscoveryError, match="Connection refused") as err:
        new_token(3, refused_url(), policy=FAST)
    assert "\n" not in str(err.value)
    assert "--bootstrap static" in str(err.value)


def test_bad_service_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="plain http"):
        new_token(3, "ftp://example.invalid", policy=FAST)


def test_self_hosted_against_fake_v2(service: FakeService) -> None:
    service.script(
        Reply(201, '{"action":"set","node":{"key":"/discovery/x/_config/size","value":"3"}}', content_type="json")
    )
    url = create_self_hosted(service.url, 3, token=TOKEN, policy=FAST)
    assert url == f"{service.url}/v2/keys/discovery/{TOKEN}"
    assert service.requests == [("PUT", f"/v2/keys/discovery/{TOKEN}/_config/size", "value=3")]


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (Reply(404, "404 page not found"), "--enable-v2"),
        (Reply(201, "<html>"), "not an etcd v2 keys answer"),
        (Reply(201, '{"node":{"value":"4"}}'), "stored size '4'"),
        (Reply(403, "nope"), "HTTP 403"),
    ],
)
def test_self_hosted_bad_answers(service: FakeService, reply: Reply, match: str) -> None:
    service.script(reply)
    with pytest.raises(DiscoveryError, match=match):
        create_self_hosted(service.url, 3, policy=FAST)


def test_resolve_keeps_given_url_and_never_fetches() -> None:
    given = f"https://discovery.etcd.io/{TOKEN}"
    cfg = resolve(LabConfig(bootstrap="discovery", discovery_url=given), service=refused_url(), policy=FAST)
    assert cfg.discovery_url == given
    assert resolve(LabConfig(bootstrap="static", discovery_url=given)).discovery_url is None


def test_resolve_reads_service_from_env(service: FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    service.script(Reply(body=f"{service.url}/{TOKEN}"))
    monkeypatch.setenv(discovery.SERVICE_ENV, service.url)
    cfg = resolve(LabConfig(instances=5, bootstrap="discovery"), policy=FAST)
    assert cfg.discovery_url == f"{service.url}/{TOKEN}"
    assert service.requests[0][1] == "/new?size=5"


def test_timeout_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(discovery.TIMEOUT_ENV, "2.5")
    assert RetryPolicy.from_env().timeout == 2.5
    monkeypatch.setenv(discovery.TIMEOUT_ENV, "soon")
    with pytest.raises(ConfigError):
        RetryPolicy.from_env()


@pytest.mark.parametrize(
    "reply",
    [Reply(500, "boom"), Reply(body="<html>oops</html>"), Reply(body=""), Reply(body="x", delay=0.6), None],
    ids=["500", "html", "empty", "slow", "refused"],
)
def test_init_writes_nothing_when_discovery_fails(service: FakeService, tmp_path: Path, reply: Reply | None) -> None:
    target = tmp_path / "lab"
    url = service.url
    if reply is None:
        url = refused_url()
    else:
        service.script(reply)
    policy = RetryPolicy(timeout=0.3, attempts=2, backoff=0.01)
    with pytest.raises(DiscoveryError) as err:
        init_lab(target, LabConfig(bootstrap="discovery"), discovery_service=url, policy=policy)
    assert "\n" not in str(err.value)
    assert "--bootstrap static" in str(err.value)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_init_with_good_token_stores_it(service: FakeService, tmp_path: Path) -> None:
    service.script(Reply(body=f"{service.url}/{TOKEN}"))
    result = init_lab(tmp_path / "lab", LabConfig(bootstrap="discovery"), discovery_service=service.url, policy=FAST)
    assert result.config.discovery_url == f"{service.url}/{TOKEN}"
    assert f'discovery_url = "{service.url}/{TOKEN}"' in (tmp_path / "lab" / "coreos-lab.toml").read_text()
    assert len(service.requests) == 1
