r"""Tabular Q-learning on the slippery 4x4 FrozenLake-v1 gridworld.

Command (3 seeds x 1M environment steps, 16 envs):
  python -m experiments.rl --config=configs/rl_qlearning.py --workdir=/tmp/rl_q
Runtime ~10-20 s on 2 CPU cores. Expected: greedy success rate ~0.74, the optimal
policy's (0.744 by value iteration with the 100-step limit); the test checks
within 0.05 of it.

Presets: tiny (1 seed, 100k steps, seconds).
"""

import ml_collections

from llmrl.rl.config import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = base_config("qlearning", "FrozenLake-v1")
  c.num_seeds = 3
  c.train.total_steps = 1_000_000
  c.train.log_every = 2500
  c.train.eval_episodes = 1000
  c.train.final_eval_episodes = 10_000
  if preset == "tiny":
    c.num_seeds = 1
    c.train.total_steps = 100_000
    c.train.log_every = 625
    c.train.eval_episodes = 200
    c.train.final_eval_episodes = 2000
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rl_qlearning.py; use tiny")
  return c
