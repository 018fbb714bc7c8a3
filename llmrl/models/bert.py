"""Encoder-only transformer (BERT, Devlin et al. 2019) as a pure linen module.

    cfg = BertConfig(vocab_size=1024, max_len=128, num_layers=2, d_model=64,
                     num_heads=4, d_ff=256)
    model = Bert(cfg)
    params = nn.unbox(model.init({"params": key}, jnp.zeros((1, 8), jnp.int32)))["params"]
    logits = model.apply({"params": params}, input_ids, token_type_ids=types,
                         segment_ids=attention_mask)                 # [b, l, vocab] (MLM)
    mlm, nsp = model.apply({"params": params}, input_ids, method=Bert.pretrain)  # + [b, 2]
    hidden = model.apply({"params": params}, input_ids, method=Bert.encode)      # [b, l, embed]
    pooled = model.apply({"params": params}, input_ids, method=Bert.pooled)      # [b, embed]
    labels = model.apply({"params": params}, input_ids, method=Bert.classify)    # [b, num_labels]

Inputs: `input_ids` [b, l]; `token_type_ids` [b, l] (BERT's sentence A = 0 /
B = 1; default 0); `segment_ids` [b, l] is the attention padding mask (an HF
attention_mask works as is: 1 = token, 0 = padding; several ids > 0 pack
several sequences into a row); `positions` [b, l] default to arange.

Architecture (matches transformers' BertForPreTraining): word + learned
position + token-type embeddings, LayerNorm; post-LayerNorm blocks
x = LN(x + Attn(x)), x = LN(x + MLP(x)) with biases everywhere and exact (erf)
GELU; pooled output tanh(W h_[CLS] + b); MLM head: dense + GELU + LayerNorm,
then the word embeddings (tied) plus an output bias; NSP head: a 2-way linear
layer on the pooled output (label 0 = B follows A, 1 = B is random, as in
transformers); an optional sequence-classification head on the pooled output.
Which heads exist is configured (`mlm_head`, `nsp_head`, `pooler`,
`num_labels`), so BertModel / BertForMaskedLM / BertForPreTraining /
BertForSequenceClassification checkpoints all load (llmrl.interop.hf).
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from llmrl.models.attention import ATTENTION_IMPLS, Attention
from llmrl.models.gpt import _REMAT_POLICIES, REMAT
from llmrl.models.layers import _ACTIVATIONS, MLP, Dense, Embed, LayerNorm, PositionEmbed
from llmrl.models.moe import MoE, MoEConfig

BERT_ACTIVATIONS = ("gelu_exact", "gelu", "relu")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyperparameters of a BERT encoder and its heads (frozen; use `.replace`)."""

  # Vocabulary size (rows of the word embedding, columns of the MLM logits).
  vocab_size: int = 256
  # Rows of the learned position table (longest input).
  max_len: int = 128
  # Token types (sentence A / B).
  type_vocab_size: int = 2
  # Number of transformer blocks.
  num_layers: int = 2
  # Hidden width.
  d_model: int = 64
  # Attention heads (each d_model // num_heads wide).
  num_heads: int = 4
  # Hidden width of the MLP.
  d_ff: int = 256
  # MLP and MLM-transform activation: "gelu_exact" (erf; HF "gelu") | "gelu" (tanh) | "relu".
  activation: str = "gelu_exact"
  # LayerNorm epsilon (BERT: 1e-12).
  norm_eps: float = 1e-12
  # Dropout on embeddings, residual branches and the pooled output (not attention probs).
  dropout_rate: float = 0.0
  # Heads: masked-LM, next-sentence prediction, the [CLS] pooler, and a
  # sequence classifier with num_labels outputs (0 = none).
  mlm_head: bool = True
  nsp_head: bool = True
  pooler: bool = True
  num_labels: int = 0
  # "plain" | "blockwise" | "jax" (see llmrl.models.attention).
  attention_impl: str = "plain"
  attention_block_size: int = 128
  # Stddev of the normal initialiser (BERT: 0.02).
  init_std: float = 0.02
  # Compute and parameter dtypes (strings like "bfloat16" are accepted).
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  # Rematerialisation of each block: "none" | "full" | "dots".
  remat: str = "none"
  # Mixture-of-experts feed-forward blocks (None = dense MLPs; see llmrl.models.moe).
  moe: Optional[MoEConfig] = None

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    self._validate()

  def _validate(self):
    def bad(msg):
      raise ValueError(f"BertConfig: {msg}")

    for field, allowed in (
      ("activation", BERT_ACTIVATIONS),
      ("attention_impl", ATTENTION_IMPLS),
      ("remat", REMAT),
    ):
      if getattr(self, field) not in allowed:
        bad(f"{field}={getattr(self, field)!r} is not one of {allowed}")
    for field in ("vocab_size", "max_len", "type_vocab_size", "num_layers", "d_model"):
      if getattr(self, field) <= 0:
        bad(f"{field}={getattr(self, field)} must be positive")
    for field in ("num_heads", "d_ff", "attention_block_size"):
      if getattr(self, field) <= 0:
        bad(f"{field}={getattr(self, field)} must be positive")
    if self.d_model % self.num_heads:
      bad(f"num_heads={self.num_heads} does not divide d_model={self.d_model}")
    if self.num_labels < 0:
      bad(f"num_labels={self.num_labels} must be >= 0")
    if (self.nsp_head or self.num_labels) and not self.pooler:
      bad("nsp_head / num_labels need the pooler; set pooler=True")
    if self.moe is not None and self.moe.every > self.num_layers:
      bad(f"moe.every={self.moe.every} > num_layers={self.num_layers}: no block would be MoE")

  def replace(self, **changes) -> "BertConfig":
    """A copy with some fields changed."""
    return dataclasses.replace(self, **changes)

  @property
  def d_head(self) -> int:
    return self.d_model // self.num_heads


