r"""TRPO (conjugate-gradient natural gradient, KL trust region delta=0.01) on CartPole-v1.

Command (3 seeds x 500k environment steps, 8 envs x 256 steps per update):
  python -m experiments.rl --config=configs/rl_trpo.py --workdir=/tmp/rl_trpo
Runtime ~1 min on 2 CPU cores. Expected: mean greedy evaluation return
>= 195 on every seed (measured 466 / 500 / 500; ~500 already by 61k steps);
trpo/kl <= 0.01 on every update.

Presets: tiny (1 seed, 16k steps, seconds).
"""

import ml_collections

from llmrl.rl.config import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = base_config("trpo", "CartPole-v1")
  c.num_seeds = 3
  c.train.total_steps = 500_000
  c.train.log_every = 10
  if preset == "tiny":
    c.num_seeds = 1
    c.train.total_steps = 16_384
    c.train.log_every = 4
    c.train.eval_episodes = 16
    c.train.final_eval_episodes = 32
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rl_trpo.py; use tiny")
  return c
