"""The CPU heap: keep large freed blocks for reuse instead of returning them to the kernel.

With S seeds, a weight gradient of permuted MNIST is ``[S, 2000, 2000]`` floats (64 MB at S = 4).
glibc serves blocks above its mmap threshold (at most 32 MB) with fresh mappings and unmaps them on
free, so every step faults those pages in again: about 31 000 minor page faults per step at S = 4.
Telling glibc never to use mmap for allocations and never to trim the heap makes the step reuse the
same pages (measured in ``docs/benchmarks.md``). The process keeps its peak heap; that is the cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def keep_freed_blocks() -> bool:
    """Apply the setting once per process (Linux with glibc; else nothing). True when it is in force.
    ``PLASTIBENCH_HEAP=default`` leaves the allocator as it is."""
    global _done
    if _done:
        return True
    if os.environ.get("PLASTIBENCH_HEAP") == "default" or not os.sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _done
