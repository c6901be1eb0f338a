"""What every command shares: one way to report an error and exit."""

from __future__ import annotations

import typer


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``Error: message`` on stderr (unwrapped, no traceback); the caller raises the result.

    Exit codes: 2 for bad input (usage), 1 for unavailable or unusable data.
    """
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)
