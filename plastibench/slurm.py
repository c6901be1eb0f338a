"""Slurm through submitit (:func:`plastibench.executors.run_slurm`): the job of an array task,
waiting for an array without accounting, and reading its outcomes.

Preemption, as submitit 1.5.4 does it (``core/job_environment.py``, ``core/submission.py``): each
array task runs ``srun python -m submitit.core._submit``, which installs its handlers before it
calls the job: SIGTERM and SIGCONT are logged and ignored; SIGUSR2 (``--signal=USR2@90``: 90 s
before the time limit, or ``scancel --signal=USR2``) runs ``checkpoint_and_try_requeue`` inside the
signal handler, wherever the job is: it calls the job's ``checkpoint()``, pickles the call that
returns over the submitted one, runs ``scontrol requeue JOBID`` and ``sys.exit(-1)`` (a SystemExit:
no result file, the task is not over). During ``Engine.run`` the engine's own handlers take SIGTERM,
SIGHUP, SIGUSR1 and SIGUSR2 instead: the step in flight ends, the run directory is checkpointed,
the handlers from before (submitit's) come back and ``Preempted`` is raised. :class:`Call` catches
it: on SIGUSR2 it calls submitit's handler itself, which requeues the same call
(``Checkpointable.checkpoint``), and the requeued task resumes from the engine's checkpoint; on the
others it exits with 128 + the signal and no result (Slurm requeues a preempted job itself; a
cancelled one ends lost). ``fn`` must let ``Preempted`` through.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import pickle_load

from .engine import Preempted
from .work import Fn, Outcome, failure, torch_threads

FINAL = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"})


class Call(submitit.helpers.Checkpointable):
    """The job of one array task: ``fn(item, device, threads)`` on the task's GPUs, or on a CPU with
    ``threads`` = the CPUs Slurm gave it (``SLURM_CPUS_ON_NODE``). The inherited ``checkpoint()``
    requeues this same call: the run directory holds the progress."""

    def __init__(self, fn: Fn, gpus: int):
        self.fn, self.gpus = fn, gpus

    def __call__(self, item: Any) -> dict:
        device = "cuda" if self.gpus else "cpu"
        threads = int(os.environ.get("SLURM_CPUS_ON_NODE", "1")) if device == "cpu" else None
        try:
            with torch_threads(threads):
                return self.fn(item, device, threads)
        except Preempted as stop:
            handler = signal.getsignal(stop.signum)
            if stop.signum == getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG) and callable(handler):
                handler(stop.signum, None)  # submitit's: checkpoint(), scontrol requeue, sys.exit
            raise SystemExit(stop.exit_code) from None


def queue_states(array_id: str) -> dict[str, str] | None:
    """``squeue``'s state of every task of ``array_id`` still known to it (``{"12_0": "RUNNING"}``),
    or None when squeue gives no answer."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i|%T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:  # a job the controller has forgotten is an invalid id
        return {} if "Invalid job id" in done.stderr else None
    return dict(line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)


def wait(jobs: list, *, poll: float = 1.0, queue_every: float = 15.0, grace: float = 15.0) -> dict[int, str]:
    """Wait until every job has a result file or is lost, and return the lost ones' last states.

    A job is lost when squeue has shown it ended (or forgotten) without a result file for
    ``grace`` seconds: without accounting (``sacct``) submitit's own wait cannot tell it from a
    running one. A requeued job is PENDING again, not ended.
    """
    pending, ended, lost = set(range(len(jobs))), {}, {}
    array_id, asked = jobs[0].job_id.split("_")[0], -float("inf")
    while pending:
        pending -= {i for i in pending if jobs[i].paths.result_pickle.exists()}
        now = time.monotonic()
        if pending and now - asked >= queue_every:
            asked, states = now, queue_states(array_id)
            for i in pending if states is not None else ():
                state = states.get(jobs[i].job_id, "GONE")
                if state in FINAL or state == "GONE":
                    ended.setdefault(i, (now, state))
                else:
                    ended.pop(i, None)
        for i, (since, state) in ended.items():
            if i in pending and now - since >= grace:
                lost[i] = state
                pending.discard(i)
        if pending:
            time.sleep(poll)
    return lost


def outcome(index: int, job, lost: str | None, log_dir: Path | None) -> Outcome:
    """Item ``index``'s outcome; its Slurm logs (``slurm-JOBID.out``/``.err``, both attempts of a
    requeued task) are copied into ``log_dir`` first, and an error names the copy."""
    err = job.paths.stderr
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        for src, suffix in ((job.paths.stdout, "out"), (job.paths.stderr, "err")):
            if src.exists():
                shutil.copyfile(src, log_dir / f"slurm-{job.job_id}.{suffix}")
        err = log_dir / f"slurm-{job.job_id}.err"
    if lost is not None:
        return failure(index, f"Slurm job {job.job_id} ended without a result ({lost})", where=str(err))
    kind, value = pickle_load(job.paths.result_pickle)
    return Outcome(index, True, result=value) if kind == "success" else failure(index, value, where=str(err))
