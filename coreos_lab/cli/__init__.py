"""The command line (typer and rich live only in this package).

Each submodule registers its commands on ``app``; errors are mapped to one line on stderr and an exit
code in exactly one place, ``LabGroup.main``.
"""

from __future__ import annotations

from coreos_lab.cli._app import app, main
from coreos_lab.cli import lab, nodes, status, units, vm  # noqa: E402  (registration order = help order)

for _module in (lab, vm, nodes, units, status):
    _module.register(app)

__all__ = ["app", "main"]
