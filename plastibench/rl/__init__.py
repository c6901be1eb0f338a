"""Reinforcement learning: seed-batched PPO and its environments (issue 14)."""
