"""coreos-lab: a CoreOS/Flatcar cluster on your laptop, driven from Python and the shell."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coreos-lab")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
