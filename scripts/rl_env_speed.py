#!/usr/bin/env python3
"""Env-steps/s of plastibench.rl.ant.AntBatch for S seeds (issue 14), and of the stepping it could use.

    python3 scripts/rl_env_speed.py --seeds 1,8,32 --steps 300 [--threads 1] [--backends]

AntBatch: S seeds × 1 env, actions N(0, 1) (an untrained PPO policy's), auto-resets included.
--backends also times the bare physics (5 mj_step per env step, no rewards or resets) three ways: a
Python loop over one MjData per env, mujoco.rollout's Rollout (thread pool, one model per env), and
mujoco.batch.Batch (what AntBatch uses). Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def env_rate(S: int, steps: int, threads: int | None) -> float:
    from plastibench.rl.ant import AntBatch

    env = AntBatch(torch.arange(S), threads=threads)
    env.reset()
    g = np.random.default_rng(0)
    actions = g.normal(size=(steps + 20, S, 1, env.act_dim))
    for a in actions[:20]:
        env.step(a)
    start = time.perf_counter()
    for a in actions[20:]:
        env.step(a)
    return S * steps / (time.perf_counter() - start)


def physics_rates(S: int, steps: int, threads: int) -> dict[str, float]:
    import mujoco
    from mujoco.batch import Batch
    from mujoco.rollout import Rollout

    from plastibench.rl.ant import FRAME_SKIP, ant_xml

    models = [mujoco.MjModel.from_xml_string(ant_xml()) for _ in range(S)]
    ctrl = np.random.default_rng(0).uniform(-1, 1, (steps, S, models[0].nu))
    rates = {}
    datas = [mujoco.MjData(m) for m in models]
    start = time.perf_counter()
    for u in ctrl:
        for m, d, c in zip(models, datas, u):
            d.ctrl[:] = c
            mujoco.mj_step(m, d, FRAME_SKIP)
    rates["loop"] = S * steps / (time.perf_counter() - start)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.zeros((S, mujoco.mj_stateSize(models[0], spec)))
    for i, (m, d) in enumerate(zip(models, [mujoco.MjData(m) for m in models])):
        mujoco.mj_getState(m, d, state[i], spec)
    scratch = [mujoco.MjData(models[0]) for _ in range(threads)]
    with Rollout(nthread=threads if threads > 1 else 0) as rollout:
        start = time.perf_counter()
        for u in ctrl:
            out, _ = rollout.rollout(models, scratch, state, np.repeat(u[:, None], FRAME_SKIP, 1))
            state = out[:, -1]
        rates["rollout"] = S * steps / (time.perf_counter() - start)
    batch = Batch(models[0], S, nthread=threads)
    batch.set_models(models)
    bound = batch.bind("ctrl")
    start = time.perf_counter()
    for u in ctrl:
        bound[:] = u
        batch.step(nstep=FRAME_SKIP)
    rates["batch"] = S * steps / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,8,32")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backends", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for S in map(int, args.seeds.split(",")):
        row = {"S": S, "threads": args.threads, "antbatch_env_steps_per_s": round(env_rate(S, args.steps, args.threads))}
        if args.backends:
            row.update({f"physics_{k}": round(v) for k, v in physics_rates(S, args.steps, args.threads or 1).items()})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
