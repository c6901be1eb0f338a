"""The ``plastibench`` console script: Ctrl-C while the CLI imports (torch takes seconds) ends in one
line and status 130, not a traceback; then the typer app runs."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import app
    except KeyboardInterrupt:
        print("Error: interrupted at start-up; nothing was run", file=sys.stderr)
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":
    main()
