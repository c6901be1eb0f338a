"""The CPU heap setting applies on Linux/glibc, once, and can be turned off."""

import os
import subprocess
import sys

import pytest

from plastibench import heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_applies_once_on_linux():
    assert heap.keep_freed_blocks() is True and heap.keep_freed_blocks() is True


def test_plastibench_heap_default_leaves_the_allocator_alone():
    code = "from plastibench import heap; print(heap.keep_freed_blocks())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PLASTIBENCH_HEAP": "default"}, check=True)
    assert out.stdout.strip() == "False"
