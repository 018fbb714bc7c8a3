"""Causal language-model loss with loss weights (masks) and optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                   z_loss: float = 0.0) -> tuple[jax.Array, tuple[jax.Array, dict]]:
  """Summed token cross-entropy, in the engine's (sum, (weight, sums)) form.

  logits: [batch, length, vocab] (any float dtype; computed in float32)
  targets: [batch, length] int ids; weights: [batch, length], 0 = ignore.
  z_loss adds z_loss * log(Z)^2 per token (PaLM), keeping the softmax normaliser
  near 1.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)                       # [batch, length]
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  nll = log_z - target_logit                                      # [batch, length]
  total = nll + z_loss * jnp.square(log_z) if z_loss else nll
  # Target scored highest (ties count as correct): a max, not an argmax, which
  # XLA CPU runs as a slow value-and-index reduction over the vocabulary.
  correct = (target_logit >= jnp.max(logits, -1)).astype(jnp.float32)
  sums = {"nll": jnp.sum(nll * weights), "accuracy": jnp.sum(correct * weights)}
  if z_loss:
    sums["z_loss"] = jnp.sum(z_loss * jnp.square(log_z) * weights)
  return jnp.sum(total * weights), (jnp.sum(weights), sums)
