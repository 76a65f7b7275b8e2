"""deconvviz."""
from deconvviz._version import __version__

__all__ = ["__version__"]
