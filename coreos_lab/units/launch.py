"""What a unit command does on one node: install, start and watch a unit settle, stop and remove it.

A start is judged by systemd's InvocationID (UnitState.invocation_id): it changes with every start cycle, so
a poll can tell the run it asked for from the state a previous run left behind (``start --no-block`` returns
before the job has run). A unit must then stay up for the settle time (:func:`settle_verdict`) to count as
launched, so one that dies right away is reported failed with its last journal lines.

Node-side work of an interrupted deploy stops at its next step (``cancel``), never inside a file write.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from coreos_lab.errors import CoreosLabError
from coreos_lab.state import UnitRecord
from coreos_lab.systemd import SystemdClient, UnitState
from coreos_lab.unitfile import file_name, validate_unit_name
from coreos_lab.units.results import NodeOutcome

if TYPE_CHECKING:
    from coreos_lab.cluster import Cluster
    from coreos_lab.probe import NodeFacts
    from coreos_lab.runner import Runner


def ip_of(facts: Mapping[str, NodeFacts], node: str) -> str:
    f = facts.get(node)
    return f.ip if f else ""


def fail_outcome(node: str, facts: Mapping[str, NodeFacts], error: str) -> NodeOutcome:
    return NodeOutcome(node, ip_of(facts, node), False, error=error)


def install(client: SystemdClient, unit: str, content: str) -> None:
    client.install(file_name(unit), content)


def remove(runner: Runner, unit: str, keep_file: bool) -> None:
    """Stop ``unit`` and remove its file; an instance whose template still serves siblings keeps the file."""
    name = file_name(unit)
    client = SystemdClient(runner)
    if name == unit:
        client.remove(unit)
        return
    # "not loaded" answers for an instance that never ran are fine: the goal is that it does not run.
    runner.run(
        f"systemctl stop -- {shlex.quote(unit)}; systemctl reset-failed -- {shlex.quote(unit)}; true",
        sudo=True,
        timeout=client.timeout,
    ).check()
    if not keep_file:
        client.remove(name)


def siblings_on(records: Sequence[UnitRecord], unit: str, node: str) -> bool:
    """Whether another live instance of ``unit``'s template is meant to be on ``node``."""
    name = file_name(unit)
    return name != unit and any(
        r.name != unit and r.desired_state != "inactive" and node in r.targets and file_name(r.name) == name
        for r in records
        if validate_unit_name(r.name).is_instance
    )


SETTLE_SECONDS: Final = 1.0  # how long a freshly active unit must stay up before deploy calls it launched
JOURNAL_LINES: Final = 10
GRACE_SECONDS: Final = 5.0  # an identical record's unit not running yet: a concurrent deploy may be starting it


def settle_verdict(first: UnitState, later: UnitState) -> str | None:
    """Whether a unit seen active (``first``) still runs the same way ``later``: None if so, else why not.

    A unit counts as failed when it left ``active``, restarted (systemd's restart counter grew, or a new
    invocation or main process replaced the first), i.e. it died right after starting.

    >>> from dataclasses import replace
    >>> up = UnitState("a.service", active_state="active", sub_state="running", main_pid=100, invocation_id="i1")
    >>> settle_verdict(up, up) is None
    True
    >>> settle_verdict(up, replace(up, active_state="failed", sub_state="failed", result="exit-code",
    ...                            main_pid=0, exec_main_status=3))
    'a.service did not stay active: failed/failed (result exit-code, status 3)'
    """
    name = later.name
    if later.active_state != "active":
        return f"{name} did not stay active: {later.summary}"
    if later.n_restarts > first.n_restarts or first.n_restarts > 0:
        return f"{name} keeps restarting: {later.summary}"
    if first.invocation_id and later.invocation_id and later.invocation_id != first.invocation_id:
        return f"{name} restarted right after starting: {later.summary}"
    if first.main_pid and later.main_pid and later.main_pid != first.main_pid:
        return f"{name} restarted right after starting (main PID {first.main_pid} -> {later.main_pid})"
    return None


def checkpoint(cancel: threading.Event | None, host: str) -> None:
    """Node-side work of an interrupted deploy stops here, between steps (never inside a file write)."""
    if cancel is not None and cancel.is_set():
        raise CoreosLabError(f"{host}: interrupted")


def pause(cancel: threading.Event | None, seconds: float) -> None:
    if seconds <= 0:
        return
    if cancel is None:
        time.sleep(seconds)
    else:
        cancel.wait(seconds)


def liveness(runner: Runner, unit: str, timeout: float = 30.0) -> UnitState:
    return SystemdClient(runner, timeout=timeout).show(unit)


def journal_tail(runner: Runner, unit: str, lines: int = JOURNAL_LINES) -> tuple[str, ...]:
    """The unit's last journal lines (message only); empty when the journal cannot be read (best effort)."""
    validate_unit_name(unit)
    argv = ["journalctl", f"--unit={unit}", "--no-pager", "-o", "cat", f"--lines={lines}"]
    try:
        result = runner.run(argv, sudo=True, timeout=15)
    except CoreosLabError:
        return ()
    if not result.ok:
        return ()
    return tuple(line[:300] for line in result.stdout.splitlines() if line.strip() and line != "-- No entries --")


def has_result(state: UnitState, before: UnitState | None) -> bool:
    """Whether the start we asked for has come to a result (active, failed, or already ended)."""
    if before is not None and state.invocation_id is not None and state.invocation_id in ("", before.invocation_id):
        return False  # the job has not begun yet: what we see is the previous run's state
    return state.active_state in ("active", "failed", "inactive")


