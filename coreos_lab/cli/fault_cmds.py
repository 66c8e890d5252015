"""CLI commands: ``fault partition|delay|loss|kill|leader|stop|list|heal``, the fault lab (see
:mod:`coreos_lab.fault`), and ``fault drill``, its scripted scenarios (see :mod:`coreos_lab.drill`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    emit_json,
    emit_table,
    lab_dir,
    report_problem,
)

if TYPE_CHECKING:
    from coreos_lab.fault import Fault, FaultLab

fault_app = typer.Typer(
    name="fault",
    help="Break the cluster on purpose (partition, delay, loss, kill, stop), heal it, or run a measured drill.",
    no_args_is_help=True,
)

FOR_OPTION = typer.Option(
    None,
    "--for",
    help="Seconds until the fault undoes itself (a systemd timer on the nodes; for stop, a process of ours). "
    "Default: until `fault heal`.",
)
NODE_ARG = typer.Argument(..., help="The node, e.g. core-01.")
# These commands never connect over SSH; accepted so that scripts can pass it to every fault command.
QUIET_NO_PERSIST = typer.Option(False, "--no-persist", hidden=True)


def open_faults(
    lab: Path | None, inventory: Path | None, *, no_persist: bool = False, accept_new: bool = False
) -> FaultLab:
    """The fault lab of ``--inventory`` (nodes by name, cluster addresses from etcd) or of the Vagrant lab
    (nodes, addresses and power from its config and Vagrant). Nothing connects until a fault needs the nodes."""
    from coreos_lab import fault
    from coreos_lab.cli._common import open_nodes

    if inventory is not None:
        cluster = open_nodes(None, inventory, no_persist=no_persist, accept_new=accept_new)
        book = fault.FaultBook(fault.state_dir_for(None, inventory))
        return fault.FaultLab(cluster.names, book=book, connect=lambda: cluster)
    from coreos_lab import config as labconfig
    from coreos_lab import vagrant

    the_lab = lab_dir(lab).resolve()
    cfg = labconfig.load(the_lab)
    state = fault.state_dir_for(the_lab, None)
    book = fault.FaultBook(state, gone=lambda node: node not in vagrant.created_machines(the_lab))
    return fault.FaultLab(
        [n.name for n in cfg.nodes],
        book=book,
        connect=lambda: open_nodes(the_lab, None, no_persist=no_persist, accept_new=accept_new),
        ips={n.name: n.ip for n in cfg.nodes},
        power=lambda: vagrant.VagrantLab(the_lab, provider=cfg.provider),
        spawn_expire=lambda f: fault.spawn_expire(state, f, ["--lab", str(the_lab)], cwd=the_lab),
    )


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "-"
    from coreos_lab.fault import iso_time

    delta = epoch - now
    return f"{iso_time(epoch)} (in {delta:.0f}s)" if delta >= 0 else f"{iso_time(epoch)} ({-delta:.0f}s ago)"


def _report(f: Fault, as_json: bool, said: str) -> None:
    if as_json:
        emit_json(f.to_json())
        return
    typer.echo(f"fault {f.id}: {said}")
    if f.expires is not None:
        typer.echo(f"expires {_ago(f.expires, time.time())}")
    typer.echo(f"heal: coreos-lab fault heal {f.node}")


def _where(f: Fault) -> str:
    from coreos_lab.faultshell import chain_name, nft_table

    named = {"iptables": f"iptables chain {chain_name(f.id)}", "nft": f"nftables table {nft_table(f.id)}"}
    by_word: dict[str, list[str]] = {}
    for host, word in f.hosts.items():
        by_word.setdefault(named.get(word, word), []).append(host)
    return "; ".join(f"{what} on {', '.join(hosts)}" for what, hosts in by_word.items())


@fault_app.command("partition")
def partition(
    node: str = typer.Argument(..., help="The node to cut off, e.g. core-01."),
    peers: list[str] = typer.Option(  # noqa: B008
        None, "--from", help="A node to cut it off from (repeatable). Default: every other node."
    ),
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Cut NODE off its peers on the cluster network (both ways); the lab's own SSH keeps working.

    iptables rules in a chain of ours (COREOS-LAB-FAULT-<id>) on NODE and on each peer drop the traffic
    between their cluster addresses (nftables on a node without iptables). A second partition of a node that
    is partitioned already is refused (partitions are not merged): heal it first.

    Example: coreos-lab fault partition core-01 --from core-02 --for 60
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        f = faults.partition(node, peers or (), duration)
    _report(f, as_json, f"{node} cut off from {', '.join(f.params['peers'])} ({_where(f)})")


@fault_app.command("delay", context_settings={"ignore_unknown_options": True})
def delay(
    node: str = NODE_ARG,
    ms: float = typer.Argument(..., help="Milliseconds added to every packet NODE sends to a peer (> 0)."),
    jitter: float = typer.Option(0.0, "--jitter", help="Milliseconds of random variation (0 up to MS)."),
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Slow NODE's cluster traffic down: tc netem on its cluster interface, for packets to its peers only.

    A round trip between NODE and a peer grows by about MS; SSH and everything else are not touched. One netem
    fault (delay or loss) per node. The kernel needs sch_prio, sch_netem and cls_u32.

    Example: coreos-lab fault delay core-01 200 --jitter 20 --for 120
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        f = faults.shape(node, delay_ms=ms, jitter_ms=jitter, duration=duration)
    _report(f, as_json, f"{node}: {f.detail()}")


@fault_app.command("loss", context_settings={"ignore_unknown_options": True})
def loss(
    node: str = NODE_ARG,
    percent: float = typer.Argument(..., help="Share of NODE's packets to its peers that are dropped, in (0, 100]."),
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Drop a share of NODE's cluster traffic: tc netem loss, for packets to its peers only.

    Example: coreos-lab fault loss core-02 30 --for 60
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        f = faults.shape(node, loss=percent, duration=duration)
    _report(f, as_json, f"{node}: {f.detail()}")


@fault_app.command("kill")
def kill(
    node: str = NODE_ARG,
    unit: str = typer.Argument(..., help="The unit, e.g. etcd-member.service (a bare name means .service)."),
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """SIGKILL UNIT's main process on NODE (systemctl kill --kill-who=main --signal=SIGKILL).

    systemd may restart it by itself (Restart=); `fault heal` starts it if it did not. With --for, a timer on
    the node starts it then.

    Example: coreos-lab fault kill core-02 etcd-member
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        f = faults.kill(node, unit, duration)
    _report(f, as_json, f"killed {f.params['unit']} on {node} (pid {f.params['pid']})")


