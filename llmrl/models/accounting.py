"""Parameter and FLOP accounting for GPT, BERT and T5 models (for MFU and scaling laws).

FLOPs follow Kaplan et al. (2020, Table 1): 2 FLOPs per weight per token
(multiply + add), plus an attention term; training is 3x the forward pass.
The attention term counts both attention matmuls, the q.k scores and the
probability-weighted sum of values, 2 * context * d_attn FLOPs each per token
and layer (4 * layers * context * d_attn forward), as Chinchilla (Hoffmann et
al. 2022, Appendix F) and PaLM's MFU (6N + 12 * L * H * Q * T) do; Kaplan's
table counts only the scores. Norms, softmax and other elementwise work are
not counted. `tests/test_models_hlo_matmuls.py` checks these formulas against
the dots of compiled training steps.
"""

import jax
import numpy as np
from flax import linen as nn

from llmrl.models.bert import BertConfig
from llmrl.models.gpt import GPTConfig
from llmrl.models.moe import ffn_params, moe_params
from llmrl.models.t5 import T5Config


def _ffn_stack(moe, num_layers: int, d_model: int, d_ff: int, kind: str, bias: bool):
  """(total, active) feed-forward parameters of `num_layers` blocks, MoE blocks included.

  A MoE block holds a router [d_model, E] and E experts; only the router and
  experts_per_token experts are active per token (llmrl.models.moe).
  """
  dense = ffn_params(d_model, d_ff, kind, bias)
  if moe is None:
    return num_layers * dense, num_layers * dense
  n_moe = moe.num_moe_layers(num_layers)
  total, active = moe_params(moe, d_model, d_ff, kind, bias)
  n_dense = num_layers - n_moe
  return n_dense * dense + n_moe * total, n_dense * dense + n_moe * active


