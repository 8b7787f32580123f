"""Configuration: ``schema`` (frozen dataclasses, overrides, technique files), ``checks`` (valid names), ``profiles``."""
