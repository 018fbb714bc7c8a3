"""Algorithm registry: config.algo.name -> module with default_config() and make()."""

from __future__ import annotations

from llmrl.config import check_enum

NAMES = ("ppo", "trpo", "reinforce", "dqn", "qlearning")


def get(name: str):
  """The algorithm module called `name` (ConfigError for an unknown one)."""
  check_enum("algo.name", name, NAMES)
  if name == "ppo":
    from llmrl.rl.algos import ppo as m
  elif name == "trpo":
    from llmrl.rl.algos import trpo as m
  elif name == "reinforce":
    from llmrl.rl.algos import reinforce as m
  elif name == "dqn":
    from llmrl.rl.algos import dqn as m
  else:
    from llmrl.rl.algos import qlearning as m
  return m
