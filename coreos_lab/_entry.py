"""The ``coreos-lab`` console script: a Ctrl-C while the CLI is still loading ends as cleanly as one later.

Importing the CLI (typer and click; a command's own module loads when it runs) takes ~0.1 s; a KeyboardInterrupt
raised in that window would otherwise print a Python traceback. Nothing has been written yet at that point. This module
imports nothing at its top but ``sys`` (already loaded): everything else loads inside ``main``'s guard.
"""

from __future__ import annotations

import sys


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that lands in a callback CPython runs on the side (importlib's module-lock weakref callback
    during a lazy import) is reported as "Exception ignored" and lost: the command would go on. Deliver it
    again so it stops the command like any other Ctrl-C."""
    if isinstance(args.exc_type, type) and issubclass(args.exc_type, KeyboardInterrupt):
        import signal

        signal.raise_signal(signal.SIGINT)
        return
    sys.__unraisablehook__(args)


def main() -> None:
    """Load the CLI and run it; exit 130 with one line when interrupted while loading."""
    try:
        sys.unraisablehook = _unraisable
        from coreos_lab.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    cli_main()
