#!/usr/bin/env python3
"""Env-steps/s of a whole PPO run on ``sant`` (issue 14): simulation, acting, GAE and updates.

    python3 scripts/rl_speed.py --seeds 1,8,32 --rollouts 2 [--methods bp,cbp+l2] [--device cpu] [--threads 1]

Runs the ``sant paper`` protocol (rollouts of 2048 steps, 160 mini-batch updates each, 256-256 nets)
cut to one bin of ``--rollouts`` rollouts, through the real engine, S seeds as one batched model,
and divides the environment steps of all seeds by the wall time (set-up excluded). Prints one JSON
line per (method, S) and, with ``--cost``, the hours of a full ``sant paper`` run (20 070 400 steps
a seed) for that many seeds at the measured rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

import torch

from plastibench.engine import Engine
from plastibench.registry import METHODS, TASKS

PAPER_STEPS = 20_070_400  # sant paper: 200 bins of 49 rollouts of 2048 steps


def rate(method: str, S: int, rollouts: int, device: torch.device) -> dict:
    task_cls, method_cls = TASKS.get("sant"), METHODS.get(method)
    paper = task_cls.protocol("paper")
    settings = {**paper.settings, "rollouts_per_bin": rollouts}
    updates = paper.settings["epochs"] * paper.settings["minibatches"]
    proto = dataclasses.replace(paper, n_tasks=1, steps_per_task=rollouts * updates, settings=settings)
    hparams = method_cls.hparams_for("sant")
    config = {"method": method, "seeds": list(range(S)), "hparams": hparams}
    with tempfile.TemporaryDirectory() as out:
        engine = Engine(method_cls, hparams, task_cls, proto, config["seeds"], device=device, directory=out,
                        config=config, checkpoint_every=1e9)
        start = time.perf_counter()
        engine.run()
        seconds = time.perf_counter() - start
        steps = float(engine.task.env.steps.sum())
    return {"method": method, "S": S, "env_steps": int(steps), "seconds": round(seconds, 1),
            "env_steps_per_s": round(steps / seconds, 1),
            "paper_hours_per_seed_alone": round(PAPER_STEPS * S / (steps / seconds) / 3600 / S, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,8,32")
    parser.add_argument("--methods", default="bp,cbp+l2")
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cost", type=int, default=30, help="seeds of the sant paper run to cost")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for method in args.methods.split(","):
        for S in map(int, args.seeds.split(",")):
            row = rate(method, S, args.rollouts, torch.device(args.device))
            row[f"sant_paper_hours_{args.cost}_seeds"] = round(
                PAPER_STEPS * args.cost / row["env_steps_per_s"] / 3600, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
