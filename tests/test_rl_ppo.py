"""PPO (tasks/_rl.py, plastibench/rl/ppo.py, plastibench/rl/agent.py) against per-seed restatements.

The pure parts (GAE, advantage standardisation, the loss) are checked against plain loops over one
seed written from ``lop/algos/rl/ppo.py``; the task runs on :class:`PointEnv`, a tiny deterministic
stand-in for the MuJoCo batch defined here (a test double, not a package stub), and on the real
``ant`` smoke where ``plastibench[rl]`` is installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS
from plastibench.results import run_config
from plastibench.rl.agent import ActorCritic
from plastibench.rl.ppo import gae, ppo_loss, standardise
from plastibench.tasks._rl import rl_protocol
from plastibench.tasks.sant import SMOKE

CPU = torch.device("cpu")


class PointEnv:
    """The batched environment's API (``plastibench.rl.ant.AntBatch``) on a point in the plane: the
    action moves it, reward −|position − goal|², terminated outside |x| ≤ 3, truncated after
    ``limit`` steps, auto-reset; the goal depends on the seed."""

    obs_dim, act_dim = 3, 2

    def __init__(self, seeds, envs_per_seed=1, limit=5):
        seeds = np.asarray(seeds, dtype=np.float64)
        self.limit, self.log = limit, []
        self.goal = np.stack([np.sin(seeds), np.cos(seeds)], -1)[:, None, :]
        self.pos = np.zeros((len(seeds), envs_per_seed, 2))
        self.t = np.zeros((len(seeds), envs_per_seed), dtype=np.int64)
        self.ret = np.zeros((len(seeds), envs_per_seed))

    def _obs(self):
        return np.concatenate([self.pos, self.t[..., None] / self.limit], -1).astype(np.float32)

    def reset(self):
        return self._obs()

    def step(self, actions):
        self.pos = self.pos + 0.3 * np.tanh(np.asarray(actions, dtype=np.float64))
        self.t += 1
        reward = -((self.pos - self.goal) ** 2).sum(-1)
        self.ret += reward
        terminated = (np.abs(self.pos) > 3).any(-1)
        truncated = (self.t >= self.limit) & ~terminated
        done = terminated | truncated
        info = {"episode_return": np.where(done, self.ret, np.nan), "final_obs": self._obs()}
        self.log.append((info["episode_return"].copy(), reward, truncated, info["final_obs"]))
        self.pos[done], self.t[done], self.ret[done] = 0.0, 0, 0.0
        return self._obs(), reward, terminated, truncated, info

    def state_dict(self):
        return {"pos": self.pos.copy(), "t": self.t.copy(), "ret": self.ret.copy()}

    def load_state_dict(self, state):
        self.pos, self.t, self.ret = state["pos"].copy(), state["t"].copy(), state["ret"].copy()


class PointTask(TASKS.get("sant")):
    def make_env(self):
        return PointEnv(self.seeds.cpu().numpy(), self.E)


def point_protocol(rollouts_per_bin=1, **settings):
    """The ``sant`` smoke protocol's settings, changed by ``settings``, in 3 bins."""
    return rl_protocol("sant", "smoke", 3, rollouts_per_bin, "tests", 3, **{**SMOKE, **settings})


def run(method, seeds, directory, protocol=None):
    protocol = protocol or point_protocol()
    cls = METHODS.get(method)
    hp = cls.hparams_for("sant")
    engine = Engine(cls, hp, PointTask, protocol, seeds, device=CPU, directory=directory,
                    config=run_config(method, hp, protocol, seeds))
    engine.run()
    return engine


# ----- the pure parts, against one seed's loops -----

def reference_gae(r, v, v_last, done, g, lm):
    """``get_rets_advs`` for one seed: plain loops over the rollout, V(o_T) = v_last."""
    vals = list(v) + [v_last]
    adv = [0.0] * (len(r) + 1)
    for t in reversed(range(len(r))):
        delta = r[t] + (1 - done[t]) * g * vals[t + 1] - vals[t]
        adv[t] = delta + (1 - done[t]) * g * lm * adv[t + 1]
    return adv[:-1], [a + b for a, b in zip(adv[:-1], v)]


