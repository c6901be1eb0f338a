"""Reinforcement learning: seed-batched MuJoCo environments (optional extra ``plastibench[rl]``)."""
