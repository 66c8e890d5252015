"""The typer application: its commands (loaded when used), global options, and the one place that turns
errors into a line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import click
import typer
from typer.core import TyperGroup

from coreos_lab import __version__
from coreos_lab.cli._common import (
    BACKEND_OPTION,
    FLEET_ENDPOINT_OPTION,
    INVENTORY_OPTION,
    JSON_OPTION,
    LAB_OPTION,
    SSH_USERNAME_OPTION,
    TUNNEL_OPTION,
    Problems,
    apply_global_options,
)
from coreos_lab.errors import CoreosLabError

EXIT_INTERRUPTED = 130

# Every command: its module under coreos_lab.cli (whose ``register`` adds it) and the first paragraph of its
# help. ``coreos-lab --help`` lists these without importing a command module; a command's module is loaded
# (and turned into click's objects) when it runs or shows its own help. Order = help order (commands, then
# groups, as typer lists them). tests/unit/test_cli_app.py checks these against the modules.
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "init": ("lab", "Create a lab: coreos-lab.toml, Vagrantfile, config.rb and cloud-config/<node>.yaml."),
    "render": (
        "lab",
        "Re-render Vagrantfile, config.rb and cloud-config/ from coreos-lab.toml (never fetches a new token).",
    ),
    "up": ("vm", "Boot the lab's nodes (Vagrant), then wait until every node answers SSH and etcd is healthy."),
    "halt": ("vm", "Shut the lab's nodes down (they keep their disks)."),
    "destroy": ("vm", "Delete the lab's VMs and their disks (the lab directory stays; `up` recreates them)."),
    "reload": ("vm", "Reboot the lab's nodes (re-reading the Vagrantfile)."),
    "provision": (
        "vm",
        "Copy each node's cloud-config again and apply it now (on Flatcar a replaced file waits for a reboot).",
    ),
    "ssh": ("nodes", "Open an interactive shell on NODE (real ssh), or run a command there and exit with its code."),
    "exec": ("nodes", "Run a command on every node (or --node ones) in parallel; output lines are prefixed by node."),
    "ssh-config": (
        "nodes",
        "Print an OpenSSH client config for the nodes (for ssh -F, testinfra, Ansible, fleetctl --tunnel).",
    ),
    "inventory": ("nodes", "Print the nodes as an Ansible INI inventory or as JSON."),
    "units": ("systemd_cmds", "systemd units across the nodes as one table (a node that fails is reported; exit 1)."),
    "logs": ("systemd_cmds", "The unit's journal on one node (journalctl -u, short-iso timestamps)."),
    "deploy": (
        "units",
        "Place, record (etcd) and start units on the cluster, honouring [X-Fleet]; waits until active or failed.",
    ),
    "undeploy": (
        "units",
        "Stop units, remove them from every node and delete their records (fleetctl destroy). Idempotent.",
    ),
    "list-units": (
        "units",
        "Deployed units where they run: UNIT MACHINE ACTIVE SUB (desired state from etcd, live state from systemd).",
    ),
    "list-unit-files": ("units", "Deployed unit files: UNIT HASH DSTATE STATE TARGET."),
    "list-machines": ("units", "The nodes: MACHINE IP METADATA (exit 1 when a node cannot be reached)."),
    "journal": ("units", "The unit's journal from the node it runs on (fleetctl journal)."),
    "reconcile": (
        "units",
        "Reschedule units off gone/unhealthy nodes and stop units running where they should not. Idempotent.",
    ),
    "status": (
        "status",
        "Is my cluster OK? Nodes (Vagrant, SSH, etcd member, leader), etcd quorum, units desired vs actual.",
    ),
    "doctor": ("status", "Check this host for running a lab: vagrant, provider plugin, network range, libvirt, RAM."),
    "box": ("vm", "The offline lab box (Debian + etcd, CoreOS-compatible) for libvirt."),
    "etcd": ("etcd_cmds", "Ask the cluster's etcd: health, members, keys (through each node's SSH connection)."),
    "unit": ("units", "Start, stop, show or inspect one deployed unit."),
    "engine": (
        "engine_cmds",
        "The engine that reschedules units by itself when a node goes away (fleet's engine; one leader per lab).",
    ),
    "fault": (
        "fault_cmds",
        "Break the cluster on purpose (partition, delay, loss, kill, stop), heal it, or run a measured drill.",
    ),
    "snapshot": (
        "snapshot_cmds",
        "Snapshots of the whole lab (every node at one moment, memory included): save, restore, list, delete.",
    ),
}


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer (which would turn a KeyboardInterrupt into a silent 130).

    Its text is the interrupt's own when it says where it stopped (``deploy``'s ``DeployInterrupted``, or a
    command's ``KeyboardInterrupt("interrupted while ...")``), else ``interrupted``.
    """


