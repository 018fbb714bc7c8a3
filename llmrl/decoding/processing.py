"""Next-token distributions: EOS suppression, temperature, top-k, top-p (nucleus).

The order follows transformers: `min_new_tokens` suppression first, then
temperature, top-k and top-p. Everything works on float32 logits [b, vocab];
removed tokens get -inf, so `log_softmax` of the result is the truncated,
renormalised distribution that tokens are drawn from (and whose log-prob
RLHF needs). The full-vocab softmax is computed once per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def suppress_eos(logits, eos_ids: tuple, suppress):
  """logits [b, v] with the EOS ids set to -inf where `suppress` (bool scalar) holds."""
  if not eos_ids:
    return logits
  is_eos = jnp.isin(jnp.arange(logits.shape[-1]), jnp.asarray(eos_ids))  # [v]
  return jnp.where(suppress & is_eos, NEG_INF, logits)


def top_k_filter(logits, k: int):
  """Keep the k largest logits per row (ties with the k-th are kept) [b, v]."""
  kth = jax.lax.top_k(logits, k)[0][:, -1:]  # [b, 1]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits, top_p, top_k: int = 0):
  """Keep the smallest set of most likely tokens whose probability reaches top_p [b, v].

  A token is kept when the probability of the tokens strictly more likely
  than it is below top_p (so the most likely token is always kept). With
  top_k > 0 the logits are already top-k filtered and only k are sorted.
  """
  k = top_k if top_k else logits.shape[-1]
  sorted_logits = jax.lax.top_k(logits, k)[0]  # [b, k] descending
  probs = jax.nn.softmax(sorted_logits, axis=-1)  # [b, k]
  before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
  keep = before < top_p  # [b, k], a prefix
  cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # [b, 1]
  return jnp.where(logits < cutoff, NEG_INF, logits)


def sampling_logprobs(logits, *, temperature, top_k: int, top_p, use_top_p: bool):
  """Log-probs [b, v] of the temperature-scaled, top-k / top-p truncated distribution."""
  logits = logits / temperature
  if top_k:
    logits = top_k_filter(logits, top_k)
  if use_top_p:
    logits = top_p_filter(logits, top_p, top_k)
  return jax.nn.log_softmax(logits, axis=-1)


def choose(logprobs, rng):
  """Argmax (rng None) or a sample from log-probs [b, v] -> (tokens [b], their log-probs [b])."""
  if rng is None:
    tokens = jnp.argmax(logprobs, axis=-1)
  else:
    tokens = jax.random.categorical(rng, logprobs, axis=-1)
  tokens = tokens.astype(jnp.int32)
  return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
