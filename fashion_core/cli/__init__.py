"""The ``fashion`` command: ``commands`` (the click group), ``options`` (shared options and one-line user errors)."""
