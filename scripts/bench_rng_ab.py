"""A/B timing of plastibench.rng in one process (issue 13): UPGD on ipmnist, the pre-issue-13 draw
formula (restated in tests/test_rng_bits.py, bit-identical) against the current one, alternated so
that both see the same machine load. Run from the repository root:

    python3 scripts/bench_rng_ab.py --data-dir DIR [--seeds 1,20] [--steps 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plastibench import bench, rng  # noqa: E402
from tests import test_rng_bits as previous  # noqa: E402

CURRENT = {name: getattr(rng, name) for name in ("hash32", "uniform", "normal")}
PREVIOUS = {name: getattr(previous, name) for name in CURRENT}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", default="1,20")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for s in map(int, args.seeds.split(",")):
        rates = {"previous": [], "current": []}
        for _ in range(args.rounds):
            for name, draws in (("previous", PREVIOUS), ("current", CURRENT)):
                for attr, fn in draws.items():
                    setattr(rng, attr, fn)
                m = bench.measure("upgd", "ipmnist", "paper", s, steps=args.steps, warmup=args.warmup,
                                  device=torch.device("cpu"), data_dir=args.data_dir, verify=False)
                rates[name].append(m.seed_steps_per_s)
        for attr, fn in CURRENT.items():
            setattr(rng, attr, fn)
        old, new = statistics.median(rates["previous"]), statistics.median(rates["current"])
        print(f"S={s}: previous {rates['previous']} current {rates['current']} seed-steps/s; "
              f"median ratio {new / old:.2f}x", flush=True)


if __name__ == "__main__":
    main()