def test_gae_matches_the_references_loop_per_seed():
    gen = torch.Generator().manual_seed(0)
    S, T = 3, 9
    r, v = torch.randn(S, T, 1, generator=gen), torch.randn(S, T, 1, generator=gen)
    v_last = torch.randn(S, 1, generator=gen)
    done = (torch.rand(S, T, 1, generator=gen) < 0.3).float()
    next_v = torch.cat([v[:, 1:], v_last[:, None]], 1) * (1 - done)
    adv, ret = gae(r, v, next_v, 1 - done, 0.99, 0.95)
    for s in range(S):
        want_adv, want_ret = reference_gae(r[s, :, 0].tolist(), v[s, :, 0].tolist(), v_last[s, 0].item(),
                                           done[s, :, 0].tolist(), 0.99, 0.95)
        np.testing.assert_allclose(adv[s, :, 0], want_adv, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ret[s, :, 0], want_ret, rtol=1e-5, atol=1e-6)


def test_advantages_are_standardised_over_each_seeds_whole_rollout():
    adv = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]).view(2, 4, 1)
    out = standardise(adv)
    one = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(out[0, :, 0], (one - one.mean()) / one.std(ddof=1), rtol=1e-6)
    np.testing.assert_array_equal(out[1, :, 0], np.zeros(4))  # std 0: centred, not divided


def test_ppo_loss_matches_a_per_seed_restatement():
    gen = torch.Generator().manual_seed(1)
    S, B, a = 2, 6, 3
    mean, log_std = torch.randn(S, B, a, generator=gen), 0.3 * torch.randn(S, 1, a, generator=gen)
    value, act = torch.randn(S, B, generator=gen), torch.randn(S, B, a, generator=gen)
    logp_old, adv, ret = -3 + torch.randn(S, B, generator=gen), torch.randn(S, B, generator=gen), torch.randn(S, B, generator=gen)
    loss = ppo_loss(mean, log_std.expand(S, B, a), value, act, logp_old, adv, ret, 0.2)
    for s in range(S):
        total_p, total_v = 0.0, 0.0
        for b in range(B):
            dist = torch.distributions.Normal(mean[s, b], torch.exp(log_std[s, 0]))
            ratio = math.exp(dist.log_prob(act[s, b]).sum().item() - logp_old[s, b].item())
            clipped = min(max(ratio, 0.8), 1.2)
            total_p += max(-ratio * adv[s, b].item(), -clipped * adv[s, b].item())
            total_v += (ret[s, b].item() - value[s, b].item()) ** 2  # coefficient 1, no 1/2
        assert loss[s].item() == pytest.approx(total_p / B + total_v / B, rel=1e-5)


def test_actor_critic_init_is_lecun_with_independent_nets():
    net = ActorCritic(7, 3, (32, 32), torch.arange(2))
    for part in (net.policy, net.value):
        for layer in part.layers:
            bound = math.sqrt(3 / layer.in_features)
            assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
            assert not layer.bias.any()
    assert not net.gaussian.log_std.any()
    assert not torch.equal(net.policy.layers[0].weight, net.value.layers[0].weight)
    out, features = net(torch.randn(2, 5, 7))
    assert out.shape == (2, 5, 7) and len(features) == len(net.unit_groups()) == 4


# ----- the task -----

def test_each_epoch_is_a_permutation_cut_into_minibatches(tmp_path):
    protocol = point_protocol(rollout=16, epochs=3, minibatches=4)
    task = PointTask(protocol, torch.arange(2))
    task._ensure(task.network(), 0)
    order = task.buffer["order"]  # [S, epochs·minibatches, mini-batch]
    assert order.shape == (2, 12, 4)
    for epoch in order.view(2, 3, 16):
        assert all(sorted(e.tolist()) == list(range(16)) for e in epoch)
    assert not torch.equal(order[0], order[1])


