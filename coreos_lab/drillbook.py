"""The drills' bookkeeping (pure): the writer's attempts, what became of them, latency figures, the result.

:mod:`coreos_lab.drill` runs the drills; everything here is data and arithmetic on it, so it is tested without
nodes. Times are seconds since the drill began (the drill's monotonic clock).

>>> check_drill("leader-loss")
'leader-loss'
>>> percentile([0.1, 0.2, 0.3, 0.4], 0.9)
0.4
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from coreos_lab.errors import UsageError

DRILLS: Final = ("leader-loss", "partition-minority", "node-loss", "slow-network")
KEY_PREFIX: Final = "/coreos-lab/drill/"
DEFAULT_TIMEOUT: Final = 120.0
DEFAULT_SAMPLES: Final = 20
# etcd's and fleet's documented defaults, printed beside the figures.
ETCD_HEARTBEAT_MS: Final = 100
ETCD_ELECTION_MS: Final = 1000
FLEET_AGENT_TTL_S: Final = 30


def check_drill(name: str) -> str:
    """A drill's name, or a one-line UsageError listing them."""
    if name not in DRILLS:
        raise UsageError(f"no drill named {name!r} (drills: {', '.join(DRILLS)})")
    return name


def check_timeout(seconds: float) -> float:
    if not 10 <= seconds <= 3600:
        raise UsageError(f"--timeout must be between 10 and 3600 seconds, not {seconds:g}")
    return float(seconds)


def check_samples(n: int) -> int:
    if not 3 <= n <= 1000:
        raise UsageError(f"--samples must be between 3 and 1000, not {n}")
    return n


# ---- the writer's bookkeeping (pure) -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Attempt:
    """One write: key number, the member it went through, when (seconds since the drill began), outcome."""

    n: int
    member: str
    start: float
    end: float
    ok: bool
    error: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


class WriteLog:
    """The writer's attempts, appended by its thread and read by the drill's (a lock keeps the list whole).

    >>> log = WriteLog()
    >>> log.add(Attempt(1, "core-01", 0.0, 0.01, True))
    >>> log.add(Attempt(2, "core-01", 0.5, 2.5, False, "timed out"))
    >>> log.add(Attempt(3, "core-02", 2.6, 2.62, True))
    >>> [a.n for a in log.acked()], log.first_ack_after(0.2).n, log.acked_count(since=1.0)
    ([1, 3], 3, 1)
    """

    def __init__(self) -> None:
        self._attempts: list[Attempt] = []
        self._lock = threading.Lock()

    def add(self, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts() if a.ok]

    def acked_count(self, *, since: float = 0.0, besides: str = "") -> int:
        return sum(1 for a in self.acked() if a.start >= since and a.member != besides)

    def first_ack_after(self, t: float) -> Attempt | None:
        """The first acknowledged write *sent* at or after ``t`` (one sent before may have been committed before)."""
        return next((a for a in self.acked() if a.start >= t), None)

    def last_ack_before(self, t: float) -> Attempt | None:
        return next((a for a in reversed(self.acked()) if a.end <= t), None)

    def window(self, start: float, end: float) -> list[Attempt]:
        """The acknowledged writes sent and answered between ``start`` and ``end``."""
        return [a for a in self.acked() if a.start >= start and a.end <= end]


@dataclass(frozen=True, slots=True)
class WriteTally:
    """What became of the writes: ``lost`` are acknowledged keys the read-back did not find (with their value)."""

    attempted: int
    acknowledged: int
    not_acknowledged: int
    lost: tuple[int, ...]
    committed_unacknowledged: int  # not acknowledged (timed out, connection cut), found anyway: not a loss
    errors: Mapping[str, int] = field(default_factory=dict)  # why writes were not acknowledged, how often

    def to_json(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "not_acknowledged": self.not_acknowledged,
            "lost": len(self.lost),
            "lost_keys": list(self.lost[:20]),
            "committed_unacknowledged": self.committed_unacknowledged,
            "errors": dict(self.errors),
        }


def key_for(prefix: str, n: int | str) -> str:
    return f"{prefix}{n}"


def tally(attempts: Sequence[Attempt], found: Mapping[str, bytes], prefix: str) -> WriteTally:
    """Compare the writer's log with what the read-back found under ``prefix``.

    >>> log = [Attempt(1, "a", 0, 1, True), Attempt(2, "a", 1, 2, False), Attempt(3, "a", 2, 3, True)]
    >>> t = tally(log, {"/p/1": b"1", "/p/2": b"2"}, "/p/")
    >>> t.lost, t.acknowledged, t.committed_unacknowledged
    ((3,), 2, 1)
    """
    lost = tuple(a.n for a in attempts if a.ok and found.get(key_for(prefix, a.n)) != str(a.n).encode())
    unacked = [a for a in attempts if not a.ok]
    present = sum(1 for a in unacked if key_for(prefix, a.n) in found)
    acked = len(attempts) - len(unacked)
    return WriteTally(len(attempts), acked, len(unacked), lost, present, error_kinds(attempts))