def count_params(params) -> int:
  """Number of scalars in a parameter pytree (boxed or unboxed)."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params))))


def count_params_from_config(cfg: GPTConfig | BertConfig | T5Config) -> dict:
  """Analytic parameter counts of `GPT(cfg)`, without building it.

  BertConfig and T5Config are dispatched to `bert_param_counts` and
  `t5_param_counts` (other keys, same `total` and `non_embedding`).

  Returns a dict of ints:
    total:              every parameter.
    token_embedding:    vocab_size * d_model.
    position_embedding: max_len * d_model for learned positions, else 0.
    lm_head:            d_model * vocab_size when embeddings are untied, else 0.
    non_embedding:      total minus the three above: Kaplan et al.'s N
                        (attention, MLP and norm parameters).
    active, active_non_embedding: the same counting only the parameters one
                        token uses: in MoE blocks the router and
                        experts_per_token experts (= total when dense).
  """
  if isinstance(cfg, BertConfig):
    return bert_param_counts(cfg)
  if isinstance(cfg, T5Config):
    return t5_param_counts(cfg)
  d, h, kvh, dh, ff = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.d_head, cfg.d_ff
  bias = cfg.has_bias
  attn = d * h * dh + 2 * d * kvh * dh + h * dh * d  # q, k, v, out kernels
  if bias:
    attn += h * dh + 2 * kvh * dh + d
  mlp, mlp_active = _ffn_stack(cfg.moe, cfg.num_layers, d, ff, cfg.mlp_type, bias)
  norm = d * (2 if cfg.norm_type == "layernorm" and bias else 1)
  per_layer = attn + 2 * norm
  token = cfg.vocab_size * d
  position = cfg.max_len * d if cfg.position_type == "learned" else 0
  lm_head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
  non_embedding = cfg.num_layers * per_layer + norm + mlp
  active_non_embedding = non_embedding - mlp + mlp_active
  return dict(
    total=non_embedding + token + position + lm_head,
    non_embedding=non_embedding,
    token_embedding=token,
    position_embedding=position,
    lm_head=lm_head,
    active=active_non_embedding + token + position + lm_head,
    active_non_embedding=active_non_embedding,
  )


def flops_per_token(cfg: GPTConfig | BertConfig, seq_len: int, training: bool = True) -> float:
  """Matmul FLOPs per token for a sequence of `seq_len` tokens.

  BertConfig: see `bert_flops_per_token`; T5Config has two lengths, use
  `t5_flops_per_example`.

  Forward (Kaplan et al. 2020, Table 1, with both attention matmuls and the output logits):
      C_fwd = 2 * N + 4 * num_layers * seq_len * d_attn + 2 * d_model * vocab_size
  where N = count_params_from_config(cfg)["active_non_embedding"] (the
  non-embedding parameters a token uses; MoE dispatch/combine are not counted) and
  d_attn = num_heads * head_dim. The middle term counts the q.k scores and
  the attention-weighted sum of values, 2 * seq_len * d_attn each, over the full
  context (no discount for the causal mask). Training (forward + backward) is
  3 * C_fwd:
      6 * N + 12 * num_layers * seq_len * d_attn + 6 * d_model * vocab_size.
  Norms, softmax and other elementwise work are not counted.
  """
  if isinstance(cfg, BertConfig):
    return bert_flops_per_token(cfg, seq_len, training)
  if isinstance(cfg, T5Config):
    raise TypeError("T5 has encoder and decoder lengths: use t5_flops_per_example(cfg, enc, dec)")
  n = count_params_from_config(cfg)["active_non_embedding"]
  forward = 2 * n + 4 * cfg.num_layers * seq_len * cfg.d_attn + 2 * cfg.d_model * cfg.vocab_size
  return float(3 * forward if training else forward)


def bert_param_counts(cfg: BertConfig) -> dict:
  """Analytic parameter counts of `Bert(cfg)` (as transformers' num_parameters()).

  With d = d_model, f = d_ff, V = vocab_size:
    embeddings: V*d (token) + max_len*d (position) + type_vocab_size*d (type) + 2d (LayerNorm)
    per block:  4d^2 + 4d (attention q, k, v, out with biases) + 2df + f + d (MLP)
                + 4d (two LayerNorms)
    pooler d^2 + d; MLM head d^2 + d + 2d + V (transform, LayerNorm, output
    bias; the decoder is the tied token embedding); NSP 2d + 2; classifier
    (d + 1) * num_labels.
  Keys: total, non_embedding (total minus the three embedding tables),
  token_embedding, position_embedding, type_embedding, blocks (all blocks),
  heads (pooler + MLM + NSP + classifier); active, active_blocks: counting
  only the router and experts_per_token experts of MoE blocks.
  """
  d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
  mlp, mlp_active = _ffn_stack(cfg.moe, cfg.num_layers, d, f, cfg.activation, True)
  blocks = cfg.num_layers * (4 * d * d + 4 * d + 4 * d) + mlp
  heads = (d * d + d) * cfg.pooler + (d * d + 3 * d + v) * cfg.mlm_head
  heads += (2 * d + 2) * cfg.nsp_head + (d + 1) * cfg.num_labels
  token, position, types = v * d, cfg.max_len * d, cfg.type_vocab_size * d
  total = token + position + types + 2 * d + blocks + heads
  return dict(
    total=total,
    non_embedding=total - token - position - types,
    token_embedding=token,
    position_embedding=position,
    type_embedding=types,
    blocks=blocks,
    heads=heads,
    active=total - mlp + mlp_active,
    active_blocks=blocks - mlp + mlp_active,
  )


def bert_flops_per_token(cfg: BertConfig, seq_len: int, training: bool = True) -> float:
  """Matmul FLOPs per token of BERT on `seq_len`-token inputs.

  Forward: C_fwd = 2 * N_blocks (active) + 4 * num_layers * seq_len * d_model
  (scores and weighted values, bidirectional over the whole input) + 2 * (d_model^2 +
  d_model * vocab_size) for the MLM head when present (it is applied at every
  position). Pooler/NSP/classifier work is per example and not counted.
  Training: 3 * C_fwd.
  """
  n = bert_param_counts(cfg)["active_blocks"]
  forward = 2 * n + 4 * cfg.num_layers * seq_len * cfg.d_model
  if cfg.mlm_head:
    forward += 2 * (cfg.d_model**2 + cfg.d_model * cfg.vocab_size)
  return float(3 * forward if training else forward)


def _t5_parts(cfg: T5Config) -> tuple:
  """(attention, mlp) parameters of one T5 attention layer and one MLP (no biases)."""
  return 4 * cfg.d_model * cfg.d_attn, ffn_params(cfg.d_model, cfg.d_ff, cfg.mlp_type, False)


def t5_param_counts(cfg: T5Config) -> dict:
  """Analytic parameter counts of `T5(cfg)` (as transformers' num_parameters()).

  With d = d_model, i = num_heads * head_dim, f = d_ff (gated MLPs have two
  input matrices), B = relative_buckets, h = num_heads:
    encoder block: 4di (q, k, v, o) + (1 or 2)df + fd + 2d (RMSNorm scales)
    decoder block: 8di (self + cross attention) + MLP + 3d
    per stack: B*h relative position table + d final norm
    shared embedding V*d; lm_head d*V when untied.
  Keys: total, non_embedding (total minus shared embedding and lm_head),
  token_embedding, lm_head, encoder, decoder; active, active_encoder,
  active_decoder: counting only the router and experts_per_token experts of
  MoE blocks.
  """
  d = cfg.d_model
  attn, _ = _t5_parts(cfg)
  table = cfg.relative_buckets * cfg.num_heads
  stack = lambda n: _ffn_stack(cfg.moe, n, d, cfg.d_ff, cfg.mlp_type, False)  # noqa: E731
  enc_mlp, enc_active = stack(cfg.num_layers)
  dec_mlp, dec_active = stack(cfg.decoder_layers)
  encoder = cfg.num_layers * (attn + 2 * d) + enc_mlp + table + d
  decoder = cfg.decoder_layers * (2 * attn + 3 * d) + dec_mlp + table + d
  token = cfg.vocab_size * d
  lm_head = 0 if cfg.tied else d * cfg.vocab_size
  active_encoder = encoder - enc_mlp + enc_active
  active_decoder = decoder - dec_mlp + dec_active
  return dict(
    total=encoder + decoder + token + lm_head,
    non_embedding=encoder + decoder,
    token_embedding=token,
    lm_head=lm_head,
    encoder=encoder,
    decoder=decoder,
    active=active_encoder + active_decoder + token + lm_head,
    active_encoder=active_encoder,
    active_decoder=active_decoder,
  )


def t5_flops_per_example(cfg: T5Config, enc_len: int, dec_len: int, training: bool = True) -> float:
  """Matmul FLOPs of T5 on one example with `enc_len` input and `dec_len` target tokens.

  Forward, with N_enc / N_dec the encoder / decoder active parameters (norms and
  position tables included, as in Kaplan's N) and N_x = 2 * d_model * d_attn
  * decoder_layers the cross-attention key/value projections, which run over
  the encoder output:
      C_fwd = 2 * N_enc * enc_len + 2 * N_x * enc_len + 2 * (N_dec - N_x) * dec_len
            + 4 * layers_enc * enc_len^2 * d_attn            (encoder self-attention)
            + 4 * layers_dec * dec_len^2 * d_attn            (decoder self-attention)
            + 4 * layers_dec * dec_len * enc_len * d_attn    (cross-attention)
            + 2 * d_model * vocab_size * dec_len             (output logits)
  Training: 3 * C_fwd.
  """
  counts = t5_param_counts(cfg)
  n_x = 2 * cfg.d_model * cfg.d_attn * cfg.decoder_layers
  a = cfg.d_attn
  forward = (
    2 * counts["active_encoder"] * enc_len
    + 2 * n_x * enc_len
    + 2 * (counts["active_decoder"] - n_x) * dec_len
    + 4 * cfg.num_layers * enc_len**2 * a
    + 4 * cfg.decoder_layers * dec_len**2 * a
    + 4 * cfg.decoder_layers * dec_len * enc_len * a
    + 2 * cfg.d_model * cfg.vocab_size * dec_len
  )
  return float(3 * forward if training else forward)
