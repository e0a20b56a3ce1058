"""Importing this package registers every rule (one module per layer family)."""

from . import embedding, linear, norm  # noqa: F401
