"""Test doubles shipped as API: a FakeRunner that records calls and answers by command."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from coreos_lab.runner import Cmd, CommandResult, render_cmd

Answer = CommandResult | tuple[int, str, str] | str | Callable[[str], tuple[int, str, str]]


@dataclass
class FakeRunner:
    """Answers commands from a table; records every command line and every put.

    Keys of ``answers`` are regular expressions searched in the rendered command line; the first key
    (in insertion order) that matches wins. Unmatched commands exit 127 unless ``default`` is set.

    >>> r = FakeRunner("core-01", {r"^hostname$": "core-01\\n"})
    >>> r.run("hostname").stdout
    'core-01\\n'
    >>> r.calls
    ['hostname']
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
        for pattern, answer in self.answers.items():
            if re.search(pattern, line):
                if isinstance(answer, CommandResult):
                    return answer
                if isinstance(answer, str):
                    code, out, err = 0, answer, ""
                elif callable(answer):
                    code, out, err = answer(line)
                else:
                    code, out, err = answer
                return CommandResult(self.name, line, code, out, err, 0.0)
        code, out, err = self.default if self.default else (127, "", f"fake: no answer for {line!r}")
        return CommandResult(self.name, line, code, out, err, 0.0)

    def put(self, data: bytes, path: str, *, mode: int = 0o644, sudo: bool = False) -> None:
        self.calls.append(f"put {path} {mode:o}")
        self.files[path] = (data, mode)

    def close(self) -> None:
        self.closed = True