def error_kinds(attempts: Sequence[Attempt]) -> dict[str, int]:
    """How often each failure was seen, by its text without the endpoint (which differs per member).

    >>> error_kinds([Attempt(1, "a", 0, 1, False, "etcd http://127.0.0.1:4001/v3/kv/put: timed out after 1s")])
    {'timed out after 1s': 1}
    """
    out: dict[str, int] = {}
    for a in attempts:
        if not a.ok:
            text = a.error.split(": ", 1)[1] if a.error.startswith("etcd ") and ": " in a.error else a.error
            out[text] = out.get(text, 0) + 1
    return out


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (of at least one value): the smallest value with ``q`` of them at or below it."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_figures(attempts: Sequence[Attempt]) -> dict[str, Any]:
    """``{"writes": n, "median_ms": ..., "p90_ms": ...}`` of acknowledged writes (None when there are none).

    >>> latency_figures([Attempt(i, "a", 0, i / 1000, True) for i in range(1, 11)])
    {'writes': 10, 'median_ms': 5.5, 'p90_ms': 9.0}
    """
    ms = [a.latency * 1000 for a in attempts]
    if not ms:
        return {"writes": 0, "median_ms": None, "p90_ms": None}
    return {"writes": len(ms), "median_ms": round(statistics.median(ms), 1), "p90_ms": round(percentile(ms, 0.9), 1)}


def longest_gap(attempts: Sequence[Attempt], start: float, end: float) -> float:
    """The longest time between two acknowledgements (or the window's edges) within [start, end].

    >>> longest_gap([Attempt(1, "a", 0, 1.0, True), Attempt(2, "a", 1, 4.0, True)], 0.0, 5.0)
    3.0
    """
    times = [start, *sorted(a.end for a in attempts if a.ok and start <= a.end <= end), end]
    return max(b - a for a, b in itertools.pairwise(times))


# ---- the result -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Phase:
    at: float  # seconds since the drill began
    text: str


@dataclass(frozen=True, slots=True)
class DrillResult:
    """A drill's figures. ``detection`` / ``recovery`` say what the two times measure in this drill."""

    drill: str
    run_id: str
    node: str
    why: str
    detection_s: float | None
    detection: str
    recovery_s: float | None
    recovery: str
    writes: WriteTally
    figures: Mapping[str, Any] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()
    problems: tuple[str, ...] = ()
    keys_deleted: int | None = None

    @property
    def ok(self) -> bool:
        return not self.writes.lost and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "run_id": self.run_id,
            "ok": self.ok,
            "node": self.node,
            "why": self.why,
            "detection_s": _round(self.detection_s),
            "detection": self.detection,
            "recovery_s": _round(self.recovery_s),
            "recovery": self.recovery,
            "lost_writes": len(self.writes.lost),
            "writes": self.writes.to_json(),
            "figures": dict(self.figures),
            "problems": list(self.problems),
            "keys_deleted": self.keys_deleted,
            "phases": [{"at": round(p.at, 2), "text": p.text} for p in self.phases],
            "defaults": {
                "etcd_heartbeat_ms": ETCD_HEARTBEAT_MS,
                "etcd_election_timeout_ms": ETCD_ELECTION_MS,
                "fleet_agent_ttl_s": FLEET_AGENT_TTL_S,
            },
        }

    def summary(self) -> list[str]:
        """The figures as lines, ending with ``lost writes: N``."""
        w = self.writes
        lines = [f"drill {self.drill} (run {self.run_id}) on {self.node}: {self.why}"]
        lines.append(f"  detection: {_secs(self.detection_s)} ({self.detection})")
        lines.append(f"  recovery:  {_secs(self.recovery_s)} ({self.recovery})")
        for name, value in self.figures.items():
            lines.append(f"  {_label(name)}: {_figure(value, name)}")
        lines.append(
            f"  writes: {w.attempted} sent, {w.acknowledged} acknowledged, {w.not_acknowledged} not "
            f"({w.committed_unacknowledged} of those committed anyway)"
        )
        lines += [f"    not acknowledged {n}x: {why}" for why, n in w.errors.items()]
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(f"lost writes: {len(w.lost)}" + (f" (keys {', '.join(map(str, w.lost[:10]))})" if w.lost else ""))
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _label(name: str) -> str:
    """A figure's key as words, its unit suffix dropped (:func:`_figure` prints the unit after the value)."""
    return name.removesuffix("_ms").removesuffix("_s").replace("_", " ")


def _figure(value: Any, name: str = "") -> str:
    """A figure's value as text (``{}`` for an empty mapping: "no errors" reads as nothing to show)."""
    unit = " ms" if name.endswith("_ms") else " s" if name.endswith("_s") else ""
    if isinstance(value, dict):
        # A key with a unit has its own; any other (a node, a unit) takes the mapping's: "moved_s": {"web": 12.0}
        parts = (f"{_label(k)} {_figure(v, k if k.endswith(('_s', '_ms')) else name)}" for k, v in value.items())
        return ", ".join(parts) or "none"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}{unit}"
    return f"{value}{unit}"
