"""Shared test plumbing. In CI (COREOS_LAB_REQUIRE_ALL=1) a missing prerequisite fails instead of skipping."""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRE_ALL = os.environ.get("COREOS_LAB_REQUIRE_ALL") == "1" or os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip a test whose prerequisite is missing on a developer machine; fail it in CI."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    require(path is not None, f"{name} not installed")
    assert path is not None
    return path


def require_root() -> None:
    require(os.geteuid() == 0, "needs root")
