"""Slippery Ant (``sant``): PPO on Ant whose floor friction changes every 2 M steps (Nature 2024, Fig. 3).

Dohare et al., Nature 632:768-774 (2024), the reinforcement-learning experiment; reference
``lop/rl/run_ppo.py`` with ``lop/rl/cfg/sant/*.yml`` (``SlipperyAnt-v3``, ``n_steps`` 2e7,
``change_time`` 2e6). The agent, the rollout and the binning are ``tasks/_rl.py``'s (PPO:
rollout 2048, 10 epochs, 16 mini-batches of 128, clip 0.2, γ 0.99, λ 0.95, Adam lr 1e-4, 256-256
ReLU nets); the environment is :mod:`plastibench.rl`'s seed-batched Slippery Ant (each seed its own
log-uniform friction sequence on [0.02, 2], switched at the first episode end more than
``change_every`` steps after the last switch).

Bins (the reference plots returns in 100 k-step bins, ``lop/rl/plots/fig3.py``): a bin is 49
rollouts = 100 352 environment steps. Protocols:

* ``paper``: 200 bins = 9 800 rollouts = 20 070 400 steps (the reference's 2e7 rounded up to whole
  bins), ten frictions; 100 seeds by default, as the figure's 100 runs;
* ``short``: the first 60 bins (6.02 M steps, three frictions), where standard PPO's decline after
  the first switches should show (5 seeds: about 13 hours of the 2-core CPU of
  ``docs/benchmarks.md`` for ``bp``; a GPU box's time is not measured yet);
* ``smoke``: seconds, for tests: 16-16 nets, rollouts of 8 steps, 2 epochs of 2 mini-batches of 4,
  bins of 1 rollout, episodes of at most 5 steps and a friction switch after 10 steps.
"""

from plastibench.registry import register_task

from ._rl import PPOTask, rl_protocol

SANT = {"change_every": 2_000_000}
SMOKE = {"hidden": (16, 16), "rollout": 8, "epochs": 2, "minibatches": 2, "window": 8, "max_episode_steps": 5}


@register_task("sant")
class SlipperyAnt(PPOTask):
    summary = "Slippery Ant: PPO whose floor friction changes every 2M steps (Nature 2024, RL)"
    slippery = True
    protocols = {
        "paper": rl_protocol("sant", "paper", 200, 49, "the reference's 20M steps in bins of 100 352 steps, "
                             "ten frictions", 100, **SANT),
        "short": rl_protocol("sant", "short", 60, 49, "the first 6M steps (three frictions)", 5, **SANT),
        "smoke": rl_protocol("sant", "smoke", 3, 1, "seconds, for tests", 3, **SMOKE, change_every=10),
    }
