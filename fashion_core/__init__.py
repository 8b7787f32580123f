"""fashion_core: the library behind the ``fashion`` command (see README.md and docs/ARCHITECTURE.md)."""

__version__ = "0.1.0"
