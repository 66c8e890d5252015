"""``python -m coreos_lab``: the CLI (the engine's detached process is started this way)."""

from coreos_lab._entry import main

main()
