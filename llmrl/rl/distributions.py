"""Action distributions as small pytrees: Categorical (discrete) and DiagGaussian.

Both have sample(key), log_prob(action), entropy(), mode() and kl(other) =
KL(self || other), batched over leading axes. `noise(key, lead)` draws the
randomness of `lead`-many samples at once and `sample_from(noise)` turns one
slice of it into actions (sample_from(noise(key)) has sample(key)'s
distribution): a rollout draws a whole trajectory's noise in one call, since
on CPU every random draw is a small loop (threefry) that costs more than the
tiny networks themselves.
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

  def noise(self, key, lead=()):
    """Gumbel noise [*lead, ..., num_actions] (works on a jax.eval_shape'd instance)."""
    return jax.random.gumbel(key, (*lead, *self.logits.shape), self.logits.dtype)

  def sample_from(self, noise):
    """The Gumbel-max trick: argmax(logits + Gumbel noise) ~ Categorical(logits)."""
    return jnp.argmax(self.logits + noise, axis=-1)

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
    return self.sample_from(jax.random.normal(key, self.mean.shape))

  def noise(self, key, lead=()):
    """Standard normal noise [*lead, ..., action_dim] (works on a jax.eval_shape'd instance)."""
    return jax.random.normal(key, (*lead, *self.mean.shape), self.mean.dtype)

  def sample_from(self, noise):
    return self.mean + jnp.exp(self.log_std) * noise

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
