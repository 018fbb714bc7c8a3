"""Parameter and FLOP accounting for GPT models (for MFU and scaling laws)."""

import jax
import numpy as np
from flax import linen as nn

from llmrl.models.gpt import GPTConfig


def count_params(params) -> int:
  """Number of scalars in a parameter pytree (boxed or unboxed)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))


def count_params_from_config(cfg: GPTConfig) -> dict:
  """Analytic parameter counts of `GPT(cfg)`, without building it.

  Returns a dict of ints:
    total:              every parameter.
    token_embedding:    vocab_size * d_model.
    position_embedding: max_len * d_model for learned positions, else 0.
    lm_head:            d_model * vocab_size when embeddings are untied, else 0.
    non_embedding:      total minus the three above: Kaplan et al.'s N
                        (attention, MLP and norm parameters).
  """
  d, h, kvh, dh, ff = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.d_head, cfg.d_ff
  bias = cfg.has_bias
  attn = d * h * dh + 2 * d * kvh * dh + h * dh * d  # q, k, v, out kernels
  if bias:
    attn += h * dh + 2 * kvh * dh + d
  n_in = 2 if cfg.mlp_type in ("swiglu", "geglu") else 1
  mlp = n_in * d * ff + ff * d
  if bias:
    mlp += n_in * ff + d
  norm = d * (2 if cfg.norm_type == "layernorm" and bias else 1)
  per_layer = attn + mlp + 2 * norm
  token = cfg.vocab_size * d
  position = cfg.max_len * d if cfg.position_type == "learned" else 0
  lm_head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
  non_embedding = cfg.num_layers * per_layer + norm
  return dict(
    total=non_embedding + token + position + lm_head,
    non_embedding=non_embedding,
    token_embedding=token,
    position_embedding=position,
    lm_head=lm_head,
  )


def flops_per_token(cfg: GPTConfig, seq_len: int, training: bool = True) -> float:
  """Matmul FLOPs per token for a sequence of `seq_len` tokens.

  Forward (Kaplan et al. 2020, Table 1, plus the output logits):
      C_fwd = 2 * N + 2 * num_layers * seq_len * d_attn + 2 * d_model * vocab_size
  where N = count_params_from_config(cfg)["non_embedding"] and
  d_attn = num_heads * head_dim. The middle term counts the q.k scores and
  the attention-weighted sum of values over the full context (no discount for
  the causal mask). Training (forward + backward) is 3 * C_fwd:
      6 * N + 6 * num_layers * seq_len * d_attn + 6 * d_model * vocab_size.
  Norms, softmax and other elementwise work are not counted.
  """
  n = count_params_from_config(cfg)["non_embedding"]
  forward = 2 * n + 2 * cfg.num_layers * seq_len * cfg.d_attn + 2 * cfg.d_model * cfg.vocab_size
  return float(3 * forward if training else forward)
