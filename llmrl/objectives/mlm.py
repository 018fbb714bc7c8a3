"""BERT pretraining objectives: masked-LM masking (numpy) and the MLM + NSP loss (JAX).

Masking runs in the data pipeline on token ids, deterministically from a
numpy Generator (Devlin et al. 2019, section 3.1 and appendix A.1):

  * of the tokens that are not special (pad, bos/[CLS], eos/[SEP], unk,
    <mask>, the <extra_id_N> sentinels, chat markers: `special_ids(tok)`),
    round(15%) per row are selected (at least one when the row has any);
  * a selected token becomes <mask> with probability 80%, a random
    non-special token with 10%, and stays unchanged with 10%;
  * targets are the original ids at the selected positions (weight 1),
    pad (weight 0) elsewhere.

llmrl's tokenizer has no [CLS]/[SEP]; BERT inputs use bos (2) as [CLS] and
eos (1) as [SEP]: `bos A eos B eos`.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np


def special_ids(tok) -> tuple[int, ...]:
  """Ids that are never masked nor used as random replacements (llmrl Tokenizer)."""
  ids = {tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id, tok.mask_id}
  ids.update(tok.sentinel_ids)
  ids.update(tok.role_ids.values())
  return tuple(sorted(i for i in ids if i is not None))


def mask_tokens(
  ids,
  rng: np.random.Generator,
  *,
  vocab_size: int,
  mask_id: int,
  special: Iterable[int],
  mask_rate: float = 0.15,
  mask_token_rate: float = 0.8,
  random_token_rate: float = 0.1,
  pad_id: int = 0,
):
  """BERT masking of int ids [..., length] -> (inputs, targets, weights), same shape.

  inputs: ids with the selected tokens replaced; targets: the original ids at
  selected positions, pad_id elsewhere; weights float32: 1 at selected positions.
  The counts per row are exact (round(mask_rate * non-special tokens));
  which tokens, and what they become, is drawn from `rng`.
  """
  ids = np.asarray(ids)
  if not 0.0 < mask_rate < 1.0 or mask_token_rate + random_token_rate > 1.0:
    raise ValueError(
      f"mask_rate={mask_rate} must be in (0, 1) and mask_token_rate + random_token_rate "
      f"= {mask_token_rate + random_token_rate} at most 1"
    )
  is_special = np.zeros(vocab_size, bool)
  is_special[list(special)] = True
  regular = np.flatnonzero(~is_special)  # ids a random replacement may take
  candidates = ~is_special[ids]  # [..., l]
  n = candidates.sum(-1, keepdims=True)  # [..., 1]
  k = np.where(n > 0, np.maximum(1, np.floor(n * mask_rate + 0.5)), 0)  # [..., 1]
  scores = np.where(candidates, rng.random(ids.shape), 2.0)  # non-candidates sort last
  ranks = np.argsort(np.argsort(scores, axis=-1, kind="stable"), axis=-1, kind="stable")
  selected = ranks < k  # [..., l]
  u = rng.random(ids.shape)
  random_ids = regular[rng.integers(0, len(regular), ids.shape)]
  inputs = np.where(selected & (u < mask_token_rate), mask_id, ids)
  use_random = selected & (u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)
  inputs = np.where(use_random, random_ids, inputs)
  targets = np.where(selected, ids, pad_id)
  return inputs.astype(ids.dtype), targets.astype(ids.dtype), selected.astype(np.float32)


def _token_nll(logits, targets):
  """logits [..., vocab], targets [...] -> (nll, correct) float32 [...]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return log_z - target_logit, correct


def bert_pretraining_loss(
  mlm_logits, nsp_logits, targets, weights, nsp_labels, example_weights=None
):
  """MLM + NSP loss in the engine's (sum, (weight, sums)) form; weight = examples.

  mlm_logits [batch, length, vocab], targets/weights [batch, length] (from
  mask_tokens), nsp_logits [batch, 2], nsp_labels [batch] (0 = B follows A,
  1 = B is random). Per example: mean MLM cross-entropy over its masked
  tokens + NSP cross-entropy, so the step's loss is mean MLM + mean NSP (as
  transformers' BertForPreTraining; MLM averaged per example, which equals
  the per-token mean when every example masks the same number of tokens).
  Sums: mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy (per-example means
  after the engine's division).
  """
  weights = weights.astype(jnp.float32)
  ex = jnp.ones(nsp_labels.shape, jnp.float32) if example_weights is None else example_weights
  nll, correct = _token_nll(mlm_logits, targets)  # [b, l]
  count = jnp.maximum(weights.sum(-1), 1.0)  # [b]
  mlm = (nll * weights).sum(-1) / count  # [b]
  mlm_acc = (correct * weights).sum(-1) / count
  nsp, nsp_correct = _token_nll(nsp_logits, nsp_labels)  # [b]
  sums = {
    "mlm_loss": jnp.sum(mlm * ex),
    "mlm_accuracy": jnp.sum(mlm_acc * ex),
    "nsp_loss": jnp.sum(nsp * ex),
    "nsp_accuracy": jnp.sum(nsp_correct * ex),
  }
  return jnp.sum((mlm + nsp) * ex), (jnp.sum(ex), sums)


def mlm_loss(logits, targets, weights):
  """Masked-LM loss alone (no NSP): summed token cross-entropy, weight = masked tokens."""
  nll, correct = _token_nll(logits, targets)
  weights = weights.astype(jnp.float32)
  sums = {"nll": jnp.sum(nll * weights), "accuracy": jnp.sum(correct * weights)}
  return jnp.sum(nll * weights), (jnp.sum(weights), sums)
