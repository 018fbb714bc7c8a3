"""Running mean/variance of observations (for the observation-normalisation option)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
  mean: jax.Array    # [*obs_shape]
  var: jax.Array     # [*obs_shape]
  count: jax.Array   # scalar


def init_stats(shape) -> RunningStats:
  return RunningStats(jnp.zeros(shape), jnp.ones(shape), jnp.float32(1e-4))


def update_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
  """Merges a batch [n, *obs_shape] into the stats (Chan et al.'s parallel update)."""
  b_mean, b_var = jnp.mean(batch, 0), jnp.var(batch, 0)
  n = jnp.float32(batch.shape[0])
  total = stats.count + n
  delta = b_mean - stats.mean
  mean = stats.mean + delta * n / total
  m2 = stats.var * stats.count + b_var * n + delta ** 2 * stats.count * n / total
  return RunningStats(mean, m2 / total, total)


def normalize(stats: RunningStats, x: jax.Array, clip: float = 10.0) -> jax.Array:
  return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)
