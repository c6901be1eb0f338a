"""The engine: S seeds of one (method, task, protocol) trained in lockstep as one batched model.

Per step: ``x[S,B,..], y = task.batch`` -> ``out, features = net(x)`` -> per-seed loss ``[S]``
(the online metric is read from this pre-update prediction) -> ``method.loss_term`` -> one
backward of the summed loss (seeds share no parameter, so each seed gets its own gradient) ->
``optimizer.step()`` -> ``method.after_step``. No host synchronisation happens inside a step:
counters live on the host, metrics accumulate on the device.

At every task boundary the engine measures diagnostics on the task's probe batch. It checkpoints
whenever ``checkpoint_every`` seconds have passed (checked at task boundaries and every
``CHECK_EVERY`` steps), at the end, and on Ctrl-C, which is deferred to the end of the step in
flight so that the checkpoint never holds a half-done step; a new engine on the same run directory
resumes from the checkpoint and ends bit-for-bit where an uninterrupted run would (on CPU).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import diagnostics
from .method import Method, RunContext, StepInfo
from .protocol import Protocol
from .results import load_checkpoint, save_checkpoint, summarise, write_metrics, write_yaml
from .task import Task

CHECK_EVERY = 1000


@dataclass
class Progress:
    """What a progress display is told: tasks done, steps done, steps in all."""

    tasks_done: int
    steps_done: int
    total_steps: int


def _numpy(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().double().cpu().numpy() for k, v in values.items()}


class Engine:
    """Trains one configuration; ``run()`` returns the summary (and writes the run directory)."""

    def __init__(self, method_cls: type[Method], hparams: Mapping[str, Any], task_cls: type[Task],
                 protocol: Protocol, seeds: Sequence[int], *, device: torch.device, directory: Path,
                 config: Mapping[str, Any], data_dir=None, verify: bool = True, checkpoint_every: float = 120.0):
        self.protocol, self.directory, self.config = protocol, Path(directory), dict(config)
        self.seeds = list(seeds)
        self.checkpoint_every = checkpoint_every
        seed_tensor = torch.tensor(self.seeds, dtype=torch.int64, device=device)
        self.task = task_cls(protocol, seed_tensor, data_dir=data_dir, verify=verify)
        self.ctx = RunContext(seeds=seed_tensor, task=protocol.task, protocol=protocol,
                              network_factory=self.task.network)
        self.method = method_cls(hparams, self.ctx)
        self.net = self.method.configure_network(self.task.network())
        self.ctx.net = self.net
        spec = self.method.optimizer_spec(protocol.optimizer)
        self.optimizer = self.method.build_optimizer(list(self.net.parameters()), spec)
        self.ctx.optimizer = self.optimizer
        self.device = device
        self.records: list[dict[str, np.ndarray]] = []
        self.task_diagnostics: dict[str, np.ndarray] | None = None
        self.task_index, self.step_in_task, self.wall_time = 0, 0, 0.0

    # ----- checkpointing -----
    @property
    def checkpoint_path(self) -> Path:
        return self.directory / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "task_index": self.task_index,
            "step_in_task": self.step_in_task,
            "wall_time": self.wall_time,
            "records": self.records,
            "task_diagnostics": self.task_diagnostics,
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "task": self.task.state_dict(),
        }

    def resume(self) -> bool:
        """Load the run directory's checkpoint if there is one; True when it did."""
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return False
        if state["config"] != self.config:
            raise RuntimeError(f"{self.checkpoint_path} belongs to another configuration; remove it or "
                               "choose another --out")
        self.task_index, self.step_in_task = state["task_index"], state["step_in_task"]
        self.wall_time, self.records = state["wall_time"], state["records"]
        self.task_diagnostics = state["task_diagnostics"]
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.task.load_state_dict(state["task"])
        return True

    def checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state_dict())
        write_metrics(self.directory / "metrics.csv", self.seeds, self.records)

    # ----- training -----
    def _step(self, task_index: int, step: int, offset: int | None = None) -> None:
        x, y = self.task.batch(task_index, step)
        out, features = self.net(x)
        loss = self.task.loss(out, y)
        self.task.observe(out.detach(), y, loss.detach())
        total = loss.sum()
        extra = self.method.loss_term(out, features)
        if extra is not None:
            total = total + extra.sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        offset = self.task.task_offset(task_index) if offset is None else offset
        self.method.after_step(StepInfo(offset + step, task_index, [f.detach() for f in features]))
        self.task.after_step(task_index, step, self.net, self.optimizer)

    def run(self, on_progress: Callable[[Progress], None] = lambda p: None) -> dict[str, Any]:
        p = self.protocol
        last_save = time.monotonic()
        started = time.monotonic() - self.wall_time

        total = self.task.total_steps()

        def report():
            on_progress(Progress(self.task_index, self.task.task_offset(self.task_index) + self.step_in_task,
                                 total))

        def maybe_checkpoint():
            nonlocal last_save
            if time.monotonic() - last_save >= self.checkpoint_every:
                self.wall_time = time.monotonic() - started
                self.checkpoint()
                last_save = time.monotonic()

        interrupted = []
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)) if in_main else None
        try:
            report()
            while self.task_index < p.n_tasks:
                t = self.task_index
                self.task.start_task(t)
                if self.step_in_task == 0:
                    self.task_diagnostics = _numpy(diagnostics.measure(self.net, self.task.probe(t)))
                    self.task.begin_task(t, self.net, self.optimizer)
                    self.method.on_task_start(t)
                offset, n_steps = self.task.task_offset(t), self.task.steps_in_task(t)
                while self.step_in_task < n_steps:
                    self._step(t, self.step_in_task, offset)
                    self.step_in_task += 1
                    if interrupted:
                        raise KeyboardInterrupt
                    if self.step_in_task % CHECK_EVERY == 0:
                        report()
                        maybe_checkpoint()
                metric = self.task.end_task(t, self.net).detach().cpu().numpy()
                self.records.append({p.metric: metric, **self.task_diagnostics})
                self.task_index, self.step_in_task = t + 1, 0
                report()
                maybe_checkpoint()
        except KeyboardInterrupt:
            self.wall_time = time.monotonic() - started
            self.checkpoint()
            raise
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        self.wall_time = time.monotonic() - started
        self.checkpoint()
        final = _numpy(diagnostics.measure(self.net, self.task.probe(p.n_tasks - 1)))
        summary = summarise(self.config, p, self.records, final, self.wall_time)
        write_yaml(self.directory / "summary.yaml", summary)
        return summary
