"""The typer application, global options and the single place that turns errors into exit codes."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

from coreos_lab import __version__, secrets
from coreos_lab.errors import CoreosLabError

log = logging.getLogger("coreos_lab")


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer (which would turn a KeyboardInterrupt into a silent 130)."""


class LabGroup(TyperGroup):
    """Runs the command; maps CoreosLabError, usage errors and Ctrl-C to one line + exit code."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None

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
            log.debug("error", exc_info=True)
            _fail(f"error: {exc}", exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            _fail(f"error: {' '.join(exc.format_message().split())}", 2)
        except click.ClickException as exc:
            _fail(f"error: {' '.join(exc.format_message().split())}", exc.exit_code or 1)
        except (click.exceptions.Abort, KeyboardInterrupt, _Interrupted):
            _fail("error: interrupted", 130)
        except BrokenPipeError:
            sys.exit(0)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo(secrets.mask_text(message), err=True)  # an error may quote a discovery URL
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
    debug: bool = typer.Option(False, "--debug", help="Log commands and show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    if debug or os.environ.get("COREOS_LAB_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="debug: %(name)s: %(message)s", stream=sys.stderr)
    else:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    secrets.install_log_masking()  # discovery tokens and private keys never reach a log line in full


def main() -> None:
    """Console-script entry point (Ctrl-C while typer builds the command tree ends like any other)."""
    try:
        app()
    except KeyboardInterrupt:
        _fail("error: interrupted", 130)
    finally:
        # On the way out (the outcome is decided): a late Ctrl-C must not turn it into a traceback from
        # the interpreter's shutdown, or a finished run into "killed by SIGINT".
        signal.signal(signal.SIGINT, signal.SIG_IGN)
