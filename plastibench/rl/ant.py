"""Ant-v3 and SlipperyAnt-v3 as the Nature paper ran them, S seeds × E envs stepped as one batch.

Reference: gym 0.23.1 ``gym/envs/mujoco/ant_v3.py`` with free-mujoco-py 2.1.6 (MuJoCo 2.1), and
``lop/envs/slippery_ant.py``, ``lop/rl/run_ppo.py`` of shibhansh/loss-of-plasticity. Per env step:

* the action is written to ``ctrl`` unclipped; MuJoCo clamps it to the actuators' ctrlrange ±1
  (``ctrllimited``), and the control cost uses the unclipped action: 0.5·Σa²;
* 5 ``mj_step`` (frame_skip 5, RK4, dt 0.05); forward reward = Δx of the torso's ``xpos`` / dt,
  ``xpos`` as ``mj_step`` leaves it (with RK4, that of the last Runge–Kutta stage, close to but not
  the new qpos's: ``state_dict`` keeps it);
* healthy reward 1 on every step, the terminal one included (v3 gives it whenever
  ``terminate_when_unhealthy``; v5 only while healthy); reward = (forward + 1) − (ctrl + contact);
* terminated when qpos/qvel is not finite or the torso z leaves [0.2, 1.0]; truncated at 1000 steps
  (gym's TimeLimit); at most one of the two is set;
* observation qpos[2:] (13), qvel (14), clip(cfrc_ext, −1, 1) of all 14 bodies, world included (84):
  111 dims (v5 drops the world body: 105);
* reset: ``mj_resetData``, qpos = qpos0 + U(±0.1), qvel = 0.1·N(0, 1), ``mj_forward``.

Contact forces. Since MuJoCo 2.0, ``mj_step`` calls ``mj_rnePostConstraint`` only for force-related
sensors (Ant has none) and mujoco-py ≥ 2.0 never calls it, so ``cfrc_ext`` stayed zero in v3 (gym
0.23's Ant docstring; openai/gym#1541, #1711; gymnasium's v4/v5 version history; MuJoCo 4 alike): in
the paper's runs the contact observation and the contact cost were 0. ``contact_forces=False`` (the
default) reproduces that; ``True`` computes them after each step as gymnasium v4/v5 do
(``mj_rnePostConstraint``), the behaviour v3 was written for.

SlipperyAnt. The reference rewrites ``root[3][1]`` of ant.xml, which is the ``<default><geom>``
element, not the floor: every geom (floor, torso, legs; none sets its own) gets friction
``"f 0.5 0.5"``, so contacts have friction f (MuJoCo takes the larger of the two geoms'). Setting only
the floor would leave f < 1 without effect. Seed k's friction number i is log-uniform on [0.02, 2),
drawn from :mod:`plastibench.rng` keyed by (k, i), purpose ``"sant/friction"``, starting with i = 0
(the reference reads row ``seed`` of a pickled 100 × 50 table; our values differ, its law is the
same). Switch rule (``run_ppo.py``): when an episode ends at the seed's 0-based env-step index t and
t − t_last > ``change_every``, the friction number increases and t_last = t (t_last starts at 0). With
E > 1 envs per seed (paper: E = 1), t counts all E envs' steps (a batched step is E env steps, t the
last), any of its envs' episode ends may switch, and each env takes the seed's current friction at
its next reset, so that no episode sees two frictions.

Deliberate deviations: MuJoCo 4 instead of 2.1 (the engine changed between them: trajectories are not
bit-comparable, and 2.1 cannot be installed beside this stack to compare); reset noise
from :mod:`plastibench.rng` keyed by (seed, env e, episode n of that env: step ``e·2³² + n``), float32
draws widened to float64 (the reference's env was unseeded), so a seed's trajectory is the same alone
or batched; the model is gymnasium's ant.xml, identical to gym 0.23.1's.

Stepping: ``mujoco.batch.Batch`` (one state row per env, a model per env, a thread pool); it ran as
fast as a Python loop of ``mj_step`` and as ``mujoco.rollout`` for S = 1, 8, 32 (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.resources
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import torch

from .. import rng
from ..errors import MissingExtra

FRAME_SKIP = 5
MAX_EPISODE_STEPS = 1000
CTRL_COST, CONTACT_COST, HEALTHY_REWARD = 0.5, 5e-4, 1.0
HEALTHY_Z = (0.2, 1.0)
RESET_NOISE = 0.1
FRICTION_RANGE = (0.02, 2.0)


def _mujoco():
    try:
        import mujoco
        import mujoco.batch
    except ImportError as e:
        raise MissingExtra(f'the RL environments need MuJoCo 4 ({e}); install them with: pip install -e ".[rl]"') from e
    return mujoco


def ant_xml(friction: float | None = None) -> str:
    """gymnasium's ant.xml; with ``friction``, the default geom friction set to ``"f 0.5 0.5"`` as
    ``slippery_ant.py`` does."""
    try:
        text = importlib.resources.files("gymnasium").joinpath("envs/mujoco/assets/ant.xml").read_text()
    except ModuleNotFoundError as e:
        raise MissingExtra(f'the Ant model comes with gymnasium ({e}); install it with: pip install -e ".[rl]"') from e
    if friction is None:
        return text
    root = ET.fromstring(text)
    root.find("default/geom").set("friction", f"{float(friction)!r} 0.5 0.5")
    return ET.tostring(root, encoding="unicode")


def _rowwise(draw, seeds: torch.Tensor, steps, purpose: str, shape: tuple[int, ...], **kwargs) -> np.ndarray:
    """Row i: ``draw(seeds[i:i+1], steps[i], ...)`` as float64 ``[N, *shape]``, one draw per distinct step."""
    steps = np.asarray(steps, dtype=np.int64)
    out = np.empty((len(steps), *shape))
    for step in np.unique(steps):
        rows = np.flatnonzero(steps == step)
        out[rows] = draw(seeds[rows], int(step), purpose, shape, **kwargs).double().numpy()
    return out


def frictions(seeds: torch.Tensor, index) -> np.ndarray:
    """Friction number ``index[i]`` of seed ``seeds[i]``: log-uniform on [0.02, 2), float64 ``[N]``."""
    lo, hi = (math.log(f) for f in FRICTION_RANGE)
    return np.exp(lo + (hi - lo) * _rowwise(rng.uniform, seeds, index, "sant/friction", ()))


class AntBatch:
    """S seeds × E envs of Ant-v3 (``slippery=False``) or SlipperyAnt-v3, with auto-reset.

    ``reset()`` → obs ``[S, E, 111]`` float32; ``step(actions [S, E, 8])`` → obs, reward (float64),
    terminated, truncated (bool) ``[S, E]``, info: ``episode_return``, ``episode_length`` ``[S, E]``
    (NaN where no episode ended), ``final_obs`` ``[S, E, 111]`` (NaN rows where none ended); the obs of
    an env whose episode ended is its next episode's first. ``threads``: the MuJoCo batch's threads
    (default: the CPUs this process may use, at most S·E). ``max_episode_steps``: the time limit (1000,
    v3's; shorter only for tests, e.g. the PPO tasks' ``smoke``).
    """

    def __init__(self, seeds: torch.Tensor, envs_per_seed: int = 1, slippery: bool = False,
                 change_every: int = 2_000_000, contact_forces: bool = False, threads: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS):
        mj = _mujoco()
        self.seeds = torch.as_tensor(seeds).to(torch.int64).cpu().reshape(-1)
        self.n_seeds, self.envs_per_seed = len(self.seeds), int(envs_per_seed)
        self.slippery, self.change_every, self.contact_forces = slippery, int(change_every), contact_forces
        self.max_episode_steps = int(max_episode_steps)
        n = self.n_seeds * self.envs_per_seed
        self._mj, self._models = mj, {}
        base = self._model(None)
        self.act_dim = base.nu
        self._qpos0, self._n_contact = base.qpos0.copy(), 6 * base.nbody
        self.obs_dim = base.nq - 2 + base.nv + self._n_contact
        self.dt = base.opt.timestep * FRAME_SKIP
        self._torso = base.body("torso").id
        threads = threads or min(n, len(os.sched_getaffinity(0)))
        self._batch = mj.batch.Batch(base, n, nthread=threads, persistent=contact_forces)
        self._qpos, self._qvel = self._batch.bind("qpos"), self._batch.bind("qvel")
        self._ctrl, self._xpos = self._batch.bind("ctrl"), self._batch.bind("xpos")
        self._scratch = mj.MjData(base) if contact_forces else None
        self._seed_of = np.repeat(np.arange(self.n_seeds), self.envs_per_seed)
        self._env_of = np.tile(np.arange(self.envs_per_seed), self.n_seeds)
        self._started = False

    # -- models -------------------------------------------------------------------------------
    def _model(self, friction: float | None):
        if friction not in self._models:
            self._models[friction] = self._mj.MjModel.from_xml_string(ant_xml(friction))
        return self._models[friction]

    def _friction_key(self, f: float) -> float | None:
        return float(f) if self.slippery else None

    def _set_models(self) -> None:
        keys = [self._friction_key(f) for f in self._env_friction]
        self._models = {k: self._model(k) for k in set(keys)}
        self._batch.set_models([self._models[k] for k in keys])

    @property
    def friction(self) -> np.ndarray:
        """``[S]`` the seed's current floor friction (1 for Ant, the ant.xml default)."""
        return self._seed_friction.copy()

    @property
    def steps(self) -> np.ndarray:
        """``[S]`` env steps so far per seed (all its envs)."""
        return self._steps.copy()

    # -- episodes -----------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Start episode 0 in every env (friction number 0 for SlipperyAnt); obs ``[S, E, obs_dim]``."""
        S, E = self.n_seeds, self.envs_per_seed
        self._steps = np.zeros(S, np.int64)
        self._friction_index = np.zeros(S, np.int64)
        self._last_switch = np.zeros(S, np.int64)
        self._seed_friction = frictions(self.seeds, self._friction_index) if self.slippery else np.ones(S)
        self._env_friction = self._seed_friction[self._seed_of].copy()
        self._episode = np.zeros(S * E, np.int64)
        self._length = np.zeros(S * E, np.int64)
        self._return = np.zeros(S * E)
        self._xy = np.zeros((S * E, 2))
        self._started = True
        self._set_models()
        ids = np.arange(S * E)
        return self._shape(self._start_episodes(ids).astype(np.float32))

    def _start_episodes(self, ids: np.ndarray) -> np.ndarray:
        """Reset envs ``ids`` into their current episode (``self._episode``); their first obs ``[n, obs_dim]``."""
        mj = self._mj
        self._batch.reset(ids, stage=mj.mjtStage.mjSTAGE_NONE.value)
        seeds = self.seeds[self._seed_of[ids]]
        key = (self._env_of[ids].astype(np.int64) << 32) + self._episode[ids]
        self._qpos[ids] = self._qpos0 + _rowwise(rng.uniform, seeds, key, "ant/reset/qpos", self._qpos0.shape,
                                                 low=-RESET_NOISE, high=RESET_NOISE)
        self._qvel[ids] = _rowwise(rng.normal, seeds, key, "ant/reset/qvel", self._qvel.shape[1:], std=RESET_NOISE)
        self._batch.forward(ids)
        self._xy[ids] = self._xpos[ids, self._torso, :2]
        self._length[ids] = 0
        self._return[ids] = 0.0
        return self._observe(ids)

    def _contact(self, ids: np.ndarray) -> np.ndarray:
        """clip(cfrc_ext, −1, 1) ``[n, nbody·6]``: zeros unless ``contact_forces`` (see module doc)."""
        out = np.zeros((len(ids), self._n_contact))
        if self.contact_forces:
            models = self._batch.models
            for row, i in enumerate(ids):
                self._batch.get_data(int(i), self._scratch)
                self._mj.mj_rnePostConstraint(models[i], self._scratch)
                out[row] = np.clip(self._scratch.cfrc_ext, -1.0, 1.0).reshape(-1)
        return out

    def _observe(self, ids: np.ndarray, contact: np.ndarray | None = None) -> np.ndarray:
        contact = self._contact(ids) if contact is None else contact
        return np.concatenate([self._qpos[ids, 2:], self._qvel[ids], contact], axis=1)

    def _shape(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.n_seeds, self.envs_per_seed, *x.shape[1:])

    def step(self, actions):
        """One env step in every env; see the class docstring."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        n = self.n_seeds * self.envs_per_seed
        a = np.asarray(actions.detach().cpu() if torch.is_tensor(actions) else actions).reshape(n, self.act_dim)
        self._ctrl[:] = a
        self._batch.step(nstep=FRAME_SKIP)
        ids = np.arange(n)
        contact = self._contact(ids)
        xy = self._xpos[:, self._torso, :2].copy()
        forward = (xy[:, 0] - self._xy[:, 0]) / self.dt
        ctrl_cost = CTRL_COST * np.sum(np.square(a), axis=1).astype(np.float64)  # summed in the action's dtype, as v3
        contact_cost = CONTACT_COST * np.sum(np.square(contact), axis=1)
        reward = (forward + HEALTHY_REWARD) - (ctrl_cost + contact_cost)
        self._xy = xy
        finite = np.isfinite(self._qpos).all(1) & np.isfinite(self._qvel).all(1)
        z = self._qpos[:, 2]
        terminated = ~(finite & (HEALTHY_Z[0] <= z) & (z <= HEALTHY_Z[1]))
        self._length += 1
        self._return += reward
        truncated = (self._length >= self.max_episode_steps) & ~terminated
        obs = self._observe(ids, contact)
        self._steps += self.envs_per_seed
        info = {"episode_return": np.full(n, np.nan), "episode_length": np.full(n, np.nan),
                "final_obs": np.full((n, self.obs_dim), np.nan, np.float32)}
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            info["episode_return"][done] = self._return[done]
            info["episode_length"][done] = self._length[done]
            info["final_obs"][done] = obs[done]
            if self.slippery:
                self._switch(done)
            self._episode[done] += 1
            friction = self._seed_friction[self._seed_of[done]]
            if (friction != self._env_friction[done]).any():
                self._env_friction[done] = friction
                self._set_models()
            obs[done] = self._start_episodes(done)
        info = {k: self._shape(v) for k, v in info.items()}
        return (self._shape(obs.astype(np.float32)), self._shape(reward), self._shape(terminated),
                self._shape(truncated), info)

    def _switch(self, done: np.ndarray) -> None:
        """The friction switch rule of ``run_ppo.py`` for the seeds with an episode end now."""
        seeds = np.unique(self._seed_of[done])
        t = self._steps[seeds] - 1
        due = seeds[t - self._last_switch[seeds] > self.change_every]
        if len(due):
            self._friction_index[due] += 1
            self._last_switch[due] = self._steps[due] - 1
            self._seed_friction[due] = frictions(self.seeds[due], self._friction_index[due])

    # -- resume -------------------------------------------------------------------------------
    _COUNTERS = ("_steps", "_friction_index", "_last_switch", "_seed_friction", "_env_friction",
                 "_episode", "_length", "_return", "_xy")

    def state_dict(self) -> dict:
        """Everything a bit-identical continuation needs, as CPU tensors: MuJoCo's integration state
        (``mujoco``: time, qpos, qvel, act, warm start, ctrl per env), the torso xy of the last step,
        episode and friction counters."""
        if not self._started:
            raise RuntimeError("call reset() before state_dict()")
        state = {k.lstrip("_"): getattr(self, k) for k in self._COUNTERS}
        state["mujoco"] = self._batch.state
        state = {k: torch.tensor(v) for k, v in state.items()}
        state["seeds"] = self.seeds.clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        if not torch.equal(torch.as_tensor(state["seeds"]), self.seeds) or state["mujoco"].shape != self._batch.state.shape:
            raise ValueError("this environment state belongs to other seeds or another envs_per_seed")
        for k in self._COUNTERS:
            setattr(self, k, torch.as_tensor(state[k.lstrip("_")]).numpy().copy())
        self._started = True
        self._set_models()
        self._batch.state[:] = torch.as_tensor(state["mujoco"]).numpy()
