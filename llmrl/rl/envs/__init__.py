"""Pure-JAX environments by name: built-ins, then any gymnax environment.

    env = envs.make("CartPole-v1")        # llmrl's own
    env = envs.make("Acrobot-v1")         # gymnax's (also "gymnax:CartPole-v1")
    obs, state = env.reset(key, env.default_params)

Unknown names raise ConfigError listing close names.
"""

from __future__ import annotations

import difflib

from llmrl.config import ConfigError
from llmrl.rl.envs.bandit import Bandit
from llmrl.rl.envs.cartpole import CartPole
from llmrl.rl.envs.core import Box, Discrete, Environment, flat_obs_dim, is_discrete
from llmrl.rl.envs.frozen_lake import FrozenLake
from llmrl.rl.envs.gymnax_adapter import GymnaxEnv, gymnax_names
from llmrl.rl.envs.wrappers import AutoReset, EpisodeStats, Wrapper

BUILTIN = {
    "CartPole-v1": CartPole,
    "FrozenLake-v1": FrozenLake,
    "Bandit-v0": Bandit,
}
GYMNAX_PREFIX = "gymnax:"


def known_names() -> list[str]:
  return list(BUILTIN) + [GYMNAX_PREFIX + n for n in gymnax_names()]


def make(name: str) -> Environment:
  """The environment called `name` (a built-in, 'gymnax:NAME', or a gymnax NAME)."""
  if name in BUILTIN:
    return BUILTIN[name]()
  gymnax = gymnax_names()
  bare = name[len(GYMNAX_PREFIX):] if name.startswith(GYMNAX_PREFIX) else name
  if bare in gymnax:
    return GymnaxEnv(bare)
  candidates = list(dict.fromkeys(list(BUILTIN) + gymnax))
  close = difflib.get_close_matches(bare, candidates, n=4, cutoff=0.5)
  hint = f" Did you mean: {', '.join(close)}?" if close else (
      f" Built-in: {', '.join(BUILTIN)}.")
  if not gymnax:
    hint += " (gymnax is not installed, so only built-ins are available.)"
  raise ConfigError(f"config.env.name={name!r} is not a known environment.{hint}")


__all__ = ["AutoReset", "Bandit", "Box", "CartPole", "Discrete", "Environment",
           "EpisodeStats", "FrozenLake", "GymnaxEnv", "Wrapper", "flat_obs_dim",
           "is_discrete", "known_names", "make"]
