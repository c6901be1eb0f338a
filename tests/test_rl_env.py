"""The seed-batched Ant-v3 / SlipperyAnt-v3 of plastibench.rl.ant against gymnasium's Ant-v5 set up
as v3, the reference's rules (ant_v3.py, slippery_ant.py, run_ppo.py) restated, and resume."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("rl_extra")


def _env(seeds, **kwargs):
    from plastibench.rl.ant import AntBatch

    return AntBatch(torch.as_tensor(seeds), threads=1, **kwargs)


def _actions(seeds, t, E=1, scale=1.0):
    """Deterministic N(0, scale²) actions [S, E, 8] of step t, a function of (seed, env, t) only."""
    return np.stack([[np.random.default_rng([int(s), e, t]).normal(0, scale, 8) for e in range(E)] for s in seeds])


def _run(env, seeds, steps, first=0, E=1):
    out = []
    for t in range(first, first + steps):
        obs, r, term, trunc, info = env.step(_actions(seeds, t, E))
        out.append((obs, r, term, trunc, info["episode_return"], env.friction))
    return out


def _same(a, b):
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_model_is_gym_023_ant_and_slippery_edits_the_default_geom():
    """gymnasium's ant.xml is gym 0.23.1's (checked by diff); slippery_ant.py edits root[3][1], which is
    <default><geom>: every geom then has friction (f, 0.5, 0.5), the floor and the ant's own."""
    import mujoco

    from plastibench.rl.ant import ant_xml

    root = ET.fromstring(ant_xml())
    assert root[3].tag == "default" and root[3][1].tag == "geom"
    assert all("friction" not in g.attrib for g in root.iter("geom") if g is not root[3][1])
    plain = mujoco.MjModel.from_xml_string(ant_xml())
    np.testing.assert_array_equal(plain.geom_friction, np.tile([1.0, 0.5, 0.5], (plain.ngeom, 1)))
    slippery = mujoco.MjModel.from_xml_string(ant_xml(0.0375))
    np.testing.assert_array_equal(slippery.geom_friction, np.tile([0.0375, 0.5, 0.5], (plain.ngeom, 1)))


def test_frictions_log_uniform_in_range_and_per_seed():
    from scipy import stats

    from plastibench.rl.ant import frictions

    seeds = torch.arange(500).repeat_interleave(20)
    index = np.tile(np.arange(20), 500)
    f = frictions(seeds, index)
    assert f.min() >= 0.02 and f.max() < 2.0
    u = (np.log(f) - math.log(0.02)) / (math.log(2.0) - math.log(0.02))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    np.testing.assert_array_equal(frictions(torch.tensor([7, 7]), [3, 4]), f[[7 * 20 + 3, 7 * 20 + 4]])


def test_same_dynamics_and_reward_terms_as_gymnasium_ant_v5_set_up_as_v3():
    """From the same state and actions: qpos, qvel (obs[:27]), forward reward and control cost match
    gymnasium's Ant-v5; with contact_forces=True, also cfrc_ext (obs) and contact cost, which v5
    computes as mj_rnePostConstraint after the step; by default (the reference's mujoco-py 2)
    both are zero. v3's healthy reward is 1 on every step, v5's only while healthy."""
    import gymnasium

    for contact in (False, True):
        gym = gymnasium.make("Ant-v5", include_cfrc_ext_in_observation=True).unwrapped
        gym.reset(seed=0)
        env = _env([3], contact_forces=contact)
        obs = env.reset()
        start = env.state_dict()["mujoco"][0].numpy()
        gym.set_state(start[1:16].copy(), start[16:30].copy())
        np.testing.assert_array_equal(obs[0, 0, :27], gym._get_obs()[:27].astype(np.float32))
        contacts = 0
        for t in range(300):
            a = _actions([3], t, scale=0.5 if t < 30 else 3.0)  # calm, then violent up to termination
            obs, r, term, trunc, info = env.step(a)
            g_obs, g_r, g_term, _, g_info = gym.step(a[0, 0])
            done = term[0, 0] or trunc[0, 0]
            final = info["final_obs"][0, 0] if done else obs[0, 0]
            assert g_term == term[0, 0]
            np.testing.assert_array_equal(final[:27], g_obs[:27].astype(np.float32))
            if not done:
                np.testing.assert_array_equal(env.state_dict()["mujoco"][0, 1:30], np.r_[gym.data.qpos, gym.data.qvel])
            costs = g_info["reward_ctrl"] + (g_info["reward_contact"] if contact else 0.0)
            assert r[0, 0] == pytest.approx(g_info["reward_forward"] + 1.0 + costs, abs=1e-12)
            if contact:
                np.testing.assert_array_equal(final[27 + 6:], g_obs[27:].astype(np.float32))
            else:
                assert not final[27:].any()
            contacts += bool(gym.data.ncon)
            if done:
                break
        assert term[0, 0] and t > 30 and contacts > 5


