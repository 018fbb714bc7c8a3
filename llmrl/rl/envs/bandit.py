"""A k-armed Gaussian bandit: one-step episodes, reward ~ N(mean[arm], std^2).

The observation is a constant zero vector of size 1 (there is a single state).
The default arm means are fixed (not random per seed) so results are comparable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from llmrl.rl.envs.core import Box, Discrete, Environment


@struct.dataclass
class BanditParams:
  means: jax.Array = struct.field(
      default_factory=lambda: jnp.array([0.1, 0.5, -0.2, 0.9, 0.3, 0.0, 0.7, -0.5, 0.2, 0.4]))
  std: float = 1.0


class Bandit(Environment):
  """Pull one of k arms; the episode ends after one pull."""

  name = "Bandit-v0"

  @property
  def default_params(self) -> BanditParams:
    return BanditParams()

  def reset(self, key, params):
    del key
    return jnp.zeros((1,), jnp.float32), jnp.int32(0)

  def step(self, key, state, action, params):
    reward = params.means[action] + params.std * jax.random.normal(key)
    obs = jnp.zeros((1,), jnp.float32)
    return obs, state, reward, jnp.bool_(True), jnp.bool_(False), {}

  def observation_space(self, params):
    return Box(jnp.zeros(1), jnp.zeros(1), (1,))

  def action_space(self, params):
    return Discrete(int(params.means.shape[0]))
