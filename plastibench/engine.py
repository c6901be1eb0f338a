"""The engine: S seeds of one (method, task, protocol) trained in lockstep as one batched model.

Per step (:meth:`Engine.train_step`): ``x[S,B,..], y = task.batch`` -> ``out, features = net(x)``
-> per-seed loss ``[S]`` (the online metric is read from this pre-update prediction) ->
``method.loss_term`` -> one backward of the summed loss (seeds share no parameter, so each seed gets
its own gradient) -> ``optimizer.step()`` -> ``method.after_step`` -> ``clock.tick()``. A step is a
pure function of device state: it reads the step from the device clock, never a host value that
changes from step to step, and synchronises nothing with the host.

Steps run in *segments*: runs of steps between host events, which are task boundaries, the task's
own events (an epoch's end: ``Task.segment_every``), a method's periodic event
(``Method.event_period``), progress and checkpoint checks every ``CHECK_EVERY`` steps, and the span
of the prepared random-number blocks. Before a segment the engine sets the clock, prepares the
blocks and lets the task set up its segment; the segment itself runs eagerly, or replays captured
steps (:mod:`plastibench.capture`: a CUDA graph, or a compiled step on a CPU).

At every task boundary the engine records the task's diagnostics (``Task.diagnostics``) and calls
``Method.on_task_start`` (task 0's alone when the protocol hides boundaries); it checkpoints
whenever ``checkpoint_every`` seconds have passed, at the end, and on Ctrl-C, SIGTERM, SIGHUP,
SIGUSR1 or SIGUSR2 (warning signals of ``sbatch --signal``; submitit asks for USR2), each deferred
to the end of the step (eager) or captured block in flight, so that the checkpoint never holds a
half-done step; Ctrl-C then raises KeyboardInterrupt, the others :class:`Preempted`. The wall clock
is read between steps: the steppers hand control back when a checkpoint or a progress report
(``report_every`` seconds) is due, so neither is late by more than a step or a captured block,
whatever the task's length. A new engine on the same run directory resumes from the checkpoint
(elapsed time included) and ends bit-for-bit where an uninterrupted run would (on CPU).

The seed list may repeat seeds: a grid's configurations then train as members of one model
(:mod:`plastibench.members`), seeds ``[0, 1, 0, 1]`` for two configurations of seeds 0-1, with the
per-member hyperparameters ``members.member_hparams`` builds. Every per-seed quantity (data, random
draws, divergence) is indexed by position or drawn from the seed, so a member equals its
configuration's own run. The records hold one value per member;
:class:`plastibench.batched.MemberEngine` writes each configuration's rows to its own run directory.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import heap, rng
from .capture import make_stepper
from .clock import StepClock
from .divergence import Divergence
from .errors import RunFileError
from .method import Method, RunContext, StepInfo
from .nn import BatchedLinear
from .optim import DeviceSGD
from .protocol import Protocol
from .results import load_checkpoint, save_checkpoint, summarise, write_metrics, write_yaml
from .task import Task, boundaries_hidden, require_boundaries

CHECK_EVERY = 1000


@dataclass
class Progress:
    """What a progress display is told: tasks done, steps done, steps in all, and the run's elapsed
    seconds (continued across resumes)."""

    tasks_done: int
    steps_done: int
    total_steps: int
    elapsed_s: float = 0.0


class Preempted(Exception):
    """SIGTERM, SIGHUP, SIGUSR1 or SIGUSR2 (Slurm's warning signals) arrived: the run checkpointed and
    stopped. The handlers that were installed before the run are back in place when it is raised."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1",
                                                         "SIGUSR2") if hasattr(signal, name))


def _numpy(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().double().cpu().numpy() for k, v in values.items()}


