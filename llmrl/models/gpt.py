"""Decoder-only transformer (GPT-2 and Llama families) as a pure linen module.

    cfg = GPTConfig(vocab_size=256, max_len=64, num_layers=2, d_model=64,
                    num_heads=4, d_ff=256, style="llama")
    model = GPT(cfg)
    params = nn.unbox(model.init({"params": key}, jnp.zeros((1, 8), jnp.int32)))["params"]
    logits = model.apply({"params": params}, input_ids)          # [b, l, vocab]
    logits, hidden = model.apply({"params": params}, input_ids, return_hidden=True)
    hidden = model.apply({"params": params}, input_ids, method=GPT.hidden_states)

Packed sequences: pass `segment_ids` [b, l] (0 = padding) and per-token
`positions`; attention is then block-diagonal causal within segments.
Incremental decoding: `GPT(cfg.replace(decode=True))`, a cache from
`init_cache(cfg, batch)`, and `apply(..., mutable=["cache"])` per chunk.

Layer scan: `scan_layers=True` runs the (identical) blocks with `nn.scan`:
one block is traced and compiled once, its params (and KV cache) stacked on
a leading "layers" axis under params["layers"]. `unscan_params` /
`scan_params` convert between that tree and the layers_{i} tree (HF interop,
LoRA paths and checkpoints of unscanned runs use the latter).
"""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from llmrl.models.attention import ATTENTION_IMPLS, Attention
from llmrl.models.layers import MLP, MLPS, NORMS, Dense, Embed, PositionEmbed, gradient_barrier, make_norm
from llmrl.models.moe import MoE, MoEConfig

