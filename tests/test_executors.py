"""The joblib executor (``run_local``): devices round-robin, threads split so that the jobs do not
oversubscribe the cores, and one item's failure, even its worker's death, kept to itself."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from plastibench.executors import cores, run_local

pytestmark = pytest.mark.usefixtures("pickled_by_value")


def report(item: int, device: str, threads: int | None) -> dict:
    """Item ``item``'s device, threads and torch threads; 0 raises, a negative one kills its worker
    after a second."""
    if item == 0:
        raise ValueError("item 0 fails")
    if item < 0:
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)
    return {"device": device, "threads": threads, "torch": torch.get_num_threads()}


def test_devices_round_robin_threads_split_and_a_failure_kept_to_its_item():
    outcomes = run_local(report, [1, 2, 0, 3], jobs=2, devices=["cpu", "cuda:1"])
    share = max(1, cores() // 2)
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert outcomes[0].result == {"device": "cpu", "threads": share, "torch": share}
    assert outcomes[1].result["device"] == "cuda:1" and outcomes[1].result["threads"] is None
    assert not outcomes[2].ok and outcomes[2].error == "ValueError: item 0 fails"
    assert "Traceback" in outcomes[2].traceback and outcomes[3].result["device"] == "cuda:1"


def test_a_dead_worker_fails_the_unfinished_items_only():
    outcomes = run_local(report, [1, -1], jobs=2, devices=["cpu"])
    assert outcomes[0].ok
    assert not outcomes[1].ok and "TerminatedWorkerError" in outcomes[1].error
