"""pytest plugin (entry point ``pytest11``): ``pytest --coreos-lab DIR`` gives cluster fixtures."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coreos-lab")
    group.addoption("--coreos-lab", action="store", default=None, metavar="DIR", help="lab directory to test")
