"""CLI commands that reach nodes over SSH: ``ssh``, ``exec``, ``ssh-config``, ``inventory``."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from coreos_lab.cli._common import (
    ACCEPT_NEW_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    NO_PERSIST_OPTION,
    NODE_TIMEOUT_OPTION,
    NODES_OPTION,
    emit_json,
    open_nodes,
    report_problem,
)
from coreos_lab.errors import CoreosLabError, UsageError

if TYPE_CHECKING:  # the cluster (and paramiko behind it) is imported only when a command runs
    from coreos_lab.cluster import Cluster

_PASSTHROUGH = {"allow_interspersed_args": False}  # options go before the command; the rest is the command
EXEC_COMMAND_ARG = typer.Argument(None, help="The command, run by each node's shell (put it after --).")
NODE_ARG = typer.Argument(..., help="Node name.")
SSH_COMMAND_ARG = typer.Argument(None, help="Command to run (after --); none = interactive ssh.")


def _command_line(words: list[str]) -> str:
    # Like ssh(1): the words are joined with spaces and run by the node's shell, so
    # `coreos-lab exec 'systemctl status etcd | head'` and `coreos-lab exec systemctl status etcd` both work.
    if words and words[0] == "--":  # click keeps the separator once positional parsing has begun
        words = words[1:]
    if not words:
        raise UsageError("no command given (usage: coreos-lab exec [--node N]... -- CMD [ARGS]...)")
    return " ".join(words)


def _outcome_record(name: str, outcome: Any) -> dict[str, Any]:
    from coreos_lab.runner import CommandResult

    if isinstance(outcome, CommandResult):
        return {
            "node": name,
            "ok": outcome.ok,
            "exit_code": outcome.exit_code,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "duration": round(outcome.duration, 4),
            "error": None,
        }
    return {
        "node": name,
        "ok": False,
        "exit_code": None,
        "stdout": "",
        "stderr": "",
        "duration": None,
        "error": str(outcome),
    }


def _prefixed(name: str, text: str, width: int) -> str:
    label = name.ljust(width)
    return "".join(f"{label} | {line}\n" for line in text.splitlines())


def exec_cmd(
    command: list[str] = EXEC_COMMAND_ARG,
    node: list[str] = NODES_OPTION,
    timeout: float = NODE_TIMEOUT_OPTION,
    sudo: bool = typer.Option(False, "--sudo", help="Run as root (sudo -n on the node)."),
    as_json: bool = JSON_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Run a command on every node (or --node ones) in parallel; output lines are prefixed by node.

    Options go before the command: coreos-lab exec --node core-01 -- systemctl status etcd.
    Exits 1 if any node failed (non-zero exit, unreachable, timed out).
    """
    line = _command_line(command or [])
    cluster = open_nodes(lab, inventory, no_persist=no_persist, accept_new=accept_new)
    try:
        outcomes = cluster.run_all(line, nodes=node or None, timeout=timeout, sudo=sudo)
    finally:
        cluster.close()
    records = [_outcome_record(name, outcome) for name, outcome in outcomes.items()]
    if as_json:
        emit_json(records)
    else:
        width = max((len(n) for n in outcomes), default=0)
        for rec in records:
            if rec["stdout"]:
                sys.stdout.write(_prefixed(rec["node"], rec["stdout"], width))
            if rec["stderr"]:
                sys.stderr.write(_prefixed(rec["node"], rec["stderr"], width))
            if rec["error"]:
                report_problem(rec["error"].removeprefix(f"{rec['node']}: "), prefix=f"{rec['node'].ljust(width)} | ")
            elif rec["exit_code"]:
                typer.echo(f"{rec['node'].ljust(width)} | exit {rec['exit_code']}", err=True)
        sys.stdout.flush()
    if not all(rec["ok"] for rec in records):
        raise typer.Exit(1)


