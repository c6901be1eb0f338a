"""User-facing errors that many modules raise; a leaf module, so raising one imports nothing else."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input: the CLI prints the message and exits with status 2."""