class BertBlock(nn.Module):
  """Post-LayerNorm block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

  config: BertConfig
  use_moe: bool = False  # routed experts (config.moe) in place of the MLP

  @nn.compact
  def __call__(self, x, positions, segment_ids, deterministic: bool):
    """x [batch, length, embed] -> [batch, length, embed]."""
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate)
    h = Attention(
      num_heads=cfg.num_heads,
      num_kv_heads=cfg.num_heads,
      head_dim=cfg.d_head,
      max_len=cfg.max_len,
      use_bias=True,
      causal=False,
      impl=cfg.attention_impl,
      block_size=cfg.attention_block_size,
      init_std=cfg.init_std,
      out_init_std=cfg.init_std,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      name="attn",
    )(x, positions, segment_ids)
    norm = lambda name: LayerNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype, name=name)  # noqa: E731
    x = norm("attn_norm")(x + drop(h, deterministic=deterministic))
    ffn = dict(
      kind=cfg.activation,
      use_bias=True,
      init_std=cfg.init_std,
      out_init_std=cfg.init_std,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
    )
    if self.use_moe:
      mask = None if segment_ids is None else segment_ids != 0
      h = MoE(cfg.moe, d_ff=cfg.moe.d_ff or cfg.d_ff, name="moe", **ffn)(x, mask, deterministic)
    else:
      h = MLP(d_ff=cfg.d_ff, name="mlp", **ffn)(x)
    x = norm("mlp_norm")(x + drop(h, deterministic=deterministic))
    return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class MLMHead(nn.Module):
  """transform (dense + act + LayerNorm), then tied word embeddings + bias -> logits."""

  config: BertConfig

  @nn.compact
  def __call__(self, hidden, embed: Embed):
    """hidden [batch, length, embed] -> logits [batch, length, vocab]."""
    cfg = self.config
    h = Dense(
      cfg.d_model,
      ("embed", None),
      use_bias=True,
      init_std=cfg.init_std,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      name="transform",
    )(hidden)  # [b, l, embed]
    h = _ACTIVATIONS[cfg.activation](h)
    h = LayerNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype, name="norm")(h)
    bias = self.param(
      "bias",
      nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
      (cfg.vocab_size,),
      cfg.param_dtype,
    )
    logits = embed.attend(h) + bias.astype(cfg.dtype)  # [b, l, vocab]
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))


class Bert(nn.Module):
  """BERT encoder with configurable heads (see the module docstring).

  Parameter tree: embed, pos_embed, type_embed (/embedding), embed_norm,
  layers_{i}/{attn/{query,key,value,out}, attn_norm, mlp/{wi,wo}, mlp_norm},
  pooler, mlm/{transform, norm, bias}, nsp, classifier. MoE blocks (config.moe)
  hold moe/{router, wi, bi, wo, bo} instead of mlp.
  """

  config: BertConfig

  def setup(self):
    cfg = self.config
    std, dt, pdt = cfg.init_std, cfg.dtype, cfg.param_dtype
    self.embed = Embed(cfg.vocab_size, cfg.d_model, std, dt, pdt)
    self.pos_embed = PositionEmbed(cfg.max_len, cfg.d_model, std, dt, pdt)
    self.type_embed = PositionEmbed(cfg.type_vocab_size, cfg.d_model, std, dt, pdt)
    self.embed_norm = LayerNorm(cfg.norm_eps, True, dt, pdt)
    block = BertBlock
    if cfg.remat != "none":
      block = nn.remat(
        BertBlock, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=True, static_argnums=(4,)
      )
    moe = cfg.moe
    self.layers = [
      block(cfg, use_moe=moe is not None and moe.is_moe_layer(i)) for i in range(cfg.num_layers)
    ]
    self.dropout = nn.Dropout(cfg.dropout_rate)

    def dense(features, name):
      return Dense(features, ("embed", None), use_bias=True, init_std=std, dtype=dt,
                   param_dtype=pdt, name=name)  # fmt: skip

    if cfg.pooler:
      self.pooler_dense = dense(cfg.d_model, "pooler")
    if cfg.mlm_head:
      self.mlm = MLMHead(cfg)
    if cfg.nsp_head:
      self.nsp = dense(2, "nsp")
    if cfg.num_labels:
      self.classifier = dense(cfg.num_labels, "classifier")

  def __call__(
    self, input_ids, token_type_ids=None, segment_ids=None, positions=None, deterministic=True
  ):
    """MLM logits [batch, length, vocab]; hidden states [b, l, embed] if there is no MLM head."""
    hidden = self.encode(input_ids, token_type_ids, segment_ids, positions, deterministic)
    if self.is_initializing() and self.config.pooler:  # create every head's params
      pooled = self.pool(hidden)
      if self.config.nsp_head:
        self.nsp(pooled)
      if self.config.num_labels:
        self.classifier(pooled)
    return self.mlm(hidden, self.embed) if self.config.mlm_head else hidden

  def encode(
    self, input_ids, token_type_ids=None, segment_ids=None, positions=None, deterministic=True
  ):
    """Final hidden states [batch, length, embed] (post-LN, so already normalised)."""
    b, length = input_ids.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((b, length), jnp.int32)
    x = self.embed(input_ids) + self.pos_embed(positions) + self.type_embed(token_type_ids)
    x = self.dropout(self.embed_norm(x), deterministic=deterministic)  # [b, l, embed]
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    for layer in self.layers:
      x = layer(x, positions, segment_ids, deterministic)
    return x

  def pool(self, hidden):
    """hidden [batch, length, embed] -> tanh(dense(hidden[:, 0])) [batch, embed]."""
    if not self.config.pooler:
      raise ValueError("this Bert has no pooler (BertConfig.pooler=False)")
    return jnp.tanh(self.pooler_dense(hidden[:, 0]))  # [b, embed]

  def pooled(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
             deterministic=True):  # fmt: skip
    """Pooled [CLS] output [batch, embed]."""
    hidden = self.encode(input_ids, token_type_ids, segment_ids, positions, deterministic)
    return self.pool(hidden)

  def pretrain(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               deterministic=True):  # fmt: skip
    """(MLM logits [batch, length, vocab], NSP logits [batch, 2]) for MLM + NSP pretraining."""
    cfg = self.config
    if not (cfg.mlm_head and cfg.nsp_head):
      raise ValueError("Bert.pretrain needs mlm_head=True and nsp_head=True")
    hidden = self.encode(input_ids, token_type_ids, segment_ids, positions, deterministic)
    return self.mlm(hidden, self.embed), self.nsp(self.pool(hidden)).astype(jnp.float32)

  def classify(self, input_ids, token_type_ids=None, segment_ids=None, positions=None,
               deterministic=True):  # fmt: skip
    """Sequence-classification logits [batch, num_labels] (dropout, then linear on the pooled output)."""
    if not self.config.num_labels:
      raise ValueError("this Bert has no classifier; set BertConfig.num_labels > 0")
    pooled = self.pooled(input_ids, token_type_ids, segment_ids, positions, deterministic)
    pooled = self.dropout(pooled, deterministic=deterministic)
    return self.classifier(pooled).astype(jnp.float32)  # [b, num_labels]


def init_params(cfg: BertConfig, rng, length: int = 8):
  """Boxed (logically partitioned) params of Bert(cfg), every configured head included."""
  ids = jnp.zeros((1, length), jnp.int32)
  return Bert(cfg).init({"params": rng}, ids)["params"]


def param_shapes(cfg: BertConfig):
  """Unboxed ShapeDtypeStructs of Bert(cfg)'s params (nothing materialised)."""
  return nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