STYLES = ("gpt2", "llama")
POSITION_EMBEDDINGS = ("learned", "rope", "none")
REMAT = ("none", "full", "dots")
CACHE_LAYOUTS = ("length_major", "head_major", "beam")
_STYLE_DEFAULTS = {  # norm, mlp, position_embedding, use_bias
  "gpt2": ("layernorm", "gelu", "learned", True),
  "llama": ("rmsnorm", "swiglu", "rope", False),
}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Hyperparameters of a decoder-only transformer (frozen; use `.replace`)."""

  # Vocabulary size (rows of the token embedding and columns of the logits).
  vocab_size: int = 256
  # Longest sequence: learned position table rows and KV-cache length.
  max_len: int = 128
  # Number of transformer blocks.
  num_layers: int = 2
  # Residual stream width.
  d_model: int = 64
  # Query heads.
  num_heads: int = 4
  # Key/value heads: None = num_heads (MHA), 1 = MQA, otherwise GQA.
  num_kv_heads: Optional[int] = None
  # Per-head width: None = d_model // num_heads.
  head_dim: Optional[int] = None
  # Hidden width of the MLP (per branch for gated MLPs).
  d_ff: int = 256
  # "gpt2": learned positions, LayerNorm, GELU(tanh), biases;
  # "llama": RoPE, RMSNorm, SwiGLU, no biases.
  style: str = "gpt2"
  # Overrides of the style's parts (None = the style's choice).
  norm: Optional[str] = None  # "layernorm" | "rmsnorm"
  mlp: Optional[str] = None  # "gelu" (tanh) | "gelu_exact" | "relu" | "swiglu" | "geglu"
  position_embedding: Optional[str] = None  # "learned" | "rope" | "none"
  use_bias: Optional[bool] = None  # biases in attention/MLP projections and LayerNorm
  # RoPE base (theta).
  rope_base: float = 10000.0
  # Epsilon of LayerNorm / RMSNorm.
  norm_eps: float = 1e-5
  # Output logits use the token embedding (no separate lm_head).
  tie_embeddings: bool = True
  # Dropout on embeddings and on each residual branch (not attention probs).
  dropout_rate: float = 0.0
  # "plain" (einsum) | "blockwise" (pure-JAX flash-style) | "jax" (jax.nn.dot_product_attention).
  attention_impl: str = "plain"
  # Key block size of the blockwise kernel.
  attention_block_size: int = 128
  # Stddev of the normal initialiser (residual output projections are
  # further scaled by 1/sqrt(2 * num_layers), as in GPT-2).
  init_std: float = 0.02
  # Compute dtype (e.g. jnp.bfloat16); strings like "bfloat16" are accepted.
  dtype: Any = jnp.float32
  # Parameter storage dtype.
  param_dtype: Any = jnp.float32
  # Rematerialisation of each block: "none" | "full" (save nothing) |
  # "dots" (save weight matmuls, recompute attention and elementwise ops).
  remat: str = "none"
  # Incremental decoding with a KV cache (the "cache" collection).
  decode: bool = False
  # KV cache layout: "length_major" [b, len, kv_heads, head_dim] or "head_major"
  # [b, kv_heads, len, head_dim] (faster on CPU: no per-step cache transposes), or
  # "beam": beam search's never-reordered cache built by llmrl.decoding (see
  # Attention._update_beam_cache; one token per call, not creatable by init).
  cache_layout: str = "length_major"
  # Mixture-of-experts feed-forward blocks (None = dense MLPs everywhere; see llmrl.models.moe).
  moe: Optional[MoEConfig] = None
  # Run the blocks with nn.scan over params stacked on a leading "layers" axis
  # (params["layers"]): one block compiled instead of num_layers. Dense blocks only.
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype))
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype))
    self._validate()

  def _validate(self):
    def bad(msg):
      raise ValueError(f"GPTConfig: {msg}")

    if self.style not in STYLES:
      bad(f"style={self.style!r} is not one of {STYLES}")
    for field, value, allowed in (
      ("norm", self.norm_type, NORMS),
      ("mlp", self.mlp_type, MLPS),
      ("position_embedding", self.position_type, POSITION_EMBEDDINGS),
      ("attention_impl", self.attention_impl, ATTENTION_IMPLS),
      ("remat", self.remat, REMAT),
      ("cache_layout", self.cache_layout, CACHE_LAYOUTS),
    ):
      if value not in allowed:
        bad(f"{field}={value!r} is not one of {allowed}")
    if self.head_dim is None and self.d_model % self.num_heads:
      bad(f"num_heads={self.num_heads} does not divide d_model={self.d_model}; set head_dim")
    if self.num_heads % self.kv_heads:
      bad(f"num_kv_heads={self.kv_heads} does not divide num_heads={self.num_heads}")
    if self.position_type == "rope" and self.d_head % 2:
      bad(f"RoPE needs an even head_dim, got {self.d_head}")
    for field in (
      "vocab_size",
      "max_len",
      "num_layers",
      "d_model",
      "num_heads",
      "d_ff",
      "attention_block_size",
    ):
      if getattr(self, field) <= 0:
        bad(f"{field}={getattr(self, field)} must be positive")
    if self.moe is not None and self.moe.every > self.num_layers:
      bad(f"moe.every={self.moe.every} > num_layers={self.num_layers}: no block would be MoE")
    if self.scan_layers and self.moe is not None:
      bad("scan_layers=True needs identical blocks, but moe makes every moe.every-th block a "
          "mixture of experts; set scan_layers=False or drop moe")

  def replace(self, **changes) -> "GPTConfig":
    """A copy with some fields changed (e.g. `cfg.replace(decode=True)`)."""
    return dataclasses.replace(self, **changes)

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def d_head(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def d_attn(self) -> int:
    """Width of the concatenated query heads (Kaplan's d_attn)."""
    return self.num_heads * self.d_head

  @property
  def norm_type(self) -> str:
    return self.norm or _STYLE_DEFAULTS[self.style][0]

  @property
  def mlp_type(self) -> str:
    return self.mlp or _STYLE_DEFAULTS[self.style][1]

  @property
  def position_type(self) -> str:
    return self.position_embedding or _STYLE_DEFAULTS[self.style][2]

  @property
  def has_bias(self) -> bool:
    return _STYLE_DEFAULTS[self.style][3] if self.use_bias is None else self.use_bias


_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(Norm(x)), then x + MLP(Norm(x))."""

  config: GPTConfig
  use_moe: bool = False  # routed experts (config.moe) in place of the MLP
  scanned: bool = False  # the body of nn.scan: returns (x, None)

  @nn.compact
  def __call__(self, x, positions, segment_ids, deterministic: bool):
    """x [batch, length, embed] -> [batch, length, embed] ((x, None) when scanned)."""
    cfg = self.config
    x = gradient_barrier(x)
    out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
    norm = lambda name: make_norm(
      cfg.norm_type, cfg.norm_eps, cfg.has_bias, cfg.dtype, cfg.param_dtype, name
    )  # noqa: E731
    h = Attention(
      num_heads=cfg.num_heads,
      num_kv_heads=cfg.kv_heads,
      head_dim=cfg.d_head,
      max_len=cfg.max_len,
      use_bias=cfg.has_bias,
      rope_base=cfg.rope_base if cfg.position_type == "rope" else None,
      impl=cfg.attention_impl,
      block_size=cfg.attention_block_size,
      decode=cfg.decode,
      cache_layout=cfg.cache_layout,
      init_std=cfg.init_std,
      out_init_std=out_std,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      name="attn",
    )(norm("attn_norm")(x), positions, segment_ids)
    x = gradient_barrier(x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic))
    ffn = dict(
      kind=cfg.mlp_type,
      use_bias=cfg.has_bias,
      init_std=cfg.init_std,
      out_init_std=out_std,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
    )
    if self.use_moe:
      mask = None if segment_ids is None else segment_ids != 0
      h = MoE(cfg.moe, d_ff=cfg.moe.d_ff or cfg.d_ff, name="moe", **ffn)(
        norm("mlp_norm")(x), mask, deterministic
      )
    else:
      h = MLP(d_ff=cfg.d_ff, name="mlp", **ffn)(norm("mlp_norm")(x))
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    return (x, None) if self.scanned else x


class DecodeIndex(nn.Module):
  """Running token index in decode mode: default positions for the next chunk."""

  @nn.compact
  def __call__(self, batch: int, length: int):
    """-> positions [batch, length] = index + arange(length); advances the index."""
    initialized = self.has_variable("cache", "index")
    index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    start = index.value if initialized else 0
    if initialized:
      index.value = index.value + length
    return jnp.broadcast_to(start + jnp.arange(length), (batch, length))


class GPT(nn.Module):
  """Decoder-only transformer language model.

  Parameter tree: embed/embedding, pos_embed/embedding (learned positions),
  layers_{i}/{attn_norm, attn/{query,key,value,out}, mlp_norm, mlp/{wi | wi_gate, wi_up}, wo},
  final_norm, lm_head/kernel (untied only). With scan_layers: one subtree
  layers/... of the same shape, every leaf stacked [num_layers, ...]. MoE blocks (config.moe) hold
  moe/{router, wi | wi_gate, wi_up, wo, ...} instead of mlp (llmrl.models.moe.MoE).
  """

  config: GPTConfig

  def setup(self):
    cfg = self.config
    self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.dtype, cfg.param_dtype)
    if cfg.position_type == "learned":
      self.pos_embed = PositionEmbed(
        cfg.max_len, cfg.d_model, cfg.init_std, cfg.dtype, cfg.param_dtype
      )
    if cfg.decode:
      self.decode_index = DecodeIndex()
    block = Block
    if cfg.remat != "none":
      # Inside nn.scan the loop already keeps XLA from CSE-ing the recomputation.
      block = nn.remat(
        Block,
        policy=_REMAT_POLICIES[cfg.remat],
        prevent_cse=not cfg.scan_layers,
        static_argnums=(4,),
      )
    moe = cfg.moe
    if cfg.scan_layers:
      stack = nn.scan(
        block,
        variable_axes={"params": 0, "cache": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      self.layers = stack(cfg, scanned=True)  # params["layers"], leaves [num_layers, ...]
    else:
      self.layers = [
        block(cfg, use_moe=moe is not None and moe.is_moe_layer(i))
        for i in range(cfg.num_layers)
      ]
    self.final_norm = make_norm(
      cfg.norm_type, cfg.norm_eps, cfg.has_bias, cfg.dtype, cfg.param_dtype, None
    )
    if not cfg.tie_embeddings:
      self.lm_head = Dense(
        cfg.vocab_size,
        ("embed", "vocab"),
        init_std=cfg.init_std,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
      )
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(
    self,
    input_ids,
    positions=None,
    segment_ids=None,
    deterministic: bool = True,
    return_hidden: bool = False,
  ):
    """input_ids int [batch, length] -> logits [batch, length, vocab] (compute dtype).

    positions [batch, length] default to arange per row (in decode mode: the
    running cache index). segment_ids [batch, length] (0 = padding) make
    attention block-diagonal causal. With `return_hidden`, returns
    (logits, hidden) where hidden [batch, length, embed] is the output of
    the final norm.
    """
    hidden = self.hidden_states(input_ids, positions, segment_ids, deterministic)
    logits = self.logits(hidden)
    return (logits, hidden) if return_hidden else logits

  def hidden_states(self, input_ids, positions=None, segment_ids=None, deterministic: bool = True):
    """Final-norm hidden states [batch, length, embed] (for reward/value heads)."""
    cfg = self.config
    b, length = input_ids.shape
    if cfg.decode:
      default_positions = self.decode_index(b, length)
    else:
      default_positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    positions = default_positions if positions is None else positions
    x = self.embed(input_ids)  # [b, l, embed]
    if cfg.position_type == "learned":
      x = x + self.pos_embed(positions)
    x = self.dropout(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
    if cfg.scan_layers:
      x, _ = self.layers(x, positions, segment_ids, deterministic)
    else:
      for layer in self.layers:
        x = layer(x, positions, segment_ids, deterministic)
    return self.final_norm(x)

  def logits(self, hidden):
    """hidden [batch, length, embed] -> logits [batch, length, vocab]."""
    if self.config.tie_embeddings:
      logits = self.embed.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return nn.with_logical_constraint(logits, ("act_batch", "act_length", "act_vocab"))


def init_cache(cfg: GPTConfig, batch_size: int):
  """A zeroed KV cache for `GPT(cfg.replace(decode=True))` with `batch_size` rows.

  Shapes come from `jax.eval_shape`, so no parameters are materialised.
  """
  model = GPT(cfg.replace(decode=True))
  ids = jnp.zeros((batch_size, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, ids))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def unscan_params(params, num_layers: Optional[int] = None):
  """Stacked params["layers"] leaves [num_layers, ...] -> params["layers_{i}"] (other keys kept).

  Works on any mapping with a "layers" entry (also a KV cache); `num_layers`
  defaults to the leading axis of the stacked leaves.
  """
  params = dict(params)
  stacked = params.pop("layers")
  leaves = jax.tree.leaves(stacked)
  n = leaves[0].shape[0] if num_layers is None else num_layers
  for i in range(n):
    params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params


def scan_params(params):
  """params["layers_{i}"] -> params["layers"] with every leaf stacked [num_layers, ...]."""
  params = dict(params)
  n = 0
  while f"layers_{n}" in params:
    n += 1
  if n == 0:
    raise ValueError("scan_params: no layers_0 in the params (already scanned, or not a GPT tree)")
  blocks = [params.pop(f"layers_{i}") for i in range(n)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  return params
