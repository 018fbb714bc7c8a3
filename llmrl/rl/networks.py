"""Flax networks for the RL algorithms: MLP actor-critic and Q-networks.

Orthogonal initialisation as in the PPO implementation details (hidden layers
gain sqrt(2), policy head 0.01, value head 1). Discrete observations (e.g.
FrozenLake cells) are one-hot encoded first.

The orthogonal initialiser is our own Gram-Schmidt (`orthogonal`), not
flax's: flax's calls LAPACK's QR, and with jax 0.10.2 on CPU a LAPACK call
inside the same jitted, vmapped program as the training scans deadlocks the
XLA runtime (all threads idle in block_until_ready; reproduced with 3 seeds,
see BUILD_NOTES.md). Matmul-only initialisation avoids it.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llmrl.rl.distributions import Categorical, DiagGaussian

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish, "gelu": nn.gelu}


def orthogonal(scale: float = 1.0):
  """A Haar-random orthogonal (semi-orthogonal) kernel initialiser without LAPACK.

  Classical Gram-Schmidt applied twice ("CGS2", numerically as good as
  Householder QR for these sizes) to a Gaussian matrix; the positive-diagonal
  R convention makes Q Haar-distributed, like flax's QR-with-sign-fix.
  """

  def init(key, shape, dtype=jnp.float32):
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    n, k = max(rows, cols), min(rows, cols)
    a = jax.random.normal(key, (n, k), jnp.float32)

    def column(j, q):
      v = q[:, j]
      for _ in range(2):  # orthogonalise against columns < j, twice
        coef = jnp.where(jnp.arange(k) < j, q.T @ v, 0.0)  # [k]
        v = v - q @ coef
      return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, k, column, a)  # [n, k], orthonormal columns
    if rows < cols:
      q = q.T
    return (scale * q).reshape(shape).astype(dtype)

  return init


def preprocess(obs, num_obs_states: int):
  """Float features [batch, dim] from raw observations (one-hot for discrete ones)."""
  if num_obs_states:
    return nn.one_hot(obs, num_obs_states)
  return obs.reshape(obs.shape[0], -1).astype(jnp.float32)


class MLP(nn.Module):
  hidden: Sequence[int]
  activation: str = "tanh"
  out: int = 1
  out_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    act = ACTIVATIONS[self.activation]
    for h in self.hidden:
      x = act(nn.Dense(h, kernel_init=orthogonal(np.sqrt(2)))(x))
    return nn.Dense(self.out, kernel_init=orthogonal(self.out_scale))(x)


class ActorCritic(nn.Module):
  """Separate policy and value MLPs; returns (distribution, value [batch])."""
  action_dim: int
  discrete: bool = True
  hidden: Sequence[int] = (64, 64)
  activation: str = "tanh"
  num_obs_states: int = 0   # > 0: observations are indices to one-hot

  def setup(self):
    self.actor = MLP(self.hidden, self.activation, self.action_dim, 0.01)
    self.critic = MLP(self.hidden, self.activation, 1, 1.0)
    if not self.discrete:
      self.log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))

  def policy(self, obs):
    out = self.actor(preprocess(obs, self.num_obs_states))
    if self.discrete:
      return Categorical.from_logits(out)
    return DiagGaussian(out, jnp.broadcast_to(self.log_std, out.shape))

  def value(self, obs):
    return self.critic(preprocess(obs, self.num_obs_states))[:, 0]

  def __call__(self, obs):
    return self.policy(obs), self.value(obs)


class QNetwork(nn.Module):
  """Q-values [batch, num_actions]."""
  num_actions: int
  hidden: Sequence[int] = (64, 64)
  activation: str = "relu"
  num_obs_states: int = 0

  @nn.compact
  def __call__(self, obs):
    return MLP(self.hidden, self.activation, self.num_actions)(
        preprocess(obs, self.num_obs_states))
