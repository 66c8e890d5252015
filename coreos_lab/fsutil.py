"""Atomic file writes: a temp file in the same directory, fsync, then rename. No partial files, ever."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Hold Ctrl-C back while a multi-file write keeps its books: yields ``pending()`` for safe check points.

    An asynchronous KeyboardInterrupt can land between creating a file and recording that it was created
    (then the undo misses it: a stray temp file, an empty directory, one file of a lab). Inside this block a
    SIGINT is only noted; the body asks ``pending()`` where stopping is clean, and a Ctrl-C that came and was
    not acted on is raised as KeyboardInterrupt when the block ends. Only the main thread gets SIGINT; in
    other threads, or when SIGINT is not Python's default handler, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield lambda: False
        return
    got: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield lambda: bool(got)
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt
