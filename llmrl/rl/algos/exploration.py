"""Epsilon-greedy action selection and linear schedules for the value-based methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def linear_schedule(start: float, end: float, duration: float, t: jax.Array) -> jax.Array:
  """start -> end linearly over `duration` steps, then constant."""
  frac = jnp.clip(t / jnp.maximum(duration, 1.0), 0.0, 1.0)
  return start + frac * (end - start)


def greedy(q: jax.Array, key: jax.Array) -> jax.Array:
  """argmax over the last axis with ties broken uniformly at random; q [..., A]."""
  noise = jax.random.uniform(key, q.shape)
  return jnp.argmax(jnp.where(q >= jnp.max(q, -1, keepdims=True), noise, -1.0), -1)


def epsilon_greedy(q: jax.Array, key: jax.Array, epsilon: jax.Array) -> jax.Array:
  """A random action with probability epsilon, else a greedy one; q [batch, A]."""
  k_greedy, k_explore, k_random = jax.random.split(key, 3)
  explore = jax.random.uniform(k_explore, q.shape[:-1]) < epsilon
  random = jax.random.randint(k_random, q.shape[:-1], 0, q.shape[-1])
  return jnp.where(explore, random, greedy(q, k_greedy))
