"""User-facing errors that many modules raise; a leaf module, so raising one imports nothing else."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input: the CLI prints the message and exits with status 2."""


class MissingExtra(UsageError, ImportError):
    """An optional dependency is not installed: the message says which extra installs it (exit 2)."""


class RunFileError(ValueError):
    """A file of a run directory (summary.yaml, metrics.csv, ...) is missing, damaged or edited by hand:
    the CLI prints the message and exits with status 1."""


class CheckpointUnreadable(RunFileError):
    """``checkpoint.pt`` cannot be loaded (truncated, not a checkpoint): exit 1, offering ``--restart``."""

    def __init__(self, path, reason: str = ""):
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is unreadable ({reason or 'not a plastibench checkpoint'}); re-run with "
                         "--restart to discard it and start the run afresh")


class StartupInterrupted(KeyboardInterrupt):
    """Ctrl-C before the training loop started (imports, data loading): nothing was saved; exit 130."""
