"""CLI commands that drive the lab's VMs: up, halt, destroy, reload, provision, and ``box build``.

``up`` is Vagrant plus a bounded wait until the cluster is usable: every node answers SSH, its etcd unit is
active, ``etcdctl endpoint health`` passes and ``member list`` shows the expected number of started
members. It never re-renders the lab and never asks a discovery service for a new token.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import typer

from coreos_lab.cli._common import JSON_OPTION, LAB_OPTION, emit_json, emit_table, lab_dir, report_problem, use_color
from coreos_lab.errors import CoreosLabError, VagrantError, VagrantLostSSH

if TYPE_CHECKING:
    from coreos_lab import config as labconfig
    from coreos_lab.cluster import Cluster
    from coreos_lab.probe import NodeFacts
    from coreos_lab.units.results import ActionOutcome

# Vagrant's messages -> the phase shown per node. First match wins; order follows a boot.
PHASES: Final = (
    ("Uploading base box image", "uploading box"),
    ("Creating image", "creating disk"),
    ("Creating domain", "creating VM"),
    ("Importing base box", "importing box"),
    ("Starting domain", "booting"),
    ("Booting VM", "booting"),
    ("Waiting for domain to get an IP", "waiting for IP"),
    ("Waiting for machine to boot", "waiting for SSH"),
    ("Machine booted and ready", "booted"),
    ("Setting hostname", "setting hostname"),
    ("Configuring and enabling network", "configuring network"),
    ("Running provisioner", "provisioning"),
    ("Machine already provisioned", "already provisioned"),
    ("Machine is already running", "already running"),
    ("Domain is already running", "already running"),
    ("Attempting graceful shutdown", "halting"),
    ("Halting domain", "halting"),
    ("Removing domain", "removing"),
    ("Destroying VM", "removing"),
)


def phase_of(message: str) -> str | None:
    """The short phase name for one of Vagrant's per-node messages, or None when it is not a milestone.

    >>> phase_of("Waiting for machine to boot. This may take a few minutes...")
    'waiting for SSH'
    """
    for needle, phase in PHASES:
        if needle in message:
            return phase
    return None


# -- progress display ---------------------------------------------------------------------------------
@dataclass
class Progress:
    """Per-node phase display: a live rich table on a terminal, plain ``node: phase`` lines otherwise."""

    nodes: list[str]
    verbose: bool
    phases: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    history: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # node -> (phase, since start)
    _live: object | None = None

    def __enter__(self) -> Progress:
        self.phases = dict.fromkeys(self.nodes, "waiting")
        if sys.stderr.isatty() and not self.verbose:
            from rich.console import Console
            from rich.live import Live

            live = Live(self._table(), refresh_per_second=4, transient=False, console=Console(stderr=True))  # type: ignore[arg-type]
            live.start()
            self._live = live
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the live display (idempotent), so an error line printed next is not drawn over."""
        if self._live is not None:
            self._live.update(self._table())  # type: ignore[attr-defined]
            self._live.stop()  # type: ignore[attr-defined]
            self._live = None

    def _table(self) -> object:
        from rich.table import Table

        table = Table(box=None, show_header=True, header_style="bold" if use_color() else "")
        table.add_column("NODE")
        table.add_column("PHASE")
        for name in self.nodes:
            table.add_row(name, self.phases.get(name, ""))
        table.caption = f"{time.monotonic() - self.started:.0f}s"
        return table

    def set(self, node: str, phase: str) -> None:
        if self.phases.get(node) == phase:
            return
        self.phases[node] = phase
        self.history.setdefault(node, []).append((phase, time.monotonic() - self.started))
        if self._live is not None:
            self._live.update(self._table())  # type: ignore[attr-defined]
        elif not self.verbose:
            # progress is diagnostics: stderr, so stdout stays the summary (or clean --json)
            typer.echo(f"{node}: {phase} ({time.monotonic() - self.started:.0f}s)", err=True)

    def line(self, line: str) -> None:
        from coreos_lab import vagrant

        if self.verbose:
            typer.echo(line, err=True)
        parsed = vagrant.parse_progress(line, self.nodes)
        if parsed is not None:
            phase = phase_of(parsed[1])
            if phase:
                self.set(parsed[0], phase)


