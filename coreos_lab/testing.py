"""Test doubles shipped as API: a FakeRunner that records calls and answers by command, and an in-memory
etcd-like key-value store (InMemoryKV) for the desired state."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from coreos_lab.runner import Cmd, CommandResult, render_cmd

# An exception instance is raised (the same instance on every match), as a real runner raises SSHError or
# CommandTimeout for a node it cannot reach; a callable may raise too.
Answer = CommandResult | tuple[int, str, str] | str | BaseException | Callable[[str], tuple[int, str, str]]


@dataclass
class FakeRunner:
    """Answers commands from a table; records every command line and every put.

    Keys of ``answers`` are regular expressions searched in the rendered command line; the first key
    (in insertion order) that matches wins. Unmatched commands exit 127 unless ``default`` is set. An
    answer that is an exception is raised. A ``put`` is recorded as the line ``put PATH MODE``; when the
    first answer matching that line is an exception, the put raises it and writes nothing.

    >>> r = FakeRunner("core-01", {r"^hostname$": "core-01\\n"})
    >>> r.run("hostname").stdout
    'core-01\\n'
    >>> r.calls
    ['hostname']
    >>> from coreos_lab.errors import SSHError
    >>> gone = FakeRunner("core-02", {".": SSHError("core-02: cannot connect")})
    >>> gone.run("hostname")
    Traceback (most recent call last):
    ...
    coreos_lab.errors.SSHError: core-02: cannot connect
    """

    name: str = "fake"
    answers: dict[str, Answer] = field(default_factory=dict)
    default: tuple[int, str, str] | None = None
    calls: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    closed: bool = False

    @property
    def host(self) -> str:
        return self.name

    def run(
        self, cmd: Cmd, *, timeout: float | None = None, sudo: bool = False, stdin: bytes | None = None
    ) -> CommandResult:
        line = render_cmd(cmd, sudo=sudo)
        self.calls.append(line)
        answer = self._answer(line)
        if answer is None:
            code, out, err = self.default if self.default else (127, "", f"fake: no answer for {line!r}")
        elif isinstance(answer, BaseException):
            raise answer.with_traceback(None)  # a fresh traceback each time, not one growing per raise
        elif isinstance(answer, CommandResult):
            return answer
        elif isinstance(answer, str):
            code, out, err = 0, answer, ""
        elif callable(answer):
            code, out, err = answer(line)
        else:
            code, out, err = answer
        return CommandResult(self.name, line, code, out, err, 0.0)

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        line = f"put {path} {mode:o}"
        self.calls.append(line)
        answer = self._answer(line)
        if isinstance(answer, BaseException):
            raise answer.with_traceback(None)
        self.files[path] = (data, mode)

    def _answer(self, line: str) -> Answer | None:
        return next((answer for pattern, answer in self.answers.items() if re.search(pattern, line)), None)

    def close(self) -> None:
        self.closed = True


class InMemoryKV:
    """A thread-safe in-memory :class:`~coreos_lab.state.KeyValueStore` with etcd's revision semantics.

    >>> kv = InMemoryKV()
    >>> kv.put_if("/a", b"1", 0), kv.put_if("/a", b"2", 0), kv.get("/a")
    (1, None, (b'1', 1))
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, int]] = {}
        self._revision = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bytes, int] | None:
        with self._lock:
            return self._data.get(key)

    def put_if(self, key: str, value: bytes, expected_revision: int) -> int | None:
        with self._lock:
            current = self._data.get(key)
            if (current[1] if current else 0) != expected_revision:
                return None
            self._revision += 1
            self._data[key] = (bytes(value), self._revision)
            return self._revision

    def delete_if(self, key: str, expected_revision: int | None = None) -> bool:
        with self._lock:
            current = self._data.get(key)
            if current is None or (expected_revision is not None and current[1] != expected_revision):
                return False
            del self._data[key]
            self._revision += 1
            return True

    def list_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        with self._lock:
            return [(k, v, r) for k, (v, r) in sorted(self._data.items()) if k.startswith(prefix)]

    def raw_put(self, key: str, value: bytes) -> None:
        """Write without any check (to plant garbage in tests)."""
        with self._lock:
            self._revision += 1
            self._data[key] = (value, self._revision)