class Engine:
    """Trains one configuration; ``run()`` returns the summary (and writes the run directory)."""

    def __init__(self, method_cls: type[Method], hparams: Mapping[str, Any], task_cls: type[Task],
                 protocol: Protocol, seeds: Sequence[int], *, device: torch.device, directory: Path,
                 config: Mapping[str, Any], data_dir=None, verify: bool = True, checkpoint_every: float = 120.0,
                 capture: str = "off", report_every: float = 5.0):
        require_boundaries(method_cls, task_cls, protocol)
        self.protocol, self.directory, self.config = protocol, Path(directory), dict(config)
        self.seeds = list(seeds)
        if device.type == "cpu":
            heap.keep_freed_blocks()  # large per-step gradients reuse pages instead of faulting them in
        self.checkpoint_every = checkpoint_every
        seed_tensor = torch.tensor(self.seeds, dtype=torch.int64, device=device)
        self.task = task_cls(protocol, seed_tensor, data_dir=data_dir, verify=verify)
        self.clock = StepClock(device)
        self.task.clock = self.clock
        self.ctx = RunContext(seeds=seed_tensor, task=protocol.task, protocol=protocol,
                              network_factory=self.task.network, clock=self.clock)
        self.method = method_cls(hparams, self.ctx)
        self.net = self.method.configure_network(self.task.network())
        self.ctx.net = self.net
        spec = self.method.optimizer_spec(protocol.optimizer)
        self.optimizer = self.method.build_optimizer(list(self.net.parameters()), spec)
        self._params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.fused_sgd = self._fuse_sgd()
        self.ctx.optimizer = self.optimizer
        self.device = device
        self.records: list[dict[str, np.ndarray]] = []
        self.task_diagnostics: dict[str, np.ndarray] | None = None
        self.task_index, self.step_in_task, self.wall_time = 0, 0, 0.0
        self.divergence = Divergence(len(self.seeds), device)
        self.stepper = make_stepper(capture, self)
        self.interrupted: list[int] = []  # signals received (handled between steps)
        self.pause_at = math.inf  # monotonic time at which the steppers hand control back (report, checkpoint)
        self.report_every = report_every

    def _fuse_sgd(self) -> int:
        """Let large linear layers apply plain SGD inside their backward (``BatchedLinear.fuse_sgd``)
        when nothing else needs their gradients: the optimizer is :class:`DeviceSGD` and the method
        adds no loss term. Returns how many layers do."""
        if type(self.optimizer) is not DeviceSGD or type(self.method).loss_term is not Method.loss_term:
            return 0
        group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        fused = 0
        for layer in self.net.modules():
            if isinstance(layer, BatchedLinear):
                group = group_of.get(id(layer.weight))
                if group is not None and group is group_of.get(id(layer.bias)):
                    fused += layer.fuse_sgd(group)
        return fused

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
            "divergence": self.divergence.state_dict(),
        }

    def resume(self) -> bool:
        """Load the run directory's checkpoint if there is one; True when it did."""
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return False
        if state["config"] != self.config:
            raise RunFileError(f"{self.checkpoint_path} belongs to another configuration; re-run with "
                               "--restart to discard it, or choose another --out")
        self.task_index, self.step_in_task = state["task_index"], state["step_in_task"]
        self.wall_time, self.records = state["wall_time"], state["records"]
        self.task_diagnostics = state["task_diagnostics"]
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.task.load_state_dict(state["task"])
        if "divergence" in state:
            self.divergence.load_state_dict(state["divergence"])
        return True

    def checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state_dict())
        write_metrics(self.directory / "metrics.csv", self.seeds, self.records)

    # ----- training -----
    def train_step(self) -> list[torch.Tensor]:
        """One step of task ``self.task_index``, in-task step ``clock.in_task``; returns the features."""
        t = self.task_index
        x, y = self.task.batch(t, self.clock.in_task)
        out, features = self.net(x)
        loss = self.task.loss(out, y)
        self.divergence.observe_loss(loss.detach(), self.clock.step)
        self.task.observe(out.detach(), y, loss.detach())
        total = loss.sum()
        extra = self.method.loss_term(out, features)
        if extra is not None:
            total = total + extra.sum()
        for param in self._params:  # zero_grad(set_to_none=True), in a form torch.compile traces
            param.grad = None
        total.backward()
        self.optimizer.step()
        features = [f.detach() for f in features]
        self.method.after_step(StepInfo(self.clock.step, t, features))
        self.clock.tick()
        return features

    def _segment_end(self, t: int, step: int, n_steps: int) -> int:
        """The in-task step at which the segment starting at ``step`` ends (exclusive)."""
        end = min(n_steps, step + CHECK_EVERY - step % CHECK_EVERY)
        every = self.task.segment_every(t)
        if every:
            end = min(end, (step // every + 1) * every)
        period = self.method.event_period()
        if period:
            g = self.task.task_offset(t) + step
            end = min(end, step + period - g % period)
        span = rng.max_segment(self.ctx.seeds)
        if span:
            end = min(end, step + span)
        return end

    def train_steps(self, t: int, first: int, last: int) -> int:
        """Run in-task steps ``first .. last`` of task ``t`` (the task started) with every host event
        between them; returns the step reached (earlier than ``last`` after an interrupt).
        ``step_in_task`` follows every finished step, so an exception between steps leaves a
        consistent count to checkpoint."""
        self.task_index, self.step_in_task = t, first
        offset, n_steps, every = self.task.task_offset(t), self.task.steps_in_task(t), self.task.segment_every(t)
        period = self.method.event_period()
        while self.step_in_task < last and not self.interrupted and not self.paused():
            step = self.step_in_task
            end = min(last, self._segment_end(t, step, n_steps))
            self.task.start_segment(t, step)
            rng.prepare(self.ctx.seeds, offset + step, end - step)
            self.clock.set(offset + step, step)
            features = self.stepper.run(t, end - step)
            if self.step_in_task < end:  # interrupted, or a warm-up ran part of it: no event is due yet
                continue
            if period and (offset + end) % period == 0:
                self.method.on_period(StepInfo(offset + end - 1, t, features))
            if every and end % every == 0:
                self.task.end_segment(t, end, self.net, self.optimizer)
        return self.step_in_task

    def paused(self) -> bool:
        """True once ``pause_at`` has passed: the run loop reports and checkpoints, then goes on."""
        return time.monotonic() >= self.pause_at

    def _step(self, task_index: int, step: int) -> None:
        """One step with its host events (for tests and set-up): in-task step ``step`` of ``task_index``."""
        self.train_steps(task_index, step, step + 1)

    def _diagnostics(self, t: int) -> dict[str, np.ndarray]:
        """The task's diagnostics before task ``t``; NaN for a diverged seed (its network was cleared)."""
        values = _numpy(self.task.diagnostics(t, self.net))
        dead = ~self.divergence.alive.cpu().numpy()
        for v in values.values():
            v[dead] = np.nan
        return values

    def _end_task(self, t: int) -> dict[str, np.ndarray]:
        """Task ``t``'s record: check every seed's parameters and optimizer state (a diverged seed's
        are cleared), then the task's metrics (NaN for a diverged seed), its start diagnostics and
        the divergence rows (``plastibench.divergence``)."""
        last_step = self.task.task_offset(t) + self.task.steps_in_task(t) - 1
        state = [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        self.divergence.check_and_clear([*self.net.parameters(), *self.net.buffers(), *state], last_step)
        metrics = self.task.end_task(t, self.net)
        metrics = _numpy(metrics if isinstance(metrics, Mapping) else {self.protocol.metric: metrics})
        alive = self.divergence.alive.cpu().numpy()
        at = self.divergence.at_step.cpu().numpy().astype(float)
        for values in metrics.values():
            values[~alive] = np.nan
        newly = ~alive & np.isin(at, np.arange(self.task.task_offset(t), last_step + 1))
        return {**metrics, **self.task_diagnostics, "diverged": (~alive).astype(float),
                "diverged_at_step": np.where(newly, at, -1.0)}

    def run(self, on_progress: Callable[[Progress], None] = lambda p: None) -> dict[str, Any]:
        p = self.protocol
        last_save = last_report = time.monotonic()
        started = time.monotonic() - self.wall_time

        total = self.task.total_steps()

        def report():
            nonlocal last_report
            on_progress(Progress(self.task_index, self.task.task_offset(self.task_index) + self.step_in_task,
                                 total, time.monotonic() - started))
            last_report = time.monotonic()

        def maybe_checkpoint():
            nonlocal last_save
            if time.monotonic() - last_save >= self.checkpoint_every:
                self.wall_time = time.monotonic() - started
                self.checkpoint()
                last_save = time.monotonic()
            due = last_report + self.report_every
            if self.checkpoint_every > 0:  # 0: at every natural boundary (CHECK_EVERY steps, task ends)
                due = min(due, last_save + self.checkpoint_every)
            self.pause_at = due

        interrupted = self.interrupted
        interrupted.clear()
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, lambda signum, _: interrupted.append(signum))
        try:
            report()
            maybe_checkpoint()
            while self.task_index < p.n_tasks:
                t = self.task_index
                self.task.start_task(t)
                if self.step_in_task == 0:
                    self.task_diagnostics = self._diagnostics(t)
                    self.task.begin_task(t, self.net, self.optimizer)
                    if t == 0 or not boundaries_hidden(p):  # hidden: the start of the stream only
                        self.method.on_task_start(t)
                n_steps = self.task.steps_in_task(t)
                while self.step_in_task < n_steps:
                    end = min(n_steps, self.step_in_task + CHECK_EVERY - self.step_in_task % CHECK_EVERY)
                    self.step_in_task = self.train_steps(t, self.step_in_task, end)
                    if interrupted:
                        raise KeyboardInterrupt
                    report()
                    maybe_checkpoint()
                self.records.append(self._end_task(t))
                self.task_index, self.step_in_task = t + 1, 0
                report()
                maybe_checkpoint()
        except KeyboardInterrupt:
            self.wall_time = time.monotonic() - started
            self.checkpoint()
            signum = interrupted[0] if interrupted else signal.SIGINT
            if signum != signal.SIGINT:
                raise Preempted(signum) from None
            raise
        finally:
            self.pause_at = math.inf
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.wall_time = time.monotonic() - started
        self.checkpoint()
        return self.finish(self._diagnostics(p.n_tasks - 1))

    def finish(self, final: dict[str, np.ndarray]) -> dict[str, Any]:
        """Write and return the summary of a finished run, given the final diagnostics."""
        summary = summarise(self.config, self.protocol, self.records, final, self.wall_time)
        write_yaml(self.directory / "summary.yaml", summary)
        return summary
