"""coreos-lab: a CoreOS/Flatcar cluster on your laptop, driven from Python and the shell."""

# The single source of the version (hatchling reads it); a literal, because importlib.metadata costs ~25 ms
# of start-up on every CLI call.
__version__ = "0.1.0"

__all__ = ["__version__"]
