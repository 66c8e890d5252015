"""The command line (typer and rich live only in this package).

Each submodule registers its commands on ``app``; errors are mapped to one line on stderr and an exit
code in exactly one place, ``LabGroup.main``.
"""

from __future__ import annotations

from coreos_lab.cli import etcd_cmds, lab, nodes, status, units, vm
from coreos_lab.cli._app import app, main

for _module in (lab, vm, nodes, etcd_cmds, units, status):  # registration order = help order
    _module.register(app)

__all__ = ["app", "main"]
