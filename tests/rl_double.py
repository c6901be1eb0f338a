"""A tiny deterministic stand-in for the batched MuJoCo environment, for PPO tests (not a package stub).

Same API as ``plastibench.rl``'s environments: ``obs_dim``, ``act_dim``, ``reset() -> [S, E, o]``,
``step(actions[S, E, a]) -> obs, reward, terminated, truncated, info`` with auto-reset and
``info["episode_return"]`` (NaN where no episode ended), ``state_dict``/``load_state_dict``. A point
moves by the action; reward = −|position − goal|² summed; an episode is terminated when the point
leaves the box |x| > 3, truncated after ``limit`` steps. The goal depends on the seed.
"""

import numpy as np


class PointEnv:
    obs_dim, act_dim = 3, 2

    def __init__(self, seeds, envs_per_seed=1, limit=12):
        self.seeds = np.asarray(seeds, dtype=np.float64)
        s, e = len(self.seeds), envs_per_seed
        self.limit = limit
        self.goal = np.stack([np.sin(self.seeds), np.cos(self.seeds)], -1)[:, None, :]  # [S, 1, 2]
        self.pos = np.zeros((s, e, 2))
        self.t = np.zeros((s, e), dtype=np.int64)
        self.ret = np.zeros((s, e))

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
        info = {"episode_return": np.where(done, self.ret, np.nan), "episode_length": np.where(done, self.t, np.nan),
                "final_obs": self._obs()}
        self.pos[done], self.t[done], self.ret[done] = 0.0, 0, 0.0
        return self._obs(), reward.astype(np.float32), terminated, truncated, info

    def state_dict(self):
        return {"pos": self.pos.copy(), "t": self.t.copy(), "ret": self.ret.copy()}

    def load_state_dict(self, state):
        self.pos, self.t, self.ret = state["pos"].copy(), state["t"].copy(), state["ret"].copy()
