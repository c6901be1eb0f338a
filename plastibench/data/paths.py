"""Where datasets live on disk, and the error raised when they are not there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "PLASTIBENCH_DATA"


class DataUnavailable(Exception):
    """Required data is missing or invalid.

    ``str(exc)`` is a complete message for the user: what is missing, where it was
    looked for, and what to do about it. The CLI prints it without a traceback.
    """


def default_cache_dir(platform: str | None = None) -> Path:
    """Per-user cache directory for plastibench data on ``platform`` (default: this one)."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or "~/AppData/Local"
    elif platform == "darwin":
        base = "~/Library/Caches"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "plastibench"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Data root: ``data_dir`` if given, else ``$PLASTIBENCH_DATA`` if non-empty, else the cache dir.

    The directory is not created.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if env := os.environ.get(ENV_VAR):
        return Path(env).expanduser()
    return default_cache_dir()
