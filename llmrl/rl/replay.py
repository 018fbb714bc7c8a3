"""A fixed-capacity circular replay buffer held in JAX arrays (jittable, vmappable)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ReplayBuffer:
  data: Any          # pytree of [capacity, ...] arrays
  pos: jax.Array     # next write index
  size: jax.Array    # number of valid rows


def init_buffer(example: Any, capacity: int) -> ReplayBuffer:
  """An empty buffer for transitions shaped like `example` (one transition)."""
  data = jax.tree.map(lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.asarray(x).dtype),
                      example)
  return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def add_batch(buf: ReplayBuffer, batch: Any) -> ReplayBuffer:
  """Appends a batch of transitions (leaves [n, ...]), overwriting the oldest."""
  n = jax.tree.leaves(batch)[0].shape[0]
  capacity = jax.tree.leaves(buf.data)[0].shape[0]
  idx = (buf.pos + jnp.arange(n)) % capacity
  data = jax.tree.map(lambda d, x: d.at[idx].set(x), buf.data, batch)
  return ReplayBuffer(data, (buf.pos + n) % capacity, jnp.minimum(buf.size + n, capacity))


def sample(buf: ReplayBuffer, key: jax.Array, batch_size: int) -> Any:
  """A uniform sample (with replacement) of `batch_size` stored transitions."""
  idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1))
  return jax.tree.map(lambda d: d[idx], buf.data)