# -- commands -----------------------------------------------------------------------------------------
def profile_rows(history: dict[str, list[tuple[str, float]]], end: float) -> dict[str, list[tuple[str, float]]]:
    """Each node's phases with the seconds spent in each (a phase lasts until the next one, the last until ``end``).

    >>> profile_rows({"core-01": [("booting", 2.0), ("booted", 50.0)]}, 80.0)
    {'core-01': [('booting', 48.0), ('booted', 30.0)]}
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for node, seen in history.items():
        ends = [t for _, t in seen[1:]] + [end]
        out[node] = [(phase, round(stop - since, 1)) for (phase, since), stop in zip(seen, ends, strict=True)]
    return out


def _echo_profile(phases: dict[str, list[tuple[str, float]]]) -> None:
    for node, row in phases.items():
        typer.echo(f"profile {node}: " + ", ".join(f"{p} {t:.0f}s" for p, t in row))


def _lab(lab: Path | None) -> tuple[Path, labconfig.LabConfig]:
    from coreos_lab import config as labconfig

    path = lab_dir(lab).resolve()
    return path, labconfig.load(path)


def _vagrant(path: Path, cfg: labconfig.LabConfig):  # type: ignore[no-untyped-def]
    from coreos_lab import vagrant

    return vagrant.VagrantLab(path, provider=cfg.provider)


def _check_nodes(cfg: labconfig.LabConfig, nodes: Sequence[str]) -> list[str]:
    for name in nodes:
        cfg.node(name)  # ConfigError naming the lab's nodes when unknown
    return list(nodes)


NODES_ARG = typer.Argument(None, help="Nodes (default: all of the lab's).")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Stream Vagrant's own output.")


def up(
    nodes: list[str] = NODES_ARG,
    lab: Path | None = LAB_OPTION,
    verbose: bool = VERBOSE_OPTION,
    parallel: bool = typer.Option(True, "--parallel/--no-parallel", help="Boot nodes at once (libvirt)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for SSH and a healthy etcd cluster."),
    wait_timeout: float = typer.Option(900.0, "--wait-timeout", help="Seconds to wait for a healthy cluster."),
    no_engine: bool = typer.Option(
        False, "--no-engine", help="Do not start the engine that moves units off nodes that go away."
    ),
    profile: bool = typer.Option(
        False, "--profile", help="Then print where the time went: each node's Vagrant phases and the wait for etcd."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Boot the lab's nodes (Vagrant), then wait until every node answers SSH and etcd is healthy.

    A healthy lab gets its engine (`coreos-lab engine status`) unless --no-engine.

    Example: coreos-lab up --profile
    """
    path, cfg = _lab(lab)
    from coreos_lab.cli.lab import refuse_unexpected_pickups
    from coreos_lab.health import wait_ready
    from coreos_lab.probe import EtcdSeen

    refuse_unexpected_pickups(path, cfg)  # before Vagrant: what Flatcar's box would hand the nodes unchecked
    chosen = _check_nodes(cfg, nodes or [])
    targets = chosen or [n.name for n in cfg.nodes]
    vm = _vagrant(path, cfg)
    if not vm.parallel_capable and len(targets) > 1:
        typer.echo(f"note: {cfg.provider} boots nodes one at a time (Vagrant cannot run it in parallel)", err=True)
    start = time.monotonic()
    interrupted = False
    with Progress(targets, verbose) as progress:
        try:
            try:
                vm.up(chosen or None, parallel=parallel, on_line=progress.line)  # drops the ssh-config cache itself
            except VagrantLostSSH as lost:
                again = retry_targets(lost, targets)
                if not again:
                    raise
                # Once: the machines run, but Vagrant stopped their boot steps (hostname, networks,
                # provisioners) when SSH failed; a reload with provisioning runs them all again.
                for name in again:
                    progress.set(name, f"lost SSH ({lost.reason or 'connection failed'}), booting again once")
                vm.reload(again, provision=True, on_line=progress.line)
        except KeyboardInterrupt:
            # Vagrant got its SIGINT and finished its own clean-up (coreos_lab.vagrant); the lab's files
            # were not touched: say how to go on.
            interrupted = True
        if interrupted:  # said by the CLI's boundary, after the progress display has stopped
            raise KeyboardInterrupt(
                "interrupted: vagrant up stopped after its clean-up; run 'coreos-lab up' to go on "
                "or 'coreos-lab destroy' to remove the nodes"
            )
        for name in targets:
            progress.set(name, "booted, checking cluster" if wait else "up")
    history = progress.history
    booted = time.monotonic() - start
    if not wait:
        typer.echo(f"vagrant up finished in {booted:.0f}s (not waiting for the cluster: --no-wait)")
        _echo_profile(profile_rows(history, booted) if profile else {})
        return
    # After a whole-lab `vagrant up` succeeded every node runs: no `vagrant status` needed (~3 s saved).
    states = {m.name: m.state for m in vm.status()} if chosen else {n.name: "running" for n in cfg.nodes}
    running = [n.name for n in cfg.nodes if states.get(n.name) == "running"]
    probe_nodes = [n for n in targets if n in running]
    whole = len(running) == cfg.instances
    unit = "etcd-member.service" if cfg.os == "flatcar" else "etcd2.service"
    if not whole:
        typer.echo(
            f"note: {len(running)} of {cfg.instances} nodes run; waiting for SSH only "
            "(etcd needs a quorum of the lab's nodes)",
            err=True,
        )
    ready, health = wait_ready(
        lambda: _connect(path, probe_nodes),
        probe_nodes,
        etcd_unit=unit,
        expected_members=cfg.instances,
        etcd=whole,
        timeout=wait_timeout,
        tls=cfg.tls,
    )
    restored: list[ActionOutcome] = []
    if ready and whole and not any(h.runs_fleet for h in health.values()):
        # Facts of only some nodes would make the others look gone (their units would move): the reconcile
        # then probes every node itself. A running engine (`up NODE` beside it) does this job; two reconcilers
        # at once could race, so `up` leaves it to the engine.
        from coreos_lab import engine as lab_engine

        if lab_engine.running_pid(lab_engine.state_dir_for(path, None)) is None:
            every = {n.name for n in cfg.nodes} <= set(health)
            restored = restore_units(path, health if every else None)
    total = time.monotonic() - start
    engine: dict[str, object] | None = None
    if ready and whole and not no_engine:
        from coreos_lab.cli.engine_cmds import start_engine

        pid, started, log = start_engine(path, None)
        engine = {"pid": pid, "started": started, "log": str(log)}
    rows = []
    for spec in cfg.nodes:
        h = health.get(spec.name)
        state = states.get(spec.name, "-")
        if h is None:
            rows.append((spec.name, state, spec.ip, "-", "-", "-"))
            continue
        seen = h.etcd or EtcdSeen()
        rows.append(
            (
                spec.name,
                state if h.reachable else f"{state} (no SSH)",
                spec.ip if spec.ip in h.addresses or not h.reachable else f"{spec.ip} (missing)",
                seen.unit_state or "-",
                f"{seen.started_members}/{cfg.instances}" if h.reachable else "-",
                "healthy" if seen.healthy else "unhealthy",
            )
        )
    phases = profile_rows(history, total) if profile else {}
    if as_json:
        emit_json(
            {
                **(
                    {"profile": {n: [{"phase": p, "seconds": t} for p, t in r] for n, r in phases.items()}}
                    if profile
                    else {}
                ),
                "ready": ready,
                "vagrant_seconds": round(booted, 1),
                "total_seconds": round(total, 1),
                "engine": engine,
                "units": [outcome.to_json() for outcome in restored],
                "nodes": [
                    dict(zip(("name", "state", "ip", "etcd", "members", "health"), r, strict=True)) for r in rows
                ],
            }
        )
    else:
        emit_table(["NODE", "STATE", "IP", "ETCD", "MEMBERS", "HEALTH"], rows)
        for outcome in restored:
            if outcome.ok:
                typer.echo(f"units: {outcome.action}")
            else:
                report_problem(f"units: {outcome.action}: {outcome.error}")
        typer.echo(f"vagrant up {booted:.0f}s, ready after {total:.0f}s" if ready else f"not ready after {total:.0f}s")
        if engine is not None:
            typer.echo(f"engine {'started' if engine['started'] else 'already running'} (pid {engine['pid']})")
        _echo_profile(phases)
    if not ready:
        problems = [
            f"{h.name}: {h.error or (h.etcd and h.etcd.unit_state) or 'unhealthy'}"
            for h in health.values()
            if not (h.reachable and h.etcd is not None and h.etcd.ready(cfg.instances))
        ]
        raise VagrantError(
            f"the cluster was not healthy within {wait_timeout:g}s ({'; '.join(problems)[:300]})",
            hint="see `coreos-lab logs etcd-member` or raise --wait-timeout",
        )