def test_termination_truncation_and_auto_reset():
    from plastibench.rl import ant

    env = _env([0, 1])
    starts = list(env.reset()[:, 0, 0])
    saw_term = False
    for t in range(200):
        before = env.state_dict()
        obs, r, term, trunc, info = env.step(_actions([0, 1], t, scale=2.0))
        z = info["final_obs"][..., 0]
        done = term | trunc
        assert np.array_equal(np.isfinite(info["episode_return"]), done)
        np.testing.assert_array_equal(term[done], (z[done] < 0.2) | (z[done] > 1.0))
        np.testing.assert_array_equal(info["episode_length"][done], before["length"].numpy().reshape(2, 1)[done] + 1)
        assert not trunc.any()
        saw_term |= term.any()
        starts += list(obs[..., 0][done])
    assert saw_term and len(set(starts)) == len(starts) > 4  # each episode its own reset noise
    # truncation at 1000 steps: an env one step before the limit
    state = env.state_dict()
    state["length"][:] = ant.MAX_EPISODE_STEPS - 1
    env.load_state_dict(state)
    obs, r, term, trunc, info = env.step(np.zeros((2, 1, 8)))
    np.testing.assert_array_equal(trunc, ~term)
    np.testing.assert_array_equal(env.state_dict()["length"], 0)


def test_friction_switch_rule():
    """run_ppo.py: at an episode end at step index t with t - t_last > change_every, switch to the next
    friction and set t_last = t. With E envs per seed, batched step k ends at t = E·(k + 1) − 1, any
    env's episode end may switch, and an env runs each episode on the seed's friction at its start."""
    from plastibench.rl.ant import frictions

    seeds, E, change = [4, 9], 2, 80
    env = _env(seeds, envs_per_seed=E, slippery=True, change_every=change)
    env.reset()
    index, last = [0, 0], [0, 0]
    episode_friction = np.repeat(frictions(torch.tensor(seeds), [0, 0])[:, None], E, 1)
    for k in range(250):
        _, _, term, trunc, _ = env.step(_actions(seeds, k, E, scale=2.0))
        t = E * (k + 1) - 1
        for s in range(2):
            if (term | trunc)[s].any() and t - last[s] > change:
                index[s], last[s] = index[s] + 1, t
        expected = frictions(torch.tensor(seeds), index)
        np.testing.assert_array_equal(env.friction, expected)
        episode_friction = np.where(term | trunc, expected[:, None], episode_friction)
        for i in range(len(seeds) * E):
            np.testing.assert_array_equal(env._batch.models[i].geom_friction[:, 0], episode_friction.flat[i])
    assert min(index) >= 2


def test_one_env_per_seed_alone_or_batched():
    kwargs = dict(slippery=True, change_every=30)
    batched, alone = _env([0, 5, 2], **kwargs), _env([5], **kwargs)
    first = (batched.reset(), alone.reset())
    np.testing.assert_array_equal(first[0][1], first[1][0])
    a, b = _run(batched, [0, 5, 2], 150), _run(alone, [5], 150)
    _same([[x[1] for x in step] for step in a], [[x[0] for x in step] for step in b])
    assert sum(np.isfinite(step[4]).sum() for step in b) >= 2


@pytest.mark.parametrize("contact", [False, True])
def test_state_round_trip_continues_bit_identically(contact):
    seeds, E = [1, 2], 2
    env = _env(seeds, envs_per_seed=E, slippery=True, change_every=25, contact_forces=contact)
    env.reset()
    _run(env, seeds, 40, E=E)
    state = env.state_dict()
    rest = _run(env, seeds, 60, first=40, E=E)
    fresh = _env(seeds, envs_per_seed=E, slippery=True, change_every=25, contact_forces=contact)
    fresh.load_state_dict(state)
    _same(rest, _run(fresh, seeds, 60, first=40, E=E))
    np.testing.assert_array_equal(fresh.steps, env.steps)


def test_friction_switch_boundary():
    """An episode end at step index t switches only if t - t_last > change_every: not at equality."""
    seeds, change = [6], 1000
    env = _env(seeds, slippery=True, change_every=change)
    env.reset()
    for t in range(200):
        state = env.state_dict()
        if (env.step(_actions(seeds, t, scale=2.0))[2]).any():
            break
    t_end = int(state["steps"][0])  # the 0-based index of the step that ended the episode
    for last, switches in ((t_end - change, False), (t_end - change - 1, True)):
        state["last_switch"][:] = last
        env.load_state_dict(state)
        env.step(_actions(seeds, t, scale=2.0))
        assert env.state_dict()["friction_index"][0] == int(switches)


def test_reset_noise():
    """v3's reset: qpos = qpos0 + U(±0.1), qvel = 0.1·N(0, 1), every (seed, env, episode) its own draw."""
    import mujoco

    from plastibench.rl.ant import ant_xml

    qpos0 = mujoco.MjModel.from_xml_string(ant_xml()).qpos0
    env = _env(range(50), envs_per_seed=4)
    env.reset()
    state = env.state_dict()["mujoco"].numpy()
    dq, qvel = state[:, 1:16] - qpos0, state[:, 16:30]
    assert np.abs(dq).max() <= 0.1 and np.abs(dq).max() > 0.099 and abs(dq.mean()) < 0.01
    assert qvel.std() == pytest.approx(0.1, rel=0.05) and abs(qvel.mean()) < 0.01
    assert len(np.unique(dq[:, 0])) == 200


def test_missing_extra_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from plastibench.rl.ant import AntBatch

    monkeypatch.setitem(sys.modules, "mujoco", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[rl\]"'):
        AntBatch(torch.arange(1))
    # through the CLI: a usage error that says what to install, no traceback
    from typer.testing import CliRunner

    from plastibench.cli import app
    result = CliRunner().invoke(app, ["run", "-m", "bp", "-t", "sant", "-p", "smoke", "--device", "cpu",
                                      "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and 'pip install -e ".[rl]"' in result.output, (result.output, result.exception)
