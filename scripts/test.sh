#!/usr/bin/env bash
# The whole test suite, real components included: lint, types, unit, integration (sshd, etcd, vagrant),
# nspawn nodes and VMs. Installs what it needs first. A missing prerequisite is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Test images, built on the host (the VM rig's namespace has no route to the package mirror): the nspawn
# nodes' rootfs and the offline lab box. Both are cached by recipe hash, so a second run costs seconds.
if [ "$(id -u)" -eq 0 ]; then
  .venv/bin/python -m tests.nspawn.rootfs
  .venv/bin/coreos-lab box build --add
fi
export COREOS_LAB_REQUIRE_ALL=1   # conftest turns "prerequisite missing" into a failure instead of a skip
.venv/bin/ruff check coreos_lab tests benchmarks
.venv/bin/ruff format --check coreos_lab tests benchmarks || echo "note: ruff format differences (not fatal)"
.venv/bin/mypy
.venv/bin/pytest -p no:cacheprovider --durations=25 "$@"   # the slowest tests, to budget the VM suite
