"""Ant (``ant``): PPO on the stationary Ant-v3 for 100 M steps (Nature 2024, Fig. 4).

Dohare et al., Nature 632:768-774 (2024); reference ``lop/rl/run_ppo.py`` with
``lop/rl/cfg/ant/*.yml`` (``Ant-v3``, ``n_steps`` 1e8). The agent, rollout and binning are
``tasks/_rl.py``'s; the environment is :mod:`plastibench.rl`'s seed-batched Ant.

Bins (``lop/rl/plots/fig4a.py`` plots 250 k-step bins over 50 M steps): a bin is 122 rollouts =
249 856 environment steps. Protocols: ``paper`` 401 bins = 100 196 352 steps (1e8 rounded up to
whole bins; the figure shows the first 50 M), 20 seeds by default (``fig4a.py``'s ``num_runs``);
``short`` its first 40 bins (9.99 M steps); ``smoke`` as ``sant``'s, without friction changes.
"""

from plastibench.registry import register_task

from ._rl import PPOTask, rl_protocol
from .sant import SMOKE


@register_task("ant")
class Ant(PPOTask):
    summary = "Ant: PPO on stationary Ant-v3 for 100M steps (Nature 2024, RL)"
    protocols = {
        "paper": rl_protocol("ant", "paper", 401, 122, "the reference's 100M steps in bins of 249 856 steps", 20),
        "short": rl_protocol("ant", "short", 40, 122, "the first 10M steps", 5),
        "smoke": rl_protocol("ant", "smoke", 3, 1, "seconds, for tests", 3, **SMOKE),
    }
