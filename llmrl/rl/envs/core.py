"""The functional environment API every llmrl RL environment implements.

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

Environments are stateless Python objects; all state lives in the `state`
pytree, so `reset`/`step` can be jitted, `vmap`ped over environments and
`lax.scan`ned over time. `terminated` means the episode reached a terminal
state (no bootstrapping past it); `truncated` means it was cut by a time limit
(the next state still has value). `step` does not reset: wrap with
`wrappers.AutoReset` for that (which also reports the pre-reset observation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Discrete:
  """Actions or observations in {0, ..., n - 1}."""
  n: int = struct.field(pytree_node=False)
  shape: tuple = struct.field(pytree_node=False, default=())
  dtype: Any = struct.field(pytree_node=False, default=jnp.int32)


@struct.dataclass
class Box:
  """Real vectors in [low, high] of the given shape."""
  low: Any
  high: Any
  shape: tuple = struct.field(pytree_node=False, default=())
  dtype: Any = struct.field(pytree_node=False, default=jnp.float32)


class Environment:
  """Base class: subclasses define default_params, reset, step and the spaces."""

  name: str = "env"

  @property
  def default_params(self) -> Any:
    raise NotImplementedError

  def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
    raise NotImplementedError

  def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any):
    """-> (obs, state, reward, terminated, truncated, info)."""
    raise NotImplementedError

  def observation_space(self, params: Any) -> Discrete | Box:
    raise NotImplementedError

  def action_space(self, params: Any) -> Discrete | Box:
    raise NotImplementedError


def is_discrete(space) -> bool:
  """True for a Discrete space (ours or gymnax's)."""
  return hasattr(space, "n") and not hasattr(space, "low")


def flat_obs_dim(space) -> int:
  """Size of a flattened observation (Discrete observations are one-hot encoded)."""
  if is_discrete(space):
    return int(space.n)
  size = 1
  for d in space.shape:
    size *= int(d)
  return size
