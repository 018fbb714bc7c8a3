"""Wrappers: automatic reset at episode ends and episode-return tracking.

Both keep the functional API, so a wrapped environment is still an
`Environment` that can be vmapped and scanned. Typical stack:
`EpisodeStats(AutoReset(env))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from llmrl.rl.envs.core import Environment


class Wrapper(Environment):
  """Forwards everything to the wrapped environment."""

  def __init__(self, env: Environment):
    self.env = env
    self.name = env.name

  @property
  def default_params(self):
    return self.env.default_params

  def reset(self, key, params):
    return self.env.reset(key, params)

  def step(self, key, state, action, params):
    return self.env.step(key, state, action, params)

  def observation_space(self, params):
    return self.env.observation_space(params)

  def action_space(self, params):
    return self.env.action_space(params)


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class AutoReset(Wrapper):
  """Resets when an episode ends; info["final_obs"] is the observation before the reset.

  The returned obs is the first observation of the next episode, so a rollout
  never has to branch; bootstrapping at a time-limit truncation uses
  info["final_obs"].
  """

  def step(self, key, state, action, params, reset=None):
    """`reset`: an (obs, state) already drawn from `env.reset` to start the next episode
    with (a rollout draws all of them at once, which is much cheaper on CPU than a
    random draw per step); None draws it here from `key`."""
    if reset is None:
      key, key_reset = jax.random.split(key)
      reset = self.env.reset(key_reset, params)
    obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
    done = terminated | truncated
    obs_reset, state_reset = reset
    info = {**info, "final_obs": obs}
    return (_select(done, obs_reset, obs), _select(done, state_reset, state), reward,
            terminated, truncated, info)


@struct.dataclass
class StatsState:
  env_state: object
  episode_return: jax.Array   # running undiscounted return of the current episode
  episode_length: jax.Array


class EpisodeStats(Wrapper):
  """Tracks episode returns: info["episode_return"/"episode_length"] at episode ends.

  The values in info are those of the episode that just ended (meaningful
  where info["episode_done"] is true, zero elsewhere).
  """

  def reset(self, key, params):
    obs, state = self.env.reset(key, params)
    return obs, StatsState(state, jnp.float32(0.0), jnp.int32(0))

  def step(self, key, state, action, params, **kwargs):
    obs, env_state, reward, terminated, truncated, info = self.env.step(
        key, state.env_state, action, params, **kwargs)
    done = terminated | truncated
    ret = state.episode_return + reward
    length = state.episode_length + 1
    info = {**info, "episode_done": done,
            "episode_return": jnp.where(done, ret, 0.0),
            "episode_length": jnp.where(done, length, 0)}
    new = StatsState(env_state, jnp.where(done, 0.0, ret), jnp.where(done, 0, length))
    return obs, new, reward, terminated, truncated, info
