"""Seed-batched PPO as a plastibench task: an engine step is one PPO mini-batch update.

Restated from ``shibhansh/loss-of-plasticity`` ``lop/rl/run_ppo.py`` (the loop), ``lop/algos/rl/ppo.py``
(``learn``) and ``buffer.py``; the pure parts are :mod:`plastibench.rl.ppo`, the networks
:class:`plastibench.rl.agent.ActorCritic`. Per seed, as the reference:

* a rollout is T = ``rollout`` environment steps (per environment; ``envs_per_seed`` E = 1 as the
  reference). At each step the policy acts in eval mode under ``no_grad``: a = μ(o) + exp(log σ)·ξ,
  ξ ~ N(0, 1) from :mod:`plastibench.rng` keyed by (seed, environment step), not clipped; the
  environment resets itself at an episode end. ``done`` = terminated or truncated: the time limit is
  treated as terminal (``task.bootstrap=terminal``, the reference); ``task.bootstrap=timeout``
  bootstraps a time-limit end with V(final observation) instead (not the reference; hashed);
* then GAE (γ, λ) with V of the rollout's observations and of the observation after it, advantages
  standardised over the rollout, and ``epochs`` passes of ``minibatches`` mini-batches: each pass a
  fresh permutation of the T·E samples (``rng.permutation`` keyed by (seed, rollout·epochs + pass)),
  cut into consecutive slices, as ``np.random.shuffle(inds)`` and ``inds[start:start + mini_bs]``.

One engine step = one mini-batch update (forward of both nets on the mini-batch, loss, one Adam
step over both nets, then the method's ``after_step`` on that mini-batch's activations of the policy
and value nets, which is where the reference runs GnT/ReDo). ``segment_every`` = epochs·minibatches
updates: the next rollout is collected between steps (``end_segment``), with the network as the
last update left it, so a step reads only device buffers (capturable, no host sync).

An engine *task* is a bin of ``rollouts_per_bin`` rollouts (R·T·E environment steps); it is no task
boundary (``boundaries`` is hidden: a method that acts at task boundaries is refused). Metric
``episode_return``: the mean return of the episodes that ended during the bin's rollouts (NaN for a
bin in which none ended; the score then carries the last finite bin, the protocol's
``diverged_score`` rule), beside ``episodes``, their count. The score is the mean over the last 10%
of the bins. Diagnostics (``diagnostics``; before each bin trains, and at the end) over the last
``window`` = 1000 environment steps acted (``run_ppo.py`` logs every 1000 steps): ``dormant_fraction``
= fraction of the policy's hidden units active (> 0) in at most 1% of those steps (``fig4b.py``'s
dormant units: ``pol_features_activity`` ≤ 0.01); ``stable_rank`` = the 99% "abs approximate rank"
of the last policy hidden layer's activations over those steps (``compute_matrix_rank_summaries``);
``weight_magnitude/policy{i}`` / ``weight_magnitude/value{i}`` = mean |W| of each layer
(``weight_magnitude`` in plots: their mean).
Deviation: the reference logs these every 1000 (rank: 10 000) steps; we record them once per bin.

Resume: ``state_dict`` holds the environments' state (MuJoCo's), the current observation, the
rollout buffer with its mini-batch order, the episode-return accumulators and counters, so a run
interrupted anywhere ends with the uninterrupted result.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from plastibench import diagnostics as diag
from plastibench import rng
from plastibench.protocol import OptimizerSpec, Protocol
from plastibench.rl.agent import ActorCritic, split
from plastibench.rl.ppo import gae, normal_log_prob, ppo_loss, standardise
from plastibench.task import Task

ADAM = OptimizerSpec(name="adam", lr=1e-4, betas=(0.9, 0.999), eps=1e-8)  # lop/rl/cfg/*/std.yml
PPO = {"rollout": 2048, "epochs": 10, "minibatches": 16, "clip": 0.2, "gamma": 0.99, "lam": 0.95,
       "hidden": (256, 256), "envs_per_seed": 1, "window": 1000, "boundaries": "hidden"}


def rl_protocol(task: str, name: str, n_bins: int, rollouts_per_bin: int, description: str, seeds: int,
                **settings) -> Protocol:
    """A protocol of ``n_bins`` bins of ``rollouts_per_bin`` rollouts (``settings`` over :data:`PPO`)."""
    s = {**PPO, "rollouts_per_bin": rollouts_per_bin, **settings}
    s["hidden"] = list(s["hidden"])
    rollout = s["rollout"] * s["envs_per_seed"]
    if rollout % s["minibatches"]:
        raise ValueError(f"{rollout} samples do not cut into {s['minibatches']} mini-batches")
    return Protocol(task=task, name=name, version=1, n_tasks=n_bins,
                    steps_per_task=rollouts_per_bin * s["epochs"] * s["minibatches"],
                    batch_size=rollout // s["minibatches"], optimizer=ADAM, metric="episode_return",
                    higher_is_better=True, probe_size=s["window"], default_seeds=seeds,
                    description=description, settings=s)


class PPOTask(Task):
    """Base of the MuJoCo PPO tasks; a subclass sets ``slippery`` and its protocols."""

    plot_bin_tasks = 1
    online = False  # an update re-reads the rollout: no "examples" axis (a bin is R·T·E env steps)
    options = {"bootstrap": ("terminal", "timeout")}
    has_boundaries = False  # a "task" is a bin of rollouts; frictions switch per seed, at episode ends
    slippery = False

    def __init__(self, protocol, seeds, **kwargs):
        super().__init__(protocol, seeds, **kwargs)
        cfg = protocol.settings
        self.T, self.E = cfg["rollout"], cfg["envs_per_seed"]
        self.updates = cfg["epochs"] * cfg["minibatches"]  # engine steps per rollout
        self.env = self.make_env()
        self.obs_dim, self.act_dim = self.env.obs_dim, self.env.act_dim
        s, n, dev = seeds.numel(), self.T * self.E, self.device
        self.obs = torch.as_tensor(self.env.reset(), dtype=torch.float32, device=dev)  # [S, E, o]
        self.buffer = {"obs": torch.zeros(s, n, self.obs_dim, device=dev),
                       "actions": torch.zeros(s, n, self.act_dim, device=dev),
                       "logp": torch.zeros(s, n, device=dev), "advantages": torch.zeros(s, n, device=dev),
                       "returns": torch.zeros(s, n, device=dev),
                       "order": torch.zeros(s, self.updates, protocol.batch_size, dtype=torch.int64, device=dev)}
        self.window = [torch.zeros(s, min(cfg["window"], n), h, device=dev) for h in cfg["hidden"]]
        self.return_sum = torch.zeros(2, s, dtype=torch.float64, device=dev)  # slot: bin % 2
        self.return_count = torch.zeros(2, s, dtype=torch.float64, device=dev)
        self.collected = 0  # rollouts collected so far

    def make_env(self):
        from plastibench.rl.ant import AntBatch
        cfg = self.protocol.settings
        extra = {k: cfg[k] for k in ("change_every", "max_episode_steps") if k in cfg}
        return AntBatch(self.seeds.cpu(), envs_per_seed=self.E, slippery=self.slippery, **extra)

    def network(self, seeds=None):
        seeds = self.seeds if seeds is None else seeds
        return ActorCritic(self.obs_dim, self.act_dim, tuple(self.protocol.settings["hidden"]), seeds)

    # ----- rollouts, between steps -----
    def _ensure(self, net: torch.nn.Module, update: int) -> None:
        """Collect the rollout that global update ``update`` trains on, if it is not collected yet."""
        while self.collected <= update // self.updates and update < self.total_steps():
            self._collect(net)

    @torch.no_grad()
    def _collect(self, net: torch.nn.Module) -> None:
        cfg, k, a = self.protocol.settings, self.collected, self.act_dim
        T, E, S, dev = self.T, self.E, self.seeds.numel(), self.device
        timeout = cfg.get("bootstrap", "terminal") == "timeout"
        noise = rng.normal(self.seeds, torch.arange(k * T, (k + 1) * T, device=dev), "ppo/action", (E, a))
        obs, acts = torch.zeros(S, T, E, self.obs_dim, device=dev), torch.zeros(S, T, E, a, device=dev)
        logp, values, rewards, ended, final = (torch.zeros(S, T, E, device=dev) for _ in range(5))
        n_hidden = len(cfg["hidden"])
        features = [torch.zeros(S, T, E, h, device=dev) for h in cfg["hidden"]]
        slot = (k // cfg["rollouts_per_bin"]) % 2
        training = net.training
        net.eval()
        for t in range(T):
            out, feats = net(self.obs)
            mean, log_std, value = split(out, a)
            action = mean + torch.exp(log_std) * noise[:, t]
            obs[:, t], acts[:, t], values[:, t] = self.obs, action, value
            logp[:, t] = normal_log_prob(action, mean, log_std)
            for f, h in zip(features, feats[:n_hidden]):
                f[:, t] = h
            o, r, terminated, truncated, info = self.env.step(action.cpu().numpy())
            rewards[:, t] = torch.as_tensor(r, dtype=torch.float32, device=dev)
            done = np.logical_or(terminated, truncated)
            ended[:, t] = torch.as_tensor(done, dtype=torch.float32, device=dev)
            if timeout and np.any(truncated & ~terminated):
                late = torch.as_tensor(truncated & ~terminated, device=dev)
                v = split(net(torch.as_tensor(info["final_obs"], dtype=torch.float32, device=dev))[0], a)[2]
                final[:, t] = torch.where(late, v, final[:, t])
            returns = torch.as_tensor(np.asarray(info["episode_return"], dtype=np.float64), device=dev)
            self.return_sum[slot] += torch.nan_to_num(returns, nan=0.0).sum(-1)
            self.return_count[slot] += (~torch.isnan(returns)).sum(-1)
            self.obs = torch.as_tensor(o, dtype=torch.float32, device=dev)
        last_value = split(net(self.obs)[0], a)[2]
        net.train(training)
        next_values = torch.cat([values[:, 1:], last_value.unsqueeze(1)], 1) * (1 - ended) + final
        advantages, returns = gae(rewards, values, next_values, 1 - ended, cfg["gamma"], cfg["lam"])
        n = T * E
        for name, value in (("obs", obs), ("actions", acts), ("logp", logp), ("returns", returns),
                            ("advantages", standardise(advantages))):
            self.buffer[name].copy_(value.reshape(S, n, *value.shape[3:]))
        order = [rng.permutation(self.seeds, k * cfg["epochs"] + e, "ppo/minibatches", n)
                 for e in range(cfg["epochs"])]
        self.buffer["order"].copy_(torch.stack(order, 1).view(S, self.updates, -1))
        for w, f in zip(self.window, features):
            w.copy_(f.reshape(S, n, -1)[:, n - w.shape[1]:])
        self.collected += 1

    # ----- the engine's hooks -----
    def segment_every(self, task_index):
        return self.updates

    def begin_task(self, task_index, net, optimizer):
        self._ensure(net, self.task_offset(task_index))

    def end_segment(self, task_index, steps_done, net, optimizer):
        self._ensure(net, self.task_offset(task_index) + steps_done)

    def batch(self, task_index, step):
        idx = self.buffer["order"].index_select(1, (step % self.updates).view(1)).squeeze(1)  # [S, B]
        pick = lambda t: t.gather(1, idx.view(*idx.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))  # noqa: E731
        b = self.buffer
        return pick(b["obs"]), (pick(b["actions"]), pick(b["logp"]), pick(b["advantages"]), pick(b["returns"]))

    def loss(self, out, y):
        return ppo_loss(*split(out, self.act_dim), *y, self.protocol.settings["clip"])

    def observe(self, out, y, loss):
        """Nothing per update: the metric is the episodes' return, counted while acting."""

    def end_task(self, task_index, net):
        slot = task_index % 2
        count = self.return_count[slot].clone()
        mean = self.return_sum[slot] / count.clamp_min(1)
        self.return_sum[slot].zero_()
        self.return_count[slot].zero_()
        return {"episode_return": torch.where(count > 0, mean, torch.full_like(mean, float("nan"))),
                "episodes": count}

    def diagnostics(self, task_index, net):
        self._ensure(net, self.task_offset(task_index))
        active = torch.cat([(w > 0).float().mean(1) for w in self.window], 1)  # [S, units]
        out = {"dormant_fraction": (active <= 0.01).float().mean(1),
               "stable_rank": diag.stable_rank(torch.linalg.svdvals(self.window[-1])).float()}
        for part in ("policy", "value"):
            for i, w in enumerate(getattr(net, part).weight_tensors()):
                out[f"weight_magnitude/{part}{i}"] = w.detach().abs().mean((1, 2))
        return out

    # ----- checkpointing -----
    def state_dict(self) -> dict[str, Any]:
        return {"env": self.env.state_dict(), "obs": self.obs.clone(), "collected": self.collected,
                "buffer": {k: v.clone() for k, v in self.buffer.items()},
                "window": [w.clone() for w in self.window],
                "return_sum": self.return_sum.clone(), "return_count": self.return_count.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.env.load_state_dict(state["env"])
        self.obs, self.collected = state["obs"].to(self.device), state["collected"]
        for k, v in state["buffer"].items():
            self.buffer[k].copy_(v)
        for w, v in zip(self.window, state["window"]):
            w.copy_(v)
        self.return_sum.copy_(state["return_sum"])
        self.return_count.copy_(state["return_count"])