@pytest.mark.parametrize("bootstrap", ["terminal", "timeout"])
def test_a_time_limit_end_is_terminal_or_bootstrapped(bootstrap):
    """The value target of a time-limit end: r (the reference: ``done`` is terminal), or r + γ·V(final
    observation) with ``task.bootstrap=timeout``; the advantage is cut there either way."""
    protocol = TASKS.get("sant").with_options(point_protocol(rollout=12), {"bootstrap": bootstrap})
    task = PointTask(protocol, torch.arange(2))
    net = task.network()
    task._ensure(net, 0)
    checked = 0
    for t, (_, reward, truncated, final) in enumerate(task.env.log):
        for s in np.flatnonzero(truncated[:, 0]):
            target = reward[s, 0]
            if bootstrap == "timeout":
                with torch.no_grad():
                    target += 0.99 * net(torch.as_tensor(final))[0][s, 0, -1].item()
            assert task.buffer["returns"][s, t].item() == pytest.approx(target, rel=1e-5, abs=1e-5)
            checked += 1
    assert checked


def test_bins_average_the_returns_of_the_episodes_ending_in_them(tmp_path):
    protocol = point_protocol(rollouts_per_bin=2)
    engine = Engine(METHODS.get("bp"), {}, PointTask, protocol, [0, 1], device=CPU, directory=tmp_path,
                    config=run_config("bp", {}, protocol, [0, 1]))
    engine.run()
    ends = np.stack([entry[0] for entry in engine.task.env.log])[:, :, 0]  # [env steps, S]
    per_bin = 2 * protocol.settings["rollout"]
    for t, record in enumerate(engine.records):
        rows = ends[t * per_bin:(t + 1) * per_bin]
        np.testing.assert_allclose(record["episode_return"], np.nanmean(rows, 0), rtol=1e-6)
        np.testing.assert_array_equal(record["episodes"], (~np.isnan(rows)).sum(0))


def test_methods_take_the_references_rl_settings():
    def optimizer(method):
        cls = METHODS.get(method)
        protocol = TASKS.get("sant").protocol("paper")
        m = cls(cls.hparams_for("sant"), type("Run", (), {"seeds": torch.arange(1)})())
        return m.optimizer_spec(protocol.optimizer), m.hp

    std, _ = optimizer("bp")
    assert (std.name, std.lr, std.betas, std.weight_decay) == ("adam", 1e-4, (0.9, 0.999), 0.0)
    ns, _ = optimizer("adam")
    assert (ns.lr, ns.betas, ns.weight_decay) == (1e-4, (0.99, 0.99), 0.0)
    l2, _ = optimizer("l2")
    assert (l2.betas, l2.weight_decay) == ((0.99, 0.99), 1e-3)
    cbp, hp = optimizer("cbp+l2")
    assert (cbp.betas, cbp.weight_decay) == ((0.99, 0.99), 1e-4)
    assert {k: hp[f"cbp.{k}"] for k in ("replacement_rate", "maturity_threshold", "decay_rate", "utility",
                                        "count_rule", "init")} == {
        "replacement_rate": 1e-4, "maturity_threshold": 10_000, "decay_rate": 0.99, "utility": "contribution",
        "count_rule": "bernoulli", "init": "lecun"}
    _, redo = optimizer("redo")
    assert (redo["threshold"], redo["period"], redo["reset_optimizer_state"]) == (0.1, 100, False)
    assert METHODS.get("l2").hparams_for("scr")["adam_betas"] == "protocol"  # other tasks unchanged


def test_ant_smoke_runs(rl_extra, tmp_path):
    protocol = TASKS.get("ant").protocol("smoke")
    engine = Engine(METHODS.get("bp"), {}, TASKS.get("ant"), protocol, [0, 1], device=CPU, directory=tmp_path,
                    config=run_config("bp", {}, protocol, [0, 1]))
    engine.run()
    assert all(np.isfinite(r["episode_return"]).all() for r in engine.records)
    assert (engine.task.env.friction == 1).all()