def retry_targets(lost: VagrantLostSSH, targets: Sequence[str]) -> list[str]:
    """The machines `up` boots again after Vagrant lost SSH to them: those it named, or the only one it booted.

    None (so the error stands) when Vagrant named none of several, or named one that `up` did not boot.

    >>> retry_targets(VagrantLostSSH("x", machines=("core-02",)), ["core-01", "core-02"])
    ['core-02']
    >>> retry_targets(VagrantLostSSH("x"), ["core-01", "core-02"])
    []
    >>> retry_targets(VagrantLostSSH("x"), ["core-03"])
    ['core-03']
    """
    if not lost.machines:
        return list(targets) if len(targets) == 1 else []
    if not set(lost.machines) <= set(targets):
        return []
    return [name for name in targets if name in lost.machines]


def restore_units(path: Path, facts: Mapping[str, NodeFacts] | None) -> list[ActionOutcome]:
    """Bring the deployed units back where etcd says they run (one reconcile), and say what it did.

    Units are started, not enabled (as fleet did), so after a halt, a host restart or a node's reboot nothing
    starts them; fleet's agents did it from etcd, and the engine does it within a few rounds. `up` does it
    before it returns, so a resumed lab is whole when `up` says it is ready, with or without the engine.
    A lab with nothing deployed costs one unit query per node.
    """
    from coreos_lab.cluster import open_cluster
    from coreos_lab.units.systemd_backend import reconcile

    try:
        with open_cluster(lab=path, inventory=None, accept_new=True, persist=False) as cluster:
            result = reconcile(cluster, facts=facts, specs=None)
    except CoreosLabError as exc:
        report_problem(f"deployed units not restored: {exc} (the engine or `coreos-lab reconcile` will retry)")
        return []
    return list(result.actions)