@fault_app.command("leader")
def leader(
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Kill the etcd leader: find it (every member's status, as `status` does), SIGKILL its etcd unit.

    The unit is the one active on that node: etcd-member.service (Flatcar, the lab box), etcd.service (Debian's
    package) or etcd2.service. Prints the node and the member id; the others elect a new leader.

    Example: coreos-lab fault leader --json
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        f = faults.leader(duration)
    p = f.params
    said = f"killed {p['unit']} on {f.node} (pid {p['pid']}): it led etcd as member {p['member_id']} (term {p['term']})"
    _report(f, as_json, said)


@fault_app.command("stop")
def stop(
    node: str = NODE_ARG,
    duration: float | None = FOR_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = QUIET_NO_PERSIST,
    as_json: bool = JSON_OPTION,
) -> None:
    """Power NODE off through Vagrant (vagrant halt --force); a Vagrant lab only.

    `fault heal` powers it on again (vagrant up NODE); with --for a detached process of ours does that.

    Example: coreos-lab fault stop core-03 --for 120
    """
    with open_faults(lab, inventory) as faults:
        f = faults.stop(node, duration)
    _report(f, as_json, f"{node} powered off (vagrant halt --force)")


@fault_app.command("list")
def list_cmd(
    node: str | None = typer.Argument(None, help="Only this node's faults."),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = QUIET_NO_PERSIST,
    as_json: bool = JSON_OPTION,
) -> None:
    """The faults in force: what, on which node, since when, expiring when (from the records; no node is asked).

    An expired fault is not listed (its timer has undone it), nor one whose Vagrant machine was destroyed.

    Example: coreos-lab fault list --json
    """
    with open_faults(lab, inventory) as faults:
        active = faults.active(node)
    if as_json:
        emit_json({"faults": [f.to_json() for f in active], "records": str(faults.book.path)})
        return
    if not active:
        typer.echo("no fault is active")
        return
    now = time.time()
    rows = [(f.id, f.kind, f.node, f.detail(), _ago(f.since, now), _ago(f.expires, now)) for f in active]
    emit_table(["ID", "KIND", "NODE", "DETAIL", "SINCE", "EXPIRES"], rows)


@fault_app.command("heal")
def heal(
    node: str | None = typer.Argument(None, help="Only this node's faults. Default: every fault."),
    forget: bool = typer.Option(False, "--forget", help="Drop the records without touching the nodes."),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Undo every recorded fault (or NODE's): remove our chains and qdiscs, start what was killed (unless systemd
    restarted it), power on what was stopped.

    Exit 0 when everything was undone; 1 when a step failed (its fault stays recorded: heal again); 3 when
    nothing was recorded (no fault active: a script can tell "already healthy" from "could not heal").

    Example: coreos-lab fault heal core-01
    """
    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        report = faults.heal(node, forget=forget)
    if as_json:
        emit_json(report.to_json())
    else:
        for line in report.lines:
            if line.ok:
                typer.echo(f"{line.host}: {line.text} (fault {line.fault.id}, {line.fault.kind})")
            else:
                report_problem(f"{line.host}: {line.text} (fault {line.fault.id}, {line.fault.kind})")
        typer.echo(f"healed {len(report.healed)} fault(s)" + (f", {len(report.failed)} not" if report.failed else ""))
    if report.failed:
        raise typer.Exit(1)


@fault_app.command("drill")
def drill(
    name: str = typer.Argument(..., help="leader-loss, partition-minority, node-loss or slow-network."),
    timeout: float = typer.Option(
        120.0,
        "--timeout",
        help="Seconds the drill may take until it heals (heal's checks, the read-back and the clean-up get 30 s "
        "more); it heals when it runs out, and on Ctrl-C.",
    ),
    samples: int = typer.Option(20, "--samples", help="slow-network: writes per phase for the median and p90."),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run a scripted fault, measure the cluster's answer, heal, and check that no acknowledged write was lost.

    leader-loss: kill the etcd leader; time until a new leader, and until writes are acknowledged again.
    partition-minority: cut a follower off; the majority keeps writing, a write through the cut-off member
    fails, after the heal it catches up. node-loss (a Vagrant lab with the engine running): power off a node
    running deployed units; time until each runs elsewhere, then each runs once. slow-network: +200 ms on
    the leader's traffic; write latency (median, p90) before, during, after.

    A writer writes numbered keys (/coreos-lab/drill/<run id>/<n>) through the whole drill; after the heal
    every acknowledged one is read back: "lost writes: 0", else the count and exit 1. The keys are deleted.
    A drill starts from a healthy etcd with no fault recorded. One line per phase as it happens, then the
    figures (--json: the figures as JSON, the phases on stderr).

    Example: coreos-lab fault drill leader-loss --inventory nodes.ssh
    """
    from coreos_lab.drillbook import check_drill, check_samples, check_timeout

    check_drill(name)
    check_timeout(timeout)
    check_samples(samples)
    from coreos_lab import drill as drills
    from coreos_lab.drillbook import Phase

    def progress(phase: Phase) -> None:
        typer.echo(f"{phase.at:6.1f}s  {phase.text}", err=as_json)

    with open_faults(lab, inventory, no_persist=no_persist, accept_new=accept_new) as faults:
        the_drill = drills.Drill(
            faults,
            vagrant=inventory is None,
            engine=_engine_status(lab, inventory),
            timeout=timeout,
            samples=samples,
            progress=progress,
        )
        result = the_drill.run(name)
    if as_json:
        emit_json(result.to_json())
    else:
        for line in result.summary():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


def _engine_status(lab: Path | None, inventory: Path | None) -> Callable[[], dict[str, Any] | None]:
    """The engine's last report for this lab, read from its state dir each time it is asked."""
    from coreos_lab import engine

    where = engine.state_dir_for(None if inventory is not None else lab_dir(lab).resolve(), inventory)

    def read() -> dict[str, Any] | None:
        return engine.read_status(where).to_json() if where.is_dir() else None

    return read


@fault_app.command("expire", hidden=True)
def expire(
    fault_id: str = typer.Argument(...),
    after: float = typer.Option(0.0, "--after"),
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
) -> None:
    """What `fault stop --for` leaves running: after --after seconds, heal that fault if it is still recorded."""
    time.sleep(max(0.0, after))
    with open_faults(lab, inventory, no_persist=True) as faults:
        report = faults.expire(fault_id)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if report is None:
        typer.echo(f"{stamp} fault {fault_id}: healed already")
        return
    for line in report.lines:
        typer.echo(f"{stamp} fault {fault_id}: {line.host}: {'' if line.ok else 'failed: '}{line.text}")
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.add_typer(fault_app, name="fault")