def _register(module: str, app: typer.Typer) -> None:
    """Import one command module (an import statement each: the arrows stay visible) and let it register."""
    match module:
        case "lab":
            from coreos_lab.cli import lab

            lab.register(app)
        case "vm":
            from coreos_lab.cli import vm

            vm.register(app)
        case "nodes":
            from coreos_lab.cli import nodes

            nodes.register(app)
        case "etcd_cmds":
            from coreos_lab.cli import etcd_cmds

            etcd_cmds.register(app)
        case "systemd_cmds":
            from coreos_lab.cli import systemd_cmds

            systemd_cmds.register(app)
        case "units":
            from coreos_lab.cli import units

            units.register(app)
        case "engine_cmds":
            from coreos_lab.cli import engine_cmds

            engine_cmds.register(app)
        case "fault_cmds":
            from coreos_lab.cli import fault_cmds

            fault_cmds.register(app)
        case "snapshot_cmds":
            from coreos_lab.cli import snapshot_cmds

            snapshot_cmds.register(app)
        case "status":
            from coreos_lab.cli import status

            status.register(app)
        case _:
            raise ValueError(f"no command module {module!r}")


def load_commands(module: str) -> dict[str, click.Command]:
    """The click commands that ``coreos_lab.cli.<module>`` registers, as typer builds them."""
    sub = typer.Typer(add_completion=False)
    _register(module, sub)
    built = typer.main.get_command(sub)
    if isinstance(built, click.Group):
        return dict(built.commands)
    return {built.name or "": built}


class LabGroup(TyperGroup):
    """Loads commands on demand; maps CoreosLabError, usage errors and Ctrl-C to one line + exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(name for name in super().list_commands(ctx) if name not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self._load(COMMANDS[cmd_name][0])
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in COMMANDS:  # a typo: click suggests names from the commands it has, so all
            for module in dict.fromkeys(module for module, _ in COMMANDS.values()):
                self._load(module)
        return super().resolve_command(ctx, args)

    def _load(self, module: str) -> None:
        for name, command in load_commands(module).items():
            self.commands.setdefault(name, command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's listing, from stand-ins that carry only the help's first paragraph (shortened by click's
        # own rule): listing the commands loads none of them.
        listed = {name: click.Command(name, help=text) for name, (_, text) in COMMANDS.items()}
        listed.update((name, cmd) for name, cmd in self.commands.items() if name not in COMMANDS)
        shown = [(name, cmd) for name, cmd in listed.items() if not cmd.hidden]
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in shown])

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted("interrupted") from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted(str(exc) or "interrupted") from None

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except CoreosLabError as exc:
            import logging

            logging.getLogger("coreos_lab").debug("error", exc_info=True)
            _fail("\n".join(exc.lines()) if isinstance(exc, Problems) else f"error: {exc}", exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            _fail(f"error: {' '.join(exc.format_message().split())}", 2)
        except click.ClickException as exc:
            _fail(f"error: {' '.join(exc.format_message().split())}", exc.exit_code or 1)
        except _Interrupted as exc:
            _fail(f"error: {exc}", EXIT_INTERRUPTED)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _fail("error: interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            sys.exit(0)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    from coreos_lab.redact import mask_text

    click.echo(mask_text(message), err=True)  # an error may quote a discovery URL
    sys.exit(code)


if not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
    # Without a terminal (pipes, scripts, CI) or with NO_COLOR, help is plain click text: no boxes, no escapes.
    import typer.core

    typer.core.HAS_RICH = False

app = typer.Typer(
    cls=LabGroup,
    name="coreos-lab",
    help="A CoreOS/Flatcar cluster on your laptop: render, boot, deploy units, check health.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coreos-lab {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Log commands and show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    # Global options, fleetctl's habit: given before the command, each is the default of the command's own
    # option of that name (an option after the command wins); a command without it is refused.
    backend: str = BACKEND_OPTION,
    fleet_endpoint: str | None = FLEET_ENDPOINT_OPTION,
    tunnel: str | None = TUNNEL_OPTION,
    ssh_username: str | None = SSH_USERNAME_OPTION,
    lab: Path | None = LAB_OPTION,
    inventory: Path | None = INVENTORY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    import logging

    from coreos_lab.redact import install_log_masking

    if debug or os.environ.get("COREOS_LAB_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="debug: %(name)s: %(message)s", stream=sys.stderr)
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    install_log_masking()  # discovery tokens and private keys never reach a log line in full
    apply_global_options(ctx)


def main() -> None:
    """Console-script entry point (Ctrl-C while typer builds the command tree ends like any other)."""
    try:
        app()
    except KeyboardInterrupt:
        _fail("error: interrupted", EXIT_INTERRUPTED)
    finally:
        # On the way out (the outcome is decided): a late Ctrl-C must not turn it into a traceback from
        # the interpreter's shutdown, or a finished run into "killed by SIGINT".
        signal.signal(signal.SIGINT, signal.SIG_IGN)
