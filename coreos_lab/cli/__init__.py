"""The command line (typer and rich live only in this package).

Each command module (lab, vm, nodes, etcd_cmds, systemd_cmds, units, status) registers its commands on a
typer app; ``_app.COMMANDS`` names them, so a module is imported only when one of its commands runs. Errors
are mapped to one line on stderr and an exit code in exactly one place, ``LabGroup.main``.
"""

from __future__ import annotations

from coreos_lab.cli._app import app, main

__all__ = ["app", "main"]