def _connect(path: Path, nodes: Sequence[str]) -> Cluster:
    """A fresh cluster over ``nodes``' current ``vagrant ssh-config`` (no mux: a booting node may still change)."""
    from coreos_lab import vagrant
    from coreos_lab.cluster import Cluster

    return Cluster.from_ssh_config(vagrant.ssh_config_text(path, list(nodes)), accept_new=True, persist=False)


def _simple(action: str, nodes: list[str], lab: Path | None, verbose: bool, **kwargs: object) -> None:
    path, cfg = _lab(lab)
    chosen = _check_nodes(cfg, nodes or [])
    vm = _vagrant(path, cfg)
    start = time.monotonic()
    if action in ("halt", "destroy") and not chosen:
        # The whole lab goes down: its engine first, or it would see every node vanish. (One node halted is
        # a node going away: the engine moves its units, as fleet would.)
        from coreos_lab.cli.engine_cmds import stop_engine

        stopped = stop_engine(path)
        if stopped:
            typer.echo(f"engine stopped (pid {stopped})")
    if action == "destroy" and not chosen and cfg.provider == "libvirt":
        # libvirt keeps a domain's snapshots beside it (and refuses to undefine it with them): ours go first.
        from coreos_lab.snapshot import SnapshotLab

        removed = SnapshotLab(path).remove_all()
        if removed:
            typer.echo(f"removed {len(removed)} snapshot(s): {', '.join(removed)}")
    with Progress(chosen or [n.name for n in cfg.nodes], verbose) as progress:
        getattr(vm, action)(chosen or None, on_line=progress.line, **kwargs)  # drops the ssh-config cache itself
    typer.echo(f"{action}: done in {time.monotonic() - start:.0f}s")


