"""Config blocks shared by every RL config file (configs/rl_*.py)."""

from __future__ import annotations

import ml_collections

from llmrl.rl.algos import get


def base_config(algo: str, env: str) -> ml_collections.ConfigDict:
  """seed, num_seeds, env, algo (the algorithm's defaults) and train blocks."""
  c = ml_collections.ConfigDict()
  c.seed = 0                    # seeds are split from this key
  c.num_seeds = 1               # independent runs trained at once with vmap
  c.env = ml_collections.ConfigDict()
  c.env.name = env              # built-in (CartPole-v1, FrozenLake-v1, Bandit-v0) or gymnax
  c.algo = get(algo).default_config()
  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 500_000  # environment steps per seed
  c.train.log_every = 10        # updates per chunk: progress line, metrics record, eval
  c.train.eval_episodes = 32    # episodes per intermediate evaluation (0 = none)
  c.train.final_eval_episodes = 128
  c.train.eval_greedy = True    # evaluate the greedy (mode) action; False samples
  c.train.eval_max_steps = 10_000
  c.train.checkpoint_every = 10  # chunks between checkpoints, and at the end (0 = none);
                                 # rerunning on the same workdir resumes
  c.train.plot = True           # curves.png
  return c
