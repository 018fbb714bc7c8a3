r"""PPO with the clipped objective on CartPole-v1 (pure JAX, seeds vmapped).

Command (3 seeds x 500k environment steps, 4 envs x 128 steps, 4 epochs x 4 minibatches):
  python -m experiments.rl --config=configs/rl_ppo.py --workdir=/tmp/rl_ppo
Runtime ~20-40 s on 2 CPU cores (compile included). Expected: mean greedy
evaluation return >= 475 on every seed (measured 500 / 500 / 500); see BUILD_NOTES.md.

Presets (`--config=configs/rl_ppo.py:PRESET`):
  tiny   1 seed, 20k steps: a few seconds after compiling; return rises above ~100.
  rejax  rejax's CartPole settings (5 envs x 100 steps, 5 epochs x 5 minibatches,
         lr 7.5e-4, 100k steps; actor and critic clipped and stepped separately):
         the benchmark configuration. The benchmark adds
         --config.algo.actor_critic_update=parallel (the same numbers, the two
         networks' epochs on two cores; on CPU run with
         XLA_FLAGS=--xla_force_host_platform_device_count=2).
Other environments: --config.env.name=Acrobot-v1 (any gymnax name),
continuous actions e.g. --config.env.name=Pendulum-v1.
"""

import ml_collections

from llmrl.rl.config import base_config


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  c = base_config("ppo", "CartPole-v1")
  c.num_seeds = 3
  c.train.total_steps = 500_000
  c.train.log_every = 50
  if preset == "tiny":
    c.num_seeds = 1
    c.train.total_steps = 20_480
    c.train.log_every = 10
    c.train.eval_episodes = 16
    c.train.final_eval_episodes = 32
  elif preset == "rejax":
    c.algo.num_envs, c.algo.num_steps = 5, 100
    c.algo.epochs, c.algo.minibatches = 5, 5
    c.algo.learning_rate, c.algo.anneal_lr = 7.5e-4, False
    c.algo.actor_critic_update = "separate"
    c.train.total_steps = 100_000
    c.train.log_every = 20          # evaluate every 10k steps
    c.train.eval_episodes = 128
    c.train.eval_greedy = False     # rejax evaluates the sampled policy
  elif preset:
    raise ValueError(f"unknown preset {preset!r} for configs/rl_ppo.py; use tiny or rejax")
  return c
