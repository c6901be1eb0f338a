"""Reinforcement learning: seed-batched MuJoCo environments and PPO (optional extra ``plastibench[rl]``)."""