def wait_up(
    runner: Runner, unit: str, timeout: float, cancel: threading.Event | None, before: UnitState | None
) -> UnitState:
    """Poll until the start has a result; CoreosLabError naming the node and the state after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = 0.1
    while True:
        checkpoint(cancel, runner.host)
        state = liveness(runner, unit, timeout=max(5.0, min(30.0, timeout)))
        if has_result(state, before):
            return state
        if time.monotonic() >= deadline:
            raise CoreosLabError(f"{runner.host}: {unit} not active after {timeout:g}s ({state.summary})")
        pause(cancel, min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(0.5, interval * 2)


@dataclass(frozen=True, slots=True)
class Launch:
    state: UnitState
    error: str | None = None
    journal: tuple[str, ...] = ()


def start_and_watch(
    runner: Runner,
    unit: str,
    *,
    restart: bool,
    timeout: float,
    settle: float,
    cancel: threading.Event | None,
) -> Launch:
    """Start (or restart) ``unit``, wait for a result, then watch it ``settle`` seconds; failures carry the
    unit's state and its last journal lines."""
    before = liveness(runner, unit)
    # A start of a unit that is already up (or on its way) joins that run: no new invocation to wait for.
    already = not restart and before.active_state in ("active", "activating", "reloading")
    checkpoint(cancel, runner.host)
    # --no-block: the call returns once the job is queued, so an interrupt is never stuck behind a slow
    # ExecStartPre; the result is then polled (bounded by ``timeout``).
    verb = "restart" if restart else "start"
    runner.run(["systemctl", verb, "--no-block", "--", unit], sudo=True, timeout=30).check()
    state = wait_up(runner, unit, timeout, cancel, None if already else before)
    error: str | None = None
    if state.active_state != "active":
        error = f"{unit} is {state.summary}"
    elif settle > 0:
        pause(cancel, settle)
        checkpoint(cancel, runner.host)
        later = liveness(runner, unit)
        error = settle_verdict(state, later)
        state = later
    return Launch(state, error, journal_tail(runner, unit) if error else ())


def launch_on(
    runner: Runner,
    record: UnitRecord,
    *,
    restart: bool,
    timeout: float,
    settle: float = 0.0,
    cancel: threading.Event | None = None,
) -> Launch:
    """Install the file (its template for an instance), start or restart, wait for a result, settle."""
    checkpoint(cancel, runner.host)
    install(SystemdClient(runner), record.name, record.content)
    checkpoint(cancel, runner.host)
    return start_and_watch(runner, record.name, restart=restart, timeout=timeout, settle=settle, cancel=cancel)


def one_line(text: str) -> str:
    return " ".join(text.split())


def node_outcomes(
    record: UnitRecord, results: Mapping[str, Launch | CoreosLabError], facts: Mapping[str, NodeFacts]
) -> list[NodeOutcome]:
    out = []
    for node, res in results.items():
        if isinstance(res, CoreosLabError):
            out.append(fail_outcome(node, facts, one_line(str(res))))
        else:
            st = res.state
            err = None if res.error is None else f"{one_line(res.error)} on {node}"
            out.append(
                NodeOutcome(node, ip_of(facts, node), err is None, st.active_state, st.sub_state, err, res.journal)
            )
    return out


def launch_many(
    cluster: Cluster,
    record: UnitRecord,
    nodes: Sequence[str],
    facts: Mapping[str, NodeFacts],
    *,
    restart: bool,
    timeout: float,
    settle: float = 0.0,
    cancel: threading.Event | None = None,
) -> tuple[NodeOutcome, ...]:
    if not nodes:
        return ()
    results = cluster.map(
        lambda r: launch_on(r, record, restart=restart, timeout=timeout, settle=settle, cancel=cancel), list(nodes)
    )
    broken = [n for n, res in results.items() if isinstance(res, CoreosLabError)]
    if broken and not (cancel is not None and cancel.is_set()):
        # A node that fails mid-deploy may be going away (powered off, rebooting): say so rather than only
        # quoting whichever command happened to break.
        for node, why in cluster.map(node_gone, broken).items():
            if isinstance(why, str):
                results[node] = CoreosLabError(f"{why} during the deploy ({one_line(str(results[node]))})")
    return tuple(node_outcomes(record, results, facts))


def node_gone(runner: Runner) -> str | None:
    """Why a node that just failed a step cannot be used now (unreachable / shutting down), or None."""
    try:
        res = runner.run(["systemctl", "is-system-running"], timeout=5)
    except CoreosLabError:
        return f"{runner.host} became unreachable"
    said = res.stdout.strip() or one_line(res.stderr)[:120]
    if said in ("running", "degraded", "starting", "initializing", "maintenance"):
        return None
    # "stopping", or no answer from systemd at all ("Failed to connect to bus"): the node is going down.
    return f"{runner.host} is going down (systemd: {said or 'no answer'})"


def remove_on(
    cluster: Cluster, name: str, nodes: Sequence[str], records: Sequence[UnitRecord] = ()
) -> dict[str, CoreosLabError | None]:
    if not nodes:
        return {}
    results = cluster.map(lambda r: remove(r, name, siblings_on(records, name, r.host)), list(nodes))
    return {n: (v if isinstance(v, CoreosLabError) else None) for n, v in results.items()}
