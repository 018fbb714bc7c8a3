r"""DQN (replay buffer, target network, double Q, epsilon-greedy) on CartPole-v1.

Command (3 seeds x 200k environment steps, 8 envs, one gradient step per 8 env steps):
  python -m experiments.rl --config=configs/rl_dqn.py --workdir=/tmp/rl_dqn
Runtime ~20 s on 2 CPU cores. Expected: it learns (random play scores ~22) but
is far less stable than PPO: measured final greedy returns 129 / 149 / 104 for
the 3 seeds (see BUILD_NOTES.md); this config is not tuned to solve CartPole.

Presets: tiny (1 seed, 10k steps, seconds).
"""

import ml_collections

from llmrl.rl.config import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = base_config("dqn", "CartPole-v1")
  c.num_seeds = 3
  c.train.total_steps = 200_000
  c.train.log_every = 1000
  if preset == "tiny":
    c.num_seeds = 1
    c.train.total_steps = 10_000
    c.train.log_every = 250
    c.train.eval_episodes = 16
    c.train.final_eval_episodes = 32
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rl_dqn.py; use tiny")
  return c