def halt(
    nodes: list[str] = NODES_ARG,
    lab: Path | None = LAB_OPTION,
    force: bool = typer.Option(False, "--force", help="Power off instead of a clean shutdown."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Shut the lab's nodes down (they keep their disks)."""
    _simple("halt", nodes, lab, verbose, force=force)


def destroy(
    nodes: list[str] = NODES_ARG,
    lab: Path | None = LAB_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Delete the lab's VMs and their disks (the lab directory stays; `up` recreates them)."""
    _simple("destroy", nodes, lab, verbose)


def reload(
    nodes: list[str] = NODES_ARG,
    lab: Path | None = LAB_OPTION,
    provision: bool = typer.Option(False, "--provision", help="Also copy the cloud-config again (and apply it)."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Reboot the lab's nodes (re-reading the Vagrantfile)."""
    _simple("reload", nodes, lab, verbose, provision=provision)


def provision(
    nodes: list[str] = NODES_ARG,
    lab: Path | None = LAB_OPTION,
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Copy each node's cloud-config again and apply it now (on Flatcar a replaced file waits for a reboot)."""
    _simple("provision", nodes, lab, verbose)


box_app = typer.Typer(help="The offline lab box (Debian + etcd, CoreOS-compatible) for libvirt.", no_args_is_help=True)


@box_app.command("build")
def box_build(
    add: bool = typer.Option(False, "--add", help="Also `vagrant box add` it as coreos-lab/lab."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cached box is current."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Also copy the .box and .sha256 here."),  # noqa: B008
    as_json: bool = JSON_OPTION,
) -> None:
    """Build coreos-lab-<version>.box from Debian packages (needs root and debootstrap); cached by recipe."""
    from coreos_lab import vagrant
    from coreos_lab.box import build, recipe

    def step(message: str) -> None:
        if not as_json:
            typer.echo(f"box: {message}", err=True)

    built = build.build(force=force, on_step=step)
    paths = [built.path]
    if output is not None:
        import shutil

        output.mkdir(parents=True, exist_ok=True)
        for src in (built.path, built.path.with_name(built.path.name + ".sha256")):
            shutil.copy2(src, output / src.name)
        paths.append(output / built.path.name)
    added = None
    if add:
        current = build.added_box_key()
        if current == built.key:
            added = "already added"
        else:
            step(f"vagrant box add --name {recipe.BOX_NAME}{' --force' if current is not None else ''}")
            vagrant.box_add(recipe.BOX_NAME, built.path, force=True)
            added = "added"
    info = {
        "box": str(paths[-1]),
        "sha256": built.sha256,
        "version": built.version,
        "key": built.key,
        "size_mb": round(built.size / 1e6),
        "cached": built.cached,
        "seconds": round(built.seconds, 1),
        "vagrant_box": f"{recipe.BOX_NAME} ({added})" if added else None,
    }
    if as_json:
        emit_json(info)
        return
    typer.echo(f"{'cached' if built.cached else 'built'} {paths[-1]} ({info['size_mb']} MB, {info['seconds']}s)")
    typer.echo(f"sha256 {built.sha256}")
    if added:
        typer.echo(f"vagrant box {recipe.BOX_NAME}: {added}")
    else:
        typer.echo(f"next: coreos-lab box build --add, then coreos-lab init --provider libvirt --box {recipe.BOX_NAME}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    for name, fn in (("up", up), ("halt", halt), ("destroy", destroy), ("reload", reload), ("provision", provision)):
        app.command(name)(fn)
    app.add_typer(box_app, name="box")
