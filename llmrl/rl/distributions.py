"""Action distributions as small pytrees: Categorical (discrete) and DiagGaussian.

Both have sample(key), log_prob(action), entropy(), mode() and kl(other) =
KL(self || other), batched over leading axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_LOG_2PI = 1.8378770664093453


@struct.dataclass
class Categorical:
  logits: jax.Array  # [..., num_actions], normalised log-probabilities

  @classmethod
  def from_logits(cls, logits):
    return cls(jax.nn.log_softmax(logits))

  def sample(self, key):
    return jax.random.categorical(key, self.logits)

  def log_prob(self, action):
    # A one-hot product fuses with the softmax (a gather does not, on CPU).
    onehot = jax.nn.one_hot(action, self.logits.shape[-1], dtype=self.logits.dtype)
    return jnp.sum(self.logits * onehot, axis=-1)

  def entropy(self):
    return -jnp.sum(jnp.exp(self.logits) * self.logits, axis=-1)

  def mode(self):
    return jnp.argmax(self.logits, axis=-1)

  def kl(self, other: "Categorical"):
    return jnp.sum(jnp.exp(self.logits) * (self.logits - other.logits), axis=-1)


@struct.dataclass
class DiagGaussian:
  mean: jax.Array     # [..., action_dim]
  log_std: jax.Array  # [..., action_dim] (broadcast)

  def sample(self, key):
    return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape)

  def log_prob(self, action):
    z = (action - self.mean) * jnp.exp(-self.log_std)
    return jnp.sum(-0.5 * z * z - self.log_std - 0.5 * _LOG_2PI, axis=-1)

  def entropy(self):
    return jnp.sum(jnp.broadcast_to(self.log_std + 0.5 * (1.0 + _LOG_2PI),
                                    self.mean.shape), axis=-1)

  def mode(self):
    return self.mean

  def kl(self, other: "DiagGaussian"):
    var_ratio = jnp.exp(2 * (self.log_std - other.log_std))
    diff = (self.mean - other.mean) * jnp.exp(-other.log_std)
    return jnp.sum(0.5 * (var_ratio + diff * diff - 1.0) - (self.log_std - other.log_std),
                   axis=-1)
