r"""PPO with the adaptive KL penalty (beta doubled/halved around kl_target) on CartPole-v1.

Command (3 seeds x 500k environment steps):
  python -m experiments.rl --config=configs/rl_ppo_kl.py --workdir=/tmp/rl_ppo_kl
Runtime ~25 s on 2 CPU cores. Expected: mean greedy evaluation return >= 475
(measured 500 / 500 / 500);
metrics.jsonl shows ppo/kl_beta adapting and ppo/update_kl around kl_target.

Presets: tiny (1 seed, 20k steps, seconds).
"""

import ml_collections

from llmrl.rl.config import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = base_config("ppo", "CartPole-v1")
  c.algo.objective = "kl"
  c.algo.kl_target = 0.01
  c.algo.kl_beta_init = 1.0
  c.algo.kl_estimator = "exact"
  c.num_seeds = 3
  c.train.total_steps = 500_000
  c.train.log_every = 50
  if preset == "tiny":
    c.num_seeds = 1
    c.train.total_steps = 20_480
    c.train.log_every = 10
    c.train.eval_episodes = 16
    c.train.final_eval_episodes = 32
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rl_ppo_kl.py; use tiny")
  return c
