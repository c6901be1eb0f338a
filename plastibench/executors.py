"""Executors: run a list of picklable work items with joblib, on Slurm (submitit) or on Ray.

Each runs ``fn(item, device, threads)`` once per item, where ``fn`` is a module-level function that
returns a small picklable dict, and returns one :class:`Outcome` per item, in the items' order. An
item that raises does not stop the others: its outcome carries the error. ``threads``, when not
None, is the number of torch threads the item may use (already set by the executor).

* :func:`run_local`: joblib's loky backend, ``jobs`` worker processes; item ``i`` gets
  ``devices[i % len(devices)]``; on a CPU ``threads = max(1, cores // jobs)``, so that ``jobs``
  items never use more threads than the process may run on.
* :func:`run_slurm`: one submitit job array, then a wait for all of it; preempted tasks checkpoint,
  requeue and resume (:mod:`plastibench.slurm`).
* :func:`run_ray`: one Ray task per item with ``num_cpus``/``num_gpus``, on the cluster at
  ``address``, or on a local one started for the call and shut down after it.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any, Sequence

from .work import Fn, Outcome, attempt, failure


def cores() -> int:
    """The CPUs this process may run on (its affinity, which a container or Slurm may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_local(fn: Fn, items: Sequence[Any], *, jobs: int, devices: list[str]) -> list[Outcome]:
    """A worker process that dies (killed, out of memory) fails the items that had not finished,
    with joblib's error; the others keep their outcomes."""
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    threads = max(1, cores() // jobs)
    calls = (delayed(attempt)(fn, i, item, devices[i % len(devices)],
                              threads if devices[i % len(devices)] == "cpu" else None)
             for i, item in enumerate(items))
    done: dict[int, Outcome] = {}
    try:
        for outcome in Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")(calls):
            done[outcome.index] = outcome
    except TerminatedWorkerError as exc:  # its message ends with advice: the error is its first line
        text = f"{traceback.format_exc()}\nTerminatedWorkerError: {str(exc).splitlines()[0]}"
        done.update({i: failure(i, text) for i in range(len(items)) if i not in done})
    return [done[i] for i in range(len(items))]


def run_slurm(fn: Fn, items: Sequence[Any], *, folder: Path, partition: str | None, time_min: int,
              gpus_per_job: int, array_parallelism: int, setup: list[str],
              log_dirs: Sequence[Path | None] | None) -> list[Outcome]:
    """One array of ``len(items)`` tasks (``sbatch --array=0-N%array_parallelism --requeue
    --time=time_min``, ``--gpus-per-node=gpus_per_job`` when not 0, the ``setup`` lines before
    ``srun``); submitit keeps its pickles and logs in ``folder``, and item ``i``'s logs are copied
    into ``log_dirs[i]`` (when not None) at the end. Preemption and waiting: :mod:`plastibench.slurm`."""
    import submitit

    from .slurm import Call, outcome, wait

    if not items:
        return []
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(job_name="plastibench", partition=partition, time=time_min,
                               gpus_per_node=gpus_per_job or None, array_parallelism=array_parallelism,
                               setup=list(setup), additional_parameters={"requeue": True})
    jobs = executor.map_array(Call(fn, gpus_per_job), list(items))
    lost = wait(jobs)
    return [outcome(i, job, lost.get(i), None if log_dirs is None or log_dirs[i] is None else Path(log_dirs[i]))
            for i, job in enumerate(jobs)]


def _ray_attempt(fn: Fn, index: int, item: Any, num_cpus: float, num_gpus: float) -> Outcome:
    """One Ray task: Ray has set CUDA_VISIBLE_DEVICES to the task's GPUs when it has any."""
    device = "cuda" if num_gpus > 0 else "cpu"
    return attempt(fn, index, item, device, max(1, int(num_cpus)) if device == "cpu" else None)


def run_ray(fn: Fn, items: Sequence[Any], *, address: str | None, num_cpus: float,
            num_gpus: float) -> list[Outcome]:
    import ray

    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_ray_attempt)
        refs = [task.remote(fn, i, item, num_cpus, num_gpus) for i, item in enumerate(items)]
        outcomes = []
        for i, ref in enumerate(refs):
            try:
                outcomes.append(ray.get(ref))
            except Exception:  # the worker died (killed, out of memory): Ray's error is all there is
                outcomes.append(failure(i, traceback.format_exc()))
        return outcomes
    finally:
        ray.shutdown()
