"""``python -m plastibench``: the command line."""

from .entry import main

main()