def ssh_cmd(
    node: str = NODE_ARG,
    command: list[str] = SSH_COMMAND_ARG,
    timeout: float = NODE_TIMEOUT_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    no_persist: bool = NO_PERSIST_OPTION,
    accept_new: bool = ACCEPT_NEW_OPTION,
) -> None:
    """Open an interactive shell on NODE (real ssh), or run a command there and exit with its code.

    Options go before NODE: coreos-lab ssh --inventory hosts core-01 -- uptime.
    """
    words = list(command or [])
    if words and words[0] == "--":
        words = words[1:]
    cluster = open_nodes(lab, inventory, no_persist=no_persist or not words, accept_new=accept_new)
    runner = cluster.runner(node)  # validates the name before anything else
    if not words:
        _exec_interactive(cluster, node, lab, inventory, accept_new)
        return
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        result = runner.run(_command_line(words), timeout=timeout, stdin=stdin)
    finally:
        cluster.close()
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    raise typer.Exit(result.exit_code if 0 <= result.exit_code <= 255 else 255)


def _exec_interactive(cluster: Cluster, node: str, lab: Path | None, inventory: Path | None, accept_new: bool) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        raise CoreosLabError("ssh (OpenSSH client) is not installed", hint="apt-get install openssh-client")
    if inventory is not None:
        config = inventory  # it is already an OpenSSH client config
    else:
        from coreos_lab.cli._common import lab_dir
        from coreos_lab.fsutil import atomic_write
        from coreos_lab.vagrant import STATE_DIR

        # Not a cache (coreos-lab never reads it back): the file ssh -F needs, written from the nodes just
        # resolved (themselves from the lab's one ssh-config cache), so it is current whenever ssh starts.
        state = lab_dir(lab) / STATE_DIR
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = state / "ssh_config"
        atomic_write(config, cluster.ssh_config(), mode=0o600)
    argv = [ssh, "-F", str(config)]
    if accept_new:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    argv.append(node)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(ssh, argv)  # noqa: S606 - replacing this process with the user's interactive ssh is the point


def ssh_config_cmd(
    node: list[str] = NODES_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
) -> None:
    """Print an OpenSSH client config for the nodes (for ssh -F, testinfra, Ansible, fleetctl --tunnel)."""
    from coreos_lab.sshconfig import format_ssh_config

    cluster = open_nodes(lab, inventory, no_persist=True)
    chosen = cluster.select(node or None)
    sys.stdout.write(format_ssh_config([cluster.targets[n] for n in chosen]))


def _ini_value(value: str) -> str:
    return shlex.quote(value)


def inventory_cmd(
    fmt: str = typer.Option("ansible", "--format", help="ansible (INI inventory) or json."),
    group: str = typer.Option("coreos", "--group", help="Ansible group name for the nodes."),
    node: list[str] = NODES_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
) -> None:
    """Print the nodes as an Ansible INI inventory or as JSON."""
    if fmt not in ("ansible", "json"):
        raise UsageError(f"--format must be ansible or json, got {fmt!r}")
    cluster = open_nodes(lab, inventory, no_persist=True)
    targets = [cluster.targets[n] for n in cluster.select(node or None)]
    if fmt == "json":
        emit_json(
            [
                {
                    "name": t.name,
                    "hostname": t.hostname,
                    "port": t.port,
                    "user": t.user,
                    "identity_files": list(t.identity_files),
                    "user_known_hosts_file": t.user_known_hosts_file,
                    "strict_host_key_checking": t.strict_host_key_checking,
                }
                for t in targets
            ]
        )
        return
    lines = [f"[{group}]"]
    for t in targets:
        parts = [t.name, f"ansible_host={_ini_value(t.hostname)}", f"ansible_port={t.port}"]
        if t.user:
            parts.append(f"ansible_user={_ini_value(t.user)}")
        if t.identity_files:
            parts.append(f"ansible_ssh_private_key_file={_ini_value(t.identity_files[0])}")
        ssh_args = [
            f"-o StrictHostKeyChecking={t.strict_host_key_checking}",
            f"-o UserKnownHostsFile={t.user_known_hosts_file}",
        ]
        if t.identities_only:
            ssh_args.append("-o IdentitiesOnly=yes")
        parts.append(f"ansible_ssh_common_args={_ini_value(' '.join(ssh_args))}")
        lines.append(" ".join(parts))
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the application."""
    app.command("ssh", context_settings=_PASSTHROUGH)(ssh_cmd)
    app.command("exec", context_settings=_PASSTHROUGH)(exec_cmd)
    app.command("ssh-config")(ssh_config_cmd)
    app.command("inventory")(inventory_cmd)
